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

from ..dispatch import checks as _checks
from ..losses import cross_entropy as _api
from ..losses import family as _api_family
from . import composite as _torch_composite
from .family import cross_entropy_from_probs, entropy, kl_divergence
from .linear import LinearCrossEntropyLoss, linear_cross_entropy
from .logprobs import linear_logprobs
from .tokens import linear_token_stats
from .support import (_arrays, _host, _keep_gradient, _loss_dtype, _no_double_backward, _returned,
                      _scaled, _tensor)

__all__ = ["BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "LinearCrossEntropyLoss",
           "binary_cross_entropy", "binary_cross_entropy_with_logits", "cross_entropy",
           "cross_entropy_from_probs", "entropy", "kl_divergence", "linear_cross_entropy",
           "linear_logprobs", "linear_token_stats"]

def _call(fn, logits, targets, weight, loss_dtype, parts, **options):
    """``fn``, fastxent's cross-entropy (or its fused form, with ``options`` for it), on
    tensors: ``(loss, z-loss term, lse)`` in ``loss_dtype`` (None: the logits' dtype) on the
    logits' device, the last two empty unless ``parts``; and the gradient, for the fused form
    (None in place)."""
    w = None if weight is None else _arrays(weight.detach())
    result = fn(_arrays(logits.detach()), _arrays(targets.detach()), weight=w,
                return_z_loss=parts, return_lse=parts, **options)
    values, grad = result if fn is _api.cross_entropy_with_grad else (result, None)
    dtype = loss_dtype or logits.dtype
    values = [_tensor(a).to(device=logits.device, dtype=dtype)
              for a in (values if parts else (values,))]
    while len(values) < 3:
        values.append(logits.new_empty(0, dtype=dtype))
    return tuple(values) + ((None if grad is None or options.get("inplace") else _tensor(grad)),)


def _parts_fake(logits, reduction, parts, loss_dtype):
    """Empty outputs shaped as :func:`_call`'s three values."""
    dtype = loss_dtype or logits.dtype
    per_row = logits.shape[:-1]
    loss = logits.new_empty(per_row if reduction == "none" else (), dtype=dtype)
    if not parts:
        return loss, logits.new_empty(0, dtype=dtype), logits.new_empty(0, dtype=dtype)
    return loss, torch.empty_like(loss), logits.new_empty(per_row, dtype=dtype)


@torch.library.custom_op("fastxent::cross_entropy", mutates_args=())
def _cross_entropy_op(logits: torch.Tensor, targets: torch.Tensor, weight: Optional[torch.Tensor],
                      reduction: str, ignore_index: int, label_smoothing: float, z_loss: float,
                      softcap: Optional[float], parts: bool, loss_dtype: Optional[torch.dtype]
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, z-loss term, lse, gradient of the loss) of class-last logits: fastxent's fused
    kernel as an operator that ``torch.compile`` traces through (the z-loss term and the lse
    empty unless ``parts``)."""
    return _call(_api.cross_entropy_with_grad, logits, targets, weight, loss_dtype, parts,
                 reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
                 z_loss=z_loss, softcap=softcap)


@_cross_entropy_op.register_fake
def _cross_entropy_fake(logits, targets, weight, reduction, ignore_index, label_smoothing, z_loss,
                        softcap, parts, loss_dtype):
    return _parts_fake(logits, reduction, parts, loss_dtype) + (
        torch.empty_like(logits, memory_format=torch.contiguous_format),)


def _setup(ctx, inputs, output):
    (logits, targets, weight, reduction, ignore_index, label_smoothing, z_loss, softcap, parts,
     _) = inputs
    ctx.options = dict(reduction=reduction, ignore_index=ignore_index,
                       label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
    ctx.parts = parts
    # the inputs for what the kept gradient cannot give (``torch/composite.py``), the lse for the
    # gradient of the parts
    ctx.save_for_backward(logits, targets, weight, output[3], output[2])
    # the gradient output is not differentiated through: no zeros of the logits' size for it
    ctx.mark_non_differentiable(output[3])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, grad_z, grad_lse, _grad_of_grad):
    logits, targets, weight, grad, lse = ctx.saved_tensors
    needs = tuple(ctx.needs_input_grad[:3])
    nothing = (None,) * 10
    if not ctx.parts:  # empty outputs
        grad_z = grad_lse = None
    if grad_loss is None and grad_z is None and grad_lse is None:
        return nothing
    create_graph = torch.is_grad_enabled() and not torch.compiler.is_compiling()
    if create_graph or needs[1] or needs[2]:
        return _torch_composite.backward(logits, targets, weight, ctx.options,
                                         (grad_loss, grad_z, grad_lse), needs,
                                         create_graph) + nothing[3:]
    if not needs[0]:
        return nothing
    gx = _scaled(grad, grad_loss, ctx.options["reduction"])
    if grad_z is not None or grad_lse is not None:
        gx = _plus_lse_gradient(gx, logits, targets, lse, grad_z, grad_lse, ctx.options)
    return (gx,) + nothing[1:]


_cross_entropy_op.register_autograd(_backward, setup_context=_setup)


def _plus_lse_gradient(gx, logits, targets, lse, grad_z, grad_lse, options):
    """``gx`` (the gradient of the loss, or None) plus the gradient of the z-loss term and of
    the lse outputs: each counted row's lse moves with ``softmax(y)·dy/dx``, by its upstream
    gradient plus the z-loss term's ``2·z_loss·lse`` (over the counted rows for a mean). A new
    tensor: ``gx`` may be the saved gradient of a graph kept for another backward pass."""
    reduction, z_loss = options["reduction"], options["z_loss"]
    v = logits.shape[-1]
    lse = lse.reshape(-1).to(torch.float64)
    valid = (torch.ones_like(lse, dtype=torch.bool) if targets.is_floating_point()
             else targets.reshape(-1) != options["ignore_index"])
    factor = torch.zeros_like(lse)
    if grad_lse is not None:
        factor = factor + grad_lse.reshape(-1)
    if grad_z is not None and z_loss:
        up = grad_z.reshape(-1).to(torch.float64)
        factor = factor + (up / valid.sum() if reduction == "mean" else up) * 2.0 * z_loss * lse
    factor = torch.where(valid, factor, 0.0)
    term = _torch_composite.lse_gradient(logits.reshape(-1, v), lse, factor, options["softcap"])
    term = term.reshape(logits.shape)
    return (term if gx is None else gx + term).to(logits.dtype)


@torch.library.custom_op("fastxent::cross_entropy_forward", mutates_args=())
def _forward_op(logits: torch.Tensor, targets: torch.Tensor, weight: Optional[torch.Tensor],
                reduction: str, ignore_index: int, label_smoothing: float, z_loss: float,
                softcap: Optional[float], parts: bool, loss_dtype: Optional[torch.dtype]
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss (z-loss term, lse) alone, one read of the logits: for calls that need no
    gradient."""
    return _call(_api.cross_entropy, logits, targets, weight, loss_dtype, parts,
                 reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
                 z_loss=z_loss, softcap=softcap)[:3]


@_forward_op.register_fake
def _forward_fake(logits, targets, weight, reduction, ignore_index, label_smoothing, z_loss,
                  softcap, parts, loss_dtype):
    return _parts_fake(logits, reduction, parts, loss_dtype)


class _InplaceCrossEntropy(torch.autograd.Function):
    """``inplace_backward=True``: the fused kernel writes the gradient over the logits in the
    forward pass, which autograd is told about (``mark_dirty``)."""

    @staticmethod
    def forward(ctx, logits, targets, weight, options, parts, loss_dtype):
        loss, z, lse, _ = _call(_api.cross_entropy_with_grad, logits, targets, weight,
                                loss_dtype, parts, inplace=True, **options)
        ctx.reduction = options["reduction"]
        # autograd bumps the logits' version; saved, they raise if anything changes them again
        ctx.mark_dirty(logits)
        ctx.save_for_backward(logits)
        return loss, z, lse, logits

    @staticmethod
    def backward(ctx, grad_loss, grad_z, grad_lse, grad_dirty):
        _no_double_backward("fastxent.torch.cross_entropy(..., inplace_backward=True) has")
        if grad_dirty is not None and bool(torch.any(grad_dirty != 0)):
            raise RuntimeError("fastxent.torch.cross_entropy(..., inplace_backward=True) wrote the "
                               "gradient over the logits, and the logits were then used by an "
                               "operation being differentiated; take what you need from them "
                               "before the call, or leave inplace_backward=False")
        for name, g in (("z_loss", grad_z), ("lse", grad_lse)):
            if g is not None and bool(torch.any(g != 0)):
                raise RuntimeError(f"fastxent.torch.cross_entropy(..., inplace_backward=True) "
                                   f"returns its {name} for reading only: the logits it would "
                                   "differentiate were overwritten by the gradient; leave "
                                   "inplace_backward=False to differentiate it")
        (grad,) = ctx.saved_tensors
        return (_scaled(grad, grad_loss, ctx.reduction),) + (None,) * 5


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0, *, z_loss=0.0, softcap=None,
                  inplace_backward=False, return_z_loss=False, return_lse=False,
                  loss_dtype=None):
    """``torch.nn.functional.cross_entropy``, computed by fastxent's fused kernels.

    Parameters
    ----------
    input : Tensor
        Logits of shape ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)`` (classes at dim 1, as
        PyTorch), float32, float64, float16 or bfloat16, on the CPU or a CUDA device.
    target : Tensor
        Class indices of the input's shape without the class dimension, or probabilities of the
        input's shape (differentiable, as in PyTorch).
    weight, ignore_index, reduction, label_smoothing, size_average, reduce
        As ``torch.nn.functional.cross_entropy`` (class weights that require grad: with
        probability targets only, as PyTorch).
    z_loss : float
        Adds ``z_loss * logsumexp**2`` per non-ignored row (averaged over those rows for "mean").
    softcap : float, optional
        Applies ``softcap * tanh(input / softcap)`` first.
    inplace_backward : bool
        Write the gradient over ``input`` in the forward pass: no memory of the input's size. Needs
        the classes in the last dimension (``(C,)`` or ``(N, C)``), contiguous, and an input that
        is not a leaf requiring grad. See the module's notes on what autograd then checks.
    return_z_loss : bool
        Also return the z-loss term, reduced as the loss is (the loss includes it), as
        Liger-Kernel's ``return_z_loss``.
    return_lse : bool
        Also return each row's log-sum-exp (of the soft-capped logits; 0 for ignored rows), the
        shape of the input without the class dimension, as Cut Cross-Entropy's ``return_lse``.
        Both parts are differentiable.
    loss_dtype : torch.dtype, optional
        The dtype of the results: None for the input's (as PyTorch), or ``torch.float32`` (or
        ``float64``): for half-precision logits, losses not rounded to the input's precision
        (bfloat16 alone is 2**-8 relative), as Cut Cross-Entropy returns them.

    Returns
    -------
    Tensor or tuple of Tensor
        The loss, in ``loss_dtype`` and on the input's device: 0-d, or for ``reduction="none"``
        the shape of the input without the class dimension. With ``return_z_loss`` or
        ``return_lse``, the tuple ``(loss, z_loss, lse)`` of those asked for.

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
    >>> loss, z = fxt.cross_entropy(logits, torch.tensor([0]), z_loss=1e-4, return_z_loss=True)
    >>> round(z.item(), 6)  # 1e-4 · lse²
    0.000584
    """
    reduction = _checks.reduction(reduction, size_average, reduce)
    _checks.instances((("input", input), ("target", target)), torch.Tensor, "a tensor",
                      none_ok=False)
    _checks.instances((("weight", weight),), torch.Tensor, "a tensor")
    _checks.contiguous(input.dim() > 0, "input must have the classes in dimension 0 (C,) or 1 "
                       "(N, C, ...), got a 0-d tensor")
    options = dict(zip(("reduction", "ignore_index", "label_smoothing", "z_loss", "softcap"),
                       _checks.loss_options(reduction, ignore_index, label_smoothing, z_loss,
                                            softcap)))
    dtype = _loss_dtype(loss_dtype, input.dtype)
    probs = target.is_floating_point()
    if weight is not None and weight.requires_grad and not probs and torch.is_grad_enabled():
        raise RuntimeError("fastxent.torch.cross_entropy is not differentiable with respect to "
                           "weight with class-index targets (as PyTorch's nll_loss): weight "
                           "cannot have requires_grad=True")
    x = input if input.dim() <= 2 else input.movedim(1, -1)
    t = target if not (probs and target.dim() > 2) else target.movedim(1, -1)
    parts = bool(return_z_loss or return_lse)
    if inplace_backward:
        _check_inplace(input, target, weight)
        out = _InplaceCrossEntropy.apply(x, t, weight, options, parts, dtype)
    elif torch.is_grad_enabled() and (input.requires_grad or target.requires_grad or (
            weight is not None and weight.requires_grad)):
        out = _cross_entropy_op(x, t, weight, *options.values(), parts, dtype)
    else:  # no gradient wanted: the statistics pass alone
        out = _forward_op(x, t, weight, *options.values(), parts, dtype)
    return _returned(out, return_z_loss, return_lse)


def _check_inplace(input, target, weight):
    _checks.contiguous(input.dim() <= 2 and input.is_contiguous(),
                       "inplace_backward=True needs contiguous input with the classes in the "
                       f"last dimension, (C,) or (N, C); got shape {tuple(input.shape)}"
                       + ("" if input.is_contiguous() else " (not contiguous)"))
    for name, t in (("target", target), ("weight", weight)):
        if t is not None and t.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(f"fastxent.torch.cross_entropy(..., inplace_backward=True) gives "
                               f"the gradient of input only, and {name} requires grad; leave "
                               "inplace_backward=False for it")


class CrossEntropyLoss(torch.nn.Module):
    """``torch.nn.CrossEntropyLoss`` computed by :func:`cross_entropy` (same arguments, plus
    ``z_loss``, ``softcap``, ``inplace_backward``, ``return_z_loss``, ``return_lse`` and
    ``loss_dtype``).

    Examples
    --------
    >>> import torch, fastxent.torch as fxt
    >>> criterion = fxt.CrossEntropyLoss(label_smoothing=0.1)
    >>> round(criterion(torch.zeros(2, 4), torch.tensor([1, 3])).item(), 6)
    1.386294
    """

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None,
                 reduction="mean", label_smoothing=0.0, *, z_loss=0.0, softcap=None,
                 inplace_backward=False, return_z_loss=False, return_lse=False,
                 loss_dtype=None):
        super().__init__()
        reduction = _checks.reduction(reduction, size_average, reduce)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.inplace_backward = inplace_backward
        self.return_z_loss = return_z_loss
        self.return_lse = return_lse
        self.loss_dtype = loss_dtype

    def forward(self, input, target):
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing,
                             z_loss=self.z_loss, softcap=self.softcap,
                             inplace_backward=self.inplace_backward,
                             return_z_loss=self.return_z_loss, return_lse=self.return_lse,
                             loss_dtype=self.loss_dtype)

    def extra_repr(self):
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
                f"softcap={self.softcap}, inplace_backward={self.inplace_backward}, "
                f"return_z_loss={self.return_z_loss}, return_lse={self.return_lse}, "
                f"loss_dtype={self.loss_dtype}")


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
    reduction = _checks.reduction(reduction, size_average, reduce)
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
        reduction = _checks.reduction(reduction, size_average, reduce)
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
    reduction = _checks.reduction(reduction, size_average, reduce)
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
        reduction = _checks.reduction(reduction, size_average, reduce)
        self.register_buffer("weight", weight)
        self.reduction = reduction

    def forward(self, input, target):
        return binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)
