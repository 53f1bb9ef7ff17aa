"""fastxent.torch: ``cross_entropy`` and ``CrossEntropyLoss`` against ``torch.nn.functional`` on
the same values (PyTorch in float64 on up-cast inputs), through autograd: shapes (C,), (N, C),
(N, C, d1, d2), every dtype and option, probability targets, legacy arguments, non-contiguous
inputs, empty and all-ignored batches, the in-place mode's safety, double backward, a training
loop."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
fxt = pytest.importorskip("fastxent.torch")

from test_torch_parity import torch_loss_and_grad  # noqa: E402

pytestmark = pytest.mark.torch

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
#: one rounding of each format: losses and gradients come back in the input's dtype
ROUND = {torch.float32: 0.0, torch.float64: 0.0, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
TOL = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 1e-6, torch.float16: 1e-6}
SHAPES = {"unbatched": ((11,), ()), "batch": ((6, 11), (6,)), "k-d": ((3, 11, 2, 4), (3, 2, 4))}
OPTIONS = {
    "plain": dict(),
    "weight-ignore-sum": dict(weight=True, ignore_index=2, reduction="sum"),
    "smoothing": dict(label_smoothing=0.15),
    "none": dict(reduction="none"),
    "weight-smoothing-mean": dict(weight=True, label_smoothing=0.3, ignore_index=4),
}


def _inputs(gen, shape, tshape, dtype, probs=False):
    x = (torch.randn(*shape, generator=gen, dtype=torch.float64) * 3).to(dtype)
    if probs:
        t = torch.softmax(torch.randn(*shape, generator=gen, dtype=torch.float64), dim=min(
            1, len(shape) - 1)).to(dtype)
    else:
        t = torch.randint(0, shape[min(1, len(shape) - 1)], tshape, generator=gen)
    return x, t


def _both(x, t, grad_output=None, **options):
    """(fastxent's loss, its gradient) and PyTorch's (float64 on the same values)."""
    a = x.detach().clone().requires_grad_()
    b = x.detach().double().requires_grad_()
    opts = dict(options)
    w = opts.pop("weight", None)
    la = fxt.cross_entropy(a, t, weight=w, **opts)
    tb = t.double() if t.is_floating_point() else t
    lb = F.cross_entropy(b, tb, weight=None if w is None else w.double(), **opts)
    # the upstream gradient reaches the loss in its dtype, on both sides
    go = torch.ones_like(lb) if grad_output is None else grad_output.to(x.dtype).double()
    (la * go.to(la.dtype)).sum().backward()
    (lb * go).sum().backward()
    return la, a.grad, lb, b.grad


def _check(la, ga, lb, gb, dtype, roundings=1):
    """Loss and gradient in the input's dtype, within the tolerances plus ``roundings`` roundings
    of the format (two for reduction="none": the gradient is rounded in the forward pass, then
    scaled by the upstream gradient in the backward pass)."""
    assert la.dtype == dtype and la.shape == lb.shape
    assert ga.dtype == dtype and ga.shape == gb.shape
    rtol = TOL[dtype] + ROUND[dtype]
    torch.testing.assert_close(la.double(), lb, rtol=rtol, atol=rtol * 4, equal_nan=True)
    torch.testing.assert_close(ga.double(), gb, rtol=roundings * ROUND[dtype], atol=TOL[dtype],
                               equal_nan=True)


@pytest.fixture
def gen(request):
    return torch.Generator().manual_seed(sum(map(ord, request.node.nodeid)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", SHAPES)
@pytest.mark.parametrize("name", OPTIONS)
def test_matches_functional_cross_entropy(gen, dtype, layout, name):
    shape, tshape = SHAPES[layout]
    x, t = _inputs(gen, shape, tshape, dtype)
    opts = dict(OPTIONS[name])
    c = shape[min(1, len(shape) - 1)]
    if opts.get("weight"):
        opts["weight"] = torch.rand(c, generator=gen, dtype=torch.float64).to(torch.float32) + 0.5
    go = None
    if opts.get("reduction") == "none":
        go = torch.rand(tshape, generator=gen, dtype=torch.float64) + 0.5
    _check(*_both(x, t, grad_output=go, **opts), dtype, roundings=2 if go is not None else 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", SHAPES)
def test_probability_targets(gen, dtype, layout):
    shape, tshape = SHAPES[layout]
    x, q = _inputs(gen, shape, tshape, dtype, probs=True)
    _check(*_both(x, q, label_smoothing=0.1), dtype)


def test_z_loss_and_softcap(gen):
    x, t = _inputs(gen, (6, 11), (6,), torch.float64)
    t[1] = -100
    a = x.clone().requires_grad_()
    loss = fxt.cross_entropy(a, t, z_loss=1e-3, softcap=5.0)
    loss.backward()
    want, want_grad = torch_loss_and_grad(x.numpy(), t.numpy(), z_loss=1e-3, softcap=5.0)
    np.testing.assert_allclose(loss.item(), want, rtol=1e-12)
    np.testing.assert_allclose(a.grad.numpy(), want_grad, atol=1e-12)


@pytest.mark.filterwarnings("ignore:size_average and reduce args will be deprecated")
def test_legacy_reduction_arguments(gen):
    x, t = _inputs(gen, (6, 11), (6,), torch.float32)
    for size_average, reduce in [(False, None), (None, False), (True, True)]:
        torch.testing.assert_close(
            fxt.cross_entropy(x, t, size_average=size_average, reduce=reduce),
            F.cross_entropy(x, t, size_average=size_average, reduce=reduce))


def test_non_contiguous_input(gen):
    x, t = _inputs(gen, (11, 6), (6,), torch.float32)
    _check(*_both(x.t(), t, label_smoothing=0.1), torch.float32)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_and_all_ignored_batches(reduction):
    for x, t in [(torch.randn(0, 5), torch.zeros(0, dtype=torch.long)),
                 (torch.randn(3, 5), torch.full((3,), -100))]:
        la, ga, lb, gb = _both(x, t, reduction=reduction)
        torch.testing.assert_close(la.double(), lb, equal_nan=True)
        assert not ga.any()


def test_out_of_range_target_raises():
    with pytest.raises(IndexError, match=r"targets\[1\] = 9"):
        fxt.cross_entropy(torch.randn(2, 5), torch.tensor([0, 9]))


def test_module_matches_nn_cross_entropy_loss(gen):
    x, t = _inputs(gen, (6, 11), (6,), torch.float32)
    w = torch.rand(11, generator=gen) + 0.5
    ours = fxt.CrossEntropyLoss(weight=w, label_smoothing=0.1, ignore_index=3)
    theirs = torch.nn.CrossEntropyLoss(weight=w, label_smoothing=0.1, ignore_index=3)
    torch.testing.assert_close(ours(x, t), theirs(x, t))
    assert "label_smoothing=0.1" in repr(ours)
    assert torch.equal(ours.state_dict()["weight"], w)


# --- in place -------------------------------------------------------------------------------------


def _model(gen):
    lin = torch.nn.Linear(8, 11)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(11, 8, generator=gen))
        lin.bias.zero_()
    return lin


def test_inplace_backward_gives_the_same_gradients(gen):
    h = torch.randn(6, 8, generator=gen)
    t = torch.randint(0, 11, (6,), generator=gen)
    grads = []
    for inplace in (False, True):
        lin = _model(torch.Generator().manual_seed(1))
        logits = lin(h)
        loss = fxt.cross_entropy(logits, t, label_smoothing=0.1, inplace_backward=inplace)
        (3 * loss).backward()
        grads.append((loss.detach(), lin.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-6, atol=1e-6)


def test_inplace_backward_refuses_leaves_and_k_d_inputs(gen):
    x = torch.randn(6, 11, requires_grad=True)
    t = torch.randint(0, 11, (6,))
    with pytest.raises(RuntimeError, match="leaf"):
        fxt.cross_entropy(x, t, inplace_backward=True)
    with pytest.raises(ValueError, match="inplace_backward=True needs contiguous input"):
        fxt.cross_entropy(torch.randn(2, 11, 3), torch.zeros(2, 3, dtype=torch.long),
                          inplace_backward=True)


def test_overwritten_logits_cannot_be_differentiated_through(gen):
    lin = _model(gen)
    t = torch.randint(0, 11, (6,), generator=gen)
    logits = lin(torch.randn(6, 8, generator=gen))
    loss = fxt.cross_entropy(logits, t, inplace_backward=True)
    with pytest.raises(RuntimeError, match="wrote the gradient over the logits"):
        (loss + logits.sum()).backward()
    logits = lin(torch.randn(6, 8, generator=gen))
    square = (logits * logits).sum()  # saves the logits for its backward pass
    loss = fxt.cross_entropy(logits, t, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + square).backward()


@pytest.mark.parametrize("options", [dict(), dict(reduction="none", label_smoothing=0.1),
                                     dict(reduction="sum", z_loss=1e-2, softcap=3.0, weight="w")],
                         ids=["plain", "none-smoothing", "sum-zloss-softcap-weight"])
def test_double_backward_matches_pytorch(gen, options):
    """Second derivatives (gradgradcheck, Hessian-vector products), as F.cross_entropy has them:
    the backward pass of a graph kept with create_graph=True goes through PyTorch's operations."""
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 5, -100, 2])
    opts = dict(options)
    if opts.get("weight") == "w":
        opts["weight"] = torch.rand(6, generator=gen, dtype=torch.float64) + 0.5
    assert torch.autograd.gradgradcheck(lambda z: fxt.cross_entropy(z, t, **opts), (x,))
    v = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    hvp = []
    for fn in (fxt.cross_entropy, F.cross_entropy):
        kw = {k: a for k, a in opts.items() if fn is fxt.cross_entropy or k not in
              ("z_loss", "softcap")}
        if fn is F.cross_entropy and "softcap" in opts:
            continue
        loss = fn(x, t, **kw)
        (g,) = torch.autograd.grad(loss.sum(), x, create_graph=True)
        hvp.append(torch.autograd.grad((g * v).sum(), x)[0])
    if len(hvp) == 2:
        torch.testing.assert_close(hvp[0], hvp[1])


def test_double_backward_of_the_in_place_mode_raises():
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    loss = fxt.cross_entropy(x * 1.0, torch.tensor([0, 1, 2, 3]), inplace_backward=True)
    with pytest.raises(RuntimeError, match="inplace_backward=True. has no double backward"):
        torch.autograd.grad(loss, x, create_graph=True)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_probability_targets_get_their_gradient(gen, reduction, smoothing):
    """Bug: probability targets that required grad got none (target.grad stayed None), where
    PyTorch computes it. Class weights that require grad get theirs with probabilities too."""
    x = torch.randn(4, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    q = torch.softmax(torch.randn(4, 7, generator=gen, dtype=torch.float64), -1)
    w = torch.rand(7, generator=gen, dtype=torch.float64) + 0.5
    grads = []
    for fn in (fxt.cross_entropy, F.cross_entropy):
        qq, ww = q.clone().requires_grad_(), w.clone().requires_grad_()
        loss = fn(x, qq, weight=ww, reduction=reduction, label_smoothing=smoothing)
        grads.append(torch.autograd.grad(loss.sum(), (x, qq, ww)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(
        lambda z, p: fxt.cross_entropy(z, p, reduction=reduction, label_smoothing=smoothing),
        (x, q.clone().requires_grad_()))


def test_class_weight_requiring_grad_with_class_indices_raises_as_pytorch(gen):
    """Bug: a class weight that required grad was accepted silently (and got no gradient);
    PyTorch refuses it with class-index targets."""
    x = torch.randn(4, 7, generator=gen, requires_grad=True)
    t = torch.tensor([0, 3, 6, 1])
    w = torch.rand(7, generator=gen, requires_grad=True)
    with pytest.raises(RuntimeError, match="not differentiable with respect to"):
        F.cross_entropy(x, t, weight=w)
    with pytest.raises(RuntimeError, match="not differentiable with respect to weight"):
        fxt.cross_entropy(x, t, weight=w)
    with torch.no_grad():  # no gradient asked for: accepted, as PyTorch
        torch.testing.assert_close(fxt.cross_entropy(x, t, weight=w), F.cross_entropy(x, t,
                                                                                        weight=w))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_class_weights_in_the_logits_half_precision(gen, dtype):
    """Bug: fxt.cross_entropy(x_bf16, t, weight=w_bf16) raised 'weight has dtype bfloat16';
    PyTorch takes it."""
    x = (torch.randn(5, 9, generator=gen) * 3).to(dtype)
    t = torch.tensor([0, 3, 8, 1, -100])
    w = (torch.rand(9, generator=gen) + 0.5).to(dtype)
    got = fxt.cross_entropy(x, t, weight=w, label_smoothing=0.1)
    want = F.cross_entropy(x.double(), t, weight=w.double(), label_smoothing=0.1)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want, rtol=ROUND[dtype], atol=0.0)


LOSSES = {
    "cross_entropy": lambda x, r: fxt.cross_entropy(x, torch.tensor([0, 4, -100, 2]),
                                                    reduction=r, label_smoothing=0.1),
    "cross_entropy z-loss parts": lambda x, r: sum(
        v.sum() for v in fxt.cross_entropy(x, torch.tensor([0, 4, -100, 2]), reduction=r,
                                           z_loss=1e-2, return_z_loss=True, return_lse=True)),
    "in place": lambda x, r: fxt.cross_entropy(x * 1.0, torch.tensor([0, 4, -100, 2]),
                                               reduction=r, inplace_backward=True),
    "binary_cross_entropy_with_logits": lambda x, r: fxt.binary_cross_entropy_with_logits(
        x, torch.full_like(x, 0.25), reduction=r),
    "binary_cross_entropy": lambda x, r: fxt.binary_cross_entropy(
        torch.sigmoid(x), torch.full_like(x, 0.25), reduction=r),
    "entropy": lambda x, r: fxt.entropy(x),
    "kl_divergence": lambda x, r: fxt.kl_divergence(x, x.flip(-1), reduction=r),
    "cross_entropy_from_probs": lambda x, r: fxt.cross_entropy_from_probs(
        torch.softmax(x, -1), torch.tensor([0, 4, -100, 2]), reduction=r),
    "linear_cross_entropy": lambda x, r: fxt.linear_cross_entropy(
        x, torch.eye(6, dtype=x.dtype), torch.tensor([0, 4, -100, 2]), reduction=r,
        chunk_size=3),
    "linear_cross_entropy parts": lambda x, r: sum(v.sum() for v in fxt.linear_cross_entropy(
        x, torch.eye(6, dtype=x.dtype), torch.tensor([0, 4, -100, 2]), reduction=r,
        z_loss=1e-2, return_z_loss=True, return_lse=True)),
}


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_with_undefined_upstream_gradients(gen, name, reduction):
    """Bug: torch.autograd.gradcheck(lambda z: fxt.cross_entropy(z, t), (x,)) raised
    AttributeError in the backward pass, which gradcheck calls with an undefined upstream
    gradient: every loss takes it as zeros."""
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: LOSSES[name](z, reduction), (x,))


@pytest.mark.parametrize("name", [n for n in LOSSES if n != "in place"])
def test_retained_graph_with_any_upstream_gradient(gen, name):
    """Bug: l = fxt.cross_entropy(x, t, reduction="none"), then autograd.grad(l, x, e0,
    retain_graph=True), then autograd.grad(l, x, e1) raised 'modified by an inplace operation':
    the kept gradient was scaled in place. It is scaled in place only when the graph is freed."""
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    loss = LOSSES[name](x, "none")

    def upstream(k):  # a different one each time: one row's, or a scale of a scalar loss
        if loss.dim() == 0:
            return torch.full_like(loss, 1.0 + k)
        e = torch.zeros_like(loss)
        e.reshape(-1)[k] = 1.0 + k
        return e

    want = [torch.autograd.grad(LOSSES[name](x, "none"), x, upstream(k))[0] for k in range(3)]
    for k in range(3):
        got = torch.autograd.grad(loss, x, upstream(k), retain_graph=k < 2)[0]
        torch.testing.assert_close(got, want[k])


def test_loss_parts_match_their_definitions(gen):
    """return_z_loss (Liger-Kernel's) and return_lse (Cut Cross-Entropy's): the z-loss term
    reduced as the loss, and each row's lse (0 for ignored rows), both differentiable."""
    x = torch.randn(4, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 4, -100, 2])
    for reduction in ("mean", "sum", "none"):
        loss, z, lse = fxt.cross_entropy(x, t, reduction=reduction, z_loss=1e-2, softcap=4.0,
                                         return_z_loss=True, return_lse=True)
        y = 4.0 * torch.tanh(x / 4.0)
        want_lse = torch.where(t != -100, torch.logsumexp(y, -1), 0.0)
        zr = 1e-2 * want_lse**2
        want_z = {"mean": zr.sum() / 3, "sum": zr.sum(), "none": zr}[reduction]
        torch.testing.assert_close(lse, want_lse)
        torch.testing.assert_close(z, want_z)
        torch.testing.assert_close(loss, F.cross_entropy(y, t, reduction=reduction) + want_z)
        (g,) = torch.autograd.grad((lse**2).sum() + 3.0 * z.sum(), x)
        (h,) = torch.autograd.grad((want_lse**2).sum() + 3.0 * want_z.sum(), x)
        torch.testing.assert_close(g, h)
    assert isinstance(fxt.cross_entropy(x, t, return_lse=True), tuple)
    loss, lse = fxt.cross_entropy(x * 1.0, t, return_lse=True, inplace_backward=True)
    with pytest.raises(RuntimeError, match="returns its lse for reading only"):
        lse.sum().backward()


def test_float32_losses_from_half_precision_logits(gen):
    """loss_dtype=torch.float32: per-row losses not rounded to bfloat16 (2**-8 relative)."""
    x = (torch.randn(64, 300, generator=gen) * 3).to(torch.bfloat16)
    t = torch.randint(0, 300, (64,), generator=gen)
    want = F.cross_entropy(x.double(), t, reduction="none")
    got = fxt.cross_entropy(x, t, reduction="none", loss_dtype=torch.float32)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=0.0)
    rounded = fxt.cross_entropy(x, t, reduction="none")
    assert rounded.dtype == torch.bfloat16
    assert float((rounded.double() - want).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="loss_dtype"):
        fxt.cross_entropy(x, t, loss_dtype=torch.float16)


def test_training_loop_follows_functional_cross_entropy():
    losses = {}
    for name, fn in (("fastxent", fxt.cross_entropy), ("torch", F.cross_entropy)):
        gen = torch.Generator().manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(),
                                    torch.nn.Linear(32, 50))
        for p in model.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        x = torch.randn(64, 16, generator=gen)
        t = torch.randint(0, 50, (64,), generator=gen)
        curve = []
        for _ in range(25):
            opt.zero_grad()
            loss = fn(model(x), t, label_smoothing=0.05)
            loss.backward()
            opt.step()
            curve.append(loss.item())
        losses[name] = curve
    assert losses["fastxent"][-1] < losses["fastxent"][0] / 2
    np.testing.assert_allclose(losses["fastxent"], losses["torch"], rtol=1e-5)


# --- the custom operator ---------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_custom_op_passes_opcheck(gen, reduction):
    from fastxent.torch import _cross_entropy_op
    x = torch.randn(6, 11, generator=gen, requires_grad=True)
    t = torch.randint(0, 11, (6,), generator=gen)
    w = torch.rand(11, generator=gen) + 0.5
    for parts in (False, True):
        results = torch.library.opcheck(_cross_entropy_op,
                                        (x, t, w, reduction, 3, 0.1, 1e-4, 30.0, parts, None))
        assert set(results.values()) == {"SUCCESS"}, results


def test_forward_only_calls(gen):
    from fastxent.torch import _forward_op
    x = torch.randn(6, 11, generator=gen)
    t = torch.randint(0, 11, (6,), generator=gen)
    torch.testing.assert_close(fxt.cross_entropy(x, t, reduction="none"),
                               F.cross_entropy(x, t, reduction="none"))
    with torch.no_grad():
        loss = fxt.cross_entropy(x.clone().requires_grad_(), t)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, F.cross_entropy(x, t))
    for parts, dtype in ((False, None), (True, torch.float64)):
        results = torch.library.opcheck(_forward_op,
                                        (x, t, None, "sum", -100, 0.0, 0.0, None, parts, dtype))
        assert set(results.values()) == {"SUCCESS"}, results


def test_torch_compile_traces_without_graph_break(gen):
    def step(logits, targets):
        return fxt.cross_entropy(logits * 2.0, targets, label_smoothing=0.1)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    x = torch.randn(6, 11, generator=gen)
    t = torch.randint(0, 11, (6,), generator=gen)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    (compiled(a, t) * 3).backward()
    (step(b, t) * 3).backward()
    torch.testing.assert_close(a.grad, b.grad)


# --- CUDA tensors (PyTorch's CUDA tensors cannot be simulated: these run on a GPU only) ---------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU for torch")


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", OPTIONS)
def test_cuda_tensors_match_functional_cross_entropy(gen, dtype, name):
    x, t = _inputs(gen, (6, 11), (6,), dtype)
    opts = dict(OPTIONS[name])
    if opts.get("weight"):
        opts["weight"] = (torch.rand(11, generator=gen) + 0.5).cuda()
    go = torch.rand(6, generator=gen, dtype=torch.float64).cuda() + 0.5 \
        if opts.get("reduction") == "none" else None
    la, ga, lb, gb = _both(x.cuda(), t.cuda(), grad_output=go, **opts)
    assert la.is_cuda and ga.is_cuda
    _check(la.cpu(), ga.cpu(), lb.cpu(), gb.cpu(), dtype, roundings=2 if go is not None else 1)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_cuda_class_weights_in_half_precision_and_parts(gen, dtype):
    """On the GPU: class weights of the logits' half precision (widened on the device), the
    loss's parts and their gradients, loss_dtype, and the gradient of probability targets."""
    x = (torch.randn(6, 11, generator=gen) * 3).to(dtype).cuda().requires_grad_()
    t = torch.tensor([0, 3, 10, -100, 2, 7]).cuda()
    w = (torch.rand(11, generator=gen) + 0.5).to(dtype).cuda()
    loss, z, lse = fxt.cross_entropy(x, t, weight=w, z_loss=1e-3, return_z_loss=True,
                                     return_lse=True, loss_dtype=torch.float32)
    xd = x.detach().double().requires_grad_()
    want_lse = torch.where(t != -100, torch.logsumexp(xd, -1), 0.0)
    want = F.cross_entropy(xd, t, weight=w.double()) + 1e-3 * (want_lse**2).sum() / 5
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(lse.double(), want_lse, rtol=1e-5, atol=1e-6)
    (g,) = torch.autograd.grad(loss + lse.sum(), x)
    (h,) = torch.autograd.grad(want + want_lse.sum(), xd)
    torch.testing.assert_close(g.double(), h, rtol=2 * ROUND[dtype], atol=1e-6)
    q = torch.softmax(torch.randn(6, 11, generator=gen, dtype=torch.float64), -1).cuda()
    q.requires_grad_()
    (gq,) = torch.autograd.grad(fxt.cross_entropy(xd.detach(), q), q)
    qq = q.detach().clone().requires_grad_()
    torch.testing.assert_close(gq, torch.autograd.grad(F.cross_entropy(xd.detach(), qq), qq)[0])


@needs_gpu
def test_cuda_tensors_in_place_k_d_and_compiled(gen):
    x, t = _inputs(gen, (3, 11, 2, 4), (3, 2, 4), torch.float32)
    _check(*(r.cpu() for r in _both(x.cuda(), t.cuda(), label_smoothing=0.1)), torch.float32)
    lin = _model(gen).cuda()
    h, t = torch.randn(6, 8, generator=gen).cuda(), torch.randint(0, 11, (6,), generator=gen).cuda()
    fxt.cross_entropy(lin(h), t, inplace_backward=True).backward()
    want = lin.weight.grad.clone()
    lin.weight.grad = None
    F.cross_entropy(lin(h), t).backward()
    torch.testing.assert_close(want, lin.weight.grad, rtol=1e-6, atol=1e-6)
    compiled = torch.compile(lambda z: fxt.cross_entropy(z, t), fullgraph=True)
    a = lin(h).detach().requires_grad_()
    compiled(a).backward()
    b = a.detach().requires_grad_()
    F.cross_entropy(b, t).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-6)


# --- binary cross-entropy on logits --------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_with_logits_matches_functional(gen, dtype, reduction):
    x = (torch.randn(5, 7, generator=gen, dtype=torch.float64) * 4).to(dtype)
    y = torch.rand(5, 7, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.rand(7, generator=gen, dtype=torch.float64) + 0.5
    pw = torch.rand(7, generator=gen, dtype=torch.float64) * 3
    a = x.detach().clone().requires_grad_()
    b = x.detach().double().requires_grad_()
    la = fxt.binary_cross_entropy_with_logits(a, y, weight=w.to(dtype), reduction=reduction,
                                              pos_weight=pw.to(dtype))
    lb = F.binary_cross_entropy_with_logits(b, y.double(), weight=w.to(dtype).double(),
                                            reduction=reduction, pos_weight=pw.to(dtype).double())
    go = torch.rand(lb.shape, generator=gen, dtype=torch.float64) + 0.5
    (la * go.to(la.dtype)).sum().backward()
    (lb * go.to(dtype).double()).sum().backward()
    # the kept gradient is rounded, then scaled by the upstream gradient (not 1 here): 2 roundings
    _check(la, a.grad, lb, b.grad, dtype, roundings=2)


def test_bce_with_logits_module_opcheck_and_errors(gen):
    from fastxent.torch import _bce_op
    x = torch.randn(4, 6, generator=gen, requires_grad=True)
    y = (torch.rand(4, 6, generator=gen) > 0.5).float()
    ours = fxt.BCEWithLogitsLoss(pos_weight=torch.full((6,), 2.0), reduction="sum")
    theirs = torch.nn.BCEWithLogitsLoss(pos_weight=torch.full((6,), 2.0), reduction="sum")
    torch.testing.assert_close(ours(x, y), theirs(x, y))
    for reduction in ("mean", "none"):
        results = torch.library.opcheck(_bce_op, (x, y, None, None, reduction))
        assert set(results.values()) == {"SUCCESS"}, results
    with pytest.raises(RuntimeError, match="target requires grad"):
        fxt.binary_cross_entropy_with_logits(x, y.clone().requires_grad_())
    with pytest.raises(ValueError, match=r"targets must be in \[0, 1\]"):
        fxt.binary_cross_entropy_with_logits(x, y * 2)


@needs_gpu
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_bce_with_logits_on_cuda_tensors(gen, reduction):
    x = torch.randn(5, 300, generator=gen) * 4
    y = (torch.rand(5, 300, generator=gen) > 0.7).float()
    pw = torch.rand(300, generator=gen) * 3
    a = x.cuda().requires_grad_()
    b = x.double().requires_grad_()
    la = fxt.binary_cross_entropy_with_logits(a, y.cuda(), reduction=reduction,
                                              pos_weight=pw.cuda())
    lb = F.binary_cross_entropy_with_logits(b, y.double(), reduction=reduction,
                                            pos_weight=pw.double())
    assert la.is_cuda
    la.sum().backward()
    lb.sum().backward()
    _check(la.cpu(), a.grad.cpu(), lb, b.grad, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_on_probabilities_matches_functional(gen, dtype, reduction):
    p = torch.rand(5, 7, generator=gen, dtype=torch.float64).to(dtype)
    p[0, :3] = torch.tensor([0.0, 1.0, 1e-30], dtype=dtype)
    y = torch.rand(5, 7, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.rand(5, 1, generator=gen, dtype=torch.float64).to(dtype) + 0.5
    a = p.detach().clone().requires_grad_()
    b = p.detach().double().requires_grad_()
    la = fxt.binary_cross_entropy(a, y, weight=w, reduction=reduction)
    lb = F.binary_cross_entropy(b, y.double(), weight=w.double(), reduction=reduction)
    go = torch.rand(lb.shape, generator=gen, dtype=torch.float64) + 0.5
    (la * go.to(la.dtype)).sum().backward()
    (lb * go.to(dtype).double()).sum().backward()
    assert la.dtype == dtype
    torch.testing.assert_close(la.double(), lb, rtol=1e-6, atol=1e-6)
    # the gradient at p = 0 or 1 is about 1e12 (PyTorch's 1e-12 floor): relative there
    torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-6, atol=1e-6)
    criterion = fxt.BCELoss(reduction=reduction)
    torch.testing.assert_close(criterion(p, y), torch.nn.BCELoss(reduction=reduction)(p, y))
    results = torch.library.opcheck(fxt._bce_probs_op, (a.detach().requires_grad_(), y, None,
                                                        reduction))
    assert set(results.values()) == {"SUCCESS"}, results
