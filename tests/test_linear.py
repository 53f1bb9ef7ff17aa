"""Fused linear cross-entropy (``fx.linear_cross_entropy``, ``fxt.linear_cross_entropy``) against
float64 PyTorch autograd of ``hidden @ weight.T + bias`` followed by ``F.cross_entropy``."""

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastxent as fx
from fastxent.losses import linear as _linear

torch = pytest.importorskip("torch")
fxt = pytest.importorskip("fastxent.torch")
F = torch.nn.functional

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU for torch")

OPTION_SETS = {
    "plain": {},
    "weighted": {"ce_weight": True},
    "smoothing": {"label_smoothing": 0.2},
    "z_loss": {"z_loss": 1e-2},
    "softcap": {"softcap": 2.5},
    "everything": {"ce_weight": True, "label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 4.0},
}
#: loss and gradient tolerance (relative to the largest reference value) for float32 inputs
RTOL32 = 2e-6


def problem(rng, lead=(23,), h=11, v=37, ignored=0.25, bias=True):
    hidden = rng.standard_normal(lead + (h,))
    weight = rng.standard_normal((v, h)) * 0.7
    b = rng.standard_normal(v) if bias else None
    t = rng.integers(0, v, lead)
    t[rng.random(lead) < ignored] = -100
    cw = rng.uniform(0.25, 2.0, v)
    return hidden, weight, b, t, cw


def reference(hidden, weight, b, t, cw, *, reduction="mean", grad_output=1.0, ce_weight=None,
              label_smoothing=0.0, z_loss=0.0, softcap=None):
    """Loss and (g_hidden, g_weight, g_bias) by float64 autograd; the z-loss as fastxent's (and
    Liger-Kernel's): ``z·lse²`` per non-ignored row, averaged over them for a mean."""
    h = torch.tensor(hidden, dtype=torch.float64, requires_grad=True)
    w = torch.tensor(weight, dtype=torch.float64, requires_grad=True)
    bt = None if b is None else torch.tensor(b, dtype=torch.float64, requires_grad=True)
    y = h @ w.T + (0 if bt is None else bt)
    if softcap is not None:
        y = softcap * torch.tanh(y / softcap)
    tt = torch.tensor(t)
    weight_t = torch.tensor(cw) if ce_weight else None
    flat, tf = y.reshape(-1, y.shape[-1]), tt.reshape(-1)
    loss = torch.nn.functional.cross_entropy(flat, tf, weight=weight_t, reduction=reduction,
                                             label_smoothing=label_smoothing)
    if z_loss:
        valid = tf != -100
        zt = z_loss * torch.logsumexp(flat, -1) ** 2 * valid
        loss = loss + {"mean": zt.sum() / valid.sum(), "sum": zt.sum(), "none": zt}[reduction]
    if reduction == "none":
        loss = loss.reshape(tt.shape)
    loss.backward(torch.as_tensor(grad_output, dtype=torch.float64).expand_as(loss))
    grads = (h.grad.numpy(), w.grad.numpy(), None if bt is None else bt.grad.numpy())
    return loss.detach().numpy(), grads


def close(actual, expected, rtol):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-300)
    err = float(np.max(np.abs(actual - expected), initial=0.0)) / scale
    assert err <= rtol, f"relative error {err:.3g} > {rtol:.3g}"


def options(name, cw):
    o = dict(OPTION_SETS[name])
    if o.get("ce_weight"):
        o["ce_weight"] = cw
    return o


# --- NumPy ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, RTOL32)])
@pytest.mark.parametrize("name", OPTION_SETS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_numpy_matches_autograd(rng, name, reduction, dtype, rtol):
    hidden, weight, b, t, cw = problem(rng)
    o = options(name, cw)
    go = rng.uniform(0.5, 2.0, t.shape) if reduction == "none" else 0.75
    ref, ref_grads = reference(hidden, weight, b, t, cw, reduction=reduction, grad_output=go,
                               **{**o, "ce_weight": "ce_weight" in o})
    args = (hidden.astype(dtype), weight.astype(dtype), t, b.astype(dtype))
    # 23 rows, 37 classes: chunks that do not divide them, one chunk, and blocks of classes
    for chunk in (1, 4, None, (4, 10), (23, 36)):
        loss = fx.linear_cross_entropy(*args, reduction=reduction, chunk_size=chunk, **o)
        close(loss, ref, rtol)
        loss, grads = fx.linear_cross_entropy_with_grad(*args, reduction=reduction,
                                                        chunk_size=chunk, grad_output=go, **o)
        close(loss, ref, rtol)
        for g, r in zip(grads, ref_grads):
            assert g.dtype == dtype
            close(g, r, rtol)


def test_negative_class_weights_with_z_loss():
    """Bug: negative class weights made the mean's rescaled z-loss coefficient negative, and the
    chunks passed it back through the user-facing check ('z_loss=-2.5e-05 must be >= 0.0'), then
    dropped it. The chunks call the kernels through an internal entry with checked values."""
    h = np.array([[1, 0], [0, 1]], np.float32)
    w = np.array([[2, 0], [1, 1], [0.1, 0]], np.float32)
    t = np.array([0, 1])
    cw = np.array([-1, 0.5, 1])
    want = fx.cross_entropy(h @ w.T, t, weight=cw, z_loss=1e-4)
    assert round(want, 6) == 0.283028
    for chunk in (None, 1, (2, 2)):
        got = fx.linear_cross_entropy(h, w, t, ce_weight=cw, z_loss=1e-4, chunk_size=chunk)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        _, grads = fx.linear_cross_entropy_with_grad(h, w, t, ce_weight=cw, z_loss=1e-4,
                                                     chunk_size=chunk)
        ref, ref_grads = reference(h.astype(np.float64), w.astype(np.float64), None, t, cw,
                                   ce_weight=True, z_loss=1e-4)
        for g, r in zip(grads, ref_grads):
            if r is not None:
                close(g, r, RTOL32)
    got = fxt.linear_cross_entropy(torch.tensor(h), torch.tensor(w), torch.tensor(t),
                                   ce_weight=torch.tensor(cw), z_loss=1e-4)
    np.testing.assert_allclose(float(got), want, rtol=1e-6)


def _shift_reference(hidden, weight, b, labels, s, **options):
    """The unfused loss of position i against label i + s, on copies."""
    x = hidden[:, :-s] @ weight.T + b
    return fx.cross_entropy_with_grad(x, labels[:, s:], **options)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk", [None, 3, (3, 5)], ids=["default", "rows", "blocks"])
def test_shift_scores_each_position_against_the_next_targets(rng, reduction, chunk):
    """shift= (Cut Cross-Entropy's): hidden (B, T, H) against labels (B, T) shifted by one (or
    more) positions, without copying hidden; the last positions get a zero gradient."""
    hidden, weight, b, _, cw = problem(rng, lead=(3, 7), h=5, v=13)
    labels = rng.integers(0, 13, (3, 7))
    labels[1, 4] = -100
    labels[:, 0] = 99  # never a target under shift: not read, not checked
    for s in (1, 2):
        opts = dict(reduction=reduction, z_loss=1e-3, label_smoothing=0.1)
        (want, want_z, want_lse), g = _shift_reference(hidden, weight, b, labels, s,
                                                       return_z_loss=True, return_lse=True,
                                                       **opts)
        got, (gh, gw, gb) = fx.linear_cross_entropy_with_grad(
            hidden, weight, labels, b, shift=s, chunk_size=chunk, return_z_loss=True,
            return_lse=True, **opts)
        for a, r in zip(got, (want, want_z, want_lse)):
            close(a, r, 1e-12)
        assert np.shape(got[0]) == np.shape(want)
        close(gh[:, :-s], g @ weight, 1e-12)
        assert not gh[:, -s:].any()
        close(gw, np.einsum("btv,bth->vh", g, hidden[:, :-s]), 1e-12)
        x = hidden @ weight.T + b
        loss = fx.cross_entropy(x, labels, shift=s, **opts)
        close(loss, want, 1e-12)


def test_shift_errors(rng):
    hidden, weight, b, _, _ = problem(rng, lead=(3, 7), h=5, v=13)
    labels = rng.integers(0, 13, (3, 7))
    with pytest.raises(ValueError, match=r"shift=7 must be in \[0, 7\)"):
        fx.linear_cross_entropy(hidden, weight, labels, shift=7)
    with pytest.raises(ValueError, match="needs a time axis"):
        fx.linear_cross_entropy(hidden[0, 0], weight, labels[0, 0], shift=1)
    with pytest.raises(TypeError, match="shift must be an integer"):
        fx.linear_cross_entropy(hidden, weight, labels, shift=1.5)
    bad = labels.copy()
    bad[2, 5] = 13
    with pytest.raises(IndexError, match=r"targets\[2, 5\] = 13"):
        fx.linear_cross_entropy(hidden, weight, bad, shift=1)
    with pytest.raises(ValueError, match="shift= takes class-index targets"):
        fx.linear_cross_entropy(hidden, weight, np.full((3, 7, 13), 1 / 13), shift=1)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_probability_targets(rng, reduction):
    """As torch.nn.functional.linear_cross_entropy takes them: soft targets of hidden's shape
    with V last; the mean is over rows; blocks of classes are refused for them."""
    hidden, weight, b, _, cw = problem(rng, lead=(4, 5), h=6, v=11)
    q = rng.dirichlet(np.ones(11), (4, 5))
    opts = dict(reduction=reduction, ce_weight=cw, label_smoothing=0.1, z_loss=1e-3)
    want, g = fx.cross_entropy_with_grad(hidden @ weight.T + b, q, backend="numpy",
                                         **{("weight" if k == "ce_weight" else k): a
                                            for k, a in opts.items()})
    for chunk in (None, 3):
        got, (gh, gw, gb) = fx.linear_cross_entropy_with_grad(hidden, weight, q, b,
                                                              chunk_size=chunk, **opts)
        close(got, want, 1e-12)
        close(gh, g @ weight, 1e-12)
        close(gw, g.reshape(-1, 11).T @ hidden.reshape(-1, 6), 1e-12)
        close(gb, g.reshape(-1, 11).sum(0), 1e-12)
    with pytest.raises(ValueError, match="blocks of classes take class-index targets"):
        fx.linear_cross_entropy(hidden, weight, q, chunk_size=(4, 5))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("chunk", [None, 3, (3, 4)], ids=["default", "rows", "blocks"])
@pytest.mark.parametrize("shift", [0, 1])
def test_torch_parts_shift_and_gradients_match_autograd(rng, reduction, chunk, shift):
    """fxt.linear_cross_entropy's loss, z-loss term and lse (return_z_loss, return_lse), with
    shift, and the gradients of any combination of them (the parts' own through a second walk),
    against float64 autograd through the logits."""
    b_, t_, h_, v_ = 2, 5, 4, 11
    hidden = torch.tensor(rng.standard_normal((b_, t_, h_)), requires_grad=True)
    weight = torch.tensor(rng.standard_normal((v_, h_)), requires_grad=True)
    bias = torch.tensor(rng.standard_normal(v_), requires_grad=True)
    labels = torch.tensor(rng.integers(0, v_, (b_, t_)))
    labels[1, 2] = -100
    cw = torch.tensor(rng.uniform(0.5, 2.0, v_))
    opts = dict(reduction=reduction, z_loss=1e-2, softcap=3.0, ce_weight=cw,
                label_smoothing=0.1)

    def unfused():
        x = hidden @ weight.T + bias
        lab = labels
        if shift:
            x, lab = x[:, :-shift], labels[:, shift:]
        y = (3.0 * torch.tanh(x / 3.0)).reshape(-1, v_)
        flat = lab.reshape(-1)
        ce = F.cross_entropy(y, flat, weight=cw, reduction=reduction, label_smoothing=0.1)
        lse = torch.where(flat != -100, torch.logsumexp(y, -1), 0.0)
        zr = 1e-2 * lse**2
        z = {"mean": zr.sum() / (flat != -100).sum(), "sum": zr.sum(), "none": zr}[reduction]
        shape = lab.shape
        if reduction == "none":
            return (ce + z).reshape(shape), z.reshape(shape), lse.reshape(shape)
        return ce + z, z, lse.reshape(shape)

    got = fxt.linear_cross_entropy(hidden, weight, labels, bias, shift=shift, chunk_size=chunk,
                                   return_z_loss=True, return_lse=True, **opts)
    want = unfused()
    for a, r in zip(got, want):
        torch.testing.assert_close(a, r)
    ups = [torch.tensor(rng.standard_normal(tuple(r.shape))) for r in want]
    for mask in ((1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)):
        outs = [fxt.linear_cross_entropy(hidden, weight, labels, bias, shift=shift,
                                         chunk_size=chunk, return_z_loss=True, return_lse=True,
                                         **opts), unfused()]
        grads = [torch.autograd.grad(sum(m * (u * o).sum() for m, u, o in zip(mask, ups, out)),
                                     (hidden, weight, bias)) for out in outs]
        for a, r in zip(*grads):
            torch.testing.assert_close(a, r)


def test_torch_probability_targets_get_their_gradient(rng):
    """As F.linear_cross_entropy: probability targets that require grad get their gradient
    (a walk of its own), class weights and smoothing included."""
    hidden = torch.tensor(rng.standard_normal((6, 4)), requires_grad=True)
    weight = torch.tensor(rng.standard_normal((9, 4)), requires_grad=True)
    q = torch.tensor(rng.dirichlet(np.ones(9), 6), requires_grad=True)
    cw = torch.tensor(rng.uniform(0.5, 2.0, 9))
    for reduction in ("mean", "sum", "none"):
        got = fxt.linear_cross_entropy(hidden, weight, q, ce_weight=cw, reduction=reduction,
                                       label_smoothing=0.1, chunk_size=4)
        want = F.cross_entropy(hidden @ weight.T, q, weight=cw, reduction=reduction,
                               label_smoothing=0.1)
        torch.testing.assert_close(got, want)
        up = torch.tensor(rng.standard_normal(tuple(want.shape)))
        for a, r in zip(torch.autograd.grad((up * got).sum(), (hidden, weight, q)),
                        torch.autograd.grad((up * want).sum(), (hidden, weight, q))):
            torch.testing.assert_close(a, r)


@pytest.mark.parametrize("name", ["plain", "everything"])
def test_blocks_of_classes_on_the_reference_backend(rng, name):
    """``backend="numpy"``: the blocks' partials and gradients from the float64 twins."""
    hidden, weight, b, t, cw = problem(rng)
    o = options(name, cw)
    ref, ref_grads = reference(hidden, weight, b, t, cw, **{**o, "ce_weight": "ce_weight" in o})
    loss, grads = fx.linear_cross_entropy_with_grad(hidden, weight, t, b, chunk_size=(5, 8),
                                                    backend="numpy", **o)
    close(loss, ref, 1e-12)
    for g, r in zip(grads, ref_grads):
        close(g, r, 1e-12)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 9), v=st.integers(1, 3000), dtype=st.sampled_from(["float32", "float64",
                                                                             "bfloat16"]),
       weighted=st.booleans(), softcap=st.sampled_from([None, 3.0]),
       seed=st.integers(0, 2**32 - 1))
def test_class_kernels_match_their_twins(n, v, dtype, weighted, softcap, seed):
    """``class_partials`` and ``class_grad`` of the CPU backend against ``kernels.reference``,
    on blocks of more than one of the kernels' blocks of columns, targets in and out of them."""
    from fastxent.core.dtypes import decode, storage_view
    from fastxent.kernels import cpu
    from fastxent.kernels import reference as twin
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.standard_normal((n, v)) * 4).to(getattr(torch, dtype))
    x = storage_view(x.view(torch.int16).numpy().view(np.uint16)) if dtype == "bfloat16" \
        else x.numpy()
    w = rng.uniform(0.5, 2.0, v) if weighted else None
    want = twin.class_partials(x, w, softcap, True)
    got = cpu.class_partials(x, w, softcap, True)
    with np.errstate(divide="ignore"):
        lse = [p[:, 0] + np.log(p[:, 1]) for p in (got, want)]
    tol = 1e-12 if dtype == "float64" else 2e-6
    np.testing.assert_allclose(lse[0], lse[1], rtol=tol, atol=tol)
    np.testing.assert_allclose(got[:, 2], want[:, 2], rtol=tol, atol=tol * v)
    # the rows' statistics as if other blocks held more of their mass
    partials = np.stack([want[:, 0], want[:, 1] * rng.uniform(1.0, 4.0, n)], axis=-1)
    t = rng.integers(-1, v, n)
    y = decode(x)  # the targets' logits go in before the soft-cap
    wt = rng.uniform(0.5, 2.0, n)  # the weight of a target in another block
    hit = t >= 0
    wt[hit] = 1.0 if w is None else w[t[hit]]
    terms = np.stack([np.where(hit, y[np.arange(n), np.maximum(t, 0)], 0.0), wt], axis=-1)
    coef = rng.uniform(0.0, 1.0, (n, 3))
    got_g, want_g = x.copy(), x.copy()
    cpu.class_grad(got_g, t, w, softcap, partials, coef, 1.5 * v, terms)
    twin.class_grad(want_g, t, w, softcap, partials, coef, 1.5 * v, terms)
    tol = 1e-12 if dtype == "float64" else (2e-6 if dtype == "float32" else 1e-2)
    # the gradient is a difference of terms up to the coefficients' size, which can cancel
    # (one class: 0.5 - 0.498), so the rounding is that of the terms, not of the difference
    scale = max(np.abs(decode(want_g)).max(), coef.max())
    np.testing.assert_allclose(decode(got_g), decode(want_g), rtol=tol, atol=tol * scale)


def test_leading_dimensions_and_no_bias(rng):
    hidden, weight, _, t, _ = problem(rng, lead=(3, 5, 4), bias=False)
    ref, (rh, rw, _) = reference(hidden, weight, None, t, None)
    loss, (gh, gw, gb) = fx.linear_cross_entropy_with_grad(hidden, weight, t, chunk_size=7)
    assert gb is None and gh.shape == hidden.shape
    close(loss, ref, 1e-12)
    close(gh, rh, 1e-12)
    close(gw, rw, 1e-12)
    losses = fx.linear_cross_entropy(hidden, weight, t, reduction="none", chunk_size=7)
    assert losses.shape == t.shape


def test_equals_the_unfused_functions(rng):
    hidden, weight, b, t, _ = problem(rng, lead=(40,), h=16, v=300)
    h32, w32, b32 = (a.astype(np.float32) for a in (hidden, weight, b))
    logits = h32 @ w32.T + b32
    loss, g = fx.cross_entropy_with_grad(logits, t, label_smoothing=0.1)
    fused, (gh, gw, gb) = fx.linear_cross_entropy_with_grad(h32, w32, t, b32, chunk_size=16,
                                                            label_smoothing=0.1)
    assert fused == pytest.approx(loss, rel=1e-6)
    np.testing.assert_allclose(gh, g @ w32, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gw, g.T @ h32, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gb, g.sum(axis=0), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("reduction,expected", [("mean", np.nan), ("sum", 0.0)])
def test_every_row_ignored(rng, reduction, expected):
    hidden, weight, b, _, _ = problem(rng)
    t = np.full(23, -100)
    for chunk in (None, (4, 10)):
        loss, grads = fx.linear_cross_entropy_with_grad(hidden, weight, t, b, reduction=reduction,
                                                        chunk_size=chunk)
        np.testing.assert_equal(loss, expected)
        for g in grads:
            assert not g.any()


def test_ignored_chunks_cost_no_product(rng, monkeypatch):
    """Only the rows of non-ignored targets reach the matrix product."""
    hidden, weight, b, t, _ = problem(rng, lead=(30,))
    t[:20] = -100
    t[20:] = 1
    seen = []
    logits = _linear._NumpyOps.logits

    def counting(self, hc, w, bias, out):
        seen.append(hc.shape[0])
        logits(self, hc, w, bias, out)

    monkeypatch.setattr(_linear._NumpyOps, "logits", counting)
    fx.linear_cross_entropy_with_grad(hidden, weight, t, b, chunk_size=4)
    assert sum(seen) == 10
    seen.clear()  # blocks of classes: 3 blocks, then 2 recomputed (the last is still there)
    fx.linear_cross_entropy_with_grad(hidden, weight, t, b, chunk_size=(4, 13))
    assert sum(seen) == 10 * (3 + 2)


def test_without_scipy_blas(rng, monkeypatch):
    """NumPy's products, and the weight gradient's accumulation by blocks of classes, when
    scipy is missing."""
    hidden, weight, b, t, _ = problem(rng, v=50)
    expected = fx.linear_cross_entropy_with_grad(hidden, weight, t, b, chunk_size=5)
    monkeypatch.setattr(_linear, "_blas", lambda: None)
    monkeypatch.setattr(_linear._NumpyOps, "BLOCK", 16)
    loss, grads = fx.linear_cross_entropy_with_grad(hidden, weight, t, b, chunk_size=5)
    assert loss == pytest.approx(expected[0], rel=1e-14)
    for g, e in zip(grads, expected[1]):
        np.testing.assert_allclose(g, e, rtol=1e-13, atol=1e-15)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), h=st.integers(1, 24), v=st.integers(1, 70),
       chunk=st.one_of(st.none(), st.integers(1, 50),
                       st.tuples(st.integers(1, 50), st.integers(1, 80))),
       seed=st.integers(0, 2**32 - 1))
def test_random_sizes(n, h, v, chunk, seed):
    """Against float64 autograd, each gradient to float32's precision of the products' terms:
    ``Σ_j G_ij·W_jk`` cancels when the logits' gradient G sums to zero over a row (always, for
    one-hot targets) and the weights of the classes are close, so its error is measured
    against ``Σ_j |G_ij|·|W_jk|``, not against the (small) result."""
    rng = np.random.default_rng(seed)
    hidden, weight, b, t, _ = problem(rng, lead=(n,), h=h, v=v, ignored=0.3)
    ref, ref_grads = reference(hidden, weight, b, t, None, reduction="sum")
    f32 = [a.astype(np.float32) for a in (hidden, weight, b)]
    loss, grads = fx.linear_cross_entropy_with_grad(f32[0], f32[1], t, f32[2], reduction="sum",
                                                    chunk_size=chunk)
    close(loss, ref, RTOL32)
    _, g = fx.cross_entropy_with_grad(hidden @ weight.T + b, t, reduction="sum", backend="numpy")
    terms = (np.abs(g) @ np.abs(weight), np.abs(g).T @ np.abs(hidden), np.abs(g).sum(axis=0))
    for got, r, scale in zip(grads, ref_grads, terms):
        err = np.abs(np.asarray(got, np.float64) - r)
        assert np.all(err <= RTOL32 * max(float(scale.max(initial=0.0)), 1e-300)), (
            err.max(), scale.max())


def test_peak_memory_is_one_chunk():
    """The N×V logits are never allocated: the peak traced allocation stays below the results
    plus a quarter of the logits (the chunk is an eighth of them here)."""
    rng = np.random.default_rng(0)
    n, h, v = 512, 64, 16384
    hidden = rng.standard_normal((n, h), dtype=np.float32)
    weight = rng.standard_normal((v, h), dtype=np.float32)
    t = rng.integers(0, v, n)
    logits_bytes = n * v * 4
    results = (n * h + v * h) * 4
    for chunk, bound in ((64, logits_bytes / 4), ((512, 1024), logits_bytes / 8)):
        fx.linear_cross_entropy_with_grad(hidden, weight, t, chunk_size=chunk)  # compile outside
        tracemalloc.start()
        try:
            fx.linear_cross_entropy_with_grad(hidden, weight, t, chunk_size=chunk)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < results + bound, (chunk, peak, results, logits_bytes)
    tracemalloc.start()
    try:  # the test would see N×V logits: the unfused path goes past the bound
        x = hidden @ weight.T
        fx.cross_entropy_with_grad(x, t, inplace=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak >= logits_bytes


def test_default_chunk_from_budget():
    shape = _linear.chunk_shape
    assert shape(None, 512, 131072, 4, "cpu") == (256, None)  # 128 MiB on the CPU
    assert shape(None, 8192, 131072, 2, "cuda") == (256, None)  # 64 MiB on a GPU
    assert shape(None, 8192, 10**9, 2, "cuda") == (1, None)  # the GPU has no blocks of classes
    # too few whole rows fit: blocks of classes, unless the rows there are fit
    assert shape(None, 4096, 10**9, 4, "cpu") == (256, 131072)
    assert shape(None, 3, 2**22, 4, "cpu") == (8, None)  # 16 MiB rows: 8 fit
    assert shape(None, 30, 2**22, 4, "cpu") == (30, (128 << 20) // 120)
    assert shape(7, 512, 131072, 4, "cpu") == (7, None)
    assert shape((7, 100), 512, 131072, 4, "cpu") == (7, 100)
    assert shape((7, 131072), 512, 131072, 4, "cpu") == (7, None)
    for bad in (0, 2.5, True, (3, 0), (1, 2, 3), "8"):
        with pytest.raises(ValueError, match="chunk_size"):
            shape(bad, 512, 131072, 4, "cpu")


@pytest.mark.parametrize("call,error,match", [
    (lambda h, w, t: fx.linear_cross_entropy(h, w[:, :-1], t), ValueError, "last axis must be H"),
    (lambda h, w, t: fx.linear_cross_entropy(h, w[0], t), ValueError, "must be 2-D"),
    (lambda h, w, t: fx.linear_cross_entropy(h, w, t, np.zeros(3)), ValueError, "bias has shape"),
    (lambda h, w, t: fx.linear_cross_entropy(h.astype(np.float16), w.astype(np.float16), t),
     TypeError, "float32 or float64"),
    (lambda h, w, t: fx.linear_cross_entropy(h.astype(np.int64), w, t), TypeError, "float32"),
    (lambda h, w, t: fx.linear_cross_entropy(h.astype(np.float32), w, t), TypeError, "one dtype"),
    (lambda h, w, t: fx.linear_cross_entropy(h, w, t.astype(float)), ValueError,
     "read as probabilities"),
    (lambda h, w, t: fx.linear_cross_entropy(h, w, t[:-1]), ValueError, "targets has shape"),
    (lambda h, w, t: fx.linear_cross_entropy(h, w, t + 100), IndexError, "out of range"),
    (lambda h, w, t: fx.linear_cross_entropy(h, w, t, chunk_size=0), ValueError, "chunk_size"),
    (lambda h, w, t: fx.linear_cross_entropy(h, w, t, label_smoothing=2), ValueError,
     "label_smoothing"),
    (lambda h, w, t: fx.linear_cross_entropy(h, w, t, reduction="avg"), ValueError, "reduction"),
])
def test_bad_input(rng, call, error, match):
    hidden, weight, _, t, _ = problem(rng, ignored=0.0)
    with pytest.raises(error, match=match):
        call(hidden, weight, t)


def test_gpu_arrays_are_sent_to_the_torch_function(rng):
    hidden, weight, _, t, _ = problem(rng, bias=False)

    class DeviceArray:  # what CuPy and Numba's device arrays export
        __cuda_array_interface__ = {"shape": hidden.shape, "typestr": "<f8", "version": 3,
                                    "data": (0, False)}

    with pytest.raises(TypeError, match="hidden is a GPU array .*fastxent.torch"):
        fx.linear_cross_entropy(DeviceArray(), weight, t)
    with pytest.raises(TypeError, match="weight is a GPU array"):
        fx.linear_cross_entropy_with_grad(hidden, DeviceArray(), t)


def test_inputs_are_not_modified(rng):
    hidden, weight, b, t, _ = problem(rng)
    copies = [a.copy() for a in (hidden, weight, b, t)]
    fx.linear_cross_entropy_with_grad(hidden, weight, t, b, chunk_size=3)
    for a, c in zip((hidden, weight, b, t), copies):
        np.testing.assert_array_equal(a, c)


# --- PyTorch -------------------------------------------------------------------------------------


def torch_run(hidden, weight, b, t, dtype, device="cpu", grad_output=None, **o):
    as_t = lambda a: torch.tensor(a, dtype=dtype, device=device, requires_grad=True)  # noqa: E731
    h, w, bt = as_t(hidden), as_t(weight), (None if b is None else as_t(b))
    if "ce_weight" in o:
        o["ce_weight"] = torch.tensor(o["ce_weight"], dtype=torch.float32, device=device)
    loss = fxt.linear_cross_entropy(h, w, torch.tensor(t, device=device), bt, **o)
    go = torch.ones_like(loss) if grad_output is None else torch.as_tensor(
        grad_output, dtype=dtype, device=device).expand_as(loss)
    loss.backward(go)
    return loss, (h.grad, w.grad, None if bt is None else bt.grad)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, RTOL32)])
@pytest.mark.parametrize("name", ["plain", "everything"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_torch_matches_autograd(rng, name, reduction, dtype, rtol):
    hidden, weight, b, t, cw = problem(rng)
    o = options(name, cw)
    if "ce_weight" in o:  # fxt takes the class weights as float32 here
        o["ce_weight"] = cw.astype(np.float32)
        cw = o["ce_weight"].astype(np.float64)
    go = rng.uniform(0.5, 2.0, t.shape) if reduction == "none" else 0.75
    ref, ref_grads = reference(hidden, weight, b, t, cw, reduction=reduction, grad_output=go,
                               **{**o, "ce_weight": "ce_weight" in o})
    for chunk in (5, (6, 9)):
        loss, grads = torch_run(hidden, weight, b, t, dtype, grad_output=go,
                                reduction=reduction, chunk_size=chunk, **dict(o))
        assert loss.dtype == dtype
        close(loss.detach().numpy(), ref, rtol)
        for g, r in zip(grads, ref_grads):
            assert g.dtype == dtype
            close(g.numpy(), r, rtol)


def test_torch_bfloat16(rng):
    """bfloat16: within the rounding of the bfloat16 products, against float64 autograd of the
    bfloat16-rounded inputs."""
    hidden, weight, b, t, _ = problem(rng, lead=(64,), h=32, v=300)
    rounded = [torch.tensor(a).to(torch.bfloat16).double().numpy() for a in (hidden, weight, b)]
    ref, ref_grads = reference(*rounded, t, None)
    loss, grads = torch_run(*rounded, t, torch.bfloat16, chunk_size=16)
    assert loss.dtype == torch.bfloat16
    close(loss.detach().float().numpy(), ref, 2e-2)
    for g, r in zip(grads, ref_grads):
        close(g.float().numpy(), r, 3e-2)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_torch_bfloat16_accumulated_in_float32(rng, reduction):
    """Many chunks: a bfloat16 weight gradient summed in bfloat16 is rounded once per chunk;
    with accum_dtype=float32 its error is that of a single chunk."""
    hidden, weight, b, t, _ = problem(rng, lead=(1024,), h=64, v=256, ignored=0.0)
    rounded = [torch.tensor(a).to(torch.bfloat16).double().numpy() for a in (hidden, weight, b)]
    _, (_, ref_w, ref_b) = reference(*rounded, t, None, reduction="sum")

    def error(chunk_size, accum_dtype=None):
        _, (_, gw, gb) = torch_run(*rounded, t, torch.bfloat16, chunk_size=chunk_size,
                                   reduction=reduction, accum_dtype=accum_dtype)
        assert gw.dtype == gb.dtype == torch.bfloat16
        return np.array([np.linalg.norm(g.double().numpy() - r) / np.linalg.norm(r)
                         for g, r in ((gw, ref_w), (gb, ref_b))])

    single, per_chunk, once = error(1024), error(8), error(8, torch.float32)
    assert np.all(per_chunk > 1.4 * single)
    assert np.all(once < 1.1 * single)


def test_accum_dtype_checked_and_float32_unchanged(rng):
    hidden, weight, b, t, _ = problem(rng)
    plain = torch_run(hidden, weight, b, t, torch.float32)
    same = torch_run(hidden, weight, b, t, torch.float32, accum_dtype=torch.float32)
    wide = torch_run(hidden, weight, b, t, torch.float32, accum_dtype=torch.float64)
    for g, g_same, g_wide in zip(plain[1], same[1], wide[1]):
        assert torch.equal(g, g_same) and g_wide.dtype == torch.float32
        close(g_wide.numpy(), g.double().numpy(), RTOL32)
    h, w = torch.tensor(hidden), torch.tensor(weight)  # float64
    for bad, match in ((torch.float32, "narrower than the weight's torch.float64"),
                       (torch.bfloat16, "None .the weight's dtype., torch.float32"),
                       ("float32", "accum_dtype"), (torch.int32, "accum_dtype")):
        with pytest.raises(ValueError, match=match):
            fxt.linear_cross_entropy(h, w, torch.tensor(t), accum_dtype=bad)


def test_torch_bfloat16_blocks_of_classes(rng):
    hidden, weight, b, t, _ = problem(rng, lead=(64,), h=32, v=300)
    rounded = [torch.tensor(a).to(torch.bfloat16).double().numpy() for a in (hidden, weight, b)]
    ref, ref_grads = reference(*rounded, t, None)
    loss, grads = torch_run(*rounded, t, torch.bfloat16, chunk_size=(16, 70))
    close(loss.detach().float().numpy(), ref, 2e-2)
    for g, r in zip(grads, ref_grads):
        close(g.float().numpy(), r, 3e-2)


def test_torch_no_grad_and_module(rng):
    hidden, weight, b, t, _ = problem(rng)
    ref, _ = reference(hidden, weight, b, t, None)
    criterion = fxt.LinearCrossEntropyLoss(chunk_size=4)
    with torch.no_grad():
        loss = criterion(torch.tensor(hidden), torch.tensor(weight), torch.tensor(t),
                         torch.tensor(b))
    close(loss.numpy(), ref, 1e-12)
    assert "chunk_size=4" in repr(criterion)


def test_training_matches_unfused():
    """A small language-model head trained for a few steps: the fused loss curve is the
    unfused one."""
    def train(fused):
        torch.manual_seed(0)
        emb = torch.nn.Embedding(50, 16)
        head = torch.nn.Linear(16, 50)
        opt = torch.optim.Adam([*emb.parameters(), *head.parameters()], lr=0.05)
        # sequences counting up modulo 50: the next token is learnable from the current one
        start = torch.randint(0, 50, (8, 1), generator=torch.Generator().manual_seed(1))
        data = (start + torch.arange(33)) % 50
        curve = []
        for _ in range(40):
            h = torch.tanh(emb(data[:, :-1]))
            if fused:
                loss = fxt.linear_cross_entropy(h, head.weight, data[:, 1:], head.bias,
                                                chunk_size=24)
            else:
                loss = torch.nn.functional.cross_entropy(head(h).reshape(-1, 50),
                                                         data[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            curve.append(loss.item())
        return np.array(curve)

    fused, unfused = train(True), train(False)
    assert unfused[-1] < 0.5 * unfused[0]  # it learns
    np.testing.assert_allclose(fused, unfused, rtol=1e-4)


def test_torch_bad_input(rng):
    hidden, weight, b, t, _ = problem(rng, ignored=0.0)
    h, w, tt = torch.tensor(hidden), torch.tensor(weight), torch.tensor(t)
    with pytest.raises(ValueError, match="last axis must be H"):
        fxt.linear_cross_entropy(h, w[:, :-1], tt)
    with pytest.raises(TypeError, match="one dtype"):
        fxt.linear_cross_entropy(h.float(), w, tt)
    with pytest.raises(TypeError, match="floating dtype"):
        fxt.linear_cross_entropy(h.long(), w.long(), tt)
    with pytest.raises(TypeError, match="torch.Tensor"):
        fxt.linear_cross_entropy(hidden, w, tt)
    with pytest.raises(ValueError, match="reduction"):
        fxt.linear_cross_entropy(h, w, tt, reduction="avg")
    with pytest.raises(TypeError, match="ce_weight must be a torch.Tensor"):
        fxt.linear_cross_entropy(h, w, tt, ce_weight=[1.0] * w.shape[0])


@needs_gpu
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_cuda(rng, reduction, weighted):
    hidden, weight, b, t, cw = problem(rng, lead=(70,), h=24, v=500)
    o = {"label_smoothing": 0.1, "z_loss": 1e-3}
    cw = None
    if weighted:
        o["ce_weight"] = cw = rng.uniform(0.5, 2.0, weight.shape[0]).astype(np.float32)
        cw = cw.astype(np.float64)
    go = rng.uniform(0.5, 2.0, t.shape) if reduction == "none" else 1.0
    ref, ref_grads = reference(hidden, weight, b, t, cw, reduction=reduction, grad_output=go,
                               **{**o, "ce_weight": weighted})
    loss, grads = torch_run(hidden, weight, b, t, torch.float32, device="cuda", grad_output=go,
                            reduction=reduction, chunk_size=16, **o)
    close(loss.detach().cpu().numpy(), ref, 1e-5)
    for g, r in zip(grads, ref_grads):
        assert g.is_cuda
        close(g.cpu().numpy(), r, 1e-5)


@needs_gpu
@pytest.mark.parametrize("accum_dtype", [None, torch.float32])
def test_torch_cuda_bfloat16(rng, accum_dtype):
    hidden, weight, b, t, _ = problem(rng, lead=(256,), h=32, v=300)
    rounded = [torch.tensor(a).to(torch.bfloat16).double().numpy() for a in (hidden, weight, b)]
    ref, ref_grads = reference(*rounded, t, None)
    loss, grads = torch_run(*rounded, t, torch.bfloat16, device="cuda", chunk_size=16,
                            accum_dtype=accum_dtype)
    close(loss.detach().float().cpu().numpy(), ref, 2e-2)
    for g, r in zip(grads, ref_grads):
        assert g.is_cuda and g.dtype == torch.bfloat16
        close(g.float().cpu().numpy(), r, 3e-2)


@needs_gpu
@pytest.mark.parametrize("targets", ["indices", "probabilities"])
def test_torch_cuda_parts_shift_and_probabilities(rng, targets):
    """CUDA tensors against CPU tensors: shift, the loss's parts and their gradients (the
    second walk's lse term on the device), probability targets and their gradient."""
    b_, t_, h_, v_ = 3, 9, 16, 200
    hidden = torch.tensor(rng.standard_normal((b_, t_, h_)), dtype=torch.float32)
    weight = torch.tensor(rng.standard_normal((v_, h_)), dtype=torch.float32)
    if targets == "indices":
        target = torch.tensor(rng.integers(0, v_, (b_, t_)))
        opts = dict(shift=1, z_loss=1e-3, return_z_loss=True, return_lse=True)
    else:
        target = torch.tensor(rng.dirichlet(np.ones(v_), (b_, t_)), dtype=torch.float32)
        opts = dict(label_smoothing=0.1, return_lse=True)
    results = []
    for device in ("cpu", "cuda"):
        h = hidden.to(device).requires_grad_()
        w = weight.to(device).requires_grad_()
        tt = target.to(device).clone()
        if targets == "probabilities":
            tt.requires_grad_()
        out = fxt.linear_cross_entropy(h, w, tt, chunk_size=8, **opts)
        total = sum(o.sum() * (k + 1) for k, o in enumerate(out))
        wrt = (h, w, tt) if targets == "probabilities" else (h, w)
        results.append([o.detach().cpu() for o in out]
                       + [g.cpu() for g in torch.autograd.grad(total, wrt)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_bench_linear_runs():
    """``fastxent bench --linear`` at a tiny shape: every contender timed, a table printed."""
    from fastxent.bench import linear

    results = linear.run(rows=8, hidden=16, vocab=100, repeat=1)
    expected = {"fastxent", "fastxent (64 rows)", "numpy + fastxent",
                "fastxent (256 rows × 16384 classes)", "fastxent.torch", "torch"}
    if hasattr(torch.nn.functional, "linear_cross_entropy"):  # PyTorch 2.13: both of its paths
        expected |= {linear.TORCH_LINEAR, linear.TORCH_LINEAR + " (chunked)"}
    assert set(results) == expected
    assert all(seconds > 0 for seconds, _ in results.values())
    table = linear.format_table(results, rows=8, hidden=16, vocab=100)
    assert "| fastxent.torch |" in table and "×" in table
    for name in expected - {"torch", "numpy + fastxent"}:  # each against its unfused path
        assert f"| {name} |" in table
        assert table.split(f"| {name} |")[1].split("|")[1].strip().endswith("×"), name


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_custom_ops_pass_opcheck(rng, reduction):
    from fastxent.torch.linear import _linear_backward_op, _linear_op
    hidden, weight, b, t, cw = problem(rng, lead=(9,), h=5, v=13)
    h = torch.tensor(hidden, requires_grad=True)
    w = torch.tensor(weight, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    tt, cwt = torch.tensor(t), torch.tensor(cw)
    eager = reduction != "none"
    for parts in (False, True):
        args = (h, w, tt, bt, cwt, reduction, -100, 0.1, 1e-3, None, 0, [4], None, parts, None,
                eager, eager, eager)
        results = torch.library.opcheck(_linear_op, args)
        assert set(results.values()) == {"SUCCESS"}, results
    go = torch.rand(9, dtype=torch.float64)
    # (no autograd of its own: it is only called from a backward pass); with the gradients of the
    # z-loss term and of the lse outputs
    for grad_z, grad_lse in ((None, None), (torch.tensor(0.5, dtype=torch.float64), go)):
        args = (h.detach(), w.detach(), tt, bt.detach(), cwt, "none", -100, 0.1, 1e-3, None, 0,
                [4, 6], torch.float64, go, grad_z, grad_lse, True, False, False, True)
        results = torch.library.opcheck(_linear_backward_op, args)
        assert set(results.values()) == {"SUCCESS"}, results


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_compile_traces_through(rng, reduction):
    hidden, weight, b, t, _ = problem(rng, lead=(4, 6), h=8, v=40)

    def step(h, w, bias, target):
        loss = fxt.linear_cross_entropy(torch.tanh(h), w, target, bias, reduction=reduction,
                                        chunk_size=5)
        return loss.sum() * 2.0

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    leaves = [torch.tensor(a, requires_grad=True) for a in (hidden, weight, b)]
    refs = [torch.tensor(a, requires_grad=True) for a in (hidden, weight, b)]
    out = compiled(*leaves, torch.tensor(t))
    ref = step(*refs, torch.tensor(t))
    out.backward()
    ref.backward()
    torch.testing.assert_close(out, ref)
    for a, r in zip(leaves, refs):
        torch.testing.assert_close(a.grad, r.grad)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_frozen_weight_gets_no_gradient(rng, monkeypatch, reduction):
    """Only hidden requires a gradient (a frozen output layer): no product for the weight's."""
    hidden, weight, b, t, _ = problem(rng)
    ref, (rh, _, _) = reference(hidden, weight, b, t, None, reduction=reduction)
    calls = []
    monkeypatch.setattr(torch.Tensor, "addmm_", lambda *a, **k: calls.append(1))
    h = torch.tensor(hidden, requires_grad=True)
    w, bt = torch.tensor(weight), torch.tensor(b)
    loss = fxt.linear_cross_entropy(h, w, torch.tensor(t), bt, reduction=reduction,
                                    chunk_size=4)
    loss.sum().backward()
    assert not calls and w.grad is None and bt.grad is None
    close(h.grad.numpy(), rh, 1e-12)


def test_hidden_size_zero(rng):
    """H = 0: the logits are the bias, and g_weight is (V, 0)."""
    weight = np.zeros((5, 0))
    b = rng.standard_normal(5)
    t = np.array([0, 3])
    loss, (gh, gw, gb) = fx.linear_cross_entropy_with_grad(np.zeros((2, 0)), weight, t, b)
    assert loss == pytest.approx(fx.cross_entropy(np.tile(b, (2, 1)), t))
    assert gh.shape == (2, 0) and gw.shape == (5, 0) and gb.shape == (5,)


def test_bench_linear_gpu_pipeline_on_the_cpu():
    """``fastxent bench --linear --device cuda``'s code on CPU tensors (host timers): every
    installed contender runs and the losses agree."""
    from fastxent.bench import linear

    results, missing = linear.run_gpu(rows=16, hidden=8, vocab=50, dtype="bfloat16",
                                      device="cpu")
    ours = {"fastxent.torch", "fastxent.torch (float32 accumulation)"} | {
        f"fastxent.torch ({rows} rows)" for rows in linear.GPU_CHUNKS}
    assert ours | {"torch"} <= set(results)
    assert set(results) | set(missing) == ours | {"torch", "liger", "cut cross-entropy"}
    losses = [loss for _, _, loss in results.values()]
    assert max(losses) - min(losses) < 2e-2  # bfloat16 logits
    table = linear.format_gpu_table(results, missing, 16, 8, 50, "bfloat16")
    assert "| fastxent.torch |" in table


def test_torch_under_autocast_as_f_linear():
    """Under bfloat16 autocast the products run in bfloat16, as F.linear's, and the loss is
    float32, as F.cross_entropy's; the gradients reach the float32 leaves."""
    g = torch.Generator().manual_seed(3)
    leaves = [torch.randn(*s, generator=g).requires_grad_() for s in ((6, 8), (50, 8), (50,))]
    t = torch.randint(0, 50, (6,), generator=g)
    t[2] = -100
    results = []
    for fused in (False, True):
        for a in leaves:
            a.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = (fxt.linear_cross_entropy(*leaves[:2], t, leaves[2]) if fused else
                    torch.nn.functional.cross_entropy(torch.nn.functional.linear(*leaves), t))
        loss.backward()
        results.append((loss.detach(), [a.grad.clone() for a in leaves]))
    (l0, g0), (l1, g1) = results
    assert l1.dtype == l0.dtype == torch.float32
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=0)
    for a, b in zip(g1, g0):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=1e-2 * b.abs().max().item())
