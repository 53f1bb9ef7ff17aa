"""Floating-point formats of the logits and how the kernels see them.

Numba compiles no float16 or bfloat16 arithmetic on the CPU, so half-precision arrays reach the
kernels as integer *storage views* of the same memory (no copy): bfloat16 as ``uint16`` and float16
as ``int16``. The integer type tells the kernel which decoding to apply; everything else about the
array (shape, strides, the buffer) is the caller's.
"""

import numpy as np

from . import formulas

#: dtype names accepted for logits, in the order the docs list them.
SUPPORTED = ("float32", "float64", "float16", "bfloat16")

_STORAGE = {"float16": np.dtype(np.int16), "bfloat16": np.dtype(np.uint16)}


_NAMES = {}


def name(dtype):
    """The dtype's name, with ml_dtypes' bfloat16 recognised without importing ml_dtypes.

    Cached per dtype: ``dtype.name`` is computed in Python on every access (microseconds, which
    count for small calls).
    """
    d = np.dtype(dtype)
    found = _NAMES.get(d)
    if found is None:
        found = _NAMES[d] = d.name
    return found


def is_float(dtype):
    return name(dtype) in SUPPORTED


def storage_dtype(dtype):
    """The dtype the kernels read for ``dtype``: float32/float64 as they are, halves as integers."""
    return _STORAGE.get(name(dtype), dtype)


def storage_view(a):
    """View ``a`` as the type the kernels read: float32/float64 as they are, halves as integers."""
    store = _STORAGE.get(name(a.dtype))
    return a if store is None else a.view(store)


def native_dtype(dtype):
    """``dtype`` in the machine's byte order (``>f4`` → ``float32``)."""
    d = np.dtype(dtype)
    return d if d.isnative else d.newbyteorder("=")


def copy_into(dst, src):
    """Copy the storage view ``src`` (C-ordered, native) into ``dst``, an array of the dtype it
    stores, whatever ``dst``'s strides and byte order."""
    np.copyto(dst, src.view(native_dtype(dst.dtype)).reshape(dst.shape))


def row_view(a):
    """The (N, V) storage view of array ``a`` (C-contiguous; a copy if it was not) whose last axis
    is V; a 0-d array is one element."""
    v = a.shape[-1] if a.ndim else 1
    n = int(np.prod(a.shape[:-1], dtype=np.int64)) if a.ndim else 1
    return storage_view(np.ascontiguousarray(a)).reshape(n, v)


def compute_dtype(dtype):
    """Accumulation dtype: float64 for float64 inputs, float32 for every narrower format."""
    return np.dtype(np.float64) if name(dtype) == "float64" else np.dtype(np.float32)


def decode(a):
    """Storage view (or float array) → float64 values. Used by the reference and by tests."""
    if a.dtype == np.uint16:  # bfloat16 bits: the high half of a float32
        return (a.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    if a.dtype == np.int16:
        return a.view(np.float16).astype(np.float64)
    return np.asarray(a, dtype=np.float64)


def encode_into(dst, values):
    """Write float64 ``values`` into the storage view ``dst``, rounding to nearest even."""
    if dst.dtype == np.uint16:
        f32 = np.asarray(values, dtype=np.float32)
        bits = f32.view(np.uint32).astype(np.uint64)
        rounded = formulas.bf16_bits(bits).astype(np.uint16)
        # a NaN must stay a NaN whatever its payload
        dst[...] = np.where(np.isnan(f32), np.uint16(0x7FC0), rounded)
    elif dst.dtype == np.int16:
        dst[...] = np.asarray(values, dtype=np.float16).view(np.int16)
    else:
        dst[...] = values


def resolve(dname):
    """The NumPy dtype named ``dname`` (``"bfloat16"`` through ``ml_dtypes``)."""
    if dname == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dname)
