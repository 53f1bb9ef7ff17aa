"""``fastxent.torch.linear_cross_entropy``: the chunked loop of :mod:`fastxent.losses.linear` with
PyTorch's matrix products (MKL or oneDNN on the CPU, cuBLAS on a GPU), differentiable by
autograd for ``hidden``, ``weight`` and ``bias``.

For ``reduction="mean"`` or ``"sum"`` the forward pass computes the three gradients along with the
loss (one pass over the chunks, as Liger-Kernel does) and the backward pass scales them by the
upstream gradient. For ``reduction="none"`` the upstream gradient differs from row to row and
enters ``g_weight`` inside its product, so the backward pass walks the chunks a second time.
Both are ``torch.library`` custom operators with fake implementations, so ``torch.compile``
traces through them.
"""

from typing import List, NamedTuple, Optional, Tuple

import numpy as np
import torch

from ..dispatch import checks as _checks
from ..dispatch import device as _device
from ..kernels.host import z_part
from ..losses import linear as _linear
from . import composite as _torch_composite
from .support import (_as_autocast, _host, _loss_dtype, _no_double_backward, _returned, _scaled,
                      _without_autocast)


class _TorchOps:
    """The products of :func:`fastxent.losses.linear.run` with PyTorch, on the tensors' device;
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

    def fused(self, x, t, scale, options, lse=False):
        if not self.cuda:
            return _linear._NumpyOps.fused(_host(x), t, scale, options, lse)
        return _device.chunk_losses(x, t, scale=scale, lse=lse, **options)

    def loss(self, x, t, options, lse=False):
        if not self.cuda:
            return _linear._NumpyOps.loss(_host(x), t, options, lse)
        return _device.chunk_losses(x, t, lse=lse, **options)

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
        """As ``losses/linear.py::_NumpyOps.gradients`` (``g_weight`` starts from zeros: always
        added to)."""
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
    return _checks.wider_dtype(accum_dtype, "accum_dtype", dtype,
                               (torch.float32, torch.float64), "the weight's")


def _check(hidden, weight, bias, target):
    named = (("hidden", hidden), ("weight", weight), ("bias", bias), ("target", target))
    _checks.instances(named, torch.Tensor, "a torch.Tensor")
    for name, t in named[:3]:
        if t is not None and not t.is_floating_point():
            _checks.logits_format(str(t.dtype).replace("torch.", ""), (1,), name=name)
    _checks.one_device(named)
    return _checks.linear_shapes(tuple(hidden.shape), tuple(weight.shape),
                                 None if bias is None else tuple(bias.shape),
                                 (str(hidden.dtype), str(weight.dtype),
                                  None if bias is None else str(bias.dtype)))


class _Prepared(NamedTuple):
    """The operators' arguments, checked, as :func:`fastxent.losses.linear.run` takes them."""

    lead: tuple  # hidden.shape[:-1]
    args: tuple  # (ops, h (N, H), w, b, t, class weights on the host, the kernel's options)
    chunk: tuple  # (rows, classes or None)
    shift: int

    def per_row(self, values, dtype):
        """(N,) values of the rows → the shape of the loss, in ``dtype``."""
        rows = values.reshape(self.lead)
        if self.shift:  # (the last positions have no target)
            rows = rows[..., :self.lead[-1] - self.shift]
        return rows.to(dtype).contiguous()


def _targets(target, lead, v, ignore_index, shift, cuda):
    """The targets as :func:`fastxent.losses.linear.run` takes them: host class indices (N,) (-1:
    ignored), or probabilities (N, V) where they are (on the GPU, no copy)."""
    if cuda and target.is_floating_point():
        dname = str(target.dtype).replace("torch.", "")
        _checks.target_kind(dname, tuple(target.shape), tuple(lead) + (v,))
        _checks.no_shift_of_probabilities(shift)
        return target.detach().reshape(-1, v).contiguous()
    return _linear.targets(_host(target.detach().cpu()), lead, v, ignore_index, shift)


def _prepare(hidden, weight, target, bias, ce_weight, ignore_index, label_smoothing, z_loss,
             softcap, chunk_size, accum_dtype, shift=0):
    """What :func:`fastxent.losses.linear.run` takes, from the operators' arguments."""
    lead, hdim, v = _check(hidden, weight, bias, target)
    s = _checks.shift(shift, tuple(hidden.shape), "hidden")
    t = _targets(target, lead, v, ignore_index, s, hidden.is_cuda)
    cw_host = None
    options = dict(weight=None, **_linear.checked_options(label_smoothing, z_loss, softcap))
    if ce_weight is not None:
        cw_host = _checks.weight(_host(ce_weight.detach().cpu()), v, "ce_weight")
        # on a GPU: once on hidden's device, in a dtype the device kernel reads
        wide = torch.float64 if ce_weight.dtype == torch.float64 else torch.float32
        options["weight"] = (ce_weight.detach().to(hidden.device, wide) if hidden.is_cuda
                             else cw_host)
    chunk = _linear.chunk_shape(chunk_size, int(np.count_nonzero(_linear.valid(t))), v,
                                hidden.element_size(), "cuda" if hidden.is_cuda else "cpu",
                                whole_rows=t.ndim == 2)
    if chunk[1] is not None and hidden.is_cuda:
        raise NotImplementedError(f"chunk_size={tuple(chunk_size)}: blocks of classes run on the "
                                  "CPU only; CUDA tensors are chunked by rows (chunk_size=rows)")
    h = hidden.detach().reshape(int(np.prod(lead)), hdim).contiguous()
    w = weight.detach().contiguous()
    b = None if bias is None else bias.detach().contiguous()
    ops = _TorchOps(hidden.device, _accum_dtype(accum_dtype, hidden.dtype))
    return _Prepared(lead, (ops, h, w, b, t, cw_host, options), chunk, s)


def _none_like(t):
    return t.new_empty(0)


@torch.library.custom_op("fastxent::linear_cross_entropy", mutates_args=())
@_without_autocast
def _linear_op(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
               bias: Optional[torch.Tensor], ce_weight: Optional[torch.Tensor], reduction: str,
               ignore_index: int, label_smoothing: float, z_loss: float,
               softcap: Optional[float], shift: int, chunk_size: Optional[List[int]],
               accum_dtype: Optional[torch.dtype], parts: bool, loss_dtype: Optional[torch.dtype],
               grad_hidden: bool, grad_weight: bool, grad_bias: bool
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                          torch.Tensor]:
    """(loss, z-loss term, lse, g_hidden, g_weight, g_bias): the z-loss term and the lse empty
    unless ``parts``, and the gradients of ``loss`` asked for by the three flags, empty tensors
    for the others (and for g_bias without a bias)."""
    prep = _prepare(hidden, weight, target, bias, ce_weight, ignore_index, label_smoothing,
                    z_loss, softcap, chunk_size, accum_dtype, shift)
    want = (grad_hidden, grad_weight, grad_bias)
    walk = _linear.run(*prep.args, reduction, prep.chunk, grad=any(want) and want, lse=parts)
    dtype = loss_dtype or hidden.dtype
    if reduction == "none":
        values = [prep.per_row(walk.losses, dtype)]
    else:
        values = [(walk.losses.sum() * float(walk.finish)).to(dtype)]
    if parts:
        n_valid = int(np.count_nonzero(_linear.valid(prep.args[4])))
        z = z_part(walk.lse, z_loss, reduction, n_valid)
        values += [prep.per_row(z, dtype) if reduction == "none" else z.to(dtype),
                   prep.per_row(walk.lse, dtype)]
    else:
        values += [hidden.new_empty(0, dtype=dtype), hidden.new_empty(0, dtype=dtype)]
    return tuple(values) + _results(hidden, weight, walk.grads)


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
                 label_smoothing, z_loss, softcap, shift, chunk_size, accum_dtype, parts,
                 loss_dtype, grad_hidden, grad_weight, grad_bias):
    dtype = loss_dtype or hidden.dtype
    per_row = hidden.shape[:-1]
    if shift:
        per_row = per_row[:-1] + (per_row[-1] - shift,)
    loss = hidden.new_empty(per_row if reduction == "none" else (), dtype=dtype)
    z = torch.empty_like(loss) if parts else hidden.new_empty(0, dtype=dtype)
    lse = hidden.new_empty(per_row if parts else 0, dtype=dtype)
    return (loss, z, lse) + _fake_results(hidden, weight, bias,
                                          (grad_hidden, grad_weight, grad_bias))


@torch.library.custom_op("fastxent::linear_cross_entropy_backward", mutates_args=())
@_without_autocast
def _linear_backward_op(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                        bias: Optional[torch.Tensor], ce_weight: Optional[torch.Tensor],
                        reduction: str, ignore_index: int, label_smoothing: float, z_loss: float,
                        softcap: Optional[float], shift: int, chunk_size: Optional[List[int]],
                        accum_dtype: Optional[torch.dtype], grad_loss: Optional[torch.Tensor],
                        grad_z: Optional[torch.Tensor], grad_lse: Optional[torch.Tensor],
                        grad_hidden: bool, grad_weight: bool, grad_target: bool, grad_bias: bool
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of ``(hidden, weight, target, bias)`` asked for by the flags (empty tensors
    for the others) of the outputs ``(loss, z-loss term, lse)`` against their upstream
    gradients (None where undefined): a second walk over the chunks, for what the gradients
    computed with the loss cannot give (a per-row upstream gradient enters g_weight inside its
    product; the z-loss term and the lse have gradients of their own; probability targets)."""
    prep = _prepare(hidden, weight, target, bias, ce_weight, ignore_index, label_smoothing,
                    z_loss, softcap, chunk_size, accum_dtype, shift)
    ops, h, w, b, t, cw, options = prep.args
    up = _upstream(prep, reduction, z_loss, grad_loss, grad_z, grad_lse)
    want = (grad_hidden, grad_weight, grad_bias)
    grads = None
    if any(want):
        chunk, go = prep.chunk, up[:, 0]
        if bool((up[:, 1:] != 0).any()):  # the lse's and z-loss term's gradients
            ops, go = _ExtraOps(hidden.device, ops.accum, softcap), up
            if chunk[1] is not None:  # (which need whole rows)
                chunk = (max(1, _linear.BUDGET["cpu"] // (w.shape[0] * w.element_size())), None)
        grads = _linear.run(ops, h, w, b, t, cw, options, "none", chunk, grad=want,
                            grad_output=go).grads
    gh, gw, gb = _results(hidden, weight, grads)
    gt = _none_like(hidden)
    if grad_target:
        gt = _target_gradient(prep, up[:, 0], label_smoothing, softcap).reshape(target.shape)
        gt = gt.to(target.dtype)
    return gh, gw, gt, gb


def _upstream(prep, reduction, z_loss, grad_loss, grad_z, grad_lse):
    """The upstream gradients of a backward walk as per-row factors, (N, 3) float64 on the
    device: ``[loss, lse, z]``. A row's logits get ``loss`` times the gradient of its loss
    (which includes its z-loss term; the kernel's), plus ``(lse + z·row's lse)·softmax·dy/dx``
    (:class:`_ExtraOps`): the lse output's own upstream gradient, and ``2·z_loss`` times the
    z-loss term's share beyond what ``loss`` gives it (the z-loss output's own, and for a mean
    the difference between averaging over the counted rows and over the weights' sum)."""
    _, h, _, _, t, cw, _ = prep.args
    n = h.shape[0]
    dev = h.device
    counted = torch.as_tensor(_linear.valid(t), device=dev)
    denom, n_valid = _linear.denominators(t, cw)

    def rows(g, over):
        if g is None:
            return torch.zeros(n, dtype=torch.float64, device=dev)
        if reduction == "none":
            return _padded(g, prep.lead, prep.shift).reshape(-1).to(dev)
        g = g.detach().to(device=dev, dtype=torch.float64)
        return (g / over if reduction == "mean" else g).expand(n)

    loss = rows(grad_loss, denom)
    share = rows(grad_z, n_valid)
    if reduction == "mean" and grad_loss is not None:
        share = share + rows(grad_loss, n_valid) - loss
    lse = (torch.zeros_like(loss) if grad_lse is None  # (one per row, whatever the reduction)
           else _padded(grad_lse, prep.lead, prep.shift).reshape(-1).to(dev))
    z = share * (2.0 * z_loss)
    return torch.stack([loss, torch.where(counted, lse, 0.0), torch.where(counted, z, 0.0)],
                       dim=-1)


class _ExtraOps(_TorchOps):
    """:class:`_TorchOps` whose fused kernel call also adds, to each row's gradient of the
    logits, ``(lse_factor + z_factor·lse)·softmax(y)·dy/dx``: the gradients of the lse and of
    the z-loss term beyond what the loss's own upstream gradient gives. The chunk's upstream
    gradients arrive as rows of ``[loss, lse_factor, z_factor]`` (:func:`_upstream`)."""

    def __init__(self, device, accum, softcap):
        super().__init__(device, accum)
        self.softcap = softcap

    def fused(self, x, t, scale, options, lse=False):
        scale = torch.as_tensor(scale, device=x.device)
        loss_up, lse_up, z_up = scale[:, 0], scale[:, 1], scale[:, 2]
        extra = None
        if bool((lse_up != 0).any()) or bool((z_up != 0).any()):
            y, _ = _torch_composite.capped(x, self.softcap)
            row_lse = torch.logsumexp(y, dim=-1).to(torch.float64)
            extra = _torch_composite.lse_gradient(x, row_lse, lse_up + z_up * row_lse,
                                                  self.softcap)
        up = loss_up if x.is_cuda else loss_up.cpu().numpy()
        result = super().fused(x, t, up, options, lse)
        if extra is not None:
            x += extra.to(x.dtype)
        return result


def _target_gradient(prep, loss_up, label_smoothing, softcap):
    """The gradient of probability targets, ``(1 - ε)·w·(lse - y)`` per row times its upstream
    gradient: a walk of its own over the chunks (the logits computed again)."""
    ops, h, w, b, t, cw, _ = prep.args
    v = w.shape[0]
    out = torch.empty((h.shape[0], v), dtype=torch.float32 if h.dtype != torch.float64
                      else torch.float64, device=h.device)
    cwt = None if cw is None else torch.as_tensor(cw, device=h.device)
    rows = prep.chunk[0]
    for s in range(0, h.shape[0], rows):
        x = torch.nn.functional.linear(h[s:s + rows], w, b)
        y, _ = _torch_composite.capped(x, softcap)
        g = (torch.logsumexp(y, dim=-1, keepdim=True) - y) * (1.0 - label_smoothing)
        g = g * loss_up[s:s + rows, None].to(g.dtype)
        out[s:s + rows] = g if cwt is None else g * cwt.to(g.dtype)
    return out


def _padded(values, lead, shift):
    """Per-row upstream gradients given for the loss's shape → float64 of ``lead``, zeros at
    the last ``shift`` positions (``checks.padded`` for tensors)."""
    values = values.detach().to(torch.float64)
    if not shift:
        return values.expand(lead)
    out = values.new_zeros(lead)
    out[..., :lead[-1] - shift] = values
    return out


@_linear_backward_op.register_fake
def _linear_backward_fake(hidden, weight, target, bias, ce_weight, reduction, ignore_index,
                          label_smoothing, z_loss, softcap, shift, chunk_size, accum_dtype,
                          grad_loss, grad_z, grad_lse, grad_hidden, grad_weight, grad_target,
                          grad_bias):
    like = (hidden, weight, target, bias)
    wanted = (grad_hidden, grad_weight, grad_target, grad_bias)
    return tuple(torch.empty_like(a) if w and a is not None else _none_like(hidden)
                 for a, w in zip(like, wanted))


def _setup(ctx, inputs, output):
    (hidden, weight, target, bias, ce_weight, reduction, ignore_index, label_smoothing, z_loss,
     softcap, shift, chunk_size, accum_dtype, parts, _, *want) = inputs
    ctx.eager = any(want)
    ctx.parts = parts
    ctx.reduction = reduction
    ctx.options = (ignore_index, label_smoothing, z_loss, softcap, shift, chunk_size,
                   accum_dtype)
    # the inputs, for the second walk; the gradients computed with the loss (scaled here)
    ctx.save_for_backward(hidden, weight, target, bias, ce_weight, *output[3:])
    ctx.mark_non_differentiable(*output[3:])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, grad_z, grad_lse, *_grads_of_grads):
    _no_double_backward("fastxent.torch.linear_cross_entropy has")
    if not ctx.parts:  # empty outputs
        grad_z = grad_lse = None
    nothing = (None,) * 18
    if grad_loss is None and grad_z is None and grad_lse is None:
        return nothing
    hidden, weight, target, bias, ce_weight, *kept = ctx.saved_tensors
    needs = ctx.needs_input_grad
    wanted = (needs[0], needs[1], needs[2], needs[3])
    if ctx.eager and not needs[2] and grad_z is None and grad_lse is None:
        grads = tuple(_scaled(g, grad_loss, "sum") for g in kept)
        gh, gw, gb = (g if w else None for g, w in zip(grads, (needs[0], needs[1], needs[3])))
        return (gh, gw, None, gb) + nothing[4:]
    grads = _linear_backward_op(hidden, weight, target, bias, ce_weight, ctx.reduction,
                                *ctx.options, grad_loss, grad_z, grad_lse, *wanted)
    return tuple(g if w else None for g, w in zip(grads, wanted)) + nothing[4:]


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
                         softcap=None, shift=0, chunk_size=None, accum_dtype=None,
                         return_z_loss=False, return_lse=False, loss_dtype=None):
    """``F.cross_entropy(hidden @ weight.T + bias, target, ...)`` without the logits.

    Parameters
    ----------
    hidden : Tensor, shape (..., H)
        Hidden states (float32, float64, bfloat16 or float16), on the CPU or a CUDA device.
    weight : Tensor, shape (V, H)
        The output layer's weight (``torch.nn.Linear(H, V).weight``), hidden's dtype.
    target : Tensor
        Class indices of shape ``hidden.shape[:-1]``, or probabilities of shape
        ``hidden.shape[:-1] + (V,)`` (as ``torch.nn.functional.linear_cross_entropy`` takes
        them; differentiable, and the chunks are whole rows).
    bias : Tensor, shape (V,), optional
        The output layer's bias.
    reduction, ignore_index, label_smoothing
        As ``torch.nn.functional.cross_entropy``.
    ce_weight : Tensor, shape (V,), optional
        Per-class weights (``weight`` of ``F.cross_entropy``).
    z_loss, softcap, return_z_loss, return_lse, loss_dtype
        As :func:`fastxent.torch.cross_entropy`.
    shift : int or bool
        For causal language models: the hidden state of position ``i`` against the target of
        position ``i + shift`` along the time axis, ``hidden`` ``(..., T, H)`` with class-index
        ``target`` ``(..., T)`` (``True`` is 1), without copying ``hidden``; per-row results
        have the shape ``(..., T - shift)``, as Cut Cross-Entropy's ``shift``.
    chunk_size : int or (int, int), optional
        Rows of logits per chunk, or ``(rows, classes)`` for chunks of both (CPU only: the
        logits are then computed twice, see :func:`fastxent.linear_cross_entropy`); by default
        as many whole rows as fit in 128 MiB on the CPU, 64 MiB on a GPU.
    accum_dtype : torch.dtype, optional
        The dtype the gradients of ``weight`` and ``bias`` are summed in over the chunks: None
        (their own dtype) or ``torch.float32`` (or ``float64``): for bfloat16 and float16
        weights the sum is then kept in float32 and rounded to the weight's dtype once, not
        after every chunk, at the cost of a float32 array of the weight's size, read and
        written once per chunk.

    Returns
    -------
    Tensor or tuple of Tensor
        The loss in ``loss_dtype`` (hidden's by default): a scalar, or one per row for
        ``reduction="none"``; differentiable with respect to ``hidden``, ``weight`` and
        ``bias`` (and probability targets). With ``return_z_loss`` or ``return_lse``, the tuple
        ``(loss, z_loss, lse)`` of those asked for.

    Notes
    -----
    Under ``torch.autocast`` the products run in autocast's dtype, as ``F.linear``'s would, and
    the loss comes back in the inputs' dtype (``F.cross_entropy`` is autocast to float32).

    By default the weight's gradient is accumulated chunk by chunk in the weight's dtype, as
    Liger-Kernel does: for bfloat16 it is rounded once per chunk instead of once, and its error
    grows with the number of chunks (``accum_dtype=torch.float32`` avoids that).

    The gradients of the returned z-loss term and lse, and of probability targets, come from a
    second walk over the chunks with PyTorch's operations (``fastxent.torch.composite``), in
    the backward pass that needs them.

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
    reduction = _checks.reduction(reduction)
    _check(hidden, weight, bias, target)
    _accum_dtype(accum_dtype, hidden.dtype)
    dtype = _loss_dtype(loss_dtype, hidden.dtype)
    _checks.instances((("ce_weight", ce_weight),), torch.Tensor, "a torch.Tensor")
    if ce_weight is not None and ce_weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("fastxent.torch.linear_cross_entropy is not differentiable with "
                           "respect to ce_weight: it cannot have requires_grad=True")
    options = (_checks.ignore_index(ignore_index),) + tuple(_linear.checked_options(
        label_smoothing, z_loss, softcap).values())
    s = _checks.shift(shift, tuple(hidden.shape), "hidden")
    # under autocast: the products in its dtype, as F.linear's (the loss keeps the dtype of
    # the inputs, float32, as autocast gives F.cross_entropy's)
    original = hidden.dtype
    hidden, weight, bias = _as_autocast(hidden, weight, bias)
    if dtype is None and hidden.dtype != original:
        dtype = original
    grad = torch.is_grad_enabled()
    # the gradients with the loss (scaled in backward), unless a per-row upstream gradient
    # must enter them (reduction="none") or the targets' own is asked for
    eager = grad and reduction != "none" and not target.requires_grad
    want = [eager and t is not None and t.requires_grad for t in (hidden, weight, bias)]
    parts = bool(return_z_loss or return_lse)
    out = _linear_op(hidden, weight, target, bias, ce_weight, reduction, *options, s,
                     _chunk_list(chunk_size, weight), accum_dtype, parts, dtype, *want)
    return _returned(out, return_z_loss, return_lse)


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
                 *, z_loss=0.0, softcap=None, shift=0, chunk_size=None, accum_dtype=None,
                 return_z_loss=False, return_lse=False, loss_dtype=None):
        super().__init__()
        self.register_buffer("ce_weight", ce_weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.shift = shift
        self.chunk_size = chunk_size
        self.accum_dtype = accum_dtype
        self.return_z_loss = return_z_loss
        self.return_lse = return_lse
        self.loss_dtype = loss_dtype

    def forward(self, hidden, weight, target, bias=None):
        return linear_cross_entropy(hidden, weight, target, bias, reduction=self.reduction,
                                    ignore_index=self.ignore_index, ce_weight=self.ce_weight,
                                    label_smoothing=self.label_smoothing, z_loss=self.z_loss,
                                    softcap=self.softcap, shift=self.shift,
                                    chunk_size=self.chunk_size, accum_dtype=self.accum_dtype,
                                    return_z_loss=self.return_z_loss,
                                    return_lse=self.return_lse, loss_dtype=self.loss_dtype)

    def extra_repr(self):
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
                f"softcap={self.softcap}, shift={self.shift}, chunk_size={self.chunk_size}, "
                f"accum_dtype={self.accum_dtype}, return_z_loss={self.return_z_loss}, "
                f"return_lse={self.return_lse}, loss_dtype={self.loss_dtype}")
