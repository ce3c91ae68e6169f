"""numba kernels with plain numpy reference implementations beside them. No I/O here."""
