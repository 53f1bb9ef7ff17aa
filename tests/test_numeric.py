"""fastxent.kernels.cpu.numeric: the vectorisable float32 exp, and the bfloat16/float16 loads and
stores of the storage views, each against an independent implementation (float64 NumPy,
ml_dtypes and NumPy's float16 casts)."""

import math

import ml_dtypes
import numpy as np
import pytest
from numba import njit

from fastxent.kernels.cpu.numeric import block_max, exp32, exp_term, fexp, load, store


@njit
def _exp32_all(x, out):
    for i in range(x.size):
        out[i] = exp32(x[i])


@njit
def _fexp_all(x, out):
    for i in range(x.size):
        out[i] = fexp(x[i])


@njit
def _exp_term_all(x, out):
    for i in range(x.size):
        out[i] = exp_term(x[i])


@njit
def _block_max(xs):
    return block_max(xs)


@njit
def _load_all(src, out):
    for i in range(src.size):
        out[i] = load(src[i])


@njit
def _store_all(values, dst):
    for i in range(values.size):
        dst[i] = store(values[i], dst)


HALF = {
    "bfloat16": (np.dtype(np.uint16), np.dtype(ml_dtypes.bfloat16)),
    "float16": (np.dtype(np.int16), np.dtype(np.float16)),
}


def exp32_np(x):
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x)
    _exp32_all(x, out)
    return out


# --- exp -----------------------------------------------------------------------------------------


def test_exp32_relative_error_over_its_range():
    """Over [-87.3, 0], where the kernels use it, the error is below 3e-7 relative."""
    x = np.concatenate([
        np.linspace(-87.3, 0.0, 2_000_001).astype(np.float32),
        -np.logspace(-40, 0, 10_001).astype(np.float32),  # near 0, down to subnormal arguments
        np.random.default_rng(0).uniform(-87.3, 0.0, 200_000).astype(np.float32),
    ])
    got = exp32_np(x).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    rel = np.abs(got - want) / want
    assert rel.max() < 3e-7, f"max relative error {rel.max():.3g} at x={x[np.argmax(rel)]!r}"


def test_exp32_special_values():
    x = np.array([0.0, -0.0, -np.inf, np.nan, -np.nan, -87.34, -88.0, -100.0, -1e30,
                  np.finfo(np.float32).min], np.float32)
    got = exp32_np(x)
    assert got[0] == 1.0 and got[1] == 1.0
    assert got[2] == 0.0
    assert np.isnan(got[3]) and np.isnan(got[4])
    assert np.all(got[5:] == 0.0)


def test_exp32_flushes_to_zero_below_the_normal_range():
    x = np.linspace(-1000.0, -87.34, 100_001).astype(np.float32)
    assert np.all(exp32_np(x) == 0.0)


def test_exp32_stays_in_unit_interval_and_is_monotone():
    x = np.linspace(-87.3, 0.0, 500_001).astype(np.float32)
    y = exp32_np(x)
    assert np.all((y > 0.0) & (y <= 1.0))
    assert np.all(np.diff(y.astype(np.float64)) >= 0.0)


def test_fexp_is_libm_exp_for_float64():
    x = np.linspace(-700.0, 0.0, 10_001)
    out = np.empty_like(x)
    _fexp_all(x, out)
    np.testing.assert_array_equal(out, [math.exp(v) for v in x])


def test_fexp_is_exp32_for_float32():
    x = np.linspace(-87.3, 0.0, 10_001).astype(np.float32)
    out = np.empty_like(x)
    _fexp_all(x, out)
    np.testing.assert_array_equal(out, exp32_np(x))


def test_exp_term_is_exp32_above_the_flush_and_tiny_below():
    x = np.concatenate([np.linspace(-87.33, 0.0, 100_001),
                        [np.nan, -np.nan]]).astype(np.float32)
    out = np.empty_like(x)
    _exp_term_all(x, out)
    np.testing.assert_array_equal(out, exp32_np(x))
    below = np.array([-87.34, -100.0, -1e30, -np.inf, np.finfo(np.float32).min], np.float32)
    out = np.empty_like(below)
    _exp_term_all(below, out)
    assert np.all((out > 0.0) & (out <= 1.2e-38))


# --- block maximum -------------------------------------------------------------------------------


def _max_cases():
    rng = np.random.default_rng(2)
    yield rng.standard_normal(2048).astype(np.float32) * 100
    yield -np.abs(rng.standard_normal(2048)).astype(np.float32)  # all negative
    yield np.abs(rng.standard_normal(77)).astype(np.float32)  # all positive, odd length
    yield np.array([-0.0, -1.0, -np.inf], np.float32)
    yield np.array([-1.0, 0.0, -0.0], np.float32)
    yield np.array([-np.inf, -np.inf], np.float32)
    yield np.array([np.inf, -np.inf, 3.0], np.float32)
    yield np.array([-3.4e38, -1e-45, -2e-45], np.float32)  # subnormals
    yield np.array([5.0], np.float32)
    yield rng.integers(-2**31, 2**31, 4096, dtype=np.int64).astype(np.int32).view(np.float32)
    negative_nan = np.copysign(np.float32(np.nan), np.float32(-1.0))
    yield np.array([1.0, negative_nan, -2.0, 0.5], np.float32)  # NaNs with the sign bit set
    yield np.array([-4.0, negative_nan, -1.5, negative_nan], np.float32)


def _assert_block_max(values, storage, signed):
    """``block_max`` of ``values`` (held as ``storage``) against NumPy's maximum of the values
    that are not NaN; ``signed`` is the integer type of the bit patterns."""
    nan = np.isnan(values.astype(np.float32))
    want = values[~nan].astype(np.float32).max()
    got = _block_max(values.view(storage))
    if nan.any():
        # A NaN may win (the exp-sum propagates it), but only one that the maximum of the bit
        # patterns can pick: a NaN with the sign bit clear (above every other pattern).
        can_win = (values[nan].view(signed) >= 0).any()
        assert got == want or (can_win and np.isnan(got)), (got, want)
    else:
        assert got == want  # (+0.0 and -0.0 compare equal: either may be the maximum of both)


@pytest.mark.parametrize("case", range(len(list(_max_cases()))))
def test_block_max_is_exact(case):
    _assert_block_max(list(_max_cases())[case], np.float32, np.int32)


@pytest.mark.parametrize("fmt", ["bfloat16", "float16"])
@pytest.mark.parametrize("case", range(len(list(_max_cases())) + 1))
def test_block_max_of_half_precision_is_exact(fmt, case):
    """The same cases in the half formats, whose maximum is taken on 16-bit patterns; the last
    case is random 16-bit patterns (NaNs of either sign among them)."""
    storage, real = HALF[fmt]
    if case < len(list(_max_cases())):
        with np.errstate(over="ignore", invalid="ignore"):  # -3.4e38 to -inf, NaNs kept
            values = list(_max_cases())[case].astype(real)
    else:
        bits = np.random.default_rng(4).integers(-2**15, 2**15, 4096).astype(np.int16)
        values = bits.view(real)
    _assert_block_max(values, storage, np.int16)


@pytest.mark.parametrize("fmt", ["bfloat16", "float16"])
def test_block_max_of_half_precision_storage(fmt):
    storage, real = HALF[fmt]
    values = np.random.default_rng(3).standard_normal(3000).astype(real)
    values[:5] = [-0.0, -np.inf, 0.0, -1.0, 2.0]
    assert _block_max(values.view(storage)) == values.astype(np.float32).max()
    negative = -np.abs(values[5:])
    assert _block_max(negative.view(storage)) == negative.astype(np.float32).max()


# --- half-precision loads and stores -------------------------------------------------------------

@pytest.mark.parametrize("fmt", list(HALF))
def test_load_every_bit_pattern(fmt):
    storage, real = HALF[fmt]
    src = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(storage)
    out = np.empty(src.size, np.float32)
    _load_all(src, out)
    want = src.view(real).astype(np.float32)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(out), nan)
    np.testing.assert_array_equal(out[~nan].view(np.uint32), want[~nan].view(np.uint32))


def _float32_cases():
    """Random bit patterns (every sign, exponent and payload), plus the hard cases."""
    rng = np.random.default_rng(1)
    random_bits = rng.integers(0, 2**32, 1_000_000, dtype=np.uint64).astype(np.uint32)
    hi = rng.integers(0, 2**16, 20_000, dtype=np.uint64).astype(np.uint32) << 16
    ties = np.concatenate([hi | 0x8000, hi | 0x7FFF, hi | 0x8001])  # bfloat16 ties and neighbours
    f16_ties = (np.arange(-65504, 65504, 0.5, dtype=np.float16).astype(np.float32)
                + np.float32(2.0**-12))  # values between float16 neighbours
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504.0, 65520.0, 65519.99,
                        np.finfo(np.float32).max, -np.finfo(np.float32).max,
                        np.finfo(np.float32).tiny, 1e-45, 6e-8, 3e-8, 2.98e-8, 1.0 + 2**-8,
                        1.0 + 3 * 2**-8, 1.0 + 2**-11, 1.0 + 3 * 2**-11], np.float32)
    nan_payloads = np.array([0x7F800001, 0x7FFFFFFF, 0xFF800001, 0x7F80FFFF, 0xFFC00000],
                            np.uint32).view(np.float32)
    return np.concatenate([random_bits.view(np.float32), ties.view(np.float32), f16_ties,
                           special, nan_payloads])


@pytest.mark.parametrize("fmt", list(HALF))
def test_store_rounds_to_nearest_even(fmt):
    storage, real = HALF[fmt]
    values = _float32_cases()
    dst = np.empty(values.size, storage)
    _store_all(values, dst)
    with np.errstate(over="ignore", invalid="ignore"):
        want = values.astype(real).view(storage)
    nan = np.isnan(values)
    got_nan = np.isnan(dst.view(real).astype(np.float32))
    np.testing.assert_array_equal(got_nan, nan)  # NaN stays NaN, whatever its payload
    np.testing.assert_array_equal(dst[~nan], want[~nan])  # the rest bit for bit


@pytest.mark.parametrize("fmt", list(HALF))
def test_store_then_load_round_trip(fmt):
    storage, real = HALF[fmt]
    src = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(storage)
    values = np.empty(src.size, np.float32)
    _load_all(src, values)
    back = np.empty_like(src)
    _store_all(values, back)
    finite = ~np.isnan(values)
    np.testing.assert_array_equal(back[finite], src[finite])
    assert np.isnan(back[~finite].view(real).astype(np.float32)).all()
    inf_bits = np.array([np.inf, -np.inf], np.float32).astype(real).view(storage)
    assert np.isin(inf_bits, back).all()
