"""fastxent.losses.cross_entropy: every option and dtype against the float64 oracle
(conftest.oracle) and against backend="numpy", for the "cpu" and "numpy" backends, at the
tolerances of docs/design.md#exactness.

Compilation is the cost here (one Numba compilation per combination of logits dtype, targets kind,
weight, soft-cap, forward/fused and row/chunk path), so the full option matrix runs on float32
and the other dtypes on a few combinations that ``test_torch_parity`` shares.
"""

import math

import numpy as np
import pytest
import scipy.special
from conftest import (BACKENDS, BF16, F16, F32, F64, ROUNDING, assert_fused_matches_oracle,
                      assert_grad_close, assert_loss_close, bits, dtype_id, oracle, random_logits,
                      random_probs, random_targets, random_weight, to64)
from hypothesis import example, given, settings
from hypothesis import strategies as st

import fastxent as fx
from fastxent import config
from fastxent.kernels import cpu as cpu_backend

# More than one BLOCK per row, so the streaming merge of blocks runs in every test.
N, V = 9, config.BLOCK + 77


def run_both(logits, targets, backend, **options):
    """cross_entropy and cross_entropy_with_grad with the same options; the two losses agree
    (within the tolerance: the fused kernel sums the same terms in another order)."""
    grad_output = options.pop("grad_output", 1.0)
    loss = fx.cross_entropy(logits, targets, backend=backend, **options)
    fused, grad = fx.cross_entropy_with_grad(logits, targets, backend=backend,
                                             grad_output=grad_output, **options)
    assert_loss_close(fused, loss, logits.dtype)
    return loss, fused, grad


def check_against_oracle(logits, targets, backend, dtype=None, cross_check=True, **options):
    """Forward and fused results of ``backend`` against the oracle and against backend="numpy"
    (unless ``cross_check`` is False)."""
    dtype = logits.dtype if dtype is None else dtype
    loss, fused, grad = run_both(logits, targets, backend, **options)
    want_loss, want_grad = oracle(logits, targets, **options)
    assert_loss_close(loss, want_loss, dtype)
    assert_loss_close(fused, want_loss, dtype)
    assert_grad_close(grad, want_grad, dtype)
    if backend != "numpy" and cross_check:
        ref_loss, ref_grad = fx.cross_entropy_with_grad(logits, targets, backend="numpy", **options)
        assert_loss_close(loss, ref_loss, dtype)
        # two independent roundings to the gradient's format: one unit apart at most
        np.testing.assert_allclose(to64(grad), to64(ref_grad), rtol=2 * ROUNDING[np.dtype(dtype)],
                                   atol=2e-6)
    return loss, grad


def make_targets(rng, kind, logits, ignore_index=-100):
    if kind == "index":
        return random_targets(rng, logits.shape[:-1], logits.shape[-1], ignore_index)
    return random_probs(rng, logits.shape, logits.dtype)


EXTRAS = {
    "plain": {},
    "smooth": {"label_smoothing": 0.1},
    "zloss": {"z_loss": 1e-3},
    "smooth+zloss": {"label_smoothing": 0.3, "z_loss": 0.05},
}


# --- the option matrix, float32 ------------------------------------------------------------------


@pytest.mark.parametrize("extra", list(EXTRAS))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("softcap", [None, 4.0], ids=["nocap", "cap"])
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_option_matrix(rng, backend, kind, weighted, softcap, reduction, extra):
    logits = random_logits(rng, (N, V), F32)
    targets = make_targets(rng, kind, logits)
    options = dict(EXTRAS[extra], reduction=reduction, softcap=softcap,
                   weight=random_weight(rng, V) if weighted else None)
    check_against_oracle(logits, targets, backend, **options)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    lead=st.lists(st.integers(0, 5), min_size=0, max_size=2),
    n_classes=st.one_of(st.integers(1, 40), st.integers(config.BLOCK - 3, config.BLOCK + 40)),
    scale=st.sampled_from([0.01, 1.0, 10.0, 100.0]),
    kind=st.sampled_from(["index", "prob"]),
    weighted=st.booleans(),
    softcap=st.sampled_from([None, 1.0, 30.0]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    smoothing=st.sampled_from([0.0, 0.05, 1.0]),
    z_loss=st.sampled_from([0.0, 1e-4, 0.5]),
    ignore_index=st.sampled_from([-100, -1, 0]),
)
# a saturated soft-cap (logits ~100, cap 30) with a large z-loss term: the slope of the cap must
# keep its relative precision (it lost 5e-6 when taken from the float32 capped value)
@example(seed=1, lead=[], n_classes=2, scale=100.0, kind="index", weighted=False, softcap=30.0,
         reduction="mean", smoothing=0.0, z_loss=0.5, ignore_index=-100)
def test_float32_random_against_oracle(seed, lead, n_classes, scale, kind, weighted, softcap,
                                       reduction, smoothing, z_loss, ignore_index):
    rng = np.random.default_rng(seed)
    lead = tuple(lead)
    logits = random_logits(rng, lead + (n_classes,), F32, scale)
    if kind == "index":
        targets = random_targets(rng, lead, n_classes, ignore_index)
        if ignore_index == 0:  # also ignore a class that exists
            targets = np.where(targets == -100, 0, targets)
    else:
        targets = random_probs(rng, logits.shape, F32)
    weight = random_weight(rng, n_classes) if weighted else None
    grad_output = rng.standard_normal(lead) if reduction == "none" else rng.uniform(-2, 2)
    options = dict(reduction=reduction, ignore_index=ignore_index, weight=weight,
                   label_smoothing=smoothing, z_loss=z_loss, softcap=softcap)
    loss, fused, grad = run_both(logits, targets, "cpu", grad_output=grad_output, **options)
    want_loss, want_grad = oracle(logits, targets, grad_output=grad_output, **options)
    # atol: with one class and label smoothing the loss is 0 up to the cancellation of lse·Σw
    # against Σw·y, where relative error means nothing
    assert_loss_close(loss, want_loss, F32, atol=1e-6)
    # the gradient scales with |grad_output| (up to 2 here) and with the z-loss term 2·z·lse,
    # which reaches ~50 at this scale: float32 rounding then adds a relative error
    scale_g = max(1.0, float(np.max(np.abs(grad_output), initial=0.0)))
    assert_grad_close(grad, want_grad, F32, atol=1e-6 * scale_g, rtol=1e-6)


# --- other dtypes: defaults and a few combinations -----------------------------------------------

COMBO = dict(label_smoothing=0.1, z_loss=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [F64, F16, BF16], ids=dtype_id)
def test_other_dtypes_defaults(rng, dtype, backend):
    logits = random_logits(rng, (N, V), dtype)
    targets = random_targets(rng, (N,), V, ignore_index=-100)
    for reduction in ("mean", "sum", "none"):
        check_against_oracle(logits, targets, backend, reduction=reduction)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [F64, F16, BF16], ids=dtype_id)
def test_other_dtypes_weight_smoothing_ignore(rng, dtype, backend):
    logits = random_logits(rng, (N, V), dtype)
    targets = random_targets(rng, (N,), V, ignore_index=3)
    weight = random_weight(rng, V)
    for reduction in ("mean", "sum", "none"):
        assert_fused_matches_oracle(logits, targets, dtype, backend, **COMBO,
                                    reduction=reduction, weight=weight, ignore_index=3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [F64, BF16], ids=dtype_id)
def test_other_dtypes_probability_targets(rng, dtype, backend):
    logits = random_logits(rng, (N, V), dtype)
    targets = random_probs(rng, logits.shape, dtype)
    for reduction in ("mean", "none"):
        assert_fused_matches_oracle(logits, targets, dtype, backend, **COMBO,
                                    reduction=reduction)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [F64, F16], ids=dtype_id)
def test_other_dtypes_softcap(rng, dtype, backend):
    logits = random_logits(rng, (N, V), dtype, scale=10.0)
    targets = random_targets(rng, (N,), V)
    assert_fused_matches_oracle(logits, targets, dtype, backend, softcap=5.0)


def test_float32_probability_targets_of_another_dtype(rng):
    """Probability targets need not share the logits' dtype (here float64)."""
    logits = random_logits(rng, (N, V), F32)
    for tdtype in (F64,):
        targets = random_probs(rng, logits.shape, tdtype)
        assert_fused_matches_oracle(logits, targets, F32, label_smoothing=0.2)


# --- shapes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lead", [(), (6,), (2, 3), (2, 1, 3)], ids=str)
def test_leading_shapes(rng, backend, lead):
    logits = random_logits(rng, lead + (V,), F32)
    targets = random_targets(rng, lead, V)
    for reduction in ("mean", "sum", "none"):
        loss, grad = check_against_oracle(logits, targets, backend, reduction=reduction,
                                          weight=random_weight(rng, V), label_smoothing=0.1)
        assert grad.shape == logits.shape
        if reduction == "none":
            assert loss.shape == lead
    # probability targets keep the leading shape too
    probs = random_probs(rng, logits.shape, F32)
    loss, grad = check_against_oracle(logits, probs, backend, reduction="none")
    assert loss.shape == lead


@pytest.mark.parametrize("backend", BACKENDS)
def test_unbatched_target_as_python_int(backend):
    logits = np.array([2.0, 1.0, 0.1], dtype=np.float32)
    want = math.log(math.exp(2.0) + math.exp(1.0) + math.exp(np.float32(0.1))) - 2.0
    assert fx.cross_entropy(logits, 0, backend=backend) == pytest.approx(want, rel=1e-6)
    loss = fx.cross_entropy(logits, np.int32(0), reduction="none", backend=backend)
    assert loss.shape == () and loss.dtype == F32


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_targets_of_any_width(rng, backend):
    logits = random_logits(rng, (N, 100), F32)
    t64 = random_targets(rng, (N,), 100)
    want = fx.cross_entropy(logits, t64, backend=backend, reduction="none")
    for dt in (np.int8, np.uint8, np.int16, np.int32, np.uint32, np.uint64):
        got = fx.cross_entropy(logits, t64.astype(dt), backend=backend, reduction="none",
                               ignore_index=-1)
        np.testing.assert_array_equal(got, want)


def test_return_types(rng):
    logits = random_logits(rng, (N, 50), F32)
    targets = random_targets(rng, (N,), 50)
    for dtype, want in ((F32, F32), (F64, F64), (BF16, F32), (F16, F32)):
        x = logits.astype(dtype)
        assert type(fx.cross_entropy(x, targets)) is float
        assert type(fx.cross_entropy(x, targets, reduction="sum")) is float
        loss, grad = fx.cross_entropy_with_grad(x, targets, reduction="none")
        assert loss.dtype == want and grad.dtype == dtype


def test_backend_auto_is_cpu(rng):
    logits = random_logits(rng, (N, V), F32)
    targets = random_targets(rng, (N,), V)
    auto = fx.cross_entropy_with_grad(logits, targets)
    cpu = fx.cross_entropy_with_grad(logits, targets, backend="cpu")
    assert auto[0] == cpu[0] and bits(auto[1]) == bits(cpu[1])


# --- options in detail ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ignore_index", [-100, -1, 0, 5])
def test_ignore_index_values(rng, backend, ignore_index):
    logits = random_logits(rng, (20, 30), F32)
    targets = random_targets(rng, (20,), 30, ignore_index=ignore_index, ignore_fraction=0.4)
    for reduction in ("mean", "none"):
        loss, grad = check_against_oracle(logits, targets, backend, reduction=reduction,
                                          ignore_index=ignore_index, z_loss=0.01)
        ignored = targets == ignore_index
        assert ignored.any()
        assert not np.any(grad[ignored])
        if reduction == "none":
            assert not np.any(loss[ignored])


@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_and_zero_weights(rng, backend):
    """Negative class weights are legal (PyTorch accepts them) and enter every formula."""
    logits = random_logits(rng, (N, 60), F32)
    targets = random_targets(rng, (N,), 60)
    weight = rng.uniform(-1.0, 2.0, 60)
    weight[targets[0]] = 0.0
    for reduction in ("mean", "sum", "none"):
        check_against_oracle(logits, targets, backend, reduction=reduction, weight=weight,
                             label_smoothing=0.2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_weights_and_lists(rng, backend):
    logits = random_logits(rng, (N, 5), F32)
    targets = random_targets(rng, (N,), 5)
    want = fx.cross_entropy(logits, targets, weight=np.array([1.0, 2, 3, 4, 5]), backend=backend)
    assert fx.cross_entropy(logits, targets, weight=[1, 2, 3, 4, 5], backend=backend) == want
    assert fx.cross_entropy(logits, targets, weight=np.arange(1, 6, dtype=np.int32),
                            backend=backend) == want


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_label_smoothing(rng, backend):
    """label_smoothing=1: the target is uniform; the loss is lse - mean(x) whatever the target."""
    logits = random_logits(rng, (N, 40), F32)
    targets = random_targets(rng, (N,), 40)
    loss = fx.cross_entropy(logits, targets, label_smoothing=1.0, reduction="none",
                            backend=backend)
    x = to64(logits)
    want = scipy.special.logsumexp(x, axis=-1) - x.mean(axis=-1)
    np.testing.assert_allclose(loss, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_z_loss_alone(rng, backend):
    """z_loss adds z·lse² per row: the difference of two calls is exactly that term."""
    logits = random_logits(rng, (N, 70), F32, scale=5.0)
    targets = random_targets(rng, (N,), 70, ignore_index=-100)
    valid = targets != -100
    lse = scipy.special.logsumexp(to64(logits), axis=-1)
    base = fx.cross_entropy(logits, targets, reduction="none", backend=backend)
    with_z = fx.cross_entropy(logits, targets, reduction="none", z_loss=0.25, backend=backend)
    np.testing.assert_allclose(to64(with_z) - base, np.where(valid, 0.25 * lse**2, 0.0),
                               rtol=1e-5, atol=1e-5)
    # "mean": the z term is averaged over the non-ignored rows, unweighted
    weight = random_weight(rng, 70)
    m0 = fx.cross_entropy(logits, targets, weight=weight, backend=backend)
    m1 = fx.cross_entropy(logits, targets, weight=weight, z_loss=0.25, backend=backend)
    assert m1 - m0 == pytest.approx(0.25 * np.mean(lse[valid] ** 2), rel=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_softcap_is_applied_first(rng, backend):
    logits = random_logits(rng, (N, 70), F32, scale=30.0)
    targets = random_targets(rng, (N,), 70)
    capped = (10.0 * np.tanh(to64(logits) / 10.0))
    loss = fx.cross_entropy(logits, targets, softcap=10.0, reduction="none", backend=backend)
    want = scipy.special.logsumexp(capped, axis=-1) - capped[np.arange(N), targets]
    np.testing.assert_allclose(loss, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("grad_output", [2.5, -1.0, 0.0, np.float32(0.5), np.array(3.0)],
                         ids=["2.5", "-1", "0", "f32", "array0d"])
def test_grad_output_scalar(rng, backend, reduction, grad_output):
    logits = random_logits(rng, (N, V), F32)
    targets = random_targets(rng, (N,), V, ignore_index=-100)
    want_loss, want_grad = oracle(logits, targets, reduction=reduction, z_loss=0.01,
                                  grad_output=float(grad_output))
    loss, grad = fx.cross_entropy_with_grad(logits, targets, reduction=reduction, z_loss=0.01,
                                            grad_output=grad_output, backend=backend)
    assert_loss_close(loss, want_loss, F32)
    assert_grad_close(grad, want_grad, F32, atol=3e-6)
    if float(grad_output) == 0.0:
        assert not np.any(grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("go_shape", ["full", "broadcast", "scalar"])
def test_grad_output_array_for_none(rng, backend, go_shape):
    lead = (3, 4)
    logits = random_logits(rng, lead + (V,), F32)
    targets = random_targets(rng, lead, V, ignore_index=-100)
    grad_output = {"full": rng.standard_normal(lead), "broadcast": rng.standard_normal((3, 1)),
                   "scalar": 1.75}[go_shape]
    want_loss, want_grad = oracle(logits, targets, reduction="none", label_smoothing=0.1,
                                  grad_output=grad_output)
    loss, grad = fx.cross_entropy_with_grad(logits, targets, reduction="none",
                                            label_smoothing=0.1, grad_output=grad_output,
                                            backend=backend)
    assert_loss_close(loss, want_loss, F32)
    assert_grad_close(grad, want_grad, F32, atol=3e-6)


# --- non-finite logits ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_minus_inf_masks_a_class(rng, backend, smoothing):
    """-inf logits are masked classes (as in PyTorch).

    Bug fixed: the reference's ``rows`` summed ``w·q·y`` over the whole row for integer targets,
    and ``0 · -inf`` made every row holding a -inf NaN.
    """
    logits = random_logits(rng, (N, V), F32)
    targets = random_targets(rng, (N,), V)
    mask = rng.random((N, V)) < 0.3
    mask[:, 2000:V] = True  # a masked run across a block boundary...
    mask[1, : config.BLOCK] = True  # ...and a row whose first block is all masked
    mask[np.arange(N), targets] = False
    logits[mask] = -np.inf
    for reduction in ("mean", "none"):
        loss, grad = check_against_oracle(logits, targets, backend, reduction=reduction,
                                          label_smoothing=smoothing)
        assert np.isfinite(grad).all()
        if smoothing:  # the uniform part of the target puts mass on masked classes: as PyTorch,
            # an infinite loss, and a gradient of -ε/V there (softmax is 0, the target is not)
            assert (np.isinf(loss) if reduction == "mean" else np.isinf(loss).all())
        else:
            assert np.isfinite(loss).all()
            assert np.all(grad[mask] == 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_target_gives_infinite_loss(rng, backend):
    logits = random_logits(rng, (4, 50), F32)
    targets = np.array([1, 2, 3, 4])
    logits[2, 3] = -np.inf
    loss, grad = check_against_oracle(logits, targets, backend, reduction="none")
    assert np.isinf(loss[2]) and np.isfinite(loss[[0, 1, 3]]).all()
    assert np.isfinite(grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", ["first", "middle", "last_block", "whole_row"])
def test_nan_propagates_to_its_row_only(rng, backend, where):
    logits = random_logits(rng, (N, V), F32)
    targets = random_targets(rng, (N,), V)
    row = 4
    cols = {"first": [0], "middle": [1000, 1001], "last_block": [V - 1],
            "whole_row": slice(None)}[where]
    logits[row, cols] = np.nan
    for reduction in ("none", "mean"):
        loss, grad = fx.cross_entropy_with_grad(logits, targets, reduction=reduction,
                                                backend=backend)
        if reduction == "mean":
            assert math.isnan(loss)
            continue
        assert np.isnan(loss[row]) and np.isnan(grad[row]).all()
        others = np.arange(N) != row
        want_loss, want_grad = oracle(logits[others], targets[others], reduction="none")
        assert_loss_close(loss[others], want_loss, F32)
        # "none" with grad_output 1: each row's gradient is p - onehot
        assert_grad_close(grad[others], want_grad, F32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_ignored_row_is_ignored(rng, backend):
    logits = random_logits(rng, (N, 30), F32)
    targets = random_targets(rng, (N,), 30)
    targets[2] = -100
    logits[2, 5] = np.nan
    check_against_oracle(logits, targets, backend, reduction="mean")
    loss, grad = fx.cross_entropy_with_grad(logits, targets, backend=backend)
    assert math.isfinite(loss) and not np.any(grad[2])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_classes", [30, 2 * config.BLOCK], ids=["one_block", "two_blocks"])
def test_nan_among_minus_inf_propagates(backend, n_classes):
    """A NaN in a block whose other logits are all -inf must still make its row NaN.

    Bug fixed: the block maximum is a ``maxnum`` (which ignores NaN); when the rest of the block
    was -inf the block was skipped as empty and the NaN lost.
    """
    logits = np.zeros((2, n_classes), np.float32)
    logits[0, : min(config.BLOCK, n_classes)] = -np.inf  # the whole first block...
    logits[0, 7] = np.nan  # ...but one NaN
    targets = np.array([n_classes - 1, 0])
    loss = fx.cross_entropy(logits, targets, reduction="none", backend=backend)
    assert np.isnan(loss[0]) and loss[1] == pytest.approx(math.log(n_classes), rel=1e-6)
    assert np.isnan(fx.logsumexp(logits, backend=backend)[0])
    _, grad = fx.cross_entropy_with_grad(logits, targets, backend=backend)
    assert np.isnan(grad[0]).all() and np.isfinite(grad[1]).all()


# --- empty and degenerate batches ----------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("extra", ["plain", "smooth+zloss"])
def test_all_ignored(rng, backend, extra):
    logits = random_logits(rng, (N, V), F32)
    targets = np.full(N, -100)
    weight = random_weight(rng, V)
    opts = dict(EXTRAS[extra], weight=weight)
    mean, gm = fx.cross_entropy_with_grad(logits, targets, backend=backend, **opts)
    assert math.isnan(mean)  # 0 / 0, as PyTorch
    assert math.isnan(fx.cross_entropy(logits, targets, backend=backend, **opts))
    assert not np.any(gm)  # PyTorch's gradient here is zeros too (see test_torch_parity)
    total, gs = fx.cross_entropy_with_grad(logits, targets, reduction="sum", backend=backend,
                                           **opts)
    assert total == 0.0 and type(total) is float and not np.any(gs)
    none, gn = fx.cross_entropy_with_grad(logits, targets, reduction="none", backend=backend,
                                          **opts)
    assert none.shape == (N,) and not np.any(none) and not np.any(gn)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,shape", [
    ("index", (0, 7)), ("prob", (0, 7)), ("index", (2, 0, 7)), ("prob", (2, 0, 7)),
    ("index", (0, 3 * config.MIN_CHUNK)),  # no row, a vocabulary that asks for chunks
], ids=str)
def test_empty_batch(backend, kind, shape):
    logits = np.zeros(shape, np.float32)
    targets = np.zeros(shape[:-1], np.int64) if kind == "index" else np.zeros(shape, np.float32)
    for fn in (fx.cross_entropy, lambda *a, **k: fx.cross_entropy_with_grad(*a, **k)[0]):
        assert math.isnan(fn(logits, targets, backend=backend))
        assert fn(logits, targets, reduction="sum", backend=backend) == 0.0
        none = fn(logits, targets, reduction="none", backend=backend)
        assert none.shape == shape[:-1] and none.dtype == F32
    _, grad = fx.cross_entropy_with_grad(logits, targets, backend=backend, z_loss=0.1)
    assert grad.shape == shape and grad.dtype == F32
    assert fx.logsumexp(logits, backend=backend).shape == shape[:-1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_class(backend):
    logits = np.array([[3.0], [-7.0]], np.float32)
    loss, grad = fx.cross_entropy_with_grad(logits, np.array([0, 0]), reduction="sum",
                                            backend=backend)
    assert loss == 0.0 and not np.any(grad)


# --- in place, out=, layouts ---------------------------------------------------------------------


@pytest.mark.parametrize("kind,dtype", [("index", F32), ("prob", F32), ("index", BF16)],
                         ids=["index-float32", "prob-float32", "index-bfloat16"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_equals_out_of_place(rng, backend, kind, dtype):
    logits = random_logits(rng, (N, V), dtype)
    targets = make_targets(rng, kind, logits)
    opts = dict(label_smoothing=0.1, z_loss=1e-3, weight=random_weight(rng, V))
    want_loss, want_grad = fx.cross_entropy_with_grad(logits, targets, backend=backend, **opts)
    x = logits.copy()
    loss, grad = fx.cross_entropy_with_grad(x, targets, backend=backend, inplace=True, **opts)
    assert grad is x
    assert loss == want_loss
    assert bits(x) == bits(want_grad)


# What each layout of test_inplace_non_contiguous views of a (6, 4, 2V) array.
_LAYOUTS = {
    "fortran": lambda b, v: np.asfortranarray(b[:, 0, :v]).T.T,  # its own F-ordered memory
    "sliced": lambda b, v: b[:, 1, ::2],
    "reversed": lambda b, v: b[::-1, 2, :v],
    "transposed_3d": lambda b, v: b[:, :, :v].transpose(1, 0, 2),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", list(_LAYOUTS))
def test_inplace_non_contiguous(rng, backend, layout):
    """The gradient lands in the caller's (non-contiguous) array, and only there.

    Bug fixed (``transposed_3d``): the gradient of a non-contiguous target went through
    ``np.empty_like(target)``, which keeps the target's memory order, so ``reshape(-1, V)`` of it
    was a copy, the kernel wrote into that temporary and the caller got uninitialised memory.
    """
    base = random_logits(rng, (6, 4, 2 * V), F32)
    view = _LAYOUTS[layout](base, V)
    assert not view.flags.c_contiguous
    targets = random_targets(rng, view.shape[:-1], V)
    want_loss, want_grad = oracle(view, targets)
    ref_loss, ref_grad = fx.cross_entropy_with_grad(view, targets, backend=backend)
    before = base.copy()
    loss, grad = fx.cross_entropy_with_grad(view, targets, backend=backend, inplace=True)
    assert grad is view
    assert_loss_close(loss, want_loss, F32)
    assert_grad_close(view, want_grad, F32)
    assert_grad_close(view, ref_grad, F32)
    if np.shares_memory(view, base):  # nothing outside the view was touched
        marker = np.zeros(base.shape, bool)
        _LAYOUTS[layout](marker, V)[...] = True
        np.testing.assert_array_equal(base[~marker], before[~marker])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "sliced", "transposed_3d"])
def test_out_parameter(rng, backend, layout):
    """``out`` receives the gradient and is returned; its layout does not matter.

    Bug fixed (``transposed_3d``): the same ``empty_like`` + ``reshape`` copy as in
    test_inplace_non_contiguous.
    """
    logits = random_logits(rng, (4, 3, V), F32)
    targets = random_targets(rng, (4, 3), V, ignore_index=-100)
    want_loss, want_grad = fx.cross_entropy_with_grad(logits, targets, backend=backend)
    if layout == "contiguous":
        out = np.full(logits.shape, np.nan, F32)
    elif layout == "sliced":
        out = np.full((4, 3, 2 * V), np.nan, F32)[:, :, ::2]
    else:
        out = np.full((3, 4, V), np.nan, F32).transpose(1, 0, 2)
    loss, grad = fx.cross_entropy_with_grad(logits, targets, backend=backend, out=out)
    assert grad is out
    assert loss == want_loss
    np.testing.assert_array_equal(out, want_grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(rng, backend):
    """Transposed and sliced logits, sliced targets, weights and probabilities."""
    base = random_logits(rng, (2 * V, 12), F32)
    logits = base.T[::2, ::2]  # (6, V), no unit stride anywhere
    t_base = random_targets(rng, (12,), V)
    targets = t_base[::2]
    w_base = random_weight(rng, 2 * V)
    weight = w_base[::2]
    assert not (logits.flags.c_contiguous or targets.flags.c_contiguous
                or weight.flags.c_contiguous)
    for reduction in ("mean", "none"):
        check_against_oracle(logits, targets, backend, reduction=reduction, weight=weight,
                             label_smoothing=0.1)
    probs = np.empty((V, 6), F32).T  # a distribution per row, stored column-major
    probs[...] = random_probs(rng, (6, V), F32)
    check_against_oracle(logits, probs, backend, reduction="sum")


def test_read_only_logits(rng):
    """Logits from a read-only buffer (a memory-mapped corpus, say) are read without copying."""
    logits = random_logits(rng, (N, V), F32)
    targets = random_targets(rng, (N,), V)
    want = fx.cross_entropy(logits, targets, backend="cpu")
    logits.flags.writeable = False
    assert fx.cross_entropy(logits, targets, backend="cpu") == want


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_inputs_never_modified(rng, backend, kind):
    logits = random_logits(rng, (N, V), F32)
    targets = make_targets(rng, kind, logits)
    weight = random_weight(rng, V)
    grad_output = rng.standard_normal(N)
    saved = [a.copy() for a in (logits, targets, weight, grad_output)]
    opts = dict(weight=weight, label_smoothing=0.1, z_loss=0.01, softcap=20.0)
    fx.cross_entropy(logits, targets, backend=backend, **opts)
    fx.cross_entropy_with_grad(logits, targets, backend=backend, **opts)
    fx.cross_entropy_with_grad(logits, targets, backend=backend, reduction="none",
                               grad_output=grad_output, **opts)
    fx.cross_entropy_with_grad(logits, targets, backend=backend, out=np.empty_like(logits),
                               **opts)
    fx.logsumexp(logits, backend=backend)
    for a, b in zip((logits, targets, weight, grad_output), saved):
        assert bits(a) == bits(b)


# --- determinism ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,shape", [(F32, (N, V)), (BF16, (N, V)),
                                         (F32, (2, 5 * config.MIN_CHUNK + 11))],
                         ids=["rows-float32", "rows-bfloat16", "chunks-float32"])
def test_deterministic(rng, dtype, shape):
    logits = random_logits(rng, shape, dtype)
    targets = random_targets(rng, shape[:1], shape[1])
    first = fx.cross_entropy_with_grad(logits, targets, backend="cpu", reduction="none")
    for _ in range(3):
        again = fx.cross_entropy_with_grad(logits, targets, backend="cpu", reduction="none")
        assert bits(again[0]) == bits(first[0]) and bits(again[1]) == bits(first[1])
        assert bits(fx.cross_entropy(logits, targets, backend="cpu")) == \
            bits(fx.cross_entropy(logits, targets, backend="cpu"))


# --- extreme values and sizes --------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(16, 3000), (4, 262144)], ids=["rows", "256K"])
def test_extreme_logits(rng, backend, shape):
    """|logits| up to 1e4 in float32 (docs/design.md#exactness), V up to 256K."""
    logits = rng.uniform(-1e4, 1e4, shape).astype(F32)
    targets = random_targets(rng, shape[:1], shape[1])
    logits[0, targets[0]] = 1e4  # a target that is the maximum: a loss near 0
    logits[1, targets[1]] = -1e4  # one far below: a loss near 2e4
    logits[2, :] = np.float32(-9999.5)  # a flat row: log V exactly
    logits[3, : shape[1] // 2] = 1e4  # many ties at the top
    for reduction in ("mean", "sum", "none"):
        check_against_oracle(logits, targets, backend, reduction=reduction)


@pytest.mark.parametrize("n_rows", [1, 2, 3])
def test_chunked_path(rng, n_rows):
    """Few rows and a large vocabulary: rows are cut into chunks whose partials are merged."""
    v = 3 * config.MIN_CHUNK + 1234
    assert cpu_backend.common.plan(n_rows, v)[0] > 1, "this shape should take the chunked path"
    logits = random_logits(rng, (n_rows, v), F32)
    targets = random_targets(rng, (n_rows,), v)
    targets[0] = v - 1  # in the last, partial chunk
    if n_rows > 1:
        targets[1] = 0
    if n_rows > 2:
        targets[2] = -100  # an ignored row among chunked rows
    weight = random_weight(rng, v)
    for reduction in ("mean", "none"):
        check_against_oracle(logits, targets, "cpu", reduction=reduction)
        want_loss, want_grad = oracle(logits, targets, reduction=reduction, weight=weight,
                                      label_smoothing=0.1, z_loss=1e-3)
        loss, grad = fx.cross_entropy_with_grad(logits, targets, reduction=reduction,
                                                weight=weight, label_smoothing=0.1, z_loss=1e-3)
        assert_loss_close(loss, want_loss, F32)
        assert_grad_close(grad, want_grad, F32)
    probs = random_probs(rng, logits.shape, F32)
    loss, grad = fx.cross_entropy_with_grad(logits, probs, backend="cpu")
    want_loss, want_grad = oracle(logits, probs)
    assert_loss_close(loss, want_loss, F32)
    assert_grad_close(grad, want_grad, F32)
    loss, grad = fx.cross_entropy_with_grad(logits, targets, backend="cpu", softcap=2.0)
    want_loss, want_grad = oracle(logits, targets, softcap=2.0)
    assert_loss_close(loss, want_loss, F32)
    assert_grad_close(grad, want_grad, F32)
    # in place, chunks of one row written by different threads
    x = logits.copy()
    fx.cross_entropy_with_grad(x, targets, backend="cpu", inplace=True)
    assert bits(x) == bits(fx.cross_entropy_with_grad(logits, targets, backend="cpu")[1])


@pytest.mark.parametrize("dtype", [F16, BF16], ids=dtype_id)
def test_half_precision_runs_of_rows(rng, dtype):
    """The half-precision fused call gives each task a run of consecutive rows, and computes the
    statistics of a row beside the gradient of the row before it (``softmax._row_pipeline``):
    ignored rows at either end of a run and inside one, a NaN row, a masked block, probability
    targets, and in place equal to out of place."""
    from numba import get_num_threads

    n = 4 * config.TASKS_PER_THREAD * get_num_threads() + 3  # several rows per task
    v = 2 * config.BLOCK + 77
    assert cpu_backend.common.plan(n, v)[0] == 1, "this shape should take whole rows"
    logits = random_logits(rng, (n, v), dtype)
    targets = random_targets(rng, (n,), v)
    targets[[0, 1, 5, n - 1]] = -100
    logits[2, :config.BLOCK] = -np.inf  # a masked block before the target
    targets[2] = v - 1
    logits[3, 7] = np.nan
    weight = random_weight(rng, v)
    for options in ({}, dict(weight=weight, label_smoothing=0.1, z_loss=1e-3, reduction="none")):
        assert_fused_matches_oracle(logits, targets, dtype, **options)
        x = logits.copy()
        fx.cross_entropy_with_grad(x, targets, inplace=True, **options)
        assert bits(x) == bits(fx.cross_entropy_with_grad(logits, targets, **options)[1])
    finite = np.where(np.isfinite(logits), logits, 0).astype(dtype)
    assert_fused_matches_oracle(finite, random_probs(rng, logits.shape, dtype), dtype)


def test_chunked_path_non_finite():
    """Masked (-inf) chunks, a NaN row and an ignored NaN row in the chunked path."""
    v = 3 * config.MIN_CHUNK + 1234
    n_chunks, size = cpu_backend.common.plan(3, v)
    assert n_chunks > 1
    logits = np.linspace(-5, 5, 3 * v).astype(F32).reshape(3, v)
    targets = np.array([v - 1, 3, -100])
    logits[0, :size] = -np.inf  # a whole chunk masked
    logits[0, size + 5] = -np.inf
    logits[1, size + 7] = np.nan
    logits[2, 0] = np.nan
    loss, grad = fx.cross_entropy_with_grad(logits, targets, reduction="none", backend="cpu")
    want_loss, want_grad = oracle(logits, targets, reduction="none")
    assert_loss_close(loss, want_loss, F32)
    assert np.isnan(loss[1]) and np.isnan(grad[1]).all()
    assert_grad_close(grad[[0, 2]], want_grad[[0, 2]], F32)


def test_chunked_path_nan_chunk():
    """A chunk made only of NaN must make its row NaN.

    Bug fixed: such a chunk yields the partial (max=-inf, sum=NaN), and the merge skipped every
    partial whose max was -inf, dropping the NaN.
    """
    v = 3 * config.MIN_CHUNK + 1234
    n_chunks, size = cpu_backend.common.plan(1, v)
    assert n_chunks > 1
    logits = np.zeros((1, v), F32)
    logits[0, :size] = np.nan
    loss, grad = fx.cross_entropy_with_grad(logits, np.array([v - 1]), backend="cpu")
    assert math.isnan(loss)
    assert np.isnan(grad).all()


# --- logsumexp -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [F32, F64, F16, BF16], ids=dtype_id)
@pytest.mark.parametrize("lead", [(), (7,), (2, 3)], ids=str)
def test_logsumexp_against_scipy(rng, backend, dtype, lead):
    logits = random_logits(rng, lead + (V,), dtype, scale=20.0)
    got = fx.logsumexp(logits, backend=backend)
    want = scipy.special.logsumexp(to64(logits), axis=-1)
    assert got.shape == lead
    assert got.dtype == (F64 if dtype == F64 else F32)
    tol = 1e-12 if dtype == F64 else 1e-6
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logsumexp_non_finite_rows(backend):
    inf, nan = np.inf, np.nan
    rows = [
        [-inf, -inf, -inf, -inf],  # -inf
        [inf, 0.0, 1.0, -inf],  # +inf
        [-inf, inf, -inf, -inf],
        [0.0, nan, 1.0, 2.0],  # NaN
        [nan, nan, nan, nan],
        [-inf, 3.0, -inf, 1e4],
        [-1e4, -1e4, -inf, -1e4],
    ]
    logits = np.array(rows, F32)
    got = fx.logsumexp(logits, backend=backend)
    with np.errstate(invalid="ignore"):
        want = scipy.special.logsumexp(logits.astype(F64), axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)
    assert np.array_equal(np.isnan(got), np.isnan(want))


@pytest.mark.parametrize("backend", BACKENDS)
def test_logsumexp_chunked(rng, backend):
    v = 3 * config.MIN_CHUNK + 1234
    logits = random_logits(rng, (2, v), F32, scale=50.0)
    logits[1, : v // 2] = -np.inf
    want = scipy.special.logsumexp(to64(logits), axis=-1)
    np.testing.assert_allclose(fx.logsumexp(logits, backend=backend), want, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logsumexp_empty_class_axis(backend):
    """V == 0 gives -inf per row, as the docstring says.

    Bug fixed: ``logsumexp`` reshaped to ``(-1, 0)`` before checking for V == 0, which NumPy
    refuses for a size-0 array.
    """
    empty = fx.logsumexp(np.zeros((3, 0), F32), backend=backend)
    assert empty.shape == (3,) and np.all(empty == -np.inf)


@pytest.mark.parametrize("dtype", [F32, BF16], ids=dtype_id)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_shift_and_loss_parts(rng, backend, reduction, dtype):
    """shift= scores position i against target i + shift without copying the logits;
    return_z_loss / return_lse give the z-loss term (reduced as the loss) and each row's lse
    (0 for ignored rows), all as the same call on sliced copies gives them."""
    x = random_logits(rng, (3, 6, V), dtype)
    labels = random_targets(rng, (3, 6), V, ignore_index=-100)
    opts = dict(reduction=reduction, z_loss=1e-2, label_smoothing=0.1, softcap=8.0,
                backend=backend, return_z_loss=True, return_lse=True)
    for s in (1, 3):
        go = rng.uniform(0.5, 2.0, (3, 6 - s)) if reduction == "none" else 0.5
        want, want_grad = fx.cross_entropy_with_grad(np.ascontiguousarray(x[:, :-s]),
                                                     labels[:, s:], grad_output=go, **opts)
        got, grad = fx.cross_entropy_with_grad(x, labels, shift=s, grad_output=go, **opts)
        for a, b in zip(got, want):  # (sums over other rows: in another order)
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=0)
        np.testing.assert_array_equal(grad[:, :-s], want_grad)
        assert not to64(grad[:, -s:]).any()
        x2 = x.copy()
        got2, g2 = fx.cross_entropy_with_grad(x2, labels, shift=s, grad_output=go, inplace=True,
                                              **opts)
        assert g2 is x2 and bits(x2) == bits(grad)
        forward = fx.cross_entropy(x, labels, shift=s, **opts)
        for a, b in zip(forward, want):
            assert_loss_close(a, b, dtype)
    lse = fx.cross_entropy(x, labels, reduction=reduction, backend=backend, return_lse=True)[1]
    want_lse = fx.logsumexp(x, backend=backend)
    np.testing.assert_array_equal(lse, np.where(labels >= 0, want_lse, 0.0).astype(lse.dtype))
