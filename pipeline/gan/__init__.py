"""The GAN library: models and architectures, losses, training methods, the trainer and the
data-parallel collectives. It knows nothing of stages, stores or configs' resolution: a training
method reads its options from the run's config object, whatever resolved it.

Importing the package registers every architecture (the DCGAN family in ``models``, the seed
methods' and the common family's in ``architectures``) and every training method (``methods``, and
the two kept in modules of their own, ``plgan`` and ``began``), so a registry lookup sees them all.
"""

from pipeline.gan import architectures as _architectures  # noqa: F401  (registers the architectures)
from pipeline.gan import began as _began  # noqa: F401  (registers the began method)
from pipeline.gan import plgan as _plgan  # noqa: F401  (registers the pl-gan method)
