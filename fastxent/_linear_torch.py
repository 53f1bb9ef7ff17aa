"""``fastxent.torch.linear_cross_entropy``: the chunked loop of :mod:`fastxent._linear` with
PyTorch's matrix products (MKL or oneDNN on the CPU, cuBLAS on a GPU), differentiable by
autograd for ``hidden``, ``weight`` and ``bias``.

For ``reduction="mean"`` or ``"sum"`` the forward pass computes the three gradients along with the
loss (one pass over the chunks, as Liger-Kernel does) and the backward pass scales them by the
upstream gradient. For ``reduction="none"`` the upstream gradient differs from row to row and
enters ``g_weight`` inside its product, so the backward pass walks the chunks a second time.
Both are ``torch.library`` custom operators with fake implementations, so ``torch.compile``
traces through them.
"""

from typing import List, Optional, Tuple

import numpy as np
import torch

from . import _device, _linear
from ._torch_support import _host, _no_double_backward, _scaled


class _TorchOps:
    """The products of :func:`fastxent._linear.run` with PyTorch, on the tensors' device;
    ``accum``: the dtype the weight's and bias's gradients are accumulated in (None: theirs)."""

    #: bytes of the temporary product of one block of classes, when the weight's gradient is
    #: accumulated in a wider dtype than the products' and PyTorch has no ``out_dtype`` for them
    BLOCK_BYTES = 16 << 20

    def __init__(self, device, accum=None):
        self.device = device
        self.cuda = device.type == "cuda"
        self.accum = accum
        self.out_dtype = True  # until PyTorch says the device has no addmm with out_dtype

    def zeros(self, shape, dtype):
        return torch.zeros(shape, dtype=dtype, device=self.device)

    def empty(self, shape, dtype):
        return torch.empty(shape, dtype=dtype, device=self.device)

    @staticmethod
    def loss_dtype(h):
        return torch.float64

    def grad_dtypes(self, h, w, b):
        wide = self.accum or w.dtype
        return (h.dtype, wide, None if b is None else wide)

    def _index(self, idx):
        return idx if isinstance(idx, torch.Tensor) else torch.as_tensor(idx, device=self.device)

    def take(self, h, idx):
        return h[self._index(idx)]

    def targets(self, t):
        """The targets, on the device for CUDA (one copy, before the first chunk)."""
        return torch.as_tensor(t, device=self.device) if self.cuda else t

    index = targets

    def fused(self, x, t, scale, options):
        if not self.cuda:
            return _linear._NumpyOps.fused(_host(x), t, scale, options)
        return _device.chunk_losses(x, t, scale=scale, **options)

    def loss(self, x, t, options):
        if not self.cuda:
            return _linear._NumpyOps.loss(_host(x), t, options)
        return _device.chunk_losses(x, t, **options)

    def rows(self, a, idx):
        part = a[idx] if isinstance(idx, slice) else a[self._index(idx)]
        return part if self.cuda else part.cpu().numpy()

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

    @staticmethod
    def host(x):
        return _host(x)

    def gradients(self, grads, g, w, hc, idx, cls=slice(None), add_hidden=False, first=False):
        """As ``_linear._NumpyOps.gradients`` (``g_weight`` starts from zeros: always added
        to)."""
        gh, gw, gb = grads
        wc = w[cls]
        if gh is not None and add_hidden and isinstance(idx, slice):
            gh[idx].addmm_(g, wc)
        elif gh is not None and add_hidden:
            gh.index_add_(0, self._index(idx), g @ wc)
        elif gh is not None and isinstance(idx, slice):
            torch.matmul(g, wc, out=gh[idx])
        elif gh is not None:
            gh[self._index(idx)] = g @ wc
        if gw is not None and gw.dtype == g.dtype:
            gw[cls].addmm_(g.T, hc)
        elif gw is not None:
            self._accumulate_wide(gw[cls], g, hc)
        if gb is not None:
            gb[cls] += g.sum(dim=0, dtype=torch.float32 if g.dtype.itemsize < 4 else g.dtype).to(gb)

    def _accumulate_wide(self, gw, g, hc):
        """``gw += gᵀ·hc`` with ``gw`` wider than ``g``: the product in ``g``'s dtype, added
        in ``gw``'s. In one call where PyTorch has ``addmm`` with ``out_dtype`` (CUDA), else by
        blocks of classes (one temporary of ``BLOCK_BYTES``)."""
        if self.out_dtype:
            try:
                torch.addmm(gw, g.T, hc, out_dtype=gw.dtype, out=gw)
                return
            except (RuntimeError, TypeError):  # no such kernel on this device or version
                self.out_dtype = False
        step = max(1, self.BLOCK_BYTES // max(1, gw.shape[1] * g.element_size()))
        for s in range(0, gw.shape[0], step):
            gw[s:s + step] += g[:, s:s + step].T @ hc


def _accum_dtype(accum_dtype, dtype):
    """The dtype to accumulate the weight's gradient in: None (the weight's own) or a wider
    floating dtype."""
    if accum_dtype is None or accum_dtype == dtype:
        return None
    if not isinstance(accum_dtype, torch.dtype) or accum_dtype not in (torch.float32,
                                                                       torch.float64):
        raise ValueError(f"accum_dtype={accum_dtype!r} must be None (the weight's dtype), "
                         "torch.float32 or torch.float64")
    if accum_dtype.itemsize < dtype.itemsize:
        raise ValueError(f"accum_dtype={accum_dtype} is narrower than the weight's {dtype}: "
                         "the gradient is accumulated in the weight's dtype or a wider one")
    return accum_dtype


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


def _prepare(hidden, weight, target, bias, ce_weight, ignore_index, label_smoothing, z_loss,
             softcap, chunk_size, accum_dtype):
    """What :func:`fastxent._linear.run` takes, from the operators' arguments."""
    lead, hdim, v = _check(hidden, weight, bias, target)
    t = _linear.targets(target.detach().cpu().numpy(), lead, v, ignore_index)
    cw_host = None
    options = dict(weight=None, **_linear.checked_options(label_smoothing, z_loss, softcap))
    if ce_weight is not None:
        cw_host = ce_weight.detach().cpu().to(torch.float64).numpy()
        if cw_host.shape != (v,):
            raise ValueError(f"ce_weight has shape {tuple(ce_weight.shape)}, expected ({v},)")
        # on a GPU: once on hidden's device, in a dtype the device kernel reads
        wide = torch.float64 if ce_weight.dtype == torch.float64 else torch.float32
        options["weight"] = (ce_weight.detach().to(hidden.device, wide) if hidden.is_cuda
                             else cw_host)
    chunk = _linear.chunk_shape(chunk_size, int(np.count_nonzero(t >= 0)), v,
                                hidden.element_size(), "cuda" if hidden.is_cuda else "cpu")
    if chunk[1] is not None and hidden.is_cuda:
        raise NotImplementedError(f"chunk_size={tuple(chunk_size)}: blocks of classes run on the "
                                  "CPU only; CUDA tensors are chunked by rows (chunk_size=rows)")
    h = hidden.detach().reshape(int(np.prod(lead)), hdim).contiguous()
    w = weight.detach().contiguous()
    b = None if bias is None else bias.detach().contiguous()
    ops = _TorchOps(hidden.device, _accum_dtype(accum_dtype, hidden.dtype))
    return lead, (ops, h, w, b, t, cw_host, options), chunk


def _none_like(t):
    return t.new_empty(0)


@torch.library.custom_op("fastxent::linear_cross_entropy", mutates_args=())
def _linear_op(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
               bias: Optional[torch.Tensor], ce_weight: Optional[torch.Tensor], reduction: str,
               ignore_index: int, label_smoothing: float, z_loss: float,
               softcap: Optional[float], chunk_size: Optional[List[int]],
               accum_dtype: Optional[torch.dtype], grad_hidden: bool, grad_weight: bool,
               grad_bias: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, g_hidden, g_weight, g_bias): the gradients of ``loss`` asked for by the three
    flags, empty tensors for the others (and for g_bias without a bias)."""
    lead, args, chunk = _prepare(hidden, weight, target, bias, ce_weight, ignore_index,
                                 label_smoothing, z_loss, softcap, chunk_size, accum_dtype)
    want = (grad_hidden, grad_weight, grad_bias)
    losses, finish, grads = _linear.run(*args, reduction, chunk, grad=any(want) and want)
    if reduction == "none":
        loss = losses.to(hidden.dtype).reshape(lead)
    else:
        loss = (losses.sum() * float(finish)).to(hidden.dtype)
    return (loss,) + _results(hidden, weight, grads)


def _results(hidden, weight, grads):
    """The three gradient outputs of the operators: empty tensors for those not computed."""
    gh, gw, gb = grads or (None, None, None)
    return (_none_like(hidden) if gh is None else gh.reshape(hidden.shape),
            _none_like(weight) if gw is None else gw.to(weight.dtype),
            _none_like(hidden) if gb is None else gb.to(hidden.dtype))


def _fake_results(hidden, weight, bias, want):
    like = (hidden, weight, bias)
    return tuple(torch.empty_like(a) if wanted and a is not None else _none_like(hidden)
                 for a, wanted in zip(like, want))


@_linear_op.register_fake
def _linear_fake(hidden, weight, target, bias, ce_weight, reduction, ignore_index,
                 label_smoothing, z_loss, softcap, chunk_size, accum_dtype, grad_hidden,
                 grad_weight, grad_bias):
    loss = hidden.new_empty(hidden.shape[:-1] if reduction == "none" else ())
    return (loss,) + _fake_results(hidden, weight, bias, (grad_hidden, grad_weight, grad_bias))


@torch.library.custom_op("fastxent::linear_cross_entropy_backward", mutates_args=())
def _linear_backward_op(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                        bias: Optional[torch.Tensor], ce_weight: Optional[torch.Tensor],
                        grad_loss: torch.Tensor, ignore_index: int, label_smoothing: float,
                        z_loss: float, softcap: Optional[float], chunk_size: Optional[List[int]],
                        accum_dtype: Optional[torch.dtype],
                        grad_hidden: bool, grad_weight: bool, grad_bias: bool
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of ``Σ grad_loss·loss`` for reduction="none" (those the flags ask for): a
    second walk over the chunks, since a per-row upstream gradient enters g_weight inside its
    product."""
    _, args, chunk = _prepare(hidden, weight, target, bias, ce_weight, ignore_index,
                              label_smoothing, z_loss, softcap, chunk_size, accum_dtype)
    go = grad_loss.detach().reshape(-1).to(torch.float64)
    want = (grad_hidden, grad_weight, grad_bias)
    _, _, grads = _linear.run(*args, "none", chunk, grad=want, grad_output=go)
    return _results(hidden, weight, grads)


@_linear_backward_op.register_fake
def _linear_backward_fake(hidden, weight, target, bias, ce_weight, grad_loss, ignore_index,
                          label_smoothing, z_loss, softcap, chunk_size, accum_dtype, grad_hidden,
                          grad_weight, grad_bias):
    return _fake_results(hidden, weight, bias, (grad_hidden, grad_weight, grad_bias))


def _setup(ctx, inputs, output):
    (hidden, weight, target, bias, ce_weight, reduction, ignore_index, label_smoothing, z_loss,
     softcap, chunk_size, accum_dtype, *want) = inputs
    ctx.eager = grad = any(want)
    ctx.has_bias = bias is not None
    ctx.options = (ignore_index, label_smoothing, z_loss, softcap, chunk_size, accum_dtype)
    if grad:  # the gradients, computed with the loss; scaled in backward
        ctx.save_for_backward(*output[1:])
    else:  # the inputs, for the second walk
        ctx.save_for_backward(hidden, weight, target, bias, ce_weight)
    ctx.mark_non_differentiable(*output[1:])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, *_grads_of_grads):
    _no_double_backward()
    want = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[3])
    if ctx.eager:
        grads = tuple(_scaled(g, grad_loss, "sum") for g in ctx.saved_tensors)
    else:
        grads = _linear_backward_op(*ctx.saved_tensors, grad_loss, *ctx.options, *want)
    gh, gw, gb = (g if wanted else None for g, wanted in zip(grads, want))
    return (gh, gw, None, gb) + (None,) * 11


_linear_op.register_autograd(_backward, setup_context=_setup)


def _chunk_list(chunk_size, weight):
    """``chunk_size`` checked, as the operators take it: None, [rows] or [rows, classes]."""
    if chunk_size is None:
        return None
    _linear.chunk_shape(chunk_size, 1, weight.shape[0], 1, "cpu")
    return [int(c) for c in chunk_size] if isinstance(chunk_size, (tuple, list)) \
        else [int(chunk_size)]


def linear_cross_entropy(hidden, weight, target, bias=None, *, reduction="mean",
                         ignore_index=-100, ce_weight=None, label_smoothing=0.0, z_loss=0.0,
                         softcap=None, chunk_size=None, accum_dtype=None):
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
    chunk_size : int or (int, int), optional
        Rows of logits per chunk, or ``(rows, classes)`` for chunks of both (CPU only: the
        logits are then computed twice, see :func:`fastxent.linear_cross_entropy`); by default
        as many whole rows as fit in 64 MiB.
    accum_dtype : torch.dtype, optional
        The dtype the gradients of ``weight`` and ``bias`` are summed in over the chunks: None
        (their own dtype) or ``torch.float32`` (or ``float64``): for bfloat16 and float16
        weights the sum is then kept in float32 and rounded to the weight's dtype once, not
        after every chunk, at the cost of a float32 array of the weight's size, read and
        written once per chunk.

    Returns
    -------
    Tensor
        The loss in hidden's dtype: a scalar, or one per row for ``reduction="none"``;
        differentiable with respect to ``hidden``, ``weight`` and ``bias``.

    Notes
    -----
    By default the weight's gradient is accumulated chunk by chunk in the weight's dtype, as
    Liger-Kernel does: for bfloat16 it is rounded once per chunk instead of once, and its error
    grows with the number of chunks (``accum_dtype=torch.float32`` avoids that).

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
    _check(hidden, weight, bias, target)
    _accum_dtype(accum_dtype, hidden.dtype)
    if ce_weight is not None and not isinstance(ce_weight, torch.Tensor):
        raise TypeError(f"ce_weight must be a torch.Tensor, got {type(ce_weight).__name__}")
    if ce_weight is not None and ce_weight.requires_grad:
        raise RuntimeError("fastxent.torch.linear_cross_entropy differentiates with respect to "
                           "hidden, weight and bias, and ce_weight requires grad")
    eager = torch.is_grad_enabled() and reduction != "none"
    want = [eager and t is not None and t.requires_grad for t in (hidden, weight, bias)]
    return _linear_op(hidden, weight, target, bias, ce_weight, reduction, int(ignore_index),
                      float(label_smoothing), float(z_loss),
                      None if softcap is None else float(softcap), _chunk_list(chunk_size, weight),
                      accum_dtype, *want)[0]


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
                 *, z_loss=0.0, softcap=None, chunk_size=None, accum_dtype=None):
        super().__init__()
        self.register_buffer("ce_weight", ce_weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.chunk_size = chunk_size
        self.accum_dtype = accum_dtype

    def forward(self, hidden, weight, target, bias=None):
        return linear_cross_entropy(hidden, weight, target, bias, reduction=self.reduction,
                                    ignore_index=self.ignore_index, ce_weight=self.ce_weight,
                                    label_smoothing=self.label_smoothing, z_loss=self.z_loss,
                                    softcap=self.softcap, chunk_size=self.chunk_size,
                                    accum_dtype=self.accum_dtype)

    def extra_repr(self):
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
                f"softcap={self.softcap}, chunk_size={self.chunk_size}, "
                f"accum_dtype={self.accum_dtype}")
