"""Gradients of the entropy, the KL divergence and the cross-entropy from probabilities
(``*_with_grad`` in NumPy, autograd through ``fastxent.torch``) against float64 PyTorch autograd
of the textbook formulas."""

import numpy as np
import pytest
from conftest import BACKENDS, BF16, F32, F64, dtype_id, random_logits, to64

import fastxent as fx

torch = pytest.importorskip("torch")
fxt = pytest.importorskip("fastxent.torch")

#: absolute gradient tolerance for arithmetic in float32 and storage in each dtype
#: (float32: inputs of magnitude up to about 15 put about 1e-6 of rounding in each of the log-sum-exp
#: and the logits, times terms up to about 15)
ATOL = {F32: 5e-6, F64: 1e-12, BF16: 2 ** -8}


def t64(a, grad=True):
    return torch.tensor(to64(a), requires_grad=grad)


def entropy_ref(x, go):
    xt = t64(x)
    lp = torch.log_softmax(xt, -1)
    h = -(lp.exp() * torch.where(torch.isinf(lp), 0.0, lp)).sum(-1)
    (h * torch.as_tensor(go, dtype=torch.float64)).sum().backward()
    return h.detach().numpy(), xt.grad.numpy()


def kl_ref(p, q, reduction, go):
    pt, qt = t64(p), t64(q)
    lp, lq = torch.log_softmax(pt, -1), torch.log_softmax(qt, -1)
    kl = (lp.exp() * torch.where(lp.exp() > 0, lp - lq, 0.0)).sum(-1)
    out = {"none": kl, "sum": kl.sum(), "mean": kl.mean()}[reduction]
    (out * torch.as_tensor(go, dtype=torch.float64)).sum().backward()
    return out.detach().numpy(), pt.grad.numpy(), qt.grad.numpy()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [F32, F64, BF16], ids=dtype_id)
def test_entropy_gradient(rng, dtype, backend):
    x = random_logits(rng, (2, 3, 700), dtype)
    x[0, 0, :5] = -np.inf  # masked classes have probability 0 and no gradient
    go = rng.uniform(0.5, 2.0, (2, 3))
    ref_h, ref_g = entropy_ref(x, go)
    h, g = fx.entropy_with_grad(x, grad_output=go, backend=backend)
    assert g.dtype == x.dtype and g.shape == x.shape
    np.testing.assert_allclose(to64(h), ref_h, rtol=1e-5 if dtype != F64 else 1e-12)
    np.testing.assert_allclose(to64(g), ref_g, atol=ATOL[dtype], rtol=1e-2 if dtype == BF16
                               else 0)
    assert not to64(g)[0, 0, :5].any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("dtype", [F32, F64], ids=dtype_id)
def test_kl_gradient(rng, dtype, reduction, backend):
    p = random_logits(rng, (5, 900), dtype)
    q = random_logits(rng, (5, 900), dtype)
    go = rng.uniform(0.5, 2.0, 5) if reduction == "none" else 0.7
    ref, ref_gp, ref_gq = kl_ref(p, q, reduction, go)
    kl, (gp, gq) = fx.kl_divergence_with_grad(p, q, reduction=reduction, grad_output=go,
                                              backend=backend)
    np.testing.assert_allclose(to64(kl), ref, rtol=1e-5 if dtype == F32 else 1e-12)
    # d/dp carries the float32 divergence itself (about 1e-6 of it: 1e-5 at KL = 14) times P
    atol = ATOL[dtype] + (2e-6 * float(np.max(np.abs(ref))) if dtype == F32 else 0.0)
    np.testing.assert_allclose(to64(gp), ref_gp, atol=atol)
    np.testing.assert_allclose(to64(gq), ref_gq, atol=ATOL[dtype])


def test_cpu_gradient_kernel_equals_reference(rng):
    x = random_logits(rng, (7, 3000), F32)
    y = random_logits(rng, (7, 3000), F32)
    for backend_args in ((x, None), (x, y)):
        got = [fx.kl_divergence_with_grad(*backend_args, backend=b)[1] if backend_args[1]
               is not None else (fx.entropy_with_grad(x, backend=b)[1],) for b in BACKENDS]
        for a, b in zip(*got):
            np.testing.assert_allclose(a, b, atol=1e-6)


def probs_ref(p, t, weight, reduction, eps, go, sample_weight=None):
    """-Σ w·q·log p with the log clamped at -100 (or p clipped to [eps, 1 - eps])."""
    pt = t64(p)
    if eps:
        logp = pt.clamp(eps, 1 - eps).log()
    else:  # the log clamped at -100, with no slope there (and no 0·inf at p = 0)
        moves = pt.detach() > np.exp(-100.0)
        logp = torch.where(moves, torch.where(moves, pt, 1.0).log(), -100.0)
    v = p.shape[-1]
    if t.dtype.kind in "iu":
        valid = t >= 0
        q = np.zeros(p.shape)
        q[valid, t[valid]] = 1.0
    else:
        q = to64(t)
        valid = np.ones(p.shape[0], bool)
    w = np.ones(v) if weight is None else weight
    sw = np.ones(p.shape[0]) if sample_weight is None else sample_weight
    rows = -(torch.tensor(q * w) * torch.where(torch.tensor(q) > 0, logp, 0.0)).sum(-1)
    rows = rows * torch.tensor(sw)
    if reduction == "none":
        out = rows
    elif reduction == "sum":
        out = rows.sum()
    else:
        denom = (sw * (q * w).sum(-1) * valid).sum() if t.dtype.kind in "iu" else sw.sum()
        out = rows.sum() / denom
    (out * torch.as_tensor(go, dtype=torch.float64)).sum().backward()
    return out.detach().numpy(), pt.grad.numpy()


@pytest.mark.parametrize("targets", ["index", "soft"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("eps", [None, 1e-3])
def test_from_probs_gradient(rng, targets, reduction, eps):
    n, v = 6, 50
    p = rng.dirichlet(np.ones(v) * 0.3, n)
    p[0, :3] = 0.0  # zeros: clamped (no gradient) or clipped
    p[1, 3] = 1.0 - 1e-5
    weight = rng.uniform(0.5, 2.0, v)
    sw = rng.uniform(0.5, 2.0, n)
    if targets == "index":
        t = rng.integers(0, v, n)
        t[0], t[2] = 1, -100
    else:
        t = rng.dirichlet(np.ones(v), n)
    go = rng.uniform(0.5, 2.0, n) if reduction == "none" else 1.3
    w = weight if targets == "index" else None
    ref, ref_g = probs_ref(p, t, w, reduction, eps, go, sw)
    loss, g = fx.cross_entropy_from_probs_with_grad(p, t, weight=w, sample_weight=sw,
                                                    reduction=reduction, eps=eps, grad_output=go)
    np.testing.assert_allclose(loss, ref, rtol=1e-12)
    np.testing.assert_allclose(g, ref_g, rtol=1e-12, atol=1e-12)
    loss32, g32 = fx.cross_entropy_from_probs_with_grad(
        p.astype(F32), t if targets == "index" else t.astype(F32), weight=w, sample_weight=sw,
        reduction=reduction, eps=eps, grad_output=go)
    assert g32.dtype == F32
    np.testing.assert_allclose(g32, ref_g, rtol=2e-5, atol=1e-5)


def test_gradient_errors(rng):
    p = random_logits(rng, (2, 5), F32)
    with pytest.raises(ValueError, match="kind='logits' only"):
        fx.entropy_with_grad(np.full((2, 5), 0.2), kind="probs")
    with pytest.raises(ValueError, match="kind='logits' only"):
        fx.kl_divergence_with_grad(p, p, kind="probs")
    with pytest.raises(ValueError, match="grad_output"):
        fx.kl_divergence_with_grad(p, p, reduction="mean", grad_output=np.ones(2))


# --- fastxent.torch ------------------------------------------------------------------------------


def test_torch_entropy_and_kl_autograd(rng):
    x = torch.tensor(random_logits(rng, (3, 4, 300), F32), requires_grad=True)
    y = torch.tensor(random_logits(rng, (3, 4, 300), F32), requires_grad=True)
    h = fxt.entropy(x)
    ref = torch.distributions.Categorical(logits=x).entropy()
    torch.testing.assert_close(h, ref, rtol=1e-5, atol=1e-6)
    go = torch.rand(3, 4)
    (gx_ref,) = torch.autograd.grad((ref * go).sum(), x)
    (h * go).sum().backward()
    torch.testing.assert_close(x.grad, gx_ref, rtol=1e-4, atol=2e-6)

    x.grad = None
    kl = fxt.kl_divergence(x, y, reduction="mean")
    ref = torch.nn.functional.kl_div(torch.log_softmax(y, -1), torch.log_softmax(x, -1),
                                     reduction="sum", log_target=True) / 12
    torch.testing.assert_close(kl, ref, rtol=1e-5, atol=1e-6)
    gx_ref, gy_ref = torch.autograd.grad(2.0 * ref, (x, y))
    (2.0 * kl).backward()
    torch.testing.assert_close(x.grad, gx_ref, rtol=1e-4, atol=2e-6)
    torch.testing.assert_close(y.grad, gy_ref, rtol=1e-4, atol=2e-6)


def test_torch_from_probs_autograd_and_no_grad(rng):
    p = torch.tensor(rng.dirichlet(np.ones(40), 8), requires_grad=True)
    t = torch.tensor(rng.integers(0, 40, 8))
    loss = fxt.cross_entropy_from_probs(p, t, eps="auto")
    ref = torch.nn.functional.nll_loss(p.clamp(2.0**-52, 1 - 2.0**-52).log(), t)
    torch.testing.assert_close(loss, ref)
    (g_ref,) = torch.autograd.grad(ref, p)
    loss.backward()
    torch.testing.assert_close(p.grad, g_ref)
    with torch.no_grad():  # the value alone, from the forward-only function
        torch.testing.assert_close(fxt.cross_entropy_from_probs(p, t, eps="auto"), ref.detach())
        torch.testing.assert_close(fxt.kl_divergence(p, p), torch.zeros(8, dtype=p.dtype))


def test_torch_custom_ops_pass_opcheck(rng):
    from fastxent.torch.family import _entropy_op, _from_probs_op, _kl_op
    x = torch.tensor(random_logits(rng, (3, 20), F32), requires_grad=True)
    y = torch.tensor(random_logits(rng, (3, 20), F32), requires_grad=True)
    p = torch.softmax(x.detach(), -1).requires_grad_()
    t = torch.tensor([1, 2, 3])
    for op, args in ((_entropy_op, (x, "none")), (_kl_op, (x, y, "mean")),
                     (_kl_op, (x, y, "none")), (_from_probs_op, (p, t, None, "mean", -100, 0.0))):
        results = torch.library.opcheck(op, args)
        assert set(results.values()) == {"SUCCESS"}, (op, results)


def test_torch_errors():
    x = torch.zeros(2, 3, requires_grad=True)
    with pytest.raises(NotImplementedError, match="kind='logits' only"):
        fxt.entropy(torch.full((2, 3), 1 / 3, requires_grad=True), kind="probs")
    assert fxt.entropy(torch.full((2, 3), 0.5), kind="probs").shape == (2,)
    with pytest.raises(RuntimeError, match="target requires grad"):
        fxt.cross_entropy_from_probs(x.softmax(-1), torch.full((2, 3), 1 / 3,
                                                               requires_grad=True))
    with pytest.raises(ValueError, match="reduction"):
        fxt.kl_divergence(x, x, reduction="batchmean")


def test_large_logits_keep_float32_precision():
    """Logits near 1e4 (and two arrays offset by thousands): the log-sum-exps' rounding to
    float32 must not reach the gradients or the divergence."""
    x = np.float32([[1e4, 1e4 - 1, 0.0]])
    y = np.float32([[5e3, 5e3 + 2, 1.0]])
    _, g = fx.entropy_with_grad(x)
    _, ref = fx.entropy_with_grad(x.astype(F64))
    np.testing.assert_allclose(g, ref, atol=1e-6)
    kl, (gp, gq) = fx.kl_divergence_with_grad(x, y)
    rkl, (rp, rq) = fx.kl_divergence_with_grad(x.astype(F64), y.astype(F64))
    np.testing.assert_allclose(kl, rkl, rtol=1e-6)
    np.testing.assert_allclose(gp, rp, atol=1e-6)
    np.testing.assert_allclose(gq, rq, atol=1e-6)


def test_torch_retained_graph_backward_twice(rng):
    """Upstream gradients of ones leave the kept gradient as it is: a retained graph can be
    walked again."""
    x = torch.tensor(random_logits(rng, (3, 50), F32), requires_grad=True)
    h = fxt.entropy(x)
    h.sum().backward(retain_graph=True)
    first = x.grad.clone()
    h.sum().backward()
    torch.testing.assert_close(x.grad, 2 * first)
