"""subsample: distribution-matched mini-batches for any PyTorch training loop (docs/library.md).

    import subsample
    sampler = subsample.batch_sampler(dataset, batch_size=256, strategy="constructed", seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=2)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for images, labels in loader: ...
        print(sampler.diagnostics(epoch))

The public layer of the project: it re-exports the pipeline's pieces a user needs and nothing
below imports it. ``write_image_folder`` writes any ingest source (the demo's CIFAR-10 binary)
as a torchvision ``ImageFolder``.
"""

from pipeline.config import STRATEGY_NAMES
from pipeline.data.sampler import SubsampleBatchSampler
from pipeline.data.strategies import construct_epoch
from pipeline.stages.tables import Table, build_table
from storage.errors import SubsampleError
from subsample.export import write_image_folder
from subsample.sampler import BatchSampler, batch_sampler

__all__ = [
    "STRATEGY_NAMES",
    "BatchSampler",
    "SubsampleBatchSampler",
    "SubsampleError",
    "Table",
    "batch_sampler",
    "build_table",
    "construct_epoch",
    "write_image_folder",
]
