"""``fastxent.torch.linear_cross_entropy``: the chunked loop of :mod:`fastxent._linear` with
PyTorch's matrix products (MKL or oneDNN on the CPU, cuBLAS on a GPU), differentiable by
autograd for ``hidden``, ``weight`` and ``bias``.

For ``reduction="mean"`` or ``"sum"`` the forward pass computes the three gradients along with the
loss (one pass over the chunks, as Liger-Kernel does) and the backward pass scales them by the
upstream gradient. For ``reduction="none"`` the upstream gradient differs from row to row and
enters ``g_weight`` inside its product, so the backward pass walks the chunks a second time.
"""

import numpy as np
import torch

from . import _linear
from ._torch_support import _host


class _TorchOps:
    """The products of :func:`fastxent._linear.run` with PyTorch, on the tensors' device."""

    def __init__(self, device):
        self.device = device
        self.cuda = device.type == "cuda"

    def zeros(self, shape, dtype):
        return torch.zeros(shape, dtype=dtype, device=self.device)

    def empty(self, shape, dtype):
        return torch.empty(shape, dtype=dtype, device=self.device)

    @staticmethod
    def loss_dtype(h):
        return torch.float64

    def _index(self, idx):
        return torch.as_tensor(idx, device=self.device)

    def take(self, h, idx):
        return h[self._index(idx)]

    def targets(self, t):
        return torch.as_tensor(t, device=self.device) if self.cuda else t

    def rows(self, a, idx):
        part = a[idx] if isinstance(idx, slice) else a[self._index(idx)]
        return part if self.cuda else part.cpu().numpy()

    def kernel(self, x):
        return x if self.cuda else _host(x)

    def put(self, losses, idx, loss):
        loss = torch.as_tensor(loss, device=self.device).to(torch.float64)
        if isinstance(idx, slice):
            losses[idx] = loss
        else:
            losses[self._index(idx)] = loss

    @staticmethod
    def logits(hc, w, b, out):
        if b is None:
            torch.matmul(hc, w.T, out=out)
        else:
            torch.addmm(b, hc, w.T, out=out)

    def gradients(self, grads, g, w, hc, idx):
        gh, gw, gb = grads
        if isinstance(idx, slice):
            torch.matmul(g, w, out=gh[idx])
        else:
            gh[self._index(idx)] = g @ w
        gw.addmm_(g.T, hc)
        if gb is not None:
            gb += g.sum(dim=0, dtype=torch.float32 if g.dtype.itemsize < 4 else g.dtype).to(gb)


def _check(hidden, weight, bias, target):
    for name, t in (("hidden", hidden), ("weight", weight), ("bias", bias), ("target", target)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in (("hidden", hidden), ("weight", weight), ("bias", bias)):
        if t is not None and not t.is_floating_point():
            raise TypeError(f"{name} has dtype {t.dtype}, expected a floating dtype (float32, "
                            "float64, bfloat16 or float16)")
    devices = {t.device for t in (hidden, weight, bias, target) if t is not None}
    if len(devices) != 1:
        raise ValueError("hidden, weight, bias and target must be on one device, got "
                         f"{', '.join(sorted(map(str, devices)))}")
    return _linear.shapes(tuple(hidden.shape), tuple(weight.shape),
                          None if bias is None else tuple(bias.shape),
                          (str(hidden.dtype), str(weight.dtype),
                           None if bias is None else str(bias.dtype)))


class _LinearCrossEntropy(torch.autograd.Function):

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, ce_weight, reduction, ignore_index,
                label_smoothing, z_loss, softcap, chunk_size):
        lead, hdim, v = _check(hidden, weight, bias, target)
        t = _linear.targets(target.detach().cpu().numpy(), lead, v, ignore_index)
        cw_host = None
        if ce_weight is not None:
            cw_host = ce_weight.detach().cpu().numpy().astype(np.float64)
            if cw_host.shape != (v,):
                raise ValueError(f"ce_weight has shape {tuple(ce_weight.shape)}, expected ({v},)")
        options = dict(ignore_index=ignore_index, **_linear.checked_options(
            label_smoothing, z_loss, softcap))
        if ce_weight is not None:
            options["weight"] = ce_weight.detach() if hidden.is_cuda else cw_host
        where = "cuda" if hidden.is_cuda else "cpu"
        rows = _linear.chunk_rows(chunk_size, v, hidden.element_size(), where)
        h = hidden.detach().reshape(-1, hdim).contiguous()
        w = weight.detach().contiguous()
        b = None if bias is None else bias.detach().contiguous()
        ops = _TorchOps(hidden.device)
        eager = reduction != "none" and any(ctx.needs_input_grad[:3])
        losses, finish, grads = _linear.run(ops, h, w, b, t, cw_host, options, reduction, rows,
                                            grad=eager)
        ctx.eager = eager
        ctx.grads = grads
        ctx.saved = (h, w, b, t, cw_host, options, rows, lead)
        if reduction == "none":
            return losses.to(hidden.dtype).reshape(lead)
        return (losses.sum() * float(finish)).to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        h, w, b, t, cw_host, options, rows, lead = ctx.saved
        if ctx.eager:
            gh, gw, gb = ctx.grads
            ctx.grads = None
            if not (grad_loss == 1).all():
                s = grad_loss.to(torch.float32 if gh.dtype.itemsize < 4 else gh.dtype)
                gh, gw = gh * s, gw * s
                gb = None if gb is None else gb * s
        else:
            go = grad_loss.reshape(-1).to(torch.float64)
            ops = _TorchOps(h.device)
            _, _, (gh, gw, gb) = _linear.run(ops, h, w, b, t, cw_host, options, "none", rows,
                                             grad=True, grad_output=go)
        gh = gh.reshape(tuple(lead) + (h.shape[1],))
        return gh, gw, gb, None, None, None, None, None, None, None, None


def linear_cross_entropy(hidden, weight, target, bias=None, *, reduction="mean",
                         ignore_index=-100, ce_weight=None, label_smoothing=0.0, z_loss=0.0,
                         softcap=None, chunk_size=None):
    """``F.cross_entropy(hidden @ weight.T + bias, target, ...)`` without the logits.

    Parameters
    ----------
    hidden : Tensor, shape (..., H)
        Hidden states (float32, float64, bfloat16 or float16), on the CPU or a CUDA device.
    weight : Tensor, shape (V, H)
        The output layer's weight (``torch.nn.Linear(H, V).weight``), hidden's dtype.
    target : Tensor of int, shape ``hidden.shape[:-1]``
        Class indices.
    bias : Tensor, shape (V,), optional
        The output layer's bias.
    reduction, ignore_index, label_smoothing
        As ``torch.nn.functional.cross_entropy``.
    ce_weight : Tensor, shape (V,), optional
        Per-class weights (``weight`` of ``F.cross_entropy``).
    z_loss, softcap
        As :func:`fastxent.torch.cross_entropy`.
    chunk_size : int, optional
        Rows of logits per chunk; by default as many as fit in 64 MiB.

    Returns
    -------
    Tensor
        The loss in hidden's dtype: a scalar, or one per row for ``reduction="none"``;
        differentiable with respect to ``hidden``, ``weight`` and ``bias``.

    Notes
    -----
    The weight's gradient is accumulated chunk by chunk in the weight's dtype, as Liger-Kernel
    does: for bfloat16 it is rounded once per chunk instead of once.

    Examples
    --------
    >>> import torch, fastxent.torch as fxt
    >>> layer = torch.nn.Linear(2, 3, bias=False)
    >>> with torch.no_grad():
    ...     _ = layer.weight.copy_(torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.1, 0.0]]))
    >>> hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    >>> loss = fxt.linear_cross_entropy(hidden, layer.weight, torch.tensor([0, 1]))
    >>> round(loss.item(), 4)
    0.4842
    >>> loss.backward()
    >>> layer.weight.grad.shape
    torch.Size([3, 2])
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction={reduction!r} is not one of 'mean', 'sum', 'none'")
    return _LinearCrossEntropy.apply(hidden, weight, bias, target, ce_weight, reduction,
                                     int(ignore_index), label_smoothing, z_loss, softcap,
                                     chunk_size)


class LinearCrossEntropyLoss(torch.nn.Module):
    """Module form of :func:`linear_cross_entropy`: ``loss(hidden, weight, target, bias=None)``.

    Examples
    --------
    >>> import torch, fastxent.torch as fxt
    >>> criterion = fxt.LinearCrossEntropyLoss(reduction="sum")
    >>> w = torch.zeros(4, 3, requires_grad=True)
    >>> round(criterion(torch.ones(2, 3), w, torch.tensor([0, 1])).item(), 4)
    2.7726
    """

    def __init__(self, ce_weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                 *, z_loss=0.0, softcap=None, chunk_size=None):
        super().__init__()
        self.register_buffer("ce_weight", ce_weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.chunk_size = chunk_size

    def forward(self, hidden, weight, target, bias=None):
        return linear_cross_entropy(hidden, weight, target, bias, reduction=self.reduction,
                                    ignore_index=self.ignore_index, ce_weight=self.ce_weight,
                                    label_smoothing=self.label_smoothing, z_loss=self.z_loss,
                                    softcap=self.softcap, chunk_size=self.chunk_size)

    def extra_repr(self):
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
                f"softcap={self.softcap}, chunk_size={self.chunk_size}")
