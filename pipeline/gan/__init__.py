"""The GAN library: models and architectures, losses, training methods, the trainer and the
data-parallel collectives. It knows nothing of stages, stores or configs' resolution: a training
method reads its options from the run's config object, whatever resolved it.

Importing the package registers every architecture (the DCGAN family in ``models``, the seed
methods' and the common family's in ``architectures``), so a registry lookup sees them all.
"""

from pipeline.gan import architectures as _architectures  # noqa: F401  (registers the architectures)
