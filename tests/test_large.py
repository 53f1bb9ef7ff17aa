"""64-bit indexing (docs/design.md#64-bit-indexing).

bfloat16 logits of just over 2^31 elements (4.3 GB), built with ``np.zeros`` plus a few set
entries so that the expected loss and gradient are known in closed form; the gradient is written
in place, so the peak memory is the logits themselves. Checks run slab by slab on the raw bits to
keep temporaries small.
"""

import math

import ml_dtypes
import numpy as np
import pytest

import fastxent as fx
from fastxent.kernels import cpu as cpu_backend

BF16 = np.dtype(ml_dtypes.bfloat16)
pytestmark = pytest.mark.slow

SLAB = 1 << 27  # elements per slab when checking (256 MiB of bfloat16)


def _available_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@pytest.fixture(autouse=True)
def enough_memory():
    avail = _available_bytes()
    if avail is not None and avail < 7 * 2**30:
        pytest.skip(f"needs about 5 GiB free memory, {avail / 2**30:.1f} GiB available")


def bf16_bits(value):
    return int(np.array(value, np.float32).astype(BF16).view(np.uint16))


def bf16_value(bits):
    return float(np.array(bits, np.uint16).view(BF16).astype(np.float64))


def check_gradient_bits(g16, targets, background, on_target, rows_per_slab):
    """Every element of the (N, V) uint16 view is ``background`` except ``g16[i, targets[i]]``,
    which is ``on_target``. Overwrites the target entries while checking."""
    n = g16.shape[0]
    for lo in range(0, n, rows_per_slab):
        hi = min(n, lo + rows_per_slab)
        slab = g16[lo:hi]
        rows = np.arange(hi - lo)
        cols = targets[lo:hi]
        assert np.all(slab[rows, cols] == on_target), f"target entries in rows {lo}..{hi}"
        slab[rows, cols] = background
        wrong = np.flatnonzero(slab != background)
        assert wrong.size == 0, (f"{wrong.size} unexpected values in rows {lo}..{hi}, first at "
                                 f"{np.unravel_index(wrong[0], slab.shape)}")


def test_many_rows_beyond_2_31_elements():
    """Row path: (67109, 32000) rows; the last rows start beyond element 2^31."""
    v = 32_000
    n = 2**31 // v + 2
    assert n * v > 2**31 and (n - 1) * v > 2**31 - 1
    logits = np.zeros((n, v), BF16)
    targets = (np.arange(n, dtype=np.int64) * 7919) % v
    last = n - 1
    targets[last] = 5
    logits[last, 5] = 2.0  # the last row: one logit of 2, the rest 0
    logits[last, 6] = -np.inf  # and one masked class

    # per-row losses (forward), in closed form
    z_last = (v - 2) + math.exp(2.0)
    loss_zero_row = math.log(v)
    loss_last = math.log(z_last) - 2.0
    loss = fx.cross_entropy(logits, targets, reduction="none", backend="cpu")
    assert loss.shape == (n,)
    np.testing.assert_allclose(loss[:-1], loss_zero_row, rtol=1e-6)
    assert loss[last] == pytest.approx(loss_last, rel=1e-6)

    # fused, in place: the gradient overwrites the 4.3 GB of logits
    mean, grad = fx.cross_entropy_with_grad(logits, targets, backend="cpu", inplace=True)
    assert grad is logits
    assert mean == pytest.approx(((n - 1) * loss_zero_row + loss_last) / n, rel=1e-6)

    g16 = logits.view(np.uint16)
    background = g16[0, (targets[0] + 1) % v]
    on_target = g16[0, targets[0]]
    # the values themselves, within one bfloat16 rounding
    assert bf16_value(background) == pytest.approx(1.0 / v / n, rel=2**-8)
    assert bf16_value(on_target) == pytest.approx((1.0 / v - 1.0) / n, rel=2**-8)
    # the last row, beyond element 2^31, written where it belongs
    last_row = g16[last].view(BF16).astype(np.float64)
    p = np.full(v, 1.0 / z_last)
    p[5] = math.exp(2.0) / z_last
    p[6] = 0.0
    p[5] -= 1.0
    np.testing.assert_allclose(last_row, p / n, rtol=2**-8, atol=0)
    # and everything else is the same two values
    g16[last] = background
    targets[last] = 0
    g16[last, 0] = on_target
    check_gradient_bits(g16, targets, background, on_target, rows_per_slab=SLAB // v)


def test_one_row_beyond_2_31_classes():
    """Chunked path: a single row of 2^31 + 2^15 classes; class indices beyond 2^31."""
    v = 2**31 + 2**15
    assert cpu_backend.common.plan(1, v)[0] > 1
    logits = np.zeros((1, v), BF16)
    target = v - 1
    logits[0, target] = 3.0
    logits[0, 0] = -np.inf
    z = (v - 2) + math.exp(3.0)
    want_loss = math.log(z) - 3.0
    loss, grad = fx.cross_entropy_with_grad(logits, np.array([target]), backend="cpu",
                                            inplace=True)
    assert grad is logits
    assert loss == pytest.approx(want_loss, rel=1e-6)

    g16 = logits.view(np.uint16)[0]
    want = {
        "background": 1.0 / z,
        "target": math.exp(3.0) / z - 1.0,
        "masked": 0.0,
    }
    background = g16[1]
    assert bf16_value(background) == pytest.approx(want["background"], rel=2**-8)
    assert bf16_value(g16[target]) == pytest.approx(want["target"], rel=2**-8)
    assert g16[0] == 0  # +0.0: exp(-inf) is exactly 0
    g16[target] = background
    g16[0] = background
    for lo in range(0, v, SLAB):
        wrong = np.flatnonzero(g16[lo:lo + SLAB] != background)
        assert wrong.size == 0, f"unexpected gradient values from element {lo + wrong[0]}"
