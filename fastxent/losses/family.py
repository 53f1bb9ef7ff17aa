"""The rest of the cross-entropy family: binary cross-entropy on logits and on probabilities,
categorical cross-entropy from probabilities, entropy and KL divergence.

Each streams over the last axis through a backend kernel (``binary``, ``token_partials``,
``kl_logits`` in ``kernels/interface.py``); sums and reductions are float64 here.
"""

import numpy as np

from ..core import dtypes as _dtypes
from ..core.codes import ABSENT, BINARY_LOGITS, BINARY_PROBS, CATEGORICAL
from ..core.dtypes import compute_dtype, storage_view
from ..core.partials import finish
from ..dispatch import backends as _dispatch
from ..dispatch import checks as _checks

_KINDS = ("logits", "probs")


def _host_only(name, backend, array):
    if _dispatch.uses_cuda(backend, array):
        raise NotImplementedError(f"{name} has no CUDA kernel yet: pass host (NumPy or CPU "
                                  "PyTorch) arrays")
    return _dispatch.choose(backend, array)


def _reduce(sums, losses, reduction, count, shape):
    if reduction == "none":
        return losses.reshape(shape)
    total = float(np.sum(sums))
    if reduction == "sum":
        return total
    return total / count if count else float("nan")


def _raise_out_of_range(kind, a, t, bad):
    """When the kernel counted ``bad`` elements out of range: the message of the first one, in
    the probabilities (``a``, unless they are logits) or the targets ``t``."""
    if bad:
        _checks.first_outside_unit(([] if kind == BINARY_LOGITS else [("probs", a, False)])
                                  + [("targets", t, False)])


def _device_binary(kind, name, x, targets, weight, pos_weight, red, eps, grad, grad_output, out,
                   inplace):
    """The GPU path: weights, pos_weight and grad_output are host values (factored here)."""
    from ..dispatch import arrays as _arrays
    from ..dispatch import device as _device
    _checks.on_host((("weight", weight), ("pos_weight", pos_weight),
                     ("grad_output", grad_output)), "GPU logits")
    ad = _arrays.adapter(x)
    shape, dname = tuple(ad.shape(x)), ad.dtype_name(x)
    _checks.logits_format(dname, shape, name=name, scalar_ok=True)
    like = np.dtype(np.float64 if dname == "float64" else np.float32)
    pw = _checks.pos_weight(pos_weight, shape, like)
    size = int(np.prod(shape))
    gs = _grad_scale(grad_output, red, shape, size, like) if grad else None
    weights = _checks.factors(weight, shape, "weight", like)
    what = "probs and targets" if kind == BINARY_PROBS else "targets"
    clip = _checks.clip_eps(eps, like)
    if grad and (inplace or out is not None):
        # the kernel counts the inputs out of range while it writes: in the caller's memory,
        # a pass of its own checks them first, so that a refused call has written nothing
        _device.binary(kind, x, targets, weights, pw, clip, "sum", False, None, None, False, what)
    loss, g = _device.binary(kind, x, targets, weights, pw, clip, red, grad, gs, out, inplace,
                             what)
    return (loss, g) if grad else loss


def _binary_call(kind, name, x, targets, weight, pos_weight, reduction, eps, backend, grad,
                 grad_output, out, inplace):
    red = _checks.reduction(reduction)
    if _dispatch.uses_cuda(backend, x):
        return _device_binary(kind, name, x, targets, weight, pos_weight, red, eps, grad,
                              grad_output, out, inplace)
    a = _checks.logits_array(x, name=name, scalar_ok=True)
    be = _host_only("binary_cross_entropy" + ("_with_logits" if kind == BINARY_LOGITS else ""),
                    backend, x)
    inputs = (("targets", targets), ("weight", weight), ("pos_weight", pos_weight),
              ("grad_output", grad_output))
    if grad and inplace:  # before any work: a refused call changes nothing
        _checks.inplace_target(x, inputs)
        _checks.contiguous(x.flags.c_contiguous, f"inplace=True needs C-contiguous {name}")
    t = _checks.binary_targets(targets, a.shape, "targets", a.dtype)
    xs, ts = _dtypes.row_view(a), _dtypes.row_view(t)
    n, v = xs.shape
    weights = _checks.factors(weight, a.shape, "weight", a.dtype)
    pw = _checks.pos_weight(pos_weight, a.shape, a.dtype)
    clip = _checks.clip_eps(eps, a.dtype)
    losses = np.empty((n, v), compute_dtype(a.dtype)) if red == "none" else None
    g = gview = None
    gs = (None, None)
    if grad:
        gs = _grad_scale(grad_output, red, a.shape, a.size, a.dtype)
        if inplace:
            g = x
        elif out is not None:
            g = _checks.out_array(out, a, ((name, x),) + inputs)
        else:
            g = np.empty(a.shape, a.dtype)
        # the kernel writes C-ordered native arrays: the gradient of a non-contiguous out=, or of
        # an array in the other byte order (whose values the kernel read from a copy), goes
        # through a buffer
        direct = g.flags.c_contiguous and g.dtype.isnative and (not inplace or g is a)
        gview = _dtypes.row_view(g) if direct else np.empty((n, v), storage_view(a).dtype)
        if inplace or out is not None:
            # the kernel counts the inputs out of range while it writes: in the caller's memory,
            # a pass of its own checks them first, so that a refused call has written nothing
            _raise_out_of_range(kind, a, t, be.binary_outside(kind, xs, ts))
    sums, bad = be.binary(kind, xs, ts, weights, pw, clip, losses, gview, gs)
    _raise_out_of_range(kind, a, t, bad)
    loss = _reduce(sums, losses, red, a.size, a.shape)
    if not grad:
        return loss
    if not direct:
        _dtypes.copy_into(g, gview)
    return loss, g


def _grad_scale(grad_output, red, shape, size, dtype):
    """The upstream gradient (divided by the mean's count) as the kernels take it: ``(per row
    (N,) float64, per element (N, V) or None)``."""
    n = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) else 1
    if red != "none":
        go = float(_checks.grad_output(grad_output, red, ()))
        return np.full(n, go / size if red == "mean" and size else go), None
    go = _checks.grad_output(grad_output, red, shape)
    cw, rw, ew = _checks.factors(go, shape, "grad_output", dtype)
    if cw is not None:  # per class: as elements, it is rare
        ew = np.ascontiguousarray(np.broadcast_to(cw, (n, cw.size)))
    return (np.ones(n) if rw is None else rw.astype(np.float64)), ew


def binary_cross_entropy_with_logits(logits, targets, *, weight=None, pos_weight=None,
                                     reduction="mean", backend="auto"):
    """Binary cross-entropy of independent sigmoids (multi-label classification), on logits.

    As ``torch.nn.functional.binary_cross_entropy_with_logits``: per element, with ``y`` the
    target in [0, 1] and ``pw`` the positive-class weight of its class,
    ``loss = -w·(pw·y·log σ(x) + (1 - y)·log(1 - σ(x)))``, computed in the stable form
    ``(1 - y)·x + (1 + (pw - 1)·y)·log(1 + exp(-x))`` (no overflow for |x| up to 1e4 and beyond).

    Parameters
    ----------
    logits : ndarray
        Any shape; float32, float64, float16 or bfloat16 (arithmetic in float32, float64 for
        float64).
    targets : array_like
        The logits' shape; soft targets in [0, 1] (floats of any supported dtype, or booleans and
        integers 0/1).
    weight : array_like, optional
        Broadcast to the logits' shape: a weight per element.
    pos_weight : array_like, optional
        Broadcast along the last axis: a weight of the positive term per class.
    reduction : {"mean", "sum", "none"}
        "mean" divides by the number of elements (as PyTorch, whatever the weights).
    backend : {"auto", "cpu", "numpy"}

    Returns
    -------
    float or ndarray
        The loss; for "none", the logits' shape in the compute type.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> x = np.array([[2.0, -1.0, 0.0]], dtype=np.float32)
    >>> y = np.array([[1.0, 0.0, 1.0]], dtype=np.float32)
    >>> round(fx.binary_cross_entropy_with_logits(x, y), 4)      # (0.1269 + 0.3133 + 0.6931)/3
    0.3778
    >>> fx.binary_cross_entropy_with_logits(np.array([1e4, -1e4]), np.array([0.0, 0.0]),
    ...                                     reduction="none")
    array([10000.,     0.])
    """
    return _binary_call(BINARY_LOGITS, "logits", logits, targets, weight, pos_weight, reduction,
                        None, backend, False, 1.0, None, False)


def binary_cross_entropy_with_logits_with_grad(logits, targets, *, weight=None, pos_weight=None,
                                               reduction="mean", backend="auto", grad_output=1.0,
                                               out=None, inplace=False):
    """:func:`binary_cross_entropy_with_logits` and its gradient with respect to the logits, in
    one pass: ``w·((1 + (pw - 1)·y)·σ(x) - pw·y)`` times ``grad_output`` (divided by the number of
    elements for "mean"; an array of the logits' shape, or broadcastable to it, for "none").
    ``out`` and ``inplace`` as :func:`cross_entropy_with_grad`.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> loss, grad = fx.binary_cross_entropy_with_logits_with_grad(
    ...     np.zeros((1, 2), np.float32), np.array([[1.0, 0.0]]), reduction="sum")
    >>> grad                                         # σ(0) - y
    array([[-0.5,  0.5]], dtype=float32)
    """
    _checks.one_destination(out, inplace)
    return _binary_call(BINARY_LOGITS, "logits", logits, targets, weight, pos_weight, reduction,
                        None, backend, True, grad_output, out, inplace)


def binary_cross_entropy(probs, targets, *, weight=None, reduction="mean", eps=None,
                         backend="auto"):
    """Binary cross-entropy of probabilities: ``-w·(y·log p + (1 - y)·log(1 - p))``.

    As ``torch.nn.functional.binary_cross_entropy`` (``BCELoss``) by default: each log is clamped
    at -100, so p = 0 or 1 gives a finite loss. With ``eps``, the probabilities are clipped to
    [eps, 1 - eps] first and the logs are not clamped, as scikit-learn's ``log_loss`` (``eps=
    "auto"``: the machine epsilon of the probabilities' dtype) and Keras (``eps=1e-7``) do.
    ``log(1 - p)`` is computed from ``1 - p`` exactly (or as ``log1p(-p)``), so probabilities
    near 1 keep their precision.

    Probabilities and targets outside [0, 1] raise a ``ValueError``.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> y = np.array([1, 0, 1, 1, 0, 1], dtype=np.float32)
    >>> p = np.array([0.9, 0.1, 0.8, 0.7, 0.2, 0.9], dtype=np.float32)
    >>> round(fx.binary_cross_entropy(p, y), 4)
    0.1865
    >>> fx.binary_cross_entropy(np.array([0.0, 1.0]), np.array([1.0, 1.0]), reduction="none")
    array([100.,   0.])
    """
    return _binary_call(BINARY_PROBS, "probs", probs, targets, weight, None, reduction, eps,
                        backend, False, 1.0, None, False)


def binary_cross_entropy_with_grad(probs, targets, *, weight=None, reduction="mean", eps=None,
                                   backend="auto", grad_output=1.0, out=None, inplace=False):
    """:func:`binary_cross_entropy` and its gradient with respect to the probabilities, in one
    pass: ``w·(p - y) / max(p·(1 - p), 1e-12)`` as PyTorch's ``BCELoss`` computes it (0 where
    ``eps`` clips p), times ``grad_output`` (divided by the number of elements for "mean").
    ``out`` and ``inplace`` as :func:`cross_entropy_with_grad`.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> loss, grad = fx.binary_cross_entropy_with_grad(np.array([0.5, 0.8]), np.array([1.0, 0.0]),
    ...                                                reduction="sum")
    >>> grad                                        # (p - y) / (p·(1 - p))
    array([-2.,  5.])
    """
    _checks.one_destination(out, inplace)
    return _binary_call(BINARY_PROBS, "probs", probs, targets, weight, None, reduction, eps,
                        backend, True, grad_output, out, inplace)


def cross_entropy_from_probs(probs, targets, *, weight=None, sample_weight=None,
                             ignore_index=-100, reduction="mean", eps=None, backend="auto"):
    """Categorical cross-entropy when the model outputs probabilities: ``-Σ_j w_j·q_j·log p_j``
    per row (classes on the last axis).

    Parameters
    ----------
    probs : ndarray, shape (..., V)
        Probabilities (rows need not sum to 1: they are used as given).
    targets : ndarray
        Class indices of shape ``probs.shape[:-1]`` (only the target's probability is read), or a
        target distribution per row (one-hot or soft) of the probabilities' shape.
    weight : array_like, shape (V,), optional
        Per-class weights (as PyTorch's ``NLLLoss``).
    sample_weight : array_like, shape ``probs.shape[:-1]``, optional
        Per-row weights (as scikit-learn's ``log_loss``).
    ignore_index : int
        Index targets equal to it contribute nothing.
    reduction : {"mean", "sum", "none"}
        "mean" divides by the summed weights of the counted rows (``Σ sample_weight·weight[t]``
        for index targets, ``Σ sample_weight`` for distributions).
    eps : None, "auto" or float
        As :func:`binary_cross_entropy`: None clamps the log at -100; a number clips the
        probabilities to [eps, 1 - eps]; "auto" uses the dtype's machine epsilon, which with
        ``sample_weight`` reproduces ``sklearn.metrics.log_loss``.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> p = np.array([[0.4, 0.4, 0.2], [0.1, 0.2, 0.7]])
    >>> fx.cross_entropy_from_probs(p, np.array([1, 2]), reduction="none").round(2)
    array([0.92, 0.36])
    >>> round(fx.cross_entropy_from_probs(p, np.array([[0, 1, 0], [0, 0, 1]])), 4)  # one-hot
    0.6365
    """
    return _from_probs(probs, targets, weight, sample_weight, ignore_index, reduction, eps,
                       backend, None)[0]


def cross_entropy_from_probs_with_grad(probs, targets, *, weight=None, sample_weight=None,
                                       ignore_index=-100, reduction="mean", eps=None,
                                       backend="auto", grad_output=1.0):
    """:func:`cross_entropy_from_probs` and its gradient with respect to ``probs``.

    The gradient of ``-q·log p`` is ``-q/p`` times the weights, and 0 where the log does not move
    with p: where ``eps`` clips p to [eps, 1 - eps], or where the log is clamped at -100. Takes
    every argument of :func:`cross_entropy_from_probs`, plus ``grad_output`` (as
    :func:`cross_entropy_with_grad`).

    Returns
    -------
    loss : float or ndarray
        As :func:`cross_entropy_from_probs`.
    grad : ndarray
        The gradient, the probabilities' shape and dtype.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> p = np.array([[0.4, 0.4, 0.2], [0.1, 0.2, 0.7]])
    >>> loss, g = fx.cross_entropy_from_probs_with_grad(p, np.array([1, 2]), reduction="sum")
    >>> g.round(4)     # -1/p at each target
    array([[ 0.    , -2.5   ,  0.    ],
           [ 0.    ,  0.    , -1.4286]])
    """
    return _from_probs(probs, targets, weight, sample_weight, ignore_index, reduction, eps,
                       backend, grad_output)


def _from_probs(probs, targets, weight, sample_weight, ignore_index, reduction, eps, backend,
                grad_output):
    """(loss, gradient or None) of cross_entropy_from_probs; the gradient when ``grad_output``
    is not None."""
    a = _checks.logits_array(probs, name="probs")
    red = _checks.reduction(reduction)
    ignore = _checks.ignore_index(ignore_index)
    be = _host_only("cross_entropy_from_probs", backend, probs)
    v = a.shape[-1]
    lead = a.shape[:-1]
    n = int(np.prod(lead, dtype=np.int64))
    w = _checks.weight(weight, v)
    clip = _checks.clip_eps(eps, a.dtype)
    sw = np.ones(n)
    if sample_weight is not None:
        sw = _checks.row_values(sample_weight, lead, "sample_weight", "one weight per row")
    go = None if grad_output is None else _checks.grad_output(grad_output, red, lead)
    t = _checks.host_array(targets, "targets")
    grad = None
    if _dtypes.is_float(t.dtype) or t.shape == a.shape:
        q = _checks.binary_targets(t, a.shape, "targets", a.dtype)
        denom_w = np.ones_like(sw)
        scale = None
        if go is not None:
            grad = np.empty(a.shape, a.dtype)
            scale = (_row_scale(go, red, sw, float(np.sum(sw)), lead), None)
        weights = (None if w is None else w.astype(compute_dtype(a.dtype)), None, None)
        rows, bad = be.binary(CATEGORICAL, _dtypes.row_view(a), _dtypes.row_view(q), weights,
                              None, clip, grad=None if grad is None else _dtypes.row_view(grad),
                              scale=scale or (None, None))
        if bad:
            _checks.first_outside_unit([("probs", a, False), ("targets", q, True)])
    else:
        _, ti = _checks.targets(t, a.shape, ignore)
        valid = ti >= 0
        flat = a.reshape(n, v)
        at = (np.arange(flat.shape[0])[valid], ti[valid])
        pt = _checks.in_unit_interval(_dtypes.decode(flat[at]), "probs", "at a target")
        with np.errstate(divide="ignore"):
            if clip > 0:
                logp = np.log(np.clip(pt, clip, 1.0 - clip))
                moves = (pt > clip) & (pt < 1.0 - clip)
            else:
                logp = np.log(pt)
                moves = logp > -100.0
                logp = np.maximum(logp, -100.0)
        cw = np.ones(valid.sum()) if w is None else w[ti[valid]]
        rows = np.zeros(flat.shape[0])
        rows[valid] = -cw * logp
        denom_w = np.zeros(flat.shape[0])
        denom_w[valid] = cw
        if go is not None:
            rs = _row_scale(go, red, sw, float(np.sum(sw * denom_w)), lead)
            # zeros but at each target: only those N values are computed and encoded
            grad = np.zeros(a.shape, a.dtype)
            gv = _dtypes.row_view(grad)
            at_target = np.empty(pt.shape, gv.dtype)
            with np.errstate(divide="ignore", invalid="ignore"):
                _dtypes.encode_into(at_target, np.where(moves, -cw * rs[valid] / pt, 0.0))
            gv[at] = at_target
    losses = rows * sw
    if red == "none":
        loss = losses.astype(compute_dtype(a.dtype)).reshape(lead)
    elif red == "sum":
        loss = float(np.sum(losses))
    else:
        denom = float(np.sum(sw * denom_w))
        loss = float(np.sum(losses)) / denom if denom else float("nan")
    return loss, grad


def _row_scale(go, red, sw, denom, lead):
    """Each row's factor of the gradient: the upstream gradient (over the mean's denominator)
    times the row's sample weight."""
    if red == "none":
        return np.broadcast_to(go, lead).reshape(-1) * sw
    with np.errstate(divide="ignore", invalid="ignore"):
        return (go / denom if red == "mean" else go) * sw


def _kind(kind):
    return _checks.choice(kind, "kind", _KINDS)


def entropy(x, *, kind="logits", eps=None, backend="auto"):
    """Entropy (nats) of the distribution on the last axis of ``x``: ``softmax(x)`` for
    ``kind="logits"`` (one log-sum-exp pass: ``lse - Σ softmax(x)·x``), or ``x`` itself for
    ``kind="probs"`` (``-Σ p·log p``, with 0·log 0 = 0; ``eps`` as
    :func:`cross_entropy_from_probs`).

    Returns
    -------
    ndarray, shape ``x.shape[:-1]``
        In the compute type (float32, float64 for float64 input).

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> fx.entropy(np.zeros((1, 4), np.float32))                    # uniform over 4: log 4
    array([1.3862944], dtype=float32)
    >>> round(float(fx.entropy(np.array([0.5, 0.5, 0.0]), kind="probs")), 6)  # log 2
    0.693147
    """
    a = _checks.logits_array(x, name="x")
    _checks.classes(a.shape)
    be = _host_only("entropy", backend, x)
    xs = _dtypes.row_view(a)
    if _kind(kind) == "logits":
        ent, _ = _entropy_and_lse(be, xs)
    else:
        ent, bad = be.binary(CATEGORICAL, xs, xs, eps=_checks.clip_eps(eps, a.dtype))
        if bad:
            _checks.first_outside_unit([("x", a, False)])
    return ent.astype(compute_dtype(a.dtype)).reshape(a.shape[:-1])


def _entropy_and_lse(be, xs):
    """Each row's entropy of softmax and log-sum-exp (float64), from one statistics pass."""
    codes = np.full(xs.shape[0], ABSENT, np.int64)
    stats, ints = be.token_partials(xs, codes)
    _, lse, ent, _, _ = finish(stats, ints, np.zeros(xs.shape[0], bool))
    return ent, lse


def kl_divergence(p, q, *, kind="logits", reduction="none", eps=None, backend="auto"):
    """KL(P || Q) = Σ P·(log P - log Q) over the last axis, for ``P`` and ``Q`` given as logits
    (``kind="logits"``: their softmax, one streaming pass over both) or probabilities
    (``kind="probs"``: with 0·log 0 = 0, and ``eps`` as :func:`cross_entropy_from_probs`).

    ``reduction="mean"`` averages over rows (PyTorch's ``"batchmean"``), ``"sum"`` sums them.
    Arithmetic is float32 for float32 inputs: expect about 1e-7 times the spread of ``p - q``
    over the classes (of the logs' for probabilities) as absolute error, which matters only for
    divergences near 0.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> P = np.array([0.5, 0.5]); Q = np.array([0.9, 0.1])
    >>> round(float(fx.kl_divergence(P, Q, kind="probs")), 6)   # 0.5 log(0.5/0.9) + 0.5 log 5
    0.510826
    >>> float(fx.kl_divergence(np.log(P), np.log(Q)).round(6))   # the same from logits
    0.510826
    """
    a, b, red, be = _pair(p, q, reduction, backend, "kl_divergence")
    if _kind(kind) == "logits":
        kl = be.kl_logits(_dtypes.row_view(a), _dtypes.row_view(b))[:, 0]
    else:
        clip_a, clip_b = _checks.clip_eps(eps, a.dtype), _checks.clip_eps(eps, b.dtype)
        cross, bad_b = be.binary(CATEGORICAL, _dtypes.row_view(b), _dtypes.row_view(a), eps=clip_b)
        ent, bad_a = be.binary(CATEGORICAL, _dtypes.row_view(a), _dtypes.row_view(a), eps=clip_a)
        if bad_a or bad_b:
            _checks.first_outside_unit([("p", a, False), ("q", b, False)])
        kl = np.maximum(cross - ent, 0.0)
    return _reduce_rows(kl, red, a)


def _pair(p, q, reduction, backend, name):
    """(p, q as arrays, reduction, backend) of a divergence, checked."""
    a = _checks.logits_array(p, name="p")
    b = _checks.logits_array(q, name="q")
    red = _checks.reduction(reduction)
    _checks.same_shape("p and q", a.shape, b.shape)
    _checks.classes(a.shape)
    return a, b, red, _host_only(name, backend, p)


def _reduce_rows(values, red, a):
    """Per-row float64 values as the reduction asks: an array in the compute type of ``a``
    (shape ``a.shape[:-1]``), their sum or their mean."""
    if red == "none":
        return values.astype(compute_dtype(a.dtype)).reshape(a.shape[:-1])
    total = float(np.sum(values))
    return total if red == "sum" else (total / values.size if values.size else float("nan"))


def _softmax_grads(be, a, xs, ys, lse_x, lse_y, value, go_rows):
    """Gradients of ``Σ go_rows·value`` (the per-row entropy of softmax(x), or KL(softmax(x) ||
    softmax(y))) with respect to x (and y), in ``a``'s shape and dtype: one pass that writes
    them, from the log-sum-exps and values of the pass that computed the values."""
    gx = np.empty(a.shape, a.dtype)
    gy = None if ys is None else np.empty(a.shape, a.dtype)
    be.softmax_grads(xs, ys, lse_x, lse_y, value, np.ascontiguousarray(go_rows, np.float64),
                     _dtypes.row_view(gx), None if gy is None else _dtypes.row_view(gy))
    return gx, gy


def _logits_only(kind, name):
    _checks.choice(kind, "kind", ("logits",), f"{name} has its gradient for kind='logits' only")


def entropy_with_grad(x, *, kind="logits", grad_output=1.0, backend="auto"):
    """:func:`entropy` of ``softmax(x)`` and its gradient, ``-p·(log p + H)`` per row times
    ``grad_output`` (broadcast to the rows). Logits only (``kind="logits"``).

    Returns
    -------
    entropy : ndarray
        As :func:`entropy`.
    grad : ndarray
        The gradient, ``x``'s shape and dtype.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> h, g = fx.entropy_with_grad(np.log([[0.5, 0.25, 0.25]]))
    >>> h.round(4), g.round(4)        # the likeliest class loses probability to raise H
    (array([1.0397]), array([[-0.1733,  0.0866,  0.0866]]))
    """
    _logits_only(kind, "entropy_with_grad")
    a = _checks.logits_array(x, name="x")
    _checks.classes(a.shape)
    lead = a.shape[:-1]
    go = _checks.grad_output(grad_output, "none", lead)
    be = _host_only("entropy_with_grad", backend, x)
    xs = _dtypes.row_view(a)
    ent, lse = _entropy_and_lse(be, xs)
    rows = _row_scale(go, "none", np.ones(xs.shape[0]), None, lead)
    grad, _ = _softmax_grads(be, a, xs, None, lse, None, ent, rows)
    return ent.astype(compute_dtype(a.dtype)).reshape(lead), grad


def kl_divergence_with_grad(p, q, *, kind="logits", reduction="none", grad_output=1.0,
                            backend="auto"):
    """:func:`kl_divergence` of two logit arrays and its gradients with respect to both:
    ``P·(log P - log Q - KL)`` for ``p`` and ``Q - P`` for ``q``, per row, times
    ``grad_output`` (over the row count for ``reduction="mean"``). Logits only.

    Returns
    -------
    kl : float or ndarray
        As :func:`kl_divergence`.
    grads : tuple
        ``(grad_p, grad_q)``, each the logits' shape and dtype.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> kl, (gp, gq) = fx.kl_divergence_with_grad(np.log([[0.5, 0.5]]), np.log([[0.9, 0.1]]))
    >>> gq.round(6)       # Q - P: a student pulled towards the teacher
    array([[ 0.4, -0.4]])
    """
    _logits_only(kind, "kl_divergence_with_grad")
    a, b, red, be = _pair(p, q, reduction, backend, "kl_divergence_with_grad")
    lead = a.shape[:-1]
    go = _checks.grad_output(grad_output, red, lead)
    xs, ys = _dtypes.row_view(a), _dtypes.row_view(b)
    kl, lse_x, lse_y = be.kl_logits(xs, ys).T
    rows = _row_scale(go, red, np.ones(xs.shape[0]), float(xs.shape[0]), lead)
    grads = _softmax_grads(be, a, xs, ys, lse_x, lse_y, kl, rows)
    return _reduce_rows(kl, red, a), grads
