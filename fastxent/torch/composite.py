"""``fastxent.torch.cross_entropy`` written with PyTorch's own differentiable operations.

The fused kernel gives the gradient of the loss with respect to the logits, and nothing more.
What it cannot give, the backward pass takes from this twin, through autograd:

- second derivatives (``create_graph=True``: ``torch.autograd.gradgradcheck``, Hessian-vector
  products), which need the gradient itself as a differentiable function of the logits;
- the gradient with respect to probability targets and to class weights that require it, which
  ``F.cross_entropy`` gives (class weights with class-index targets it refuses, and so does
  fastxent).

It builds the log-probabilities, as PyTorch's own function does (temporaries of the logits' size,
in float32 for half-precision logits). The definitions are fastxent's: ``F.cross_entropy`` of the
soft-capped logits plus ``z_loss * lse**2`` per counted row, the z-loss term averaged over the
counted rows for a mean.
"""

import torch
import torch.nn.functional as F

from ..kernels.host import z_part


def cross_entropy(x, t, weight, reduction, ignore_index, label_smoothing, z_loss, softcap):
    """``(loss, z-loss term, lse)`` of class-last logits ``x`` (..., V) against class indices
    (...) or probabilities (..., V), as ``fastxent.torch.cross_entropy`` defines them, in the
    compute type (float64 for float64 logits, else float32); ``lse`` is 0 for ignored rows."""
    v = x.shape[-1]
    lead = x.shape[:-1]
    y, _ = capped(x.reshape(-1, v), softcap)
    compute = y.dtype
    probs = t.is_floating_point()
    tt = t.reshape(-1, v).to(compute) if probs else t.reshape(-1)
    w = None if weight is None else weight.to(compute)
    # PyTorch refuses an ignore_index with probabilities, which have no ignored rows
    ce = F.cross_entropy(y, tt, weight=w, ignore_index=-100 if probs else ignore_index,
                         reduction=reduction, label_smoothing=label_smoothing)
    valid = torch.ones(y.shape[0], dtype=torch.bool, device=y.device) if probs else (
        tt != ignore_index)
    lse = torch.where(valid, torch.logsumexp(y, -1), 0.0)
    z = z_part(lse, z_loss, reduction, valid.sum())
    if reduction == "none":
        return (ce + z).reshape(lead), z.reshape(lead), lse.reshape(lead)
    return ce + z, z, lse.reshape(lead)


def backward(x, t, weight, options, grads, needs, create_graph):
    """The gradients with respect to ``(x, t, weight)`` (None for those not in ``needs``) of
    the outputs ``(loss, z-loss term, lse)`` of :func:`cross_entropy` against their upstream
    ``grads`` (None where undefined), through autograd; differentiable again when
    ``create_graph`` (then ``x``, ``t`` and ``weight`` are the saved tensors of the graph)."""
    with torch.enable_grad():
        inputs = []
        args = []
        for a, need in zip((x, t, weight), needs):
            if a is not None and not create_graph:
                a = a.detach().requires_grad_(need)
            args.append(a)
            if need:
                inputs.append(a)
        outputs = cross_entropy(*args, **options)
        pairs = [(o, g.to(o.dtype)) for o, g in zip(outputs, grads) if g is not None]
        got = iter(torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs],
                                       create_graph=create_graph, allow_unused=True))
    return tuple(next(got) if need else None for need in needs)


def capped(x, softcap):
    """``(y, dy/dx or None)`` of logits ``x`` in their compute type (float64 for float64, else
    float32): ``softcap·tanh(x/softcap)`` and its slope ``1 - (y/softcap)²``, or ``x`` itself."""
    y = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    if softcap is None:
        return y, None
    y = softcap * torch.tanh(y / softcap)
    return y, 1.0 - (y / softcap) ** 2


def lse_gradient(x, lse, factor, softcap):
    """``factor·∂lse/∂x = factor·softmax(y)·dy/dx`` per row of logits ``x`` (N, V), given each
    row's ``lse`` of the capped logits ``y`` and its ``factor`` (N,): what a gradient of the
    log-sum-exp (or of the z-loss term, ``2·z·lse`` times its own) adds to the logits'. In the
    compute type; temporaries of ``x``'s size."""
    y, slope = capped(x, softcap)
    term = torch.exp(y - lse.to(y.dtype)[:, None]) * factor.to(y.dtype)[:, None]
    return term if slope is None else term * slope
