"""``fastxent.torch``'s entropy, KL divergence and cross-entropy from probabilities: the NumPy
functions of :mod:`fastxent.losses.family` on zero-copy views of CPU tensors, as ``torch.library``
custom operators whose gradient is computed with the value and scaled in the backward pass (the
pattern of ``fastxent.torch.cross_entropy``).

When no gradient is wanted (``torch.no_grad()``, or an input that does not require it), the value
alone is computed: the gradient pass and its memory are skipped. These functions run on the CPU;
their CUDA kernels are not written, and a CUDA tensor gets an error that says so.
"""

from typing import Optional, Tuple

import torch

from ..dispatch import checks as _checks
from ..losses import family as _family
from .support import _arrays, _keep_gradient, _no_double_backward, _scaled, _tensor


def _cpu_only(name, *tensors):
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_cuda:
            raise NotImplementedError(f"fastxent.torch.{name} runs on the CPU only (its CUDA "
                                      "kernel is not written); move the tensors to the CPU")


def _wants_grad(*tensors):
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _no_target_grad(name, **tensors):
    for arg, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.requires_grad:
            raise RuntimeError(f"fastxent.torch.{name} differentiates with respect to its "
                               f"first input only, and {arg} requires grad")


# --- entropy -------------------------------------------------------------------------------------


@torch.library.custom_op("fastxent::entropy", mutates_args=())
def _entropy_op(x: torch.Tensor, reduction: str) -> Tuple[torch.Tensor, torch.Tensor]:
    h, g = _family.entropy_with_grad(_arrays(x.detach()))
    return _tensor(h).to(x.dtype), _tensor(g)


@_entropy_op.register_fake
def _entropy_fake(x, reduction):
    return x.new_empty(x.shape[:-1]), torch.empty_like(x, memory_format=torch.contiguous_format)


_keep_gradient(_entropy_op, 1, 2, per_row=True)


def entropy(input, *, kind="logits"):
    """Entropy (nats) of the distribution on the last axis: :func:`fastxent.entropy` on a
    tensor, differentiable with respect to the logits (``kind="logits"``); ``kind="probs"``
    computes the value only.

    Examples
    --------
    >>> import torch, fastxent.torch as fxt
    >>> x = torch.log(torch.tensor([[0.5, 0.25, 0.25]])).requires_grad_()
    >>> h = fxt.entropy(x)
    >>> round(h.item(), 4)
    1.0397
    >>> h.sum().backward()
    >>> x.grad
    tensor([[-0.1733,  0.0866,  0.0866]])
    """
    _cpu_only("entropy", input)
    _family._kind(kind)
    if kind == "logits" and _wants_grad(input):
        return _entropy_op(input, "none")[0]
    if kind != "logits" and _wants_grad(input):
        raise NotImplementedError("fastxent.torch.entropy has its gradient for kind='logits' "
                                  "only; for probabilities use -(p * p.log()).sum(-1)")
    return _tensor(_family.entropy(_arrays(input.detach()), kind=kind)).to(input.dtype)


# --- KL divergence -------------------------------------------------------------------------------


@torch.library.custom_op("fastxent::kl_divergence", mutates_args=())
def _kl_op(p: torch.Tensor, q: torch.Tensor,
           reduction: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kl, (gp, gq) = _family.kl_divergence_with_grad(_arrays(p.detach()), _arrays(q.detach()),
                                                   reduction=reduction)
    return _tensor(kl).to(p.dtype), _tensor(gp), _tensor(gq)


@_kl_op.register_fake
def _kl_fake(p, q, reduction):
    shape = p.shape[:-1] if reduction == "none" else ()
    grad = torch.empty_like(p, memory_format=torch.contiguous_format)
    return p.new_empty(shape), grad, torch.empty_like(grad)


def _kl_setup(ctx, inputs, output):
    ctx.reduction = inputs[2]
    ctx.save_for_backward(output[1], output[2])
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.set_materialize_grads(False)


def _kl_backward(ctx, grad_loss, _gp, _gq):
    _no_double_backward()
    gp, gq = ctx.saved_tensors
    return _scaled(gp, grad_loss, ctx.reduction), _scaled(gq, grad_loss, ctx.reduction), None


_kl_op.register_autograd(_kl_backward, setup_context=_kl_setup)


def kl_divergence(p, q, *, kind="logits", reduction="none"):
    """KL(P || Q) over the last axis: :func:`fastxent.kl_divergence` on tensors, differentiable
    with respect to both logit tensors (``kind="logits"``): ``P·(log P - log Q - KL)`` for ``p``
    and ``Q - P`` for ``q``. ``kind="probs"`` computes the value only.

    ``reduction="mean"`` averages over every row (all leading dimensions), which is PyTorch's
    ``"batchmean"`` of the rows flattened to 2-D. For distillation,
    ``kl_divergence(teacher_logits, student_logits, reduction="mean")`` on (N, V) logits is
    ``F.kl_div(F.log_softmax(student), F.log_softmax(teacher), reduction="batchmean",
    log_target=True)``, without its N×V temporaries.

    Examples
    --------
    >>> import torch, fastxent.torch as fxt
    >>> teacher = torch.log(torch.tensor([[0.5, 0.5]]))
    >>> student = torch.log(torch.tensor([[0.9, 0.1]])).requires_grad_()
    >>> kl = fxt.kl_divergence(teacher, student, reduction="mean")
    >>> round(kl.item(), 6)
    0.510826
    >>> kl.backward()
    >>> student.grad
    tensor([[ 0.4000, -0.4000]])
    """
    _cpu_only("kl_divergence", p, q)
    _family._kind(kind)
    red = _checks.reduction(reduction)
    if kind == "logits" and _wants_grad(p, q):
        return _kl_op(p, q, red)[0]
    if kind != "logits" and _wants_grad(p, q):
        raise NotImplementedError("fastxent.torch.kl_divergence has its gradient for "
                                  "kind='logits' only")
    kl = _family.kl_divergence(_arrays(p.detach()), _arrays(q.detach()), kind=kind,
                               reduction=red)
    return _tensor(kl).to(p.dtype)


# --- cross-entropy from probabilities ------------------------------------------------------------


@torch.library.custom_op("fastxent::cross_entropy_from_probs", mutates_args=())
def _from_probs_op(probs: torch.Tensor, targets: torch.Tensor, weight: Optional[torch.Tensor],
                   reduction: str, ignore_index: int,
                   eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    loss, g = _family.cross_entropy_from_probs_with_grad(
        _arrays(probs.detach()), _arrays(targets.detach()),
        weight=None if weight is None else _arrays(weight.detach()), reduction=reduction,
        ignore_index=ignore_index, eps=eps if eps > 0 else None)
    return _tensor(loss).to(probs.dtype), _tensor(g)


@_from_probs_op.register_fake
def _from_probs_fake(probs, targets, weight, reduction, ignore_index, eps):
    shape = probs.shape[:-1] if reduction == "none" else ()
    return probs.new_empty(shape), torch.empty_like(probs, memory_format=torch.contiguous_format)


_keep_gradient(_from_probs_op, 3, 6, per_row=True)


def cross_entropy_from_probs(input, target, weight=None, *, ignore_index=-100, reduction="mean",
                             eps=None):
    """Categorical cross-entropy of probabilities (``-Σ w·q·log p`` per row, classes last):
    :func:`fastxent.cross_entropy_from_probs` on tensors, differentiable with respect to
    ``input`` (``-w·q/p``, 0 where ``eps`` clips p or the log is clamped at -100). ``target``
    holds class indices or a distribution per row; ``weight`` per-class weights.

    Examples
    --------
    >>> import torch, fastxent.torch as fxt
    >>> p = torch.tensor([[0.4, 0.4, 0.2], [0.1, 0.2, 0.7]], requires_grad=True)
    >>> loss = fxt.cross_entropy_from_probs(p, torch.tensor([1, 2]), reduction="none")
    >>> loss.detach().round(decimals=2)
    tensor([0.9200, 0.3600])
    >>> loss.sum().backward()
    >>> p.grad.round(decimals=4)
    tensor([[ 0.0000, -2.5000,  0.0000],
            [ 0.0000,  0.0000, -1.4286]])
    """
    _cpu_only("cross_entropy_from_probs", input, target, weight)
    _no_target_grad("cross_entropy_from_probs", target=target, weight=weight)
    red = _checks.reduction(reduction)
    clip = _checks.clip_eps(eps, _arrays(input.detach()).dtype)
    if _wants_grad(input):
        return _from_probs_op(input, target, weight, red, int(ignore_index), float(clip))[0]
    loss = _family.cross_entropy_from_probs(
        _arrays(input.detach()), _arrays(target.detach()),
        weight=None if weight is None else _arrays(weight.detach()), ignore_index=ignore_index,
        reduction=red, eps=clip if clip > 0 else None)
    return _tensor(loss).to(input.dtype)
