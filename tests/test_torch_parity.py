"""Parity with ``torch.nn.functional.cross_entropy``: values and (autograd) gradients in float64 on
the same values, for every option and their combinations, K-D shapes, soft-cap and z-loss.

PyTorch puts the class axis at dim 1 of ``(N, C, d1, ...)``; fastxent puts it last, so the
logits (and probability targets) are moved with ``movedim(-1, 1)`` before calling PyTorch.
"""

import math

import numpy as np
import pytest
from conftest import BACKENDS, F32, F64, random_logits, random_probs, random_targets, random_weight

import fastxent as fx

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = pytest.mark.torch

RTOL = 1e-10  # both sides compute in float64
ATOL = 1e-12


def torch_loss_and_grad(logits, targets, *, reduction="mean", ignore_index=-100, weight=None,
                        label_smoothing=0.0, z_loss=0.0, softcap=None, grad_output=1.0):
    """PyTorch's loss and the gradient of ``Σ grad_output·loss`` by autograd, class axis last.

    Soft-cap is ``c·tanh(x/c)`` before ``F.cross_entropy``; z-loss is ``z·logsumexp²`` of every
    non-ignored row, averaged over those rows for "mean" (Liger-Kernel's convention).
    """
    x = torch.tensor(np.asarray(logits, dtype=np.float64), requires_grad=True)
    y = x if softcap is None else softcap * torch.tanh(x / softcap)
    t = torch.tensor(np.asarray(targets))
    if t.is_floating_point():
        t = t.to(torch.float64)
        if t.ndim > 1:
            t = t.movedim(-1, 1)
    w = None if weight is None else torch.tensor(weight, dtype=torch.float64)
    inp = y.movedim(-1, 1) if y.ndim > 1 else y
    loss = F.cross_entropy(inp, t, weight=w, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)
    if z_loss:
        lse = torch.logsumexp(y, dim=-1)
        valid = (torch.ones_like(lse, dtype=torch.bool) if t.is_floating_point()
                 else t != ignore_index)
        z = torch.where(valid, z_loss * lse**2, torch.zeros_like(lse))
        if reduction == "none":
            loss = loss + z
        elif reduction == "sum":
            loss = loss + z.sum()
        else:
            loss = loss + z.sum() / valid.sum()
    go = torch.as_tensor(np.asarray(grad_output, dtype=np.float64))
    (loss * go).sum().backward()
    value = loss.detach().numpy()
    return (float(value) if reduction != "none" else value), x.grad.numpy()


def assert_parity(logits, targets, backend, rtol=RTOL, atol=ATOL, **options):
    grad_output = options.get("grad_output", 1.0)
    want_loss, want_grad = torch_loss_and_grad(logits, targets, **options)
    options.pop("grad_output", None)
    loss, grad = fx.cross_entropy_with_grad(logits, targets, backend=backend,
                                            grad_output=grad_output, **options)
    np.testing.assert_allclose(loss, want_loss, rtol=rtol, atol=atol, equal_nan=True)
    np.testing.assert_allclose(grad.astype(np.float64), want_grad, rtol=rtol, atol=atol,
                               equal_nan=True)
    return loss, grad


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore_index", [-100, 2])
@pytest.mark.parametrize("backend", BACKENDS)
def test_index_targets(rng, backend, ignore_index, reduction, weighted, smoothing):
    logits = random_logits(rng, (12, 300), F64)
    targets = random_targets(rng, (12,), 300, ignore_index=ignore_index)
    targets[:3] = [ignore_index, 2, 299]
    weight = random_weight(rng, 300) if weighted else None
    assert_parity(logits, targets, backend, reduction=reduction, ignore_index=ignore_index,
                  weight=weight, label_smoothing=smoothing)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_probability_targets(rng, backend, reduction, weighted, smoothing):
    logits = random_logits(rng, (12, 300), F64)
    targets = random_probs(rng, logits.shape, F64)
    weight = random_weight(rng, 300) if weighted else None
    assert_parity(logits, targets, backend, reduction=reduction, weight=weight,
                  label_smoothing=smoothing)


@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("lead", [(), (3, 4), (2, 3, 2)], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_k_dimensional(rng, backend, lead, kind):
    """Unbatched (C,) and K-D (N, d1, ..., C) against PyTorch's (N, C, d1, ...)."""
    logits = random_logits(rng, lead + (40,), F64)
    weight = random_weight(rng, 40)
    if kind == "index":
        targets = random_targets(rng, lead, 40, ignore_index=-100 if lead else None)
        options = dict(weight=weight, label_smoothing=0.1)
    else:
        targets = random_probs(rng, logits.shape, F64)
        options = dict(weight=weight, label_smoothing=0.1)
    for reduction in ("mean", "sum", "none"):
        loss, _ = assert_parity(logits, targets, backend, reduction=reduction, **options)
        if reduction == "none":
            assert np.shape(loss) == lead


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_all_ignored_mean(rng, backend, weighted, smoothing):
    """Every target ignored, reduction="mean": PyTorch gives a NaN loss (0/0) and a gradient of
    zeros (it skips ignored rows in the backward). fastxent gives the same."""
    logits = random_logits(rng, (5, 30), F64)
    targets = np.full(5, -100)
    weight = random_weight(rng, 30) if weighted else None
    want_loss, want_grad = torch_loss_and_grad(logits, targets, weight=weight,
                                               label_smoothing=smoothing)
    assert math.isnan(want_loss) and not np.any(want_grad)  # what PyTorch does, pinned
    loss, grad = fx.cross_entropy_with_grad(logits, targets, weight=weight,
                                            label_smoothing=smoothing, backend=backend)
    assert math.isnan(loss)
    np.testing.assert_array_equal(grad, want_grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend, reduction):
    logits = np.zeros((0, 7))
    targets = np.zeros(0, np.int64)
    want_loss, want_grad = torch_loss_and_grad(logits, targets, reduction=reduction)
    loss, grad = fx.cross_entropy_with_grad(logits, targets, reduction=reduction, backend=backend)
    np.testing.assert_array_equal(loss, want_loss)
    assert grad.shape == want_grad.shape


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_softcap(rng, backend, reduction):
    logits = random_logits(rng, (10, 300), F64, scale=20.0)
    targets = random_targets(rng, (10,), 300, ignore_index=-100)
    assert_parity(logits, targets, backend, reduction=reduction, softcap=15.0,
                  label_smoothing=0.1, z_loss=1e-3)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_z_loss_with_every_option(rng, backend, reduction):
    logits = random_logits(rng, (10, 300), F64, scale=5.0)
    targets = random_targets(rng, (10,), 300, ignore_index=-100)
    targets[0] = -100
    assert_parity(logits, targets, backend, reduction=reduction, z_loss=1e-2,
                  weight=random_weight(rng, 300), label_smoothing=0.1)
    probs = random_probs(rng, logits.shape, F64)
    assert_parity(logits, probs, backend, reduction=reduction, z_loss=1e-2,
                  weight=random_weight(rng, 300), label_smoothing=0.1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_output(rng, backend):
    logits = random_logits(rng, (3, 4, 50), F64)
    targets = random_targets(rng, (3, 4), 50, ignore_index=-100)
    weight = random_weight(rng, 50)
    assert_parity(logits, targets, backend, reduction="none", weight=weight, label_smoothing=0.1,
                  grad_output=rng.standard_normal((3, 4)))
    assert_parity(logits, targets, backend, reduction="mean", weight=weight, label_smoothing=0.1,
                  grad_output=-2.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_classes(rng, backend):
    """-inf logits: masked classes, and an infinite loss where the target itself is masked.

    Bug fixed: the reference backend summed w·q·y over the whole row for class-index targets, so
    0 · -inf made every masked row NaN.
    """
    logits = random_logits(rng, (6, 50), F64)
    targets = random_targets(rng, (6,), 50)
    mask = rng.random((6, 50)) < 0.4
    mask[np.arange(6), targets] = False
    mask[5, targets[5]] = True
    logits[mask] = -np.inf
    loss, _ = assert_parity(logits, targets, backend, reduction="none")
    assert np.isinf(loss[5]) and np.isfinite(loss[:5]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_plus_inf_row(rng, backend):
    """A +inf logit makes its row's loss and gradient NaN, as PyTorch's log_softmax does."""
    logits = random_logits(rng, (4, 30), F64)
    logits[2, 7] = np.inf
    targets = random_targets(rng, (4,), 30)
    loss, grad = assert_parity(logits, targets, backend, reduction="none")
    assert np.isnan(loss[2]) and np.isfinite(np.delete(loss, 2)).all()
    assert np.isfinite(np.delete(grad, 2, axis=0)).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_inputs_at_the_float32_contract(rng, backend):
    """float32 logits: within 1e-6 of PyTorch's float64 result on the same values."""
    logits = random_logits(rng, (16, 5000), F32, scale=10.0)
    targets = random_targets(rng, (16,), 5000, ignore_index=-100)
    weight = random_weight(rng, 5000)
    for reduction in ("mean", "none"):
        assert_parity(logits, targets, backend, rtol=1e-6, atol=1e-6, reduction=reduction,
                      weight=weight, label_smoothing=0.1)
