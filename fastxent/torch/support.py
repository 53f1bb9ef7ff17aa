"""What ``fastxent.torch``'s modules share: tensors to fastxent's arrays and back, and the
autograd of custom operators that return their gradient with their value."""

import functools
import numbers

import numpy as np
import torch

from ..core import dtypes as _dtypes
from ..dispatch import checks as _checks
from ..dispatch.arrays import torch_bfloat16_host


def _without_autocast(op):
    """An operator's implementation run with autocast off on its first argument's device: its
    products and temporaries keep the dtypes it chose (:func:`_as_autocast` casts its inputs as
    autocast would)."""

    @functools.wraps(op)
    def run(first, *args, **kwargs):
        with torch.autocast(first.device.type, enabled=False):
            return op(first, *args, **kwargs)

    return run


def _as_autocast(*tensors):
    """The inputs of a fused linear layer as autocast would give them to ``F.linear``: float32
    (and half-precision of the other kind) cast to autocast's dtype where autocast is on for
    their device; as they are otherwise (and None as None). Differentiable casts."""
    first = next(t for t in tensors if t is not None)
    kind = first.device.type
    if not torch.is_autocast_enabled(kind):
        return tensors
    dtype = torch.get_autocast_dtype(kind)
    eligible = (torch.float32, torch.float16, torch.bfloat16)
    return tuple(t.to(dtype) if t is not None and t.dtype in eligible else t for t in tensors)


def _host(t):
    """A zero-copy NumPy view of a CPU tensor (bfloat16 through ``ml_dtypes``)."""
    if t.dtype == torch.bfloat16:
        return torch_bfloat16_host(t)
    return t.numpy()


def _arrays(t):
    """What fastxent's functions take for a tensor: itself on a GPU, a NumPy view on the CPU."""
    return t if t.is_cuda else _host(t)


def _tensor(a):
    """fastxent's result as a tensor: itself from the GPU, a zero-copy view of a NumPy array, a
    float64 0-d tensor for a Python float."""
    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, numbers.Real):
        return torch.tensor(a, dtype=torch.float64)
    if _dtypes.name(a.dtype) == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a if a.flags.c_contiguous else a.copy())


def _no_double_backward(what="fastxent.torch's losses have"):
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        # backward(create_graph=True), autograd.grad(create_graph=True)
        raise RuntimeError(f"{what} no double backward: their gradients come from fused "
                           "kernels, not from differentiable operations; call backward without "
                           "create_graph=True, or use PyTorch's own functions "
                           "(torch.nn.functional.cross_entropy, ...) where second derivatives "
                           "are needed")


def _graph_kept():
    """Whether the running backward pass keeps its graph (``retain_graph=True``, or
    ``create_graph=True``), so that a saved tensor may be read again by another one; True when
    PyTorch cannot say."""
    keep = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if keep is None else bool(keep())


def _scaled(grad, grad_loss, reduction, per_row=True):
    """The saved gradient times the upstream one (None when that is undefined: zeros, which
    autograd takes as None). Not at all when the upstream gradient is all ones (what
    ``loss.backward()`` passes, and ``loss.sum().backward()`` for a loss per row): values read
    back, against a pass over the gradient. Otherwise in place (no second array of the
    gradient's size) when the backward pass frees its graph, and as a new tensor when it keeps
    it, so that a second pass through a retained graph finds the saved gradient unchanged. When
    traced (``torch.compile``, or any tensor subclass such as the fake tensors of tracing), a
    plain product that the compiler can fuse. ``per_row``: a loss per row for reduction="none"
    (else one per element)."""
    if grad_loss is None:
        return None
    go = grad_loss.to(grad.dtype)
    if reduction == "none" and per_row:
        go = go.unsqueeze(-1)
    traced = (torch.compiler.is_compiling() or type(grad) is not torch.Tensor
              or type(grad_loss) is not torch.Tensor)
    if traced:
        return grad * go
    if bool((go == 1).all()):
        return grad
    return grad * go if _graph_kept() else grad.mul_(go)


def _keep_gradient(op, reduction_at, n_args, per_row):
    """Autograd for ``op``, an operator returning ``(loss, gradient of the loss)``: the gradient
    is kept from the forward pass and scaled by the upstream one in the backward pass."""
    def setup(ctx, inputs, output):
        ctx.reduction = inputs[reduction_at]
        ctx.save_for_backward(output[1])
        # the gradient output is not differentiated through: no zeros of the logits' size for it
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_loss, _grad_of_grad):
        _no_double_backward()
        (grad,) = ctx.saved_tensors
        return (_scaled(grad, grad_loss, ctx.reduction, per_row),) + (None,) * (n_args - 1)

    op.register_autograd(backward, setup_context=setup)


def _loss_dtype(loss_dtype, dtype):
    """``loss_dtype`` checked: None (the input's ``dtype``), or a floating dtype at least as
    wide; None when it is the input's."""
    return _checks.wider_dtype(loss_dtype, "loss_dtype", dtype, (torch.float32, torch.float64),
                               "the input's")


def _returned(out, want_z, want_lse):
    """The loss, or ``(loss, z_loss, lse)`` with the parts asked for, from an operator's
    ``(loss, z-loss term, lse, ...)``."""
    if not (want_z or want_lse):
        return out[0]
    return (out[0],) + ((out[1],) if want_z else ()) + ((out[2],) if want_lse else ())
