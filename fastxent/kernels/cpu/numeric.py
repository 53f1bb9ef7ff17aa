"""Scalar building blocks for the CPU kernels, written so that LLVM vectorises the loops using them.

* ``exp`` for float32 is computed here rather than by ``math.exp``: PyPI's llvmlite has no SVML, so
  ``math.exp`` stays a scalar libm call inside a loop. Cody–Waite range reduction, a degree-6
  minimax polynomial and an exponent assembled from integer bits vectorise to AVX-512/AVX2
  (measured: a plain two-pass kernel went from 509 ms to 76 ms at N=2048, V=131072). Maximum
  relative error against float64 is 7.6e-8 over [-87.3, 0], under one float32 ulp; below -87.33
  the result is flushed to 0 (the true value is under 1.2e-38). NaN propagates. The kernels only
  call it on arguments <= 0. ``exp_term`` is the same function for the terms of a sum: it clamps
  its argument at -87.33 instead of flushing the result (one instruction instead of two; the
  terms it keeps are below 1.2e-38, against a sum of at least 1).
* ``block_max`` is the maximum of a block: for float32, the larger of the integer maximum and
  minimum of the bit patterns (exact, and four times faster than LLVM's ``maxnum`` reduction,
  which x86 needs NaN fix-ups for); for bfloat16 and float16 the same on their 16-bit patterns,
  undecoded (four times faster again than on the decoded values). ``fmax`` is ``maxnum``, for
  float64 blocks. Either may drop a NaN, which is harmless: the sum of exponentials that follows
  every maximum propagates it.
* ``load`` / ``store`` decode and encode the storage views of ``fastxent.core.dtypes``: ``uint16``
  holds bfloat16 bits, ``int16`` float16 bits; float32 and float64 pass through.
* ``cap`` and ``cap_and_slope`` are the logit soft-cap of ``formulas.capped``, the identity when
  the cap is None (decided at compile time from the argument's type, so the common path carries
  no branch).
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from ...core import formulas
from ...core.formulas import bf16_bits

_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_I16 = ir.IntType(16)


@intrinsic
def _f32_from_bits(typingctx, bits):
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if bits.bitwidth > 32:
            v = builder.trunc(v, _I32)
        elif bits.bitwidth < 32:
            v = builder.zext(v, _I32)
        return builder.bitcast(v, _F32)

    return types.float32(bits), codegen


@intrinsic
def _f32_to_bits(typingctx, x):
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], _I32)

    return types.uint32(x), codegen


@intrinsic
def _f16_to_f32(typingctx, bits):
    if bits != types.int16:
        return None

    def codegen(context, builder, sig, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), _F32)

    return types.float32(bits), codegen


@intrinsic
def _f32_to_f16(typingctx, x):
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), _I16)

    return types.int16(x), codegen


@intrinsic
def fmax(typingctx, a, b):
    if not (a == b and isinstance(a, types.Float)):
        return None

    def codegen(context, builder, sig, args):
        lt = context.get_value_type(sig.return_type)
        fn = builder.module.declare_intrinsic("llvm.maxnum", [lt], ir.FunctionType(lt, [lt, lt]))
        return builder.call(fn, args)

    return a(a, b), codegen


# --- exp -----------------------------------------------------------------------------------------

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693145751953125)  # ln 2 split so that k * _LN2_HI is exact for |k| < 2^9
_LN2_LO = np.float32(1.428606765330187e-06)
_ROUND = np.float32(12582912.0)  # 1.5 * 2^23: adding it rounds to an integer held in the low bits
_ROUND_BITS = np.uint32(0x4B400000)  # the bit pattern of _ROUND
# Minimax on |r| <= ln2/2 for the relative error of 1 + r + r²·q(r) (Lawson's iteration in
# float64, then rounded to float32): 3.1e-9, far under the float32 rounding of the evaluation.
_Q2, _Q3, _Q4, _Q5, _Q6 = (np.float32(v) for v in (
    0.4999999403953552, 0.1666652113199234, 0.04166838899254799, 0.008368710055947304,
    0.0013814611593261361))
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)
_FLUSH = np.float32(-87.33654)  # log(2^-126): smaller arguments give 0
_EXP_BIAS = np.uint32(127)
_MANTISSA_BITS = np.uint32(23)


# Not inlined at the Numba-IR level: that would compile these instructions under the caller's
# fast-math flags, and ``reassoc`` folds (x + _ROUND) - _ROUND back to x. LLVM still inlines them,
# keeping each instruction's own flags.
@njit(fastmath={"contract"})
def _exp32_normal(x):
    """exp(x) for x >= _FLUSH (the result's exponent is assembled without a range check)."""
    kf = x * _LOG2E + _ROUND
    k = kf - _ROUND
    r = x - k * _LN2_HI
    r = r - k * _LN2_LO
    q = _Q6 * r + _Q5
    q = q * r + _Q4
    q = q * r + _Q3
    q = q * r + _Q2
    q = q * r + _ONE
    p = q * r + _ONE
    bits = (_f32_to_bits(kf) - _ROUND_BITS + _EXP_BIAS) << _MANTISSA_BITS
    return p * _f32_from_bits(bits)


@njit(fastmath={"contract"})
def exp32(x):
    """exp of a float32 <= 0; 0 below -87.33, NaN for NaN."""
    y = _exp32_normal(x)
    return _ZERO if x < _FLUSH else y


@njit(fastmath={"contract"})
def _exp32_term(x):
    # "_FLUSH if _FLUSH > x else x" is x86's maxps operand order: one instruction, and NaN stays
    return _exp32_normal(_FLUSH if _FLUSH > x else x)


def fexp(x):
    """exp in the compute type: :func:`exp32` for float32, libm for float64."""
    return math.exp(x)


def exp_term(x):
    """exp for the terms of a sum of exponentials: :func:`fexp`, except that float32 arguments
    below -87.33 give about 1.2e-38 instead of 0."""
    return math.exp(x)


@njit(inline="always")
def floored(d):
    """``d`` clamped below at -87.33 (NaN too), where :func:`exp_term` stops decreasing: the
    factor of a term ``exp_term(·)·d`` that must stay finite, about -1e-36, when ``d`` is -inf
    (a masked class) or NaN (two masked classes subtracted)."""
    return d if d > _FLUSH else _FLUSH


def _float32_or_libm(exp_float32):
    """Overload implementation: ``exp_float32`` for float32 arguments, libm for float64."""
    def impl(x):
        if x == types.float32:
            return lambda x: exp_float32(x)
        if x == types.float64:
            return lambda x: math.exp(x)
        return None
    return impl


overload(fexp, inline="always")(_float32_or_libm(exp32))
overload(exp_term, inline="always")(_float32_or_libm(_exp32_term))


def block_max(xs):
    """Maximum of a non-empty block of a storage view, in the compute type."""


@overload(block_max, inline="always")
def _block_max_impl(xs):
    if xs.dtype == types.float64:
        def max64(xs):
            m = xs[0]
            for j in range(1, xs.size):
                m = fmax(m, xs[j])
            return m
        return max64

    if xs.dtype in (types.uint16, types.int16):
        def max16(xs):
            # the same on the 16-bit patterns of bfloat16 and float16, which order alike: 32 lanes
            # per AVX-512 register and no decoding but the result's
            hi = np.int16(-32768)
            lo = np.int16(32767)
            for j in range(xs.size):
                k = np.int16(xs[j])
                hi = max(hi, k)
                lo = min(lo, k)
            return np.float32(load(xs.dtype.type(hi if hi >= 0 else lo)))
        return max16

    def max32(xs):
        # Non-negative floats order like their bit patterns as int32, negative ones in reverse:
        # the largest pattern is the maximum when it is >= 0, else the smallest pattern is.
        hi = np.int32(-2147483648)
        lo = np.int32(2147483647)
        for j in range(xs.size):
            k = np.int32(_f32_to_bits(np.float32(load(xs[j]))))
            hi = max(hi, k)
            lo = min(lo, k)
        return _f32_from_bits(np.uint32(hi if hi >= 0 else lo))
    return max32


# --- loads and stores ----------------------------------------------------------------------------


def load(v):
    """Element of a storage view → compute type (float32, or float64 for float64 arrays).

    The Python body is the same decoding on NumPy scalars, for kernels run by Numba's CUDA
    simulator."""
    if isinstance(v, np.uint16):
        return (np.uint32(v) << np.uint32(16)).view(np.float32)
    if isinstance(v, np.int16):
        return np.float32(v.view(np.float16))
    return v


def load_impl(v):
    if v == types.uint16:
        return lambda v: _f32_from_bits(np.uint32(v) << np.uint32(16))
    if v == types.int16:
        return lambda v: _f16_to_f32(v)
    if v == types.float32 or v == types.float64:
        return lambda v: v
    return None


def store(g, dst):
    """Compute-type value → the element type of the storage view ``dst`` (Python body: the same
    on NumPy scalars, for the CUDA simulator)."""
    if dst.dtype == np.uint16:
        g = np.float32(g)
        bits = np.uint64(g.view(np.uint32))
        rounded = np.uint16(bf16_bits(bits))
        return _BF16_NAN if g != g else rounded
    if dst.dtype == np.int16:
        return np.float16(g).view(np.int16)
    return dst.dtype.type(g)


_BF16_NAN = np.uint16(0x7FC0)


def store_impl(g, dst):
    like = dst.dtype
    if like == types.uint16:
        def to_bf16(g, dst):
            g = np.float32(g)
            bits = _f32_to_bits(g)
            rounded = np.uint16(bf16_bits(bits))
            return _BF16_NAN if g != g else rounded
        return to_bf16
    if like == types.int16:
        return lambda g, dst: _f32_to_f16(np.float32(g))
    if like == types.float32:
        return lambda g, dst: np.float32(g)
    if like == types.float64:
        return lambda g, dst: np.float64(g)
    return None


# --- options decided by type ---------------------------------------------------------------------


# ``formulas.capped`` compiled to be inlined into each kernel's own code: called as a function it
# cost 50% on the capped paths (a call and a returned tuple per element). A registered formula
# cannot be inlined so, because the CUDA target does not inline registered functions.
_capped = njit(inline="always")(formulas.capped)


def cap_and_slope(x, c):
    """``(c·tanh(x/c), d/dx)`` (``formulas.capped``) in the compute type; ``(x, 1)`` when ``c``
    is None."""


@overload(cap_and_slope, inline="always")
def _cap_and_slope_impl(x, c):
    if isinstance(c, types.NoneType):
        return lambda x, c: (x, np.float32(1.0))
    if x == types.float32:
        def capped32(x, c):
            # in float64, then rounded once: the capped logit's error moves exp(y - lse) by as
            # much, relative, so it is kept to half a float32 ulp
            y, slope = _capped(np.float64(x), np.float64(c), 1.0)
            return np.float32(y), np.float32(slope)
        return capped32
    return lambda x, c: _capped(x, np.float64(c), 1.0)


def cap(y, c):
    """Soft-cap ``c·tanh(y/c)``; identity when ``c`` is None."""


@overload(cap, inline="always")
def _cap_impl(y, c):
    if isinstance(c, types.NoneType):
        return lambda y, c: y
    if y == types.float32:
        return lambda y, c: np.float32(_capped(np.float64(y), np.float64(c), 1.0)[0])
    return lambda y, c: _capped(y, np.float64(c), 1.0)[0]


def weight_at(w, j):
    """Class weight ``w[j]``, or 1 when no weights are given."""
    return 1.0


@overload(weight_at, inline="always")
def _weight_at_impl(w, j):
    if isinstance(w, types.NoneType):
        return lambda w, j: np.float32(1.0)  # float32 so that it never widens a float32 product
    return lambda w, j: w[j]


def as_compute(v, a):
    """``v`` converted to the compute type of storage array ``a``."""
    return np.float64(v) if a.dtype == np.float64 else np.float32(v)


def as_compute_impl(v, a):
    if a.dtype == types.float64:
        return lambda v, a: np.float64(v)
    return lambda v, a: np.float32(v)


# The implementations above, chosen by type, serve the CPU kernels here (inlined at the level of
# Numba's IR) and the CUDA kernels (``lanes`` registers them for the CUDA target).
overload(load, inline="always")(load_impl)
overload(store, inline="always")(store_impl)
overload(as_compute, inline="always")(as_compute_impl)

