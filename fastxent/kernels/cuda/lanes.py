"""Eight-byte words of packed elements, for the CUDA kernels' wide loads and stores.

A GPU streams memory fastest when each thread moves eight bytes at a time with several loads in
flight (measured on an H100 for bfloat16: 1.69 TB/s through 4-byte words, 1.94 TB/s through 8-byte
words, 2.85 TB/s with four 8-byte loads in flight per thread). So the CUDA kernels read a row as
``uint64`` words holding ``lanes(like)`` elements each (four halves or two float32; float64 arrays
are read as they are, one element per word) and take the elements out here.

``like`` is the storage view (``fastxent.core.dtypes``) whose element type says how a lane decodes:
``uint16`` bfloat16, ``int16`` float16, ``float32``, ``float64``. Each helper is an overload for
the CUDA target, and its Python body does the same on NumPy scalars, which is what runs in Numba's
CUDA simulator. ``decode``, ``encode`` and ``compute`` are the CPU kernels' ``load``, ``store`` and
``as_compute`` (``cpu/numeric.py``, same implementations) registered for the CUDA target: the CPU
registrations are inlined at the level of Numba's IR, which the CUDA target does not lower.
"""

import numpy as np
from numba import types
from numba.cuda.extending import overload

from ..cpu import numeric as _numeric
from ..cpu.numeric import _f16_to_f32, _f32_from_bits, _f32_to_bits


def decode(v):
    """Element of a storage view → compute type (``cpu/numeric.py::load`` for the CUDA target)."""
    return _numeric.load(v)


def encode(g, dst):
    """Compute-type value → the element type of the storage view ``dst``, rounded to nearest
    even (``cpu/numeric.py::store`` for the CUDA target)."""
    return _numeric.store(g, dst)


def compute(v, a):
    """``v`` in the compute type of ``a`` (``cpu/numeric.py::as_compute`` for the CUDA target)."""
    return _numeric.as_compute(v, a)


overload(decode)(_numeric.load_impl)
overload(encode)(_numeric.store_impl)
overload(compute)(_numeric.as_compute_impl)


_U64 = np.uint64
_MASK16 = np.uint64(0xFFFF)
_MASK32 = np.uint64(0xFFFFFFFF)


def lanes(like):
    """Elements per word: 8 bytes over the element size (float64: 1)."""
    return 8 // like.dtype.itemsize


@overload(lanes)
def _lanes_impl(like):
    n = 64 // like.dtype.bitwidth
    return lambda like: n


def lowest(like):
    """The most negative finite value of the compute type: the start of a running maximum (it
    leaves ``exp(-inf - start) = 0`` where ``-inf`` would give ``exp(nan)``)."""
    return np.float64(np.finfo(np.float64).min) if like.dtype == np.float64 else \
        np.float32(np.finfo(np.float32).min)


@overload(lowest)
def _lowest_impl(like):
    if like.dtype == types.float64:
        v = np.float64(np.finfo(np.float64).min)
    else:
        v = np.float32(np.finfo(np.float32).min)
    return lambda like: v


def empty_word(like):
    """A word with every lane zero bits (float64 arrays: the float 0.0)."""
    return np.float64(0.0) if like.dtype == np.float64 else _U64(0)


@overload(empty_word)
def _empty_word_impl(like):
    if like.dtype == types.float64:
        return lambda like: np.float64(0.0)
    return lambda like: np.uint64(0)


def get(word, j, like):
    """Lane ``j`` of ``word``, decoded to the compute type."""
    if like.dtype == np.float64:
        return word
    if like.dtype == np.float32:
        return np.uint32((word >> _U64(32 * j)) & _MASK32).view(np.float32)
    bits = (word >> _U64(16 * j)) & _MASK16
    return decode(np.uint16(bits).view(like.dtype))


@overload(get)
def _get_impl(word, j, like):
    kind = like.dtype
    if kind == types.float64:
        return lambda word, j, like: word
    if kind == types.float32:
        return lambda word, j, like: _f32_from_bits(
            np.uint32((word >> np.uint64(32 * j)) & np.uint64(0xFFFFFFFF)))
    if kind == types.uint16:
        return lambda word, j, like: _f32_from_bits(
            np.uint32((word >> np.uint64(16 * j)) & np.uint64(0xFFFF)) << np.uint32(16))
    if kind == types.int16:
        return lambda word, j, like: _f16_to_f32(
            np.int16(np.uint16((word >> np.uint64(16 * j)) & np.uint64(0xFFFF))))
    return None


def put(word, j, g, like):
    """``word`` with lane ``j`` (zero bits before) set to ``g`` encoded as ``like``'s elements."""
    if like.dtype == np.float64:
        return np.float64(g)
    e = encode(g, like)
    bits = _U64(np.float32(e).view(np.uint32)) if like.dtype == np.float32 else \
        _U64(e.view(np.uint16))
    return word | (bits << _U64(like.dtype.itemsize * 8 * j))


@overload(put)
def _put_impl(word, j, g, like):
    kind = like.dtype
    if kind == types.float64:
        return lambda word, j, g, like: np.float64(g)
    if kind == types.float32:
        return lambda word, j, g, like: word | (
            np.uint64(_f32_to_bits(np.float32(g))) << np.uint64(32 * j))
    if kind == types.uint16:
        return lambda word, j, g, like: word | (
            np.uint64(encode(g, like)) << np.uint64(16 * j))
    if kind == types.int16:
        return lambda word, j, g, like: word | (
            np.uint64(np.uint16(encode(g, like))) << np.uint64(16 * j))
    return None
