"""The GAN-independent data path: one image through the crop/resize policy (``images``), the fast
JPEG decoders (``decode``), ingest's readers and sources (``readers``, ``sources``, ``arrays``), the
batch strategies (``strategies``) and the PyTorch batch sampler over them (``sampler``)."""
