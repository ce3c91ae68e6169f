"""numba kernels with plain numpy reference implementations beside them. No I/O here.

numba's cache of compiled kernels (``@njit(cache=True)``) goes to the user's cache folder,
``$XDG_CACHE_HOME/subsample-gan/numba`` (``~/.cache/subsample-gan/numba``), unless
``NUMBA_CACHE_DIR`` is set: never into the source tree (numba's default, ``kernels/__pycache__``),
and never under ``$SUBSAMPLE_HOME``, because numba unpickles its cache files and nothing in the
home may run code (docs/security.md). It is set here, before any kernel module imports numba.
"""

from __future__ import annotations

import os
import sys
import tempfile


def numba_cache_dir() -> str:
    """``NUMBA_CACHE_DIR`` when the user set it, else the user's cache folder for this project (a
    fresh private temporary folder when that cannot be made, rather than the source tree)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "subsample-gan", "numba")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(path)
    except OSError:
        path = tempfile.mkdtemp(prefix="subsample-gan-numba-")  # ours alone (0700), for this process
    return path


os.environ["NUMBA_CACHE_DIR"] = numba_cache_dir()  # read when numba loads its config; Dask workers inherit it
if "numba" in sys.modules:  # numba already imported (by another library): its config read the environment then
    sys.modules["numba"].config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]
