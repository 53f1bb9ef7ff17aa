"""Logarithms for the CPU kernels of the binary and probability losses, written to vectorise.

PyPI's llvmlite has no SVML, so ``math.log`` and ``math.log1p`` stay scalar libm calls inside a
loop (see ``cpu/numeric.py`` for ``exp``). The float32 versions here are branch-free:

* ``log1p32(u)`` for ``u`` in [-1/2, 1]: ``log(1 + u) = 2·atanh(s)`` with ``s = u / (2 + u)``, so
  ``|s| <= 1/3``, and ``atanh(s) = s·(1 + s²/3 + s⁴/5 + …)`` to the ``s¹²/13`` term (the next one
  is below 3e-8 relative). ``s`` is computed from ``u`` itself, never from ``1 + u``, so small
  arguments keep their relative precision (``log1p(1e-30) = 1e-30``).
* ``log32(z)`` for ``z >= 0``: ``z = m·2^k`` with ``m`` in [√½, √2) taken from the bits, then
  ``log z = k·ln2 + 2·atanh((m - 1)/(m + 1))`` (``|s| <= 0.172``, five terms) with ``ln 2`` split in
  two so that ``k·ln2`` is exact. Subnormals are scaled by 2²⁴ first; ``log 0 = -inf``,
  ``log inf = inf``, NaN and negative arguments give NaN.

Measured against float64 (``tests/test_logs.py``): ``log32`` and ``log1p32`` within 2 float32 ulps
over their ranges. ``flog`` and ``flog1p`` pick them for float32 arguments and libm for float64.
"""

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from .numeric import _f32_from_bits, _f32_to_bits

_ONE = np.float32(1.0)
_TWO = np.float32(2.0)
_ZERO = np.float32(0.0)
_INF = np.float32(np.inf)
_C3, _C5, _C7, _C9, _C11, _C13 = (np.float32(1.0 / k) for k in (3, 5, 7, 9, 11, 13))
_LN2_HI = np.float32(0.693145751953125)  # k·_LN2_HI is exact for |k| < 2^9
_LN2_LO = np.float32(1.428606765330187e-06)
_SQRT_HALF_BITS = np.int32(0x3F3504F3)  # the bits of √½ (rounded down)
_MIN_NORMAL = np.float32(1.1754943508222875e-38)
_TWO_24 = np.float32(16777216.0)


@njit(fastmath={"contract"}, error_model="numpy")
def _atanh2_long(s):
    """2·atanh(s) for |s| <= 1/3."""
    s2 = s * s
    q = _C13 * s2 + _C11
    q = q * s2 + _C9
    q = q * s2 + _C7
    q = q * s2 + _C5
    q = q * s2 + _C3
    q = q * s2
    return _TWO * (s + s * q)


@njit(fastmath={"contract"}, error_model="numpy")
def _atanh2_short(s):
    """2·atanh(s) for |s| <= 0.172."""
    s2 = s * s
    q = _C9 * s2 + _C7
    q = q * s2 + _C5
    q = q * s2 + _C3
    q = q * s2
    return _TWO * (s + s * q)


@njit(fastmath={"contract"}, error_model="numpy")
def log1p32(u):
    """log(1 + u) for float32 ``u`` in [-1/2, 1]."""
    return _atanh2_long(u / (_TWO + u))


@njit(fastmath={"contract"}, error_model="numpy")
def log32(z):
    """log(z) for float32 ``z`` (see the module's notes for 0, inf, NaN and negatives)."""
    small = z < _MIN_NORMAL
    zs = z * _TWO_24 if small else z
    bits = np.int32(_f32_to_bits(zs))
    k = (bits - _SQRT_HALF_BITS) >> np.int32(23)  # arithmetic shift: floor
    m = _f32_from_bits(np.uint32(bits - (k << np.int32(23))))
    kf = np.float32(k) - (np.float32(24.0) if small else _ZERO)
    r = kf * _LN2_HI + (_atanh2_short((m - _ONE) / (m + _ONE)) + kf * _LN2_LO)
    r = -_INF if z == _ZERO else r
    r = z if z == _INF else r
    return np.float32(np.nan) if not z >= _ZERO else r


def flog(x):
    """log in the compute type: :func:`log32` for float32, libm for float64."""
    return math.log(x) if x > 0 else (-math.inf if x == 0 else math.nan)


def flog1p(x):
    """log(1 + x) in the compute type: :func:`log1p32` for float32 (``x`` in [-1/2, 1])."""
    return math.log1p(x)


def _choose(f32, f64):
    def impl(x):
        if x == types.float32:
            return lambda x: f32(x)
        if x == types.float64:
            return f64
        return None
    return impl


def _log64(x):
    if x > 0:
        return math.log(x)
    return -math.inf if x == 0 else math.nan


overload(flog, inline="always")(_choose(log32, _log64))
overload(flog1p, inline="always")(_choose(log1p32, lambda x: math.log1p(x)))
