"""Public functions: argument checking, normalisation to 2-D storage views, dispatch, reduction.

Kernels return per-row statistics (``fastxent/kernels/__init__.py``); the losses of every option
are assembled from them here in float64, in O(N) work.
"""

from dataclasses import dataclass

import numpy as np

from ..core import dtypes as _dtypes
from ..core import formulas
from ..core.dtypes import compute_dtype, storage_view
from ..dispatch import backends as _dispatch
from ..dispatch import checks as _checks
from ..dispatch import device as _device


@dataclass
class _Problem:
    backend: object
    dtype: np.dtype  # the logits' own dtype
    x: np.ndarray  # (N, V) storage view, C-contiguous
    kind: str  # "index" or "prob"
    targets: np.ndarray  # (N,) int64 with -1 = ignored, or (N, V) storage view of probabilities
    weight: object  # (V,) float64 or None
    smoothing: float
    z_loss: float
    softcap: object
    reduction: str
    lead: tuple  # logits.shape[:-1]
    valid: np.ndarray  # (N,) bool
    denom: float  # what "mean" divides the cross-entropy by
    n_valid: int  # what "mean" divides the z-loss by
    shift: int = 0  # targets ``shift`` positions ahead (``checks.shifted``)

    @property
    def n_classes(self):
        return self.x.shape[1]

    def per_row(self, values):
        """(N,) float64 values of the rows as the user sees them: the compute type, the loss's
        shape (without the last ``shift`` positions, which have no target)."""
        return _checks.unshifted(values.astype(compute_dtype(self.dtype)).reshape(self.lead),
                                 self.shift)

    @property
    def weight_sum(self):
        return float(self.n_classes) if self.weight is None else float(self.weight.sum())


def _prepare(logits, targets, weight, options, backend, shift=0):
    """The user's arguments, checked (``options`` already), as a :class:`_Problem`."""
    red, ignore, eps, z, cap = options
    a = _checks.logits_array(logits)
    _checks.classes(a.shape)
    w = _checks.weight(weight, a.shape[-1])
    s = _checks.shift(shift, a.shape)
    if s:
        targets = _checks.shifted(targets, a.shape[:-1], s, ignore, a.shape[-1])
    kind, t = _checks.targets(targets, a.shape, ignore)
    return _problem(_dispatch.choose(backend, a), a, kind, t, w, eps, z, cap, red, s)


def _problem(be, a, kind, t, w, eps, z, cap, red, shift=0):
    """A :class:`_Problem` from checked values: ``a`` the logits (..., V), ``t`` int64 class
    indices (N,) with -1 for ignored rows or probabilities like ``a``, ``w`` float64 or None."""
    n_classes = a.shape[-1]
    x = storage_view(np.ascontiguousarray(a)).reshape(-1, n_classes)
    n = x.shape[0]
    if kind == "index":
        valid = t >= 0
        n_valid = int(np.count_nonzero(valid))
        denom = float(n_valid) if w is None else float(w[t[valid]].sum())
    else:
        t = storage_view(np.ascontiguousarray(t)).reshape(-1, n_classes)
        valid = np.ones(n, dtype=bool)
        n_valid = n
        denom = float(n)  # as PyTorch: probability targets average over rows, whatever the weights
    return _Problem(be, a.dtype, x, kind, t, w, eps, z, cap, red, a.shape[:-1], valid, denom,
                    n_valid, shift)


def chunk_losses(x, targets, *, weight, label_smoothing, z_loss, softcap, backend="auto",
                 scale=None, lse=False):
    """The per-row losses (float64, 0 for ignored rows) of a chunk of logits ``x`` (N, V), for
    fastxent's own loops (the fused linear cross-entropy): the arguments were checked by the
    public function, and the coefficients it passes may be what no user may pass (a z-loss
    coefficient rescaled by negative class weights). ``targets``: int64 class indices with -1 for
    ignored rows, or probabilities like ``x``. With ``scale`` (each row's upstream gradient, or
    one for all), the gradient is written over ``x``. Returns ``(losses, lse)``: ``lse``, each
    row's log-sum-exp (0 for ignored rows), when asked for, else None."""
    kind = "index" if targets.ndim == 1 else "prob"
    p = _problem(_dispatch.choose(backend, x), x, kind, targets, weight, label_smoothing, z_loss,
                 softcap, "none")
    if scale is None:
        stats = _stats(p)
    else:
        s = np.broadcast_to(np.asarray(scale, np.float64), p.valid.shape)
        stats = _stats(p, row_coefficients(s, s, p.valid, p.smoothing, p.n_classes, p.z_loss),
                       p.x)
    return _row_losses(p, stats), (_row_lse(p, stats) if lse else None)


def _stats(p, coef=None, grad=None):
    return p.backend.rows(p.x, p.targets, p.weight, p.softcap, p.smoothing > 0, coef, grad)


def row_terms(stats, smoothing, n_classes, weight_sum, z_loss):
    """Per-row (cross-entropy, z-loss) from the statistics ``[lse, Σwqy, Σwq, Σwy]``
    (``formulas.row_loss`` on the arrays of rows; without a z-loss its term is the scalar 0)."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return formulas.row_loss(*stats.T, smoothing, z_loss, n_classes, weight_sum)


def row_coefficients(scale, scale_z, valid, smoothing, n_classes, z_loss):
    """(N, 3) float64 ``[c0, c1, c2]`` of the backends' gradient formula
    (``formulas.coefficients``), for rows whose upstream gradient is ``scale`` (``scale_z`` for
    the z-loss); zeros where not ``valid``."""
    coef = np.zeros((valid.shape[0], 3))
    with np.errstate(invalid="ignore", over="ignore"):
        for k, c in enumerate(formulas.coefficients(scale[valid], scale_z[valid], smoothing,
                                                    z_loss, n_classes)):
            coef[valid, k] = c
    return coef


def _row_losses(p, stats):
    """Per-row losses (float64, 0 for ignored rows) from ``[lse, Σwqy, Σwq, Σwy]``."""
    ce, zt = row_terms(stats, p.smoothing, p.n_classes, p.weight_sum, p.z_loss)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(p.valid, ce + zt, 0.0)


def _row_lse(p, stats):
    """Each row's log-sum-exp (float64), 0 for ignored rows (what ``return_lse`` gives)."""
    return np.where(p.valid, stats[:, 0], 0.0)


def _loss(p, stats):
    """Per-row losses from ``[lse, Σwqy, Σwq, Σwy]``, then the reduction."""
    if p.reduction == "none":
        return p.per_row(_row_losses(p, stats))
    ce, zt = row_terms(stats, p.smoothing, p.n_classes, p.weight_sum, p.z_loss)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        ce = np.where(p.valid, ce, 0.0)
        zt = np.where(p.valid, zt, 0.0)
        if p.reduction == "sum":
            return float(np.sum(ce) + np.sum(zt))
        return float(np.float64(np.sum(ce)) / p.denom + np.float64(np.sum(zt)) / p.n_valid)


def z_part(lse, z_loss, reduction, n_valid):
    """The z-loss term of rows whose log-sum-exps are ``lse`` (0 for rows that do not count),
    reduced as the loss is: per row for "none", their sum, or their mean over the ``n_valid``
    counted rows (NumPy arrays or tensors)."""
    rows = z_loss * lse * lse if z_loss else lse * 0.0
    if reduction == "none":
        return rows
    total = rows.sum()
    return total if reduction == "sum" else total / n_valid


def _result(p, stats, want_z, want_lse):
    """The loss, or with the parts asked for ``(loss, z_loss, lse)`` (see :func:`cross_entropy`):
    the z-loss term reduced as the loss is, and each row's log-sum-exp (0 for ignored rows)."""
    loss = _loss(p, stats)
    if not (want_z or want_lse):
        return loss
    lse = _row_lse(p, stats)
    parts = (loss,)
    if want_z:
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            z = z_part(lse, p.z_loss, p.reduction, np.float64(p.n_valid))
        parts += (p.per_row(z) if p.reduction == "none" else float(z),)
    if want_lse:
        parts += (p.per_row(lse),)
    return parts


def _coefficients(p, grad_output):
    """(N, 3) float64 [c0, c1, c2] of the gradient formula for each row (zeros for ignored)."""
    go = _checks.grad_output(grad_output, p.reduction, _checks.shifted_shape(p.lead, p.shift))
    n = p.x.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        if p.reduction == "none":
            s = _checks.padded(go, p.lead, p.shift).reshape(-1)
            s_z = s
        elif p.reduction == "sum":
            s = s_z = np.full(n, go)
        else:
            s = np.full(n, go / np.float64(p.denom))
            s_z = np.full(n, go / np.float64(p.n_valid))
    return row_coefficients(s, s_z, p.valid, p.smoothing, p.n_classes, p.z_loss)


def cross_entropy(logits, targets, *, reduction="mean", ignore_index=-100, weight=None,
                  label_smoothing=0.0, z_loss=0.0, softcap=None, shift=0, backend="auto",
                  return_z_loss=False, return_lse=False, check_targets=False):
    """Softmax cross-entropy of logits against class indices or probabilities.

    Streams over the class axis: no array of the logits' size is created.

    Parameters
    ----------
    logits : ndarray, shape (..., V)
        Unnormalised scores, class axis last; float32, float64, float16 or bfloat16
        (``ml_dtypes.bfloat16``). Arithmetic is in float32 (float64 for float64 inputs).
    targets : ndarray
        Integer class indices of shape ``logits.shape[:-1]``, or a floating array of the
        logits' shape holding a target distribution per row (probability targets).
    reduction : {"mean", "sum", "none"}
        ``"mean"`` divides by the summed weights of the non-ignored targets (their count without
        ``weight``; the row count for probability targets), as ``torch.nn.functional.cross_entropy``.
        ``"none"`` returns one loss per row, shape ``logits.shape[:-1]``.
    ignore_index : int
        Class index whose rows contribute neither loss nor gradient (index targets only).
    weight : array_like, shape (V,), optional
        Per-class weights (negative values allowed), as in PyTorch.
    label_smoothing : float in [0, 1]
        Mixes the target with the uniform distribution, as in PyTorch (weights included).
    z_loss : float >= 0
        Adds ``z_loss * lse**2`` per non-ignored row (PaLM's auxiliary loss). With
        ``reduction="mean"`` this term is averaged over non-ignored rows, unweighted, as in
        Liger-Kernel.
    softcap : float > 0, optional
        Applies ``softcap * tanh(logits / softcap)`` before everything else (Gemma 2).
    shift : int or bool
        For causal language models: score the logits of position ``i`` against the target of
        position ``i + shift`` along the time axis, ``logits`` ``(..., T, V)`` with class-index
        ``targets`` ``(..., T)`` (``True`` is 1), without copying the logits. The same as
        ``cross_entropy(logits[..., :-shift, :], targets[..., shift:])``; per-row results have
        the shape ``(..., T - shift)``.
    backend : {"auto", "cpu", "cuda", "numpy"}
        ``"cpu"``: Numba kernels; ``"cuda"``: Numba CUDA kernels on an NVIDIA GPU (host arrays are
        copied there and back); ``"numpy"``: the float64 reference; ``"auto"``: ``"cuda"`` for
        arrays that live on a GPU (anything exporting ``__cuda_array_interface__``: PyTorch
        CUDA tensors, CuPy and Numba device arrays), else ``"cpu"``.
    return_z_loss : bool
        Also return the z-loss term, reduced as the loss is (its part of the loss, which
        includes it), as Liger-Kernel's ``return_z_loss``.
    return_lse : bool
        Also return each row's log-sum-exp (of the soft-capped logits), the loss's shape for
        ``reduction="none"``, 0 for ignored rows, as Cut Cross-Entropy's ``return_lse``.
    check_targets : bool
        For GPU arrays: wait for the kernels and raise an out-of-range class index's
        ``IndexError`` from this call. By default the call returns with its work queued; such a
        call's loss is NaN, it writes no gradient, and the next call on GPU arrays (or
        :func:`check_gpu_targets`) raises its error (docs/cuda.md#out-of-range-targets). Host
        arrays are always checked before anything runs.

    Returns
    -------
    loss : float or ndarray
        A Python float for ``"mean"``/``"sum"`` (NaN for a mean over no valid row, 0.0 for a sum
        over no row); for ``"none"`` an array in float32 (float64 for float64 logits). For logits
        on a GPU the loss stays there: a 0-d array (or one per row) of the logits' kind.
        With ``return_z_loss`` or ``return_lse``, the tuple ``(loss, z_loss, lse)`` of those
        asked for.

    Raises
    ------
    TypeError, ValueError, IndexError
        Wrong types, shapes or options; ``IndexError`` for a class index outside ``[0, V)`` that
        is not ``ignore_index``, naming the first such position.

    Notes
    -----
    For row ``i`` with logits ``x``, target ``t`` and ``lse = log Σ_j exp(x_j)``,
    ``loss_i = lse - x_t``. Non-finite logits behave as in PyTorch: ``-inf`` masks a class,
    NaN propagates to its row.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> logits = np.array([[2.0, 1.0, 0.1]], dtype=np.float32)
    >>> round(fx.cross_entropy(logits, np.array([0])), 4)
    0.417
    >>> fx.cross_entropy(logits, np.array([-100]), reduction="sum")
    0.0
    >>> fx.cross_entropy(np.zeros((2, 4), np.float32), np.array([1, 3]), reduction="none")
    array([1.3862944, 1.3862944], dtype=float32)
    >>> loss, lse = fx.cross_entropy(logits, np.array([0]), return_lse=True)
    >>> lse.round(4)
    array([2.417], dtype=float32)

    A causal language model's logits against the next tokens, ``(B, T, V)`` and ``(B, T)``:

    >>> x = np.random.default_rng(0).standard_normal((2, 5, 7)).astype(np.float32)
    >>> labels = np.array([[1, 2, 3, 4, 5], [6, 5, 4, 3, -100]])
    >>> a = fx.cross_entropy(x, labels, shift=1)
    >>> b = fx.cross_entropy(x[:, :-1], labels[:, 1:])
    >>> bool(np.isclose(a, b))
    True
    """
    options = _checks.loss_options(reduction, ignore_index, label_smoothing, z_loss, softcap)
    if _dispatch.uses_cuda(backend, logits):
        return _device.cross_entropy(logits, targets, weight, options, shift=shift,
                                     parts=(return_z_loss, return_lse), wait=bool(check_targets))
    p = _prepare(logits, targets, weight, options, backend, shift)
    return _result(p, _stats(p), return_z_loss, return_lse)


def cross_entropy_with_grad(logits, targets, *, reduction="mean", ignore_index=-100, weight=None,
                            label_smoothing=0.0, z_loss=0.0, softcap=None, shift=0,
                            backend="auto", grad_output=1.0, out=None, inplace=False,
                            return_z_loss=False, return_lse=False, check_targets=False):
    """Cross-entropy and its gradient with respect to the logits, in one fused pass.

    Each row is read from memory once for its statistics and once more, from cache, to write
    its gradient. Takes every argument of :func:`cross_entropy`, plus:

    Parameters
    ----------
    grad_output : float or array_like
        The upstream gradient: the result is the gradient of ``grad_output * loss`` (summed over
        rows for ``reduction="none"``, where ``grad_output`` broadcasts to the loss shape).
    out : ndarray, optional
        Where to write the gradient: the logits' shape and dtype, not overlapping them.
    inplace : bool
        Write the gradient over ``logits`` (no extra memory of the logits' size). ``logits``
        must then be a writable NumPy array; it holds the gradient afterwards.

    Returns
    -------
    loss : float or ndarray, or tuple
        As :func:`cross_entropy` (with ``return_z_loss`` or ``return_lse``, the tuple of the
        parts asked for).
    grad : ndarray
        The gradient of the loss, in the logits' dtype and shape (``out`` or ``logits`` when
        given); with ``shift``, zeros at the last ``shift`` positions.

    Notes
    -----
    With ``p = softmax(x)`` and ``q`` the one-hot (or given) target distribution, the gradient
    of row ``i`` is ``scale_i * (p - q)`` for plain cross-entropy, where ``scale_i`` is
    ``grad_output`` divided by the mean's denominator. Ignored rows get zeros.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> logits = np.zeros((2, 4), dtype=np.float32)
    >>> loss, grad = fx.cross_entropy_with_grad(logits, np.array([1, 3]))
    >>> round(loss, 6)
    1.386294
    >>> grad
    array([[ 0.125, -0.375,  0.125,  0.125],
           [ 0.125,  0.125,  0.125, -0.375]], dtype=float32)
    >>> _, g = fx.cross_entropy_with_grad(logits, np.array([1, 3]), inplace=True)
    >>> g is logits
    True
    """
    if inplace and out is not None:
        raise ValueError("pass either out= or inplace=True, not both")
    options = _checks.loss_options(reduction, ignore_index, label_smoothing, z_loss, softcap)
    if _dispatch.uses_cuda(backend, logits):
        return _device.cross_entropy(logits, targets, weight, options, grad=True,
                                     grad_output=grad_output, out=out, inplace=inplace,
                                     shift=shift, parts=(return_z_loss, return_lse),
                                     wait=bool(check_targets))
    p = _prepare(logits, targets, weight, options, backend, shift)
    coef = _coefficients(p, grad_output)
    inputs = (("targets", targets), ("weight", weight), ("grad_output", grad_output))
    if inplace:
        _checks.inplace_target(logits, inputs)
        target = logits
    elif out is not None:
        target = _checks.out_array(out, _checks.logits_array(logits),
                                   (("logits", logits),) + inputs)
    else:
        target = np.empty(p.lead + (p.n_classes,), dtype=p.dtype)
    # straight into the destination when the kernels can write it (C order, native byte order;
    # in place: the logits themselves, not a converted copy of them), else through a buffer
    direct = (target.flags.c_contiguous and target.dtype.isnative
              and (not inplace or np.shares_memory(p.x, target)))
    buf = target if direct else np.empty(target.shape, _dtypes.native_dtype(target.dtype))
    gview = storage_view(buf).reshape(-1, p.n_classes)
    if inplace and not direct:
        gview[...] = p.x  # the kernel reads the logits from where it writes the gradient
        p.x = gview
    loss = _result(p, _stats(p, coef, gview), return_z_loss, return_lse)
    if not direct:
        np.copyto(target, buf)
    return loss, target


def check_gpu_targets():
    """Raise the error of an earlier call on GPU arrays whose class indices were out of range.

    A call on GPU arrays returns with its kernels queued: it does not wait for them to say
    whether every class index was in range. Such a call's loss is NaN and its gradient is not
    written; its ``IndexError`` is raised by the next call on GPU arrays once the device has
    finished the call, or by this function, which waits for every such call. Pass
    ``check_targets=True`` to a call to have it wait and raise at once.

    Raises
    ------
    IndexError
        Naming the first position whose class index is outside ``[0, V)`` and not
        ``ignore_index``, of the earliest call that had one.

    Examples
    --------
    >>> import fastxent as fx
    >>> fx.check_gpu_targets()  # nothing pending: returns None
    """
    _device.check_targets(wait=True)


def logsumexp(logits, backend="auto"):
    """Log of the sum of exponentials along the last axis, streamed (no exp array).

    Parameters
    ----------
    logits : ndarray, shape (..., V)
        float32, float64, float16 or bfloat16.
    backend : {"auto", "cpu", "cuda", "numpy"}
        As in :func:`cross_entropy`.

    Returns
    -------
    lse : ndarray, shape (...)
        float32 (float64 for float64 inputs). ``-inf`` for a row of ``-inf`` (or ``V == 0``),
        ``+inf`` where a row holds ``+inf``, NaN where it holds NaN.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> fx.logsumexp(np.zeros((2, 4), dtype=np.float32))  # log 4
    array([1.3862944, 1.3862944], dtype=float32)
    >>> fx.logsumexp(np.array([-np.inf, -np.inf]))
    array(-inf)
    """
    if _dispatch.uses_cuda(backend, logits):
        return _device.logsumexp(logits)
    a = _checks.logits_array(logits)
    be = _dispatch.choose(backend, a)
    n_classes = a.shape[-1]
    if not n_classes:  # the log of an empty sum
        return np.full(a.shape[:-1], -np.inf, dtype=compute_dtype(a.dtype))
    x = storage_view(np.ascontiguousarray(a)).reshape(-1, n_classes)
    return be.logsumexp(x).astype(compute_dtype(a.dtype)).reshape(a.shape[:-1])
