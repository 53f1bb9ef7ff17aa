"""PyTorch drop-ins: ``cross_entropy`` with the signature and results of
``torch.nn.functional.cross_entropy``, differentiable by autograd, and ``CrossEntropyLoss``.

CPU tensors go to the Numba CPU backend through zero-copy NumPy views (bfloat16 included, through
``ml_dtypes``); CUDA tensors go to the CUDA backend on PyTorch's current stream. The loss has the
input's dtype and device, as PyTorch's.

Autograd: the forward pass runs the fused kernel and keeps the gradient for the backward pass,
which only scales it by the upstream gradient when that is not 1 (``loss.backward()`` passes 1).
The kernel is a ``torch.library`` custom operator (``fastxent::cross_entropy``) with a fake
implementation, so ``torch.compile`` traces through it without a graph break.
The other way, keeping O(N) statistics and writing the gradient in backward, reads the logits
once more: on the reference batch of the CPU backend (N=2048, V=131072 float32) the statistics
pass takes about 42 ms and the fused pass about 71 ms, so forward + backward would cost about
113 ms against 71 ms, for the same peak memory in a training step (the gradient exists from the
end of the forward pass instead of from the start of the backward pass, and nothing runs in
between).

``inplace_backward=True`` writes the gradient over the logits in the forward pass (no memory of
the logits' size at all); it is an ``autograd.Function`` (``torch.compile`` breaks the graph
there). Autograd sees the mutation: the logits' version counter moves, so an
operation that saved them for its own backward pass raises there, and a differentiable use of the
overwritten logits after the call raises in the backward pass. A non-differentiable read (an
``argmax`` for accuracy) cannot be caught: take it before the call.
"""

from typing import Optional, Tuple

import torch

from . import _api
from . import _family as _api_family
from ._family_torch import cross_entropy_from_probs, entropy, kl_divergence
from ._linear_torch import LinearCrossEntropyLoss, linear_cross_entropy
from ._torch_support import _arrays, _host, _keep_gradient, _no_double_backward, _scaled, _tensor

__all__ = ["BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "LinearCrossEntropyLoss",
           "binary_cross_entropy", "binary_cross_entropy_with_logits", "cross_entropy",
           "cross_entropy_from_probs", "entropy", "kl_divergence", "linear_cross_entropy"]

_REDUCTIONS = ("mean", "sum", "none")


def _legacy_reduction(size_average, reduce):
    """PyTorch's rule for the deprecated ``size_average`` / ``reduce`` arguments."""
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    if size_average and reduce:
        return "mean"
    return "sum" if reduce else "none"


def _call(fn, logits, targets, weight, **options):
    """``fn``, one of fastxent's functions, on tensors; its loss as a tensor in the logits' dtype
    and on their device, and anything else it returns as tensors (or None)."""
    w = None if weight is None else _arrays(weight.detach())
    result = fn(_arrays(logits.detach()), _arrays(targets.detach()), weight=w, **options)
    loss, *rest = result if isinstance(result, tuple) else (result,)
    loss = _tensor(loss).to(device=logits.device, dtype=logits.dtype)
    return (loss, *(None if r is None else _tensor(r) for r in rest))


def _fused_call(logits, targets, weight, options, inplace):
    """fastxent's fused kernel on tensors: (loss, gradient, or None in place)."""
    loss, grad = _call(_api.cross_entropy_with_grad, logits, targets, weight, inplace=inplace,
                       **options)
    return loss, (None if inplace else grad)


@torch.library.custom_op("fastxent::cross_entropy", mutates_args=())
def _cross_entropy_op(logits: torch.Tensor, targets: torch.Tensor, weight: Optional[torch.Tensor],
                      reduction: str, ignore_index: int, label_smoothing: float, z_loss: float,
                      softcap: Optional[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(loss, gradient of the loss) of class-last logits: fastxent's fused kernel as an operator
    that ``torch.compile`` traces through."""
    return _fused_call(logits, targets, weight, dict(
        reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
        z_loss=z_loss, softcap=softcap), False)


@_cross_entropy_op.register_fake
def _cross_entropy_fake(logits, targets, weight, reduction, ignore_index, label_smoothing, z_loss,
                        softcap):
    shape = logits.shape[:-1] if reduction == "none" else ()
    return logits.new_empty(shape), torch.empty_like(logits, memory_format=torch.contiguous_format)


_keep_gradient(_cross_entropy_op, 3, 8, per_row=True)


@torch.library.custom_op("fastxent::cross_entropy_forward", mutates_args=())
def _forward_op(logits: torch.Tensor, targets: torch.Tensor, weight: Optional[torch.Tensor],
                reduction: str, ignore_index: int, label_smoothing: float, z_loss: float,
                softcap: Optional[float]) -> torch.Tensor:
    """The loss alone (one read of the logits): for calls that need no gradient."""
    (loss,) = _call(_api.cross_entropy, logits, targets, weight, reduction=reduction,
                    ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
                    softcap=softcap)
    return loss


@_forward_op.register_fake
def _forward_fake(logits, targets, weight, reduction, ignore_index, label_smoothing, z_loss,
                  softcap):
    return logits.new_empty(logits.shape[:-1] if reduction == "none" else ())


class _InplaceCrossEntropy(torch.autograd.Function):
    """``inplace_backward=True``: the fused kernel writes the gradient over the logits in the
    forward pass, which autograd is told about (``mark_dirty``)."""

    @staticmethod
    def forward(ctx, logits, targets, weight, options):
        loss, _ = _fused_call(logits, targets, weight, options, True)
        ctx.reduction = options["reduction"]
        # autograd bumps the logits' version; saved, they raise if anything changes them again
        ctx.mark_dirty(logits)
        ctx.save_for_backward(logits)
        return loss, logits

    @staticmethod
    def backward(ctx, grad_loss, grad_dirty):
        _no_double_backward()
        if grad_dirty is not None and bool(torch.any(grad_dirty != 0)):
            raise RuntimeError("fastxent.torch.cross_entropy(..., inplace_backward=True) wrote the "
                               "gradient over the logits, and the logits were then used by an "
                               "operation being differentiated; take what you need from them "
                               "before the call, or leave inplace_backward=False")
        (grad,) = ctx.saved_tensors
        if grad_loss is None:
            return None, None, None, None
        return _scaled(grad, grad_loss, ctx.reduction), None, None, None


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0, *, z_loss=0.0, softcap=None,
                  inplace_backward=False):
    """``torch.nn.functional.cross_entropy``, computed by fastxent's fused kernels.

    Parameters
    ----------
    input : Tensor
        Logits of shape ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)`` (classes at dim 1, as
        PyTorch), float32, float64, float16 or bfloat16, on the CPU or a CUDA device.
    target : Tensor
        Class indices of the input's shape without the class dimension, or probabilities of the
        input's shape.
    weight, ignore_index, reduction, label_smoothing, size_average, reduce
        As ``torch.nn.functional.cross_entropy``.
    z_loss : float
        Adds ``z_loss * logsumexp**2`` per non-ignored row (averaged over those rows for "mean").
    softcap : float, optional
        Applies ``softcap * tanh(input / softcap)`` first.
    inplace_backward : bool
        Write the gradient over ``input`` in the forward pass: no memory of the input's size. Needs
        the classes in the last dimension (``(C,)`` or ``(N, C)``), contiguous, and an input that
        is not a leaf requiring grad. See the module's notes on what autograd then checks.

    Returns
    -------
    Tensor
        The loss, in the input's dtype and on its device: 0-d, or for ``reduction="none"`` the
        shape of the input without the class dimension.

    Examples
    --------
    >>> import torch, fastxent.torch as fxt
    >>> logits = torch.tensor([[2.0, 1.0, 0.1]], requires_grad=True)
    >>> loss = fxt.cross_entropy(logits, torch.tensor([0]))
    >>> round(loss.item(), 4)
    0.417
    >>> loss.backward()
    >>> logits.grad
    tensor([[-0.3410,  0.2424,  0.0986]])
    """
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(size_average, reduce)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not one of "
                         f"{', '.join(map(repr, _REDUCTIONS))}")
    if not isinstance(input, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError("input and target must be tensors, got "
                        f"{type(input).__name__} and {type(target).__name__}")
    if input.dim() == 0:
        raise ValueError("input must have the classes in dimension 0 (C,) or 1 (N, C, ...), got "
                         "a 0-d tensor")
    probs = target.is_floating_point()
    x = input if input.dim() <= 2 else input.movedim(1, -1)
    t = target if not (probs and target.dim() > 2) else target.movedim(1, -1)
    if inplace_backward and (input.dim() > 2 or not input.is_contiguous()):
        raise ValueError("inplace_backward=True needs contiguous input with the classes in the "
                         f"last dimension, (C,) or (N, C); got shape {tuple(input.shape)}"
                         + ("" if input.is_contiguous() else " (not contiguous)"))
    if inplace_backward:
        options = dict(reduction=reduction, ignore_index=ignore_index,
                       label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
        loss, _ = _InplaceCrossEntropy.apply(x, t, weight, options)
        return loss
    args = (x, t, weight, reduction, int(ignore_index), float(label_smoothing), float(z_loss),
            None if softcap is None else float(softcap))
    if not (torch.is_grad_enabled() and input.requires_grad):
        return _forward_op(*args)  # no gradient wanted: the statistics pass alone
    loss, _ = _cross_entropy_op(*args)
    return loss


class CrossEntropyLoss(torch.nn.Module):
    """``torch.nn.CrossEntropyLoss`` computed by :func:`cross_entropy` (same arguments, plus
    ``z_loss``, ``softcap`` and ``inplace_backward``).

    Examples
    --------
    >>> import torch, fastxent.torch as fxt
    >>> criterion = fxt.CrossEntropyLoss(label_smoothing=0.1)
    >>> round(criterion(torch.zeros(2, 4), torch.tensor([1, 3])).item(), 6)
    1.386294
    """

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None,
                 reduction="mean", label_smoothing=0.0, *, z_loss=0.0, softcap=None,
                 inplace_backward=False):
        super().__init__()
        if size_average is not None or reduce is not None:
            reduction = _legacy_reduction(size_average, reduce)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.inplace_backward = inplace_backward

    def forward(self, input, target):
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing,
                             z_loss=self.z_loss, softcap=self.softcap,
                             inplace_backward=self.inplace_backward)

    def extra_repr(self):
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
                f"softcap={self.softcap}, inplace_backward={self.inplace_backward}")


# --- binary cross-entropy on logits (multi-label) ------------------------------------------------


def _weight_values(t, on_gpu):
    """A weight tensor as fastxent's functions take it for the binary losses: weights are O(V) or
    O(N) values (an element weight at most the input's size), copied to the host for GPU inputs,
    whose weights are host values."""
    if t is None:
        return None
    return _host(t.detach().cpu()) if on_gpu else _arrays(t.detach())


@torch.library.custom_op("fastxent::binary_cross_entropy_with_logits", mutates_args=())
def _bce_op(logits: torch.Tensor, targets: torch.Tensor, weight: Optional[torch.Tensor],
            pos_weight: Optional[torch.Tensor], reduction: str
            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(loss, gradient of the loss) of element-wise binary cross-entropy on logits."""
    loss, grad = _api_family.binary_cross_entropy_with_logits_with_grad(
        _arrays(logits.detach()), _arrays(targets.detach()),
        weight=_weight_values(weight, logits.is_cuda),
        pos_weight=_weight_values(pos_weight, logits.is_cuda), reduction=reduction)
    return _tensor(loss).to(dtype=logits.dtype), _tensor(grad)


@_bce_op.register_fake
def _bce_fake(logits, targets, weight, pos_weight, reduction):
    shape = logits.shape if reduction == "none" else ()
    return logits.new_empty(shape), torch.empty_like(logits, memory_format=torch.contiguous_format)


_keep_gradient(_bce_op, 4, 5, per_row=False)


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction="mean", pos_weight=None):
    """``torch.nn.functional.binary_cross_entropy_with_logits``, computed by fastxent's fused
    kernel (the loss and its gradient in one pass, the gradient kept for backward); CPU tensors,
    and CUDA tensors through the CUDA backend (weights are then copied to the host and back).

    Differentiable with respect to ``input``; ``target``, ``weight`` and ``pos_weight`` are
    constants (a ``RuntimeError`` says so if one of them requires grad).

    Examples
    --------
    >>> import torch, fastxent.torch as fxt
    >>> x = torch.tensor([[2.0, -1.0, 0.0]], requires_grad=True)
    >>> loss = fxt.binary_cross_entropy_with_logits(x, torch.tensor([[1.0, 0.0, 1.0]]))
    >>> round(loss.item(), 4)
    0.3778
    >>> loss.backward()
    >>> x.grad
    tensor([[-0.0397,  0.0896, -0.1667]])
    """
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(size_average, reduce)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not one of "
                         f"{', '.join(map(repr, _REDUCTIONS))}")
    for name, t in (("target", target), ("weight", weight), ("pos_weight", pos_weight)):
        if isinstance(t, torch.Tensor) and t.requires_grad:
            raise RuntimeError(f"fastxent.torch.binary_cross_entropy_with_logits differentiates "
                               f"with respect to input only, and {name} requires grad; use "
                               "torch.nn.functional's where that gradient is needed")
    loss, _ = _bce_op(input, target, weight, pos_weight, reduction)
    return loss


class BCEWithLogitsLoss(torch.nn.Module):
    """``torch.nn.BCEWithLogitsLoss`` computed by :func:`binary_cross_entropy_with_logits`.

    Examples
    --------
    >>> import torch, fastxent.torch as fxt
    >>> criterion = fxt.BCEWithLogitsLoss(pos_weight=torch.tensor([2.0, 1.0]))
    >>> round(criterion(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])).item(), 6)  # (2 + 1)/2·log 2
    1.039721
    """

    def __init__(self, weight=None, size_average=None, reduce=None, reduction="mean",
                 pos_weight=None):
        super().__init__()
        if size_average is not None or reduce is not None:
            reduction = _legacy_reduction(size_average, reduce)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)
        self.reduction = reduction

    def forward(self, input, target):
        return binary_cross_entropy_with_logits(input, target, weight=self.weight,
                                                reduction=self.reduction,
                                                pos_weight=self.pos_weight)


# --- binary cross-entropy on probabilities -------------------------------------------------------


@torch.library.custom_op("fastxent::binary_cross_entropy", mutates_args=())
def _bce_probs_op(probs: torch.Tensor, targets: torch.Tensor, weight: Optional[torch.Tensor],
                  reduction: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(loss, gradient of the loss) of element-wise binary cross-entropy on probabilities."""
    loss, grad = _api_family.binary_cross_entropy_with_grad(
        _arrays(probs.detach()), _arrays(targets.detach()),
        weight=_weight_values(weight, probs.is_cuda),
        reduction=reduction)
    return _tensor(loss).to(dtype=probs.dtype), _tensor(grad)


@_bce_probs_op.register_fake
def _bce_probs_fake(probs, targets, weight, reduction):
    shape = probs.shape if reduction == "none" else ()
    return probs.new_empty(shape), torch.empty_like(probs, memory_format=torch.contiguous_format)


_keep_gradient(_bce_probs_op, 3, 4, per_row=False)


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None,
                         reduction="mean"):
    """``torch.nn.functional.binary_cross_entropy`` (``BCELoss``: each log clamped at -100),
    computed by fastxent's fused kernel, differentiable with respect to ``input``.

    Examples
    --------
    >>> import torch, fastxent.torch as fxt
    >>> p = torch.tensor([0.9, 0.1, 0.8, 0.7, 0.2, 0.9], requires_grad=True)
    >>> loss = fxt.binary_cross_entropy(p, torch.tensor([1.0, 0, 1, 1, 0, 1]))
    >>> round(loss.item(), 4)
    0.1865
    >>> loss.backward()
    >>> p.grad
    tensor([-0.1852,  0.1852, -0.2083, -0.2381,  0.2083, -0.1852])
    """
    if size_average is not None or reduce is not None:
        reduction = _legacy_reduction(size_average, reduce)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not one of "
                         f"{', '.join(map(repr, _REDUCTIONS))}")
    for name, t in (("target", target), ("weight", weight)):
        if isinstance(t, torch.Tensor) and t.requires_grad:
            raise RuntimeError(f"fastxent.torch.binary_cross_entropy differentiates with respect "
                               f"to input only, and {name} requires grad")
    loss, _ = _bce_probs_op(input, target, weight, reduction)
    return loss


class BCELoss(torch.nn.Module):
    """``torch.nn.BCELoss`` computed by :func:`binary_cross_entropy`."""

    def __init__(self, weight=None, size_average=None, reduce=None, reduction="mean"):
        super().__init__()
        if size_average is not None or reduce is not None:
            reduction = _legacy_reduction(size_average, reduce)
        self.register_buffer("weight", weight)
        self.reduction = reduction

    def forward(self, input, target):
        return binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)
