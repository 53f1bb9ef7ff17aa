"""The vectorising float32 logarithms of ``fastxent/kernels/cpu/logs.py`` against float64, in ulps
of the float32 result, over their whole ranges (and their special values)."""

import numpy as np
import pytest
from numba import njit

from fastxent.kernels.cpu import logs as _logs

_FLAGS = dict(fastmath={"reassoc", "contract", "nsz"}, error_model="numpy")


@njit(**_FLAGS)
def _log(a, out):
    for i in range(a.size):
        out[i] = _logs.flog(a[i])


@njit(**_FLAGS)
def _log1p(a, out):
    for i in range(a.size):
        out[i] = _logs.flog1p(a[i])


def run(kernel, a):
    out = np.empty_like(a)
    kernel(a, out)
    return out


def ulps(got, want):
    spacing = np.spacing(np.abs(want.astype(np.float32))).astype(np.float64)
    return np.max(np.abs(got.astype(np.float64) - want) / spacing)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_log32_within_two_ulps(rng):
    z = np.concatenate([np.exp(rng.uniform(-103, 88, 100_000)), rng.uniform(0, 2, 50_000),
                        1 + rng.uniform(-1e-6, 1e-6, 5_000)]).astype(np.float32)
    assert ulps(run(_log, z), np.log(z.astype(np.float64))) <= 2.0
    special = np.array([0, np.inf, np.nan, -1, 1e-45, 1], np.float32)
    got = run(_log, special)
    np.testing.assert_array_equal(got[[0, 1, 5]], [-np.inf, np.inf, 0.0])
    assert np.isnan(got[2]) and np.isnan(got[3])
    assert got[4] == pytest.approx(np.log(np.float64(special[4])), rel=1e-6)  # a subnormal


def test_log1p32_within_two_ulps_and_keeps_tiny_arguments(rng):
    u = np.concatenate([rng.uniform(-0.5, 1, 100_000), np.exp(rng.uniform(-100, 0, 50_000)),
                        -np.exp(rng.uniform(-100, np.log(0.5), 50_000))]).astype(np.float32)
    assert ulps(run(_log1p, u), np.log1p(u.astype(np.float64))) <= 2.0
    assert run(_log1p, np.array([1e-30], np.float32))[0] == np.float32(1e-30)


def test_float64_goes_to_libm():
    x = np.array([0.5, 1e-300, 3.0])
    np.testing.assert_array_equal(run(_log, x), np.log(x))
    np.testing.assert_array_equal(run(_log1p, x), np.log1p(x))
