"""The cross-entropy family: binary cross-entropy on logits (and its gradient) and on
probabilities, cross-entropy from probabilities, entropy and KL divergence — against PyTorch
(float64 on the same values), scikit-learn's ``log_loss`` and SciPy, on random inputs with
extreme logits (±1e4) and probabilities of exactly 0 and 1, both host backends, every dtype."""

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
from conftest import BACKENDS, BF16, DTYPES, F16, F32, F64, dtype_id, random_logits, to64
from hypothesis import example, given, settings
from hypothesis import strategies as st

import fastxent as fx
from fastxent import config

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL = {F32: 1e-6, F16: 1e-6, BF16: 1e-6, F64: 1e-12}
ATOL = {F32: 1e-6, F16: 1e-6, BF16: 1e-6, F64: 1e-12}
ROUND = {F32: 0.0, F64: 0.0, F16: 2.0**-11, BF16: 2.0**-8}  # one rounding of the gradient


def t64(a):
    return torch.from_numpy(to64(a))


def extreme_logits(rng, shape, dtype):
    x = random_logits(rng, shape, F64, scale=5.0)
    if x.size:
        k = max(1, x.size // 10)
        x.flat[rng.integers(0, x.size, k)] = rng.choice([-1e4, 1e4, -90.0, 90.0], k)
    return x.astype(dtype)


def soft_targets(rng, shape, dtype=F32):
    y = rng.random(shape)
    y[rng.random(shape) < 0.4] = 0.0
    y[rng.random(shape) < 0.3] = 1.0
    return y.astype(dtype)


def torch_bce_logits(x, y, weight=None, pos_weight=None, reduction="mean", grad_output=None):
    a = t64(x).requires_grad_()
    loss = F.binary_cross_entropy_with_logits(
        a, t64(y), weight=None if weight is None else t64(weight),
        pos_weight=None if pos_weight is None else t64(pos_weight), reduction=reduction)
    go = torch.ones_like(loss) if grad_output is None else t64(grad_output)
    (loss * go).sum().backward()
    return loss.detach().numpy(), a.grad.numpy()


# --- binary cross-entropy on logits --------------------------------------------------------------


# each new combination of dtype, weights and reduction compiles a kernel: 15 examples keep the
# cold-cache run short while covering them over CI's runs
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 6), v=st.integers(1, 700),
       dtype=st.sampled_from(DTYPES), backend=st.sampled_from(BACKENDS),
       reduction=st.sampled_from(["mean", "sum", "none"]),
       weighting=st.sampled_from(["none", "element", "row", "class", "pos_weight", "both"]))
@example(seed=0, n=2, v=168, dtype=F32, backend="cpu", reduction="none", weighting="both")
def test_bce_with_logits_matches_pytorch(seed, n, v, dtype, backend, reduction, weighting):
    rng = np.random.default_rng(seed)
    x = extreme_logits(rng, (n, v), dtype)
    y = soft_targets(rng, (n, v))
    w = {"element": rng.uniform(0.2, 2, (n, v)), "row": rng.uniform(0.2, 2, (n, 1)),
         "class": rng.uniform(0.2, 2, v), "both": rng.uniform(0.2, 2, v)}.get(weighting)
    pw = rng.uniform(0.2, 4, v) if weighting in ("pos_weight", "both") else None
    go = rng.uniform(0.5, 2, (n, v)) if reduction == "none" else None
    before = x.copy()
    loss, grad = fx.binary_cross_entropy_with_logits_with_grad(
        x, y, weight=w, pos_weight=pw, reduction=reduction, backend=backend,
        grad_output=1.0 if go is None else go)
    np.testing.assert_array_equal(x, before)
    plain = fx.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=pw,
                                                reduction=reduction, backend=backend)
    want, want_grad = torch_bce_logits(x, y, w, pw, reduction, go)
    np.testing.assert_allclose(loss, want, rtol=RTOL[dtype], atol=ATOL[dtype])
    np.testing.assert_allclose(plain, want, rtol=RTOL[dtype], atol=ATOL[dtype])
    assert grad.dtype == dtype and grad.shape == x.shape
    # weights, pos_weight and grad_output scale the gradient past 1: relative as well as absolute
    np.testing.assert_allclose(to64(grad), want_grad, rtol=ROUND[dtype] + RTOL[dtype],
                               atol=ATOL[dtype])
    if reduction == "none":
        assert loss.dtype == (F64 if dtype == F64 else F32) and loss.shape == x.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_bce_with_logits_shapes_in_place_and_out(rng, backend):
    x = extreme_logits(rng, (2, 3, 50), F32)
    y = soft_targets(rng, (2, 3, 50))
    want, want_grad = torch_bce_logits(x, y)
    out = np.empty_like(x)
    _, g = fx.binary_cross_entropy_with_logits_with_grad(x, y, backend=backend, out=out)
    assert g is out
    np.testing.assert_allclose(out, want_grad, atol=1e-6)
    z = x.copy()
    loss, g = fx.binary_cross_entropy_with_logits_with_grad(z, y, backend=backend, inplace=True)
    assert g is z
    np.testing.assert_allclose(z, want_grad, atol=1e-6)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    # booleans as targets, a scalar input, and the empty batch (mean of nothing: NaN)
    assert fx.binary_cross_entropy_with_logits(x, y > 0.5) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(t64(x), t64(y > 0.5))), rel=1e-6)
    assert fx.binary_cross_entropy_with_logits(np.float32(0.0), np.float32(1.0)) == \
        pytest.approx(math.log(2))
    assert math.isnan(fx.binary_cross_entropy_with_logits(np.zeros((0, 4)), np.zeros((0, 4))))


def test_bce_with_logits_bad_input():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"targets has shape \(2, 2\)"):
        fx.binary_cross_entropy_with_logits(x, np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"targets must be in \[0, 1\], got targets\[1, 2\] = 1.5"):
        fx.binary_cross_entropy_with_logits(x, np.array([[0, 1, 0], [0, 0, 1.5]]))
    with pytest.raises(ValueError, match="weight has shape"):
        fx.binary_cross_entropy_with_logits(x, np.zeros((2, 3)), weight=np.ones(4))
    with pytest.raises(TypeError, match="targets has dtype"):
        fx.binary_cross_entropy_with_logits(x, np.zeros((2, 3), dtype="U1"))
    with pytest.raises(ValueError, match="reduction="):
        fx.binary_cross_entropy_with_logits(x, np.zeros((2, 3)), reduction="avg")


# --- binary cross-entropy on probabilities -------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_bce_on_probabilities_matches_pytorch(rng, dtype, backend, reduction):
    p = rng.random((7, 300))
    p.flat[rng.integers(0, p.size, 40)] = rng.choice([0.0, 1.0, 1e-30, 1 - 1e-7], 40)
    p = p.astype(dtype)
    y = soft_targets(rng, (7, 300))
    w = rng.uniform(0.5, 2, 300)
    got = fx.binary_cross_entropy(p, y, weight=w, reduction=reduction, backend=backend)
    want = F.binary_cross_entropy(t64(p), t64(y), weight=t64(w), reduction=reduction).numpy()
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=ATOL[dtype])


def test_bce_with_eps_matches_scikit_learn_log_loss(rng):
    from sklearn.metrics import log_loss
    y = rng.integers(0, 2, 500)
    p = rng.random(500)
    p[:20] = [0.0, 1.0] * 10
    s = rng.uniform(0.5, 2, 500)
    got = fx.binary_cross_entropy(p, y, eps="auto", weight=s, reduction="sum") / s.sum()
    assert got == pytest.approx(log_loss(y, p, sample_weight=s), rel=1e-12)
    keras = fx.binary_cross_entropy(p, y, eps=1e-7)  # Keras' clip
    q = np.clip(p, 1e-7, 1 - 1e-7)
    assert keras == pytest.approx(np.mean(-(y * np.log(q) + (1 - y) * np.log(1 - q))), rel=1e-9)


def test_bce_on_probabilities_bad_input():
    with pytest.raises(ValueError, match=r"probs must be in \[0, 1\], got probs\[1\] = 1.5"):
        fx.binary_cross_entropy(np.array([0.5, 1.5]), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"targets must be in \[0, 1\], got targets\[0\] = -1"):
        fx.binary_cross_entropy(np.array([0.5, 0.5]), np.array([-1.0, 1.0]))
    with pytest.raises(ValueError, match="eps="):
        fx.binary_cross_entropy(np.array([0.5]), np.array([1.0]), eps=0.7)


# --- cross-entropy from probabilities ------------------------------------------------------------


def test_textbook_examples():
    assert round(fx.cross_entropy_from_probs(np.array([0.4, 0.4, 0.2]), 1), 2) == 0.92
    assert round(fx.cross_entropy_from_probs(np.array([0.1, 0.2, 0.7]), 2), 2) == 0.36
    y = np.array([1, 0, 1, 1, 0, 1.0])
    p = np.array([0.9, 0.1, 0.8, 0.7, 0.2, 0.9])
    assert fx.binary_cross_entropy(p, y) == pytest.approx(
        -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    assert round(fx.cross_entropy(np.array([2.0, 1.0, 0.1]), 0), 4) == 0.417


@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")
@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_from_probs_matches_scikit_learn(rng, backend):
    from sklearn.metrics import log_loss
    p = rng.dirichlet(np.ones(6), 200)
    p[:5, 0] = 0.0  # exactly zero probabilities, clipped as scikit-learn does
    t = rng.integers(0, 6, 200)
    t[:5] = 0
    s = rng.uniform(0.5, 2, 200)
    want = log_loss(t, p, sample_weight=s, labels=np.arange(6))
    got = fx.cross_entropy_from_probs(p, t, eps="auto", sample_weight=s, backend=backend)
    assert got == pytest.approx(want, rel=1e-12)
    onehot = np.eye(6)[t]
    assert fx.cross_entropy_from_probs(p, onehot, eps="auto", sample_weight=s,
                                       backend=backend) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_entropy_from_probs_matches_pytorch(rng, dtype, backend):
    p = rng.dirichlet(np.ones(50) * 0.5, (4, 6)).astype(dtype)
    t = rng.integers(0, 50, (4, 6))
    t[0, :2] = -100
    w = rng.uniform(0.5, 2, 50)
    logp = torch.log(t64(p)).clamp(min=-100)  # fastxent's default: the log clamped at -100
    for reduction in ("mean", "sum", "none"):
        want = F.nll_loss(logp.permute(0, 2, 1), torch.from_numpy(t), weight=t64(w),
                          reduction=reduction).numpy()
        got = fx.cross_entropy_from_probs(p, t, weight=w, reduction=reduction, backend=backend)
        np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=ATOL[dtype])
    q = rng.dirichlet(np.ones(50), (4, 6))  # soft targets: PyTorch's probability targets
    want = -(t64(q) * t64(w) * logp).sum(-1).mean().item()
    got = fx.cross_entropy_from_probs(p, q, weight=w, backend=backend)
    assert got == pytest.approx(want, rel=RTOL[dtype], abs=ATOL[dtype])


def test_cross_entropy_from_probs_bad_input():
    p = np.array([[0.5, 0.5], [0.2, 0.8]])
    with pytest.raises(IndexError, match="out of range"):
        fx.cross_entropy_from_probs(p, np.array([0, 2]))
    with pytest.raises(ValueError, match=r"probs must be in \[0, 1\]"):
        fx.cross_entropy_from_probs(p * 3, np.array([[0.5, 0.5], [0.2, 0.8]]))
    with pytest.raises(ValueError, match=r"targets must be >= 0"):
        fx.cross_entropy_from_probs(p, np.array([[1.5, -0.5], [0.2, 0.8]]))
    with pytest.raises(ValueError, match="sample_weight has shape"):
        fx.cross_entropy_from_probs(p, np.array([0, 1]), sample_weight=np.ones(3))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs_reduce_as_pytorch(reduction, backend):
    """Bug: binary_cross_entropy_with_logits of empty arrays, and cross_entropy_from_probs with
    no classes, raised NumPy's reshape error. A mean over nothing is NaN (as PyTorch), a sum 0,
    and a row over no classes sums no terms."""
    empty = np.zeros(0, F32)
    want = F.binary_cross_entropy_with_logits(torch.zeros(0), torch.zeros(0),
                                              reduction=reduction)
    for fn, args in ((fx.binary_cross_entropy_with_logits, (empty, empty)),
                     (fx.binary_cross_entropy, (empty, empty)),
                     (fx.binary_cross_entropy_with_logits, (np.zeros((3, 0)), np.zeros((3, 0))))):
        got = fn(*args, reduction=reduction, backend=backend)
        np.testing.assert_array_equal(np.asarray(got).reshape(-1), want.numpy().reshape(-1))
    loss, grad = fx.binary_cross_entropy_with_logits_with_grad(empty, empty, reduction=reduction,
                                                               backend=backend)
    assert grad.shape == (0,) and grad.dtype == F32
    rows = fx.cross_entropy_from_probs(np.zeros((2, 0)), np.zeros((2, 0)), reduction=reduction,
                                       backend=backend)
    np.testing.assert_array_equal(rows, np.zeros(2) if reduction == "none" else 0.0)
    none = fx.cross_entropy_from_probs(np.zeros((0, 4)), np.zeros(0, int), reduction=reduction,
                                       backend=backend)
    if reduction == "mean":
        assert math.isnan(none)
    else:
        np.testing.assert_array_equal(none, np.zeros(0) if reduction == "none" else 0.0)


# --- entropy and KL ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_entropy_matches_pytorch_and_scipy(rng, dtype, backend):
    x = extreme_logits(rng, (9, 400), dtype)
    got = fx.entropy(x, backend=backend)
    want = torch.distributions.Categorical(logits=t64(x)).entropy().numpy()
    assert got.dtype == (F64 if dtype == F64 else F32)
    np.testing.assert_allclose(got, want, rtol=RTOL[dtype], atol=ATOL[dtype])
    p = rng.dirichlet(np.ones(400) * 0.3, 9)
    p[0, :50] = 0.0
    p = (p / p.sum(-1, keepdims=True)).astype(dtype)
    np.testing.assert_allclose(fx.entropy(p, kind="probs", backend=backend),
                               -scipy.special.xlogy(to64(p), to64(p)).sum(-1), rtol=RTOL[dtype],
                               atol=ATOL[dtype])
    if dtype == F64:  # (scipy normalises the rows, which the rounded halves do not sum to)
        np.testing.assert_allclose(fx.entropy(p, kind="probs"), scipy.stats.entropy(p, axis=-1))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_kl_divergence_matches_pytorch_and_scipy(rng, dtype, backend):
    x = random_logits(rng, (9, 3000), dtype, scale=3.0)
    y = (to64(x) + rng.standard_normal((9, 3000))).astype(dtype)
    y[0, :10] = -np.inf  # Q has no mass where P has some: inf
    want = F.kl_div(F.log_softmax(t64(y), -1), F.log_softmax(t64(x), -1), log_target=True,
                    reduction="none").sum(-1).numpy()
    got = fx.kl_divergence(x, y, backend=backend)
    assert got[0] == np.inf
    # float32 arithmetic: about 1e-7 of the logits' magnitude, absolute
    np.testing.assert_allclose(got[1:], want[1:], rtol=RTOL[dtype], atol=ATOL[dtype] * 10)
    assert fx.kl_divergence(x[1:], y[1:], reduction="mean", backend=backend) == pytest.approx(
        want[1:].mean(), rel=1e-5)
    p = scipy.special.softmax(to64(x), -1).astype(dtype)
    q = scipy.special.softmax(to64(y), -1).astype(dtype)
    got = fx.kl_divergence(p, q, kind="probs", backend=backend)
    p, q = to64(p), to64(q)
    # the logs clamped at -100 (eps=None): Q's underflowed halves give finite terms
    with np.errstate(divide="ignore", invalid="ignore"):
        want = np.sum(np.where(p > 0, p * (np.log(p) - np.maximum(np.log(q), -100)), 0.0), -1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if dtype in (F32, F64):
        np.testing.assert_allclose(got[1:], scipy.special.rel_entr(p, q).sum(-1)[1:],
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kl_divergence_of_masked_classes(rng, backend):
    """Classes masked in P (logits -inf) weigh nothing, whether Q masks them too or not: 0·log 0
    is 0, as in SciPy's ``rel_entr``. (PyTorch's ``kl_div`` gives NaN there.)"""
    v = 2 * config.BLOCK + 100
    x = random_logits(rng, (3, v), F32)
    y = random_logits(rng, (3, v), F32)
    x[0, :5] = -np.inf  # in P alone
    x[1, 100:2 * config.BLOCK] = y[1, 100:2 * config.BLOCK] = -np.inf  # in both, past a block
    x[2, :config.BLOCK] = -np.inf  # a whole block of P
    want = scipy.special.rel_entr(scipy.special.softmax(to64(x), -1),
                                  scipy.special.softmax(to64(y), -1)).sum(-1)
    np.testing.assert_allclose(fx.kl_divergence(x, y, backend=backend), want, rtol=1e-5,
                               atol=1e-6)


def test_entropy_and_kl_bad_input():
    with pytest.raises(ValueError, match="kind="):
        fx.entropy(np.zeros((2, 3)), kind="log")
    with pytest.raises(ValueError, match="same shape"):
        fx.kl_divergence(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"x must be in \[0, 1\]"):
        fx.entropy(np.array([0.5, 1.5]), kind="probs")


# --- speed (checked, not timed): the multi-label kernel stays vectorised -------------------------


def test_many_sigmoids_per_row_agree_across_backends(rng):
    x = extreme_logits(rng, (3, 70_000), F32)  # few rows: cut into chunks over threads
    y = soft_targets(rng, (3, 70_000))
    a = fx.binary_cross_entropy_with_logits_with_grad(x, y, backend="cpu")
    b = fx.binary_cross_entropy_with_logits_with_grad(x, y, backend="numpy")
    assert a[0] == pytest.approx(b[0], rel=1e-6)
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bce_on_probabilities_gradient(rng, backend):
    p = rng.uniform(0.01, 0.99, (6, 40))
    p[0, :4] = [0.0, 1.0, 1e-9, 1 - 1e-9]
    y = soft_targets(rng, (6, 40), F64)
    a = t64(p).requires_grad_()
    F.binary_cross_entropy(a, t64(y), reduction="sum").backward()
    loss, grad = fx.binary_cross_entropy_with_grad(p, y, reduction="sum", backend=backend)
    np.testing.assert_allclose(grad, a.grad.numpy(), rtol=1e-12)
    # clipped: no gradient where the clip holds p
    _, g = fx.binary_cross_entropy_with_grad(p, y, eps=1e-6, backend=backend)
    assert (g[0, :4] == 0).all() and (g[1:] != 0).any()


@pytest.mark.parametrize("kind", [0, 1], ids=["logits", "probs"])
@pytest.mark.parametrize("dtype", [F32, BF16, F64], ids=dtype_id)
def test_out_of_range_count_matches_its_twin(rng, kind, dtype):
    """``binary_outside``, the pass that checks the inputs before an in-place or out= call
    writes: the CPU kernel against ``kernels.reference``, and against the loss kernel's count."""
    from fastxent.core.dtypes import storage_view
    from fastxent.kernels import cpu, reference
    x = rng.uniform(-0.2, 1.2, (7, 300)).astype(dtype)
    y = rng.uniform(-0.1, 1.1, (7, 300)).astype(dtype)
    y[0, :5] = np.nan
    xs, ys = storage_view(x), storage_view(y)
    want = reference.binary_outside(kind, xs, ys)
    assert want > 0
    assert cpu.binary_outside(kind, xs, ys) == want
    assert cpu.binary(kind, xs, ys)[1] == want
    flags = (rng.random((7, 300)) > 0.5)
    assert cpu.binary_outside(0, xs, flags) == reference.binary_outside(0, xs, flags) == 0
