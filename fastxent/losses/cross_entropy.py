"""The softmax cross-entropy's public functions: the user's arguments checked (``checks``) and
normalised into one ``LossCall`` (``fastxent.kernels.interface``), which the chosen backend
computes; calls on GPU arrays are adapted to the device by ``fastxent.dispatch.device``.
"""

import numpy as np

from ..core import dtypes as _dtypes
from ..core.codes import INDEX, PROBS
from ..core.dtypes import compute_dtype, storage_view
from ..dispatch import backends as _dispatch
from ..dispatch import checks as _checks
from ..dispatch import device as _device
from ..kernels.interface import LossCall, LossOut


def _host_call(logits, targets, weight, options, backend, shift=0):
    """``(backend, logits array, shift, LossCall)`` of a call on host arrays, every argument
    checked (``options`` already, by ``checks.loss_options``)."""
    red, ignore, eps, z, cap = options
    a = _checks.logits_array(logits)
    _checks.classes(a.shape)
    w = _checks.weight(weight, a.shape[-1])
    s = _checks.shift(shift, a.shape)
    if s:
        targets = _checks.shifted(targets, a.shape[:-1], s, ignore, a.shape[-1])
    kind, t = _checks.targets(targets, a.shape, ignore)
    return _dispatch.choose(backend, a), a, s, _loss_call(a, kind, t, w, eps, z, cap, red)


def _loss_call(a, kind, t, w, eps, z, cap, red):
    """The :class:`LossCall` of checked values: ``a`` the logits (..., V), ``t`` int64 class
    indices with -1 for ignored rows or probabilities like ``a``, ``w`` float64 or None."""
    v = a.shape[-1]
    x = storage_view(np.ascontiguousarray(a)).reshape(-1, v)
    if kind == "index":
        return LossCall(x, INDEX, t.reshape(-1), -1, w, eps, z, cap, red)
    t = storage_view(np.ascontiguousarray(t)).reshape(-1, v)
    return LossCall(x, PROBS, t, -1, w, eps, z, cap, red)


def _run(be, a, s, call, parts):
    """The loss, or with the parts asked for ``(loss, z_loss, lse)`` (see :func:`cross_entropy`),
    of ``call`` on the host backend ``be``: a Python float for a mean or a sum, else per row in
    the compute type, shaped as the loss (without the last ``s`` positions, which have no
    target)."""
    n = call.x.shape[0]
    per_row = call.reduction == "none"
    out = LossOut(np.zeros(n if per_row else 1), np.zeros(n if per_row else 1) if parts[0]
                  else None, np.zeros(n) if parts[1] else None)
    be.cross_entropy(call, out)

    def result(values, rows):
        if not rows:
            return float(values[0])
        return _checks.unshifted(values.astype(compute_dtype(a.dtype)).reshape(a.shape[:-1]), s)

    loss = result(out.loss, per_row)
    if not any(parts):
        return loss
    return (loss,) + ((result(out.z, per_row),) if parts[0] else ()) + (
        (result(out.lse, True),) if parts[1] else ())


def chunk_losses(x, targets, *, weight, label_smoothing, z_loss, softcap, backend="auto",
                 scale=None, lse=False):
    """The per-row losses (float64, 0 for ignored rows) of a chunk of logits ``x`` (N, V), for
    fastxent's own loops (the fused linear cross-entropy): the arguments were checked by the
    public function, and the coefficients it passes may be what no user may pass (a z-loss
    coefficient rescaled by negative class weights). ``targets``: int64 class indices with -1 for
    ignored rows, or probabilities like ``x``. With ``scale`` (each row's upstream gradient, or
    one for all), the gradient is written over ``x``. Returns ``(losses, lse)``: ``lse``, each
    row's log-sum-exp (0 for ignored rows), when asked for, else None."""
    call = _loss_call(x, "index" if targets.ndim == 1 else "prob", targets, weight,
                      label_smoothing, z_loss, softcap, "none")
    if scale is not None:
        call = call._replace(grad_rows=np.asarray(scale, np.float64).reshape(-1), grad=call.x)
    n = call.x.shape[0]
    out = LossOut(np.zeros(n), None, np.zeros(n) if lse else None)
    _dispatch.choose(backend, x).cross_entropy(call, out)
    return out.loss, out.lse


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
    be, a, s, call = _host_call(logits, targets, weight, options, backend, shift)
    return _run(be, a, s, call, (return_z_loss, return_lse))


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
    _checks.one_destination(out, inplace)
    options = _checks.loss_options(reduction, ignore_index, label_smoothing, z_loss, softcap)
    if _dispatch.uses_cuda(backend, logits):
        return _device.cross_entropy(logits, targets, weight, options, grad=True,
                                     grad_output=grad_output, out=out, inplace=inplace,
                                     shift=shift, parts=(return_z_loss, return_lse),
                                     wait=bool(check_targets))
    be, a, s, call = _host_call(logits, targets, weight, options, backend, shift)
    lead = a.shape[:-1]
    go = _checks.grad_output(grad_output, call.reduction, _checks.shifted_shape(lead, s))
    rows = _checks.padded(go, lead, s).reshape(-1) if call.reduction == "none" else None
    inputs = (("targets", targets), ("weight", weight), ("grad_output", grad_output))
    if inplace:
        _checks.inplace_target(logits, inputs)
        target = logits
    elif out is not None:
        target = _checks.out_array(out, a, (("logits", logits),) + inputs)
    else:
        target = np.empty(a.shape, dtype=a.dtype)
    # straight into the destination when the kernels can write it (C order, native byte order;
    # in place: the logits themselves, not a converted copy of them), else through a buffer
    direct = (target.flags.c_contiguous and target.dtype.isnative
              and (not inplace or np.shares_memory(call.x, target)))
    buf = target if direct else np.empty(target.shape, _dtypes.native_dtype(target.dtype))
    gview = storage_view(buf).reshape(call.x.shape)
    if inplace and not direct:
        gview[...] = call.x  # the kernel reads the logits from where it writes the gradient
    call = call._replace(x=gview if inplace else call.x, grad=gview, grad_rows=rows,
                         grad_output=1.0 if rows is not None else float(go))
    loss = _run(be, a, s, call, (return_z_loss, return_lse))
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
    lse = be.logsumexp(x, None, np.empty(x.shape[0]))
    return lse.astype(compute_dtype(a.dtype)).reshape(a.shape[:-1])
