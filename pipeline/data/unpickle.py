"""CIFAR-10 python batches, unpickled without trusting them.

A python batch is a pickle, and a pickle is a program: it can call what it names and build what it
likes. :func:`restricted_load` reads one in three steps, each bounded before anything is built:

1. **the file's size** (at most :data:`CIFAR_PY_MAX_FILE_BYTES`, read into memory once);
2. **a scan of its opcodes** (``pickletools.genops``, nothing built): at most
   :data:`MAX_OPCODES` of them, and the nesting of the objects they would build (followed through
   the memo, so a structure that refers to itself is seen) at most :data:`MAX_DEPTH` deep, so a
   400 KB list nested 100,000 deep is refused before the unpickler makes it (or a later
   traversal overflows the stack);
3. **the unpickler itself** (:class:`RestrictedUnpickler`): it can name only numpy's array
   reconstruction, dtypes, scalars, ``_codecs.encode`` (how Python 3 spells bytes in protocol 2,
   and only with the latin-1 codec: the other codecs grow their input, ``hex`` doubling it, so 30
   nested calls turn bytes into gigabytes) and a few plain containers; and every call that makes
   bytes (an array's data, ``bytearray``, ``encode``) is charged *before* it is made against a
   budget of a few times the file's size (:func:`build_budget`): the memo lets a pickle name one
   large object many times, and each call on it would otherwise copy it again.

Each array's declared shape must match the bytes it carries, and 2-D ``uint8`` arrays CIFAR's
record layout (N, 3072), before numpy allocates (:class:`_CheckedArray`).
"""

from __future__ import annotations

import codecs
import io
import math
import pickle
import pickletools
from pathlib import Path
from typing import Any

import numpy as np

from storage.errors import SubsampleError

STAGE = "ingest"
CIFAR_RECORD = 3072  # 3 × 32 × 32 planar RGB bytes per image
CIFAR_PY_MAX_FILE_BYTES = 512 << 20  # a python batch is unpickled in memory: 16× the 31 MB of a real one
MAX_DEPTH = 32  # a CIFAR batch nests about 6 deep (dict > array > its reduce arguments)
MAX_OPCODES = 1_000_000  # a CIFAR-100 train batch has about 200,000; each costs the scan ~100 bytes


def build_budget(file_bytes: int) -> int:
    """The bytes the calls of one pickle may make: a real batch makes its data twice (``encode``,
    then the array), so three times the file and a mebibyte."""
    return 3 * file_bytes + (1 << 20)


# --- step 2: the opcode scan -------------------------------------------------------------------------

_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_GET = {"GET", "BINGET", "LONG_BINGET"}


def scan(data: bytes, *, max_depth: int = MAX_DEPTH, max_opcodes: int = MAX_OPCODES) -> None:
    """Refuse (``pickle.UnpicklingError``) a pickle with more than ``max_opcodes`` opcodes or whose
    objects would nest deeper than ``max_depth`` or refer to themselves, from its opcodes alone:
    each container it would build is a node (a list of the nodes put into it), plain values are
    leaves (``None``)."""
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}
    mark = pickletools.markobject
    try:
        for count, (op, arg, _) in enumerate(pickletools.genops(data)):
            if count >= max_opcodes:
                raise pickle.UnpicklingError(f"more than {max_opcodes:,} pickle opcodes")
            name = op.name
            if name == "MARK":
                marks.append(len(stack))
            elif name in _PUT:
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in _GET:
                stack.append(memo[arg])
            elif name == "DUP":
                stack.append(stack[-1])
            elif name == "POP_MARK":
                del stack[marks.pop() :]
            elif name in ("APPEND", "SETITEM", "BUILD"):
                n = 2 if name == "SETITEM" else 1
                items = stack[-n:]
                del stack[-n:]
                _adopt(stack[-1], items)
            elif name in ("APPENDS", "SETITEMS", "ADDITEMS"):
                m = marks.pop()
                items = stack[m:]
                del stack[m:]
                _adopt(stack[-1], items)
            elif name in ("PROTO", "FRAME", "STOP"):
                continue
            else:  # every other opcode: pops what it consumes, pushes what it builds from them
                if mark in op.stack_before:
                    m = marks.pop()
                    items = stack[m:]
                    del stack[m:]
                else:
                    n = len(op.stack_before)
                    items = stack[len(stack) - n :] if n else []
                    if n:
                        del stack[-n:]
                for _ in op.stack_after:
                    kids = [x for x in items if x is not None]
                    stack.append(kids if (kids or name.startswith("EMPTY_") or name in _CONTAINERS) else None)
    except (ValueError, KeyError, IndexError) as e:
        raise pickle.UnpicklingError(f"malformed pickle ({type(e).__name__}: {e})") from None
    depth = max((_depth(x, max_depth) for x in stack), default=0)
    if depth > max_depth:
        raise pickle.UnpicklingError(f"objects nested more than {max_depth} deep (or containing themselves)")


_CONTAINERS = {"LIST", "TUPLE", "DICT", "FROZENSET", "TUPLE1", "TUPLE2", "TUPLE3", "REDUCE", "NEWOBJ", "OBJ", "INST"}


def _adopt(node: Any, items: list) -> None:
    if isinstance(node, list):
        node.extend(x for x in items if x is not None)


def _depth(root: Any, limit: int) -> int:
    """The nesting depth below ``root``, depth first without recursion; a node met again on its
    own path (a structure containing itself) or a path longer than ``limit`` gives ``limit + 1``."""
    if root is None:
        return 0
    depth: dict[int, int] = {}
    on_path = {id(root)}
    path: list[tuple[list, Any]] = [(root, iter(root))]
    while path:
        if len(path) > limit:
            return limit + 1
        node, kids = path[-1]
        for kid in kids:
            if kid is None or id(kid) in depth:
                continue
            if id(kid) in on_path:
                return limit + 1
            on_path.add(id(kid))
            path.append((kid, iter(kid)))
            break
        else:
            path.pop()
            on_path.discard(id(node))
            depth[id(node)] = 1 + max((depth[id(k)] for k in node if k is not None), default=0)
    return depth[id(root)]


# --- step 3: the restricted unpickler --------------------------------------------------------------


class _NdarrayName:
    """What a pickle gets for ``numpy.ndarray``: accepted only as ``_reconstruct``'s first argument
    (how numpy pickles an array), never called: ``ndarray(shape)`` would allocate a declared shape
    of uninitialised memory without any data behind it."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise pickle.UnpicklingError("refusing numpy.ndarray(...): an array must come with its data")


_NDARRAY = _NdarrayName()


class _CheckedArray(np.ndarray):
    """The array ``_reconstruct`` builds; its state (shape, dtype, bytes) is checked before numpy
    sees it: plain numeric dtypes only, at most 2-D, the declared shape exactly the bytes carried,
    and 2-D uint8 arrays in CIFAR's record layout (N, 3072); its bytes charged to the budget."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("malformed array state")
        shape, dtype, _, data = state[-4:]
        if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape) or len(shape) > 2:
            raise pickle.UnpicklingError(f"refusing an array of shape {shape!r}: CIFAR batches hold 1-D and 2-D arrays")
        if (
            not isinstance(dtype, np.dtype)
            or dtype.kind not in "biuf"
            or dtype.fields is not None
            or dtype.subdtype is not None
        ):
            raise pickle.UnpicklingError(f"refusing an array of dtype {dtype!r}: only plain numbers are allowed")
        if not isinstance(data, (bytes, bytearray)) or len(data) != math.prod(shape) * dtype.itemsize:
            got = f"{len(data):,} bytes" if isinstance(data, (bytes, bytearray)) else type(data).__name__
            raise pickle.UnpicklingError(f"refusing an array declaring shape {shape} of {dtype} but carrying {got}")
        if dtype == np.uint8 and len(shape) == 2 and shape[1] != CIFAR_RECORD:
            raise pickle.UnpicklingError(
                f"refusing uint8 records of shape {shape}: CIFAR-10 records are (N, {CIFAR_RECORD})"
            )
        budget = getattr(self, "_budget", None)
        if budget is None:
            raise pickle.UnpicklingError("refusing an array not made by numpy's _reconstruct")
        budget.charge(len(data), "array data")
        super().__setstate__(state)


class _Budget:
    """The bytes one load's calls may still make (:func:`build_budget`)."""

    def __init__(self, limit: int):
        self.limit = self.left = limit

    def charge(self, n: int, what: str) -> None:
        if n > self.left:
            raise pickle.UnpicklingError(
                f"refusing {what} of {n:,} bytes: the pickle's calls would make more than {self.limit:,} bytes, "
                "more than a CIFAR-10 batch of its size needs"
            )
        self.left -= n


_LATIN1 = codecs.lookup("latin-1").name
_numpy_scalar = (getattr(np, "_core", None) or np.core).multiarray.scalar


class RestrictedUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain containers only: anything else a pickle names (``os.system``,
    ``builtins.eval``, a class with ``__reduce__``) raises :class:`pickle.UnpicklingError`; every
    call that makes bytes is checked and charged to ``budget`` bytes before it is made (default:
    unlimited, for callers that bound the input themselves; :func:`restricted_load` passes
    :func:`build_budget` of the file)."""

    def __init__(self, file: Any, *, budget: int | None = None, **kwargs: Any):
        super().__init__(file, **kwargs)
        self._budget = _Budget(budget if budget is not None else 1 << 62)
        b = self._budget

        def reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
            if subtype is not _NDARRAY or shape != (0,):
                raise pickle.UnpicklingError(
                    f"refusing _reconstruct({subtype!r}, {shape!r}): not how numpy pickles an array"
                )
            arr = np.ndarray.__new__(
                _CheckedArray, (0,), dtype=np.dtype(dtype.decode("latin1") if isinstance(dtype, bytes) else dtype)
            )
            arr._budget = b
            return arr

        def encode(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
            try:
                latin1 = isinstance(encoding, str) and codecs.lookup(encoding).name == _LATIN1
            except LookupError:
                latin1 = False
            if not latin1 or not isinstance(obj, str) or errors != "strict":
                raise pickle.UnpicklingError(
                    f"refusing _codecs.encode(..., {encoding!r}): only a str in latin-1 (how bytes are pickled)"
                )
            b.charge(len(obj), "encoded bytes")
            return codecs.encode(obj, "latin-1")

        def byte_array(*args: Any) -> bytearray:
            if len(args) > 2 or (args and not isinstance(args[0], (bytes, bytearray, str))):
                raise pickle.UnpicklingError("refusing bytearray(size): only bytearray(bytes) is allowed")
            b.charge(len(args[0]) if args else 0, "a bytearray")
            return bytearray(*args)

        def container(kind: type) -> Any:
            def make(items: Any = ()) -> Any:
                if not isinstance(items, (list, tuple)):
                    raise pickle.UnpicklingError(f"refusing {kind.__name__}() of a {type(items).__name__}")
                b.charge(64 * len(items), f"a {kind.__name__}")
                return kind(items)

            return make

        def scalar(dtype: Any, *args: Any) -> Any:
            if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or dtype.itemsize > 16:
                raise pickle.UnpicklingError(f"refusing a numpy scalar of dtype {dtype!r}: only plain numbers")
            return _numpy_scalar(dtype, *args)

        self._allowed: dict[tuple[str, str], Any] = {
            ("numpy.core.multiarray", "_reconstruct"): reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,
            ("numpy", "ndarray"): _NDARRAY,
            ("numpy.core.multiarray", "scalar"): scalar,
            ("numpy._core.multiarray", "scalar"): scalar,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): encode,  # protocol-2 pickles written by Python 3 spell bytes this way
            ("builtins", "bytearray"): byte_array,
            ("builtins", "set"): container(set),
            ("builtins", "frozenset"): container(frozenset),
            ("builtins", "complex"): complex,
        }

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only numpy arrays and plain containers are allowed"
            )
        return found


def _plain(obj: Any) -> Any:
    """The unpickled object with every :class:`_CheckedArray` as a plain ndarray (its depth is
    bounded by :func:`scan`)."""
    if isinstance(obj, _CheckedArray):
        return obj.view(np.ndarray)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


def restricted_load(path: Path, max_bytes: int = CIFAR_PY_MAX_FILE_BYTES) -> Any:
    """Unpickle a CIFAR-10 python file without running code from it, and within bounds set
    before anything is built: its size (at most ``max_bytes``, read into memory once, so a length
    the pickle declares can never make the unpickler read more than the file holds), its opcodes'
    count and nesting (:func:`scan`), and the bytes its calls make (:func:`build_budget`)."""
    from pipeline.data.readers import _read_capped

    size = path.stat().st_size
    if size > max_bytes:
        raise SubsampleError(
            STAGE, f"{path}: {size:,} bytes is more than a CIFAR-10 python batch may hold ({max_bytes:,}); refusing it"
        )
    try:
        with open(path, "rb") as f:
            data = _read_capped(f, size)
        scan(data)
        return _plain(RestrictedUnpickler(io.BytesIO(data), budget=build_budget(len(data)), encoding="bytes").load())
    except pickle.UnpicklingError as e:
        raise SubsampleError(STAGE, f"{path}: {e}; not a CIFAR-10 python batch, refusing to load it") from None
    except (
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
        OverflowError,
        RecursionError,
    ) as e:
        raise SubsampleError(STAGE, f"{path}: not a readable CIFAR-10 python batch ({type(e).__name__}: {e})") from None
