"""The public functions on GPU arrays: checks, buffers and launches, with results left on the GPU.

``fastxent.losses.cross_entropy`` hands a call here when the logits live on a GPU
(``backend="auto"``) or when ``backend="cuda"`` is asked for. Options are checked as on the CPU
(``checks``). The losses are reduced on the GPU, so a mean or a sum comes back as a 0-d array of
the caller's kind (a Python float for host arrays).

What only the data can tell, a class index out of range, is found by the kernels. A call on GPU
arrays does not wait for it: the kernels make the call's loss NaN and write no gradient, the flag
is copied to the host behind the call's work, and the next call (or :func:`check_targets`) raises
its ``IndexError`` once that copy has landed. ``check_targets=True`` waits and raises at once
(docs/cuda.md#out-of-range-targets).
"""

import numbers
from typing import Callable, NamedTuple

import numpy as np

from ..core import dtypes as _dtypes
from ..core.codes import INDEX, PROBS
from ..core.partials import finish
from ..kernels.interface import LossCall, LossOut
from . import arrays as _arrays
from . import backends as _dispatch
from . import checks as _checks


def _backend(ad):
    """The CUDA backend bound to the stream of the arrays that ``ad`` adapts."""
    return _dispatch.load("cuda").on(ad.stream(), ad.scratch)


def _logits(ad, logits):
    dname, shape = ad.dtype_name(logits), ad.shape(logits)
    _checks.logits_format(dname, shape)
    return dname, shape


def _foreign(ad, a):
    """A Numba device array for ``a``: the storage view of a device array (of any library), or a
    host array copied to the device."""
    if _arrays.is_device(a):
        return _arrays.adapter(a).view(a)
    h = _dtypes.storage_view(np.ascontiguousarray(a))
    return ad.cuda.to_device(h, stream=ad.stream())


def _targets(ad, targets, shape):
    """(kind, Numba device array): class indices (any integer dtype, shape ``shape[:-1]``) or
    probabilities (a float dtype, shape ``shape``)."""
    if _arrays.is_device(targets):
        other = _arrays.adapter(targets)
        dname, tshape = other.dtype_name(targets), other.shape(targets)
    else:
        targets = _checks.host_array(targets, "targets")
        dname, tshape = _dtypes.name(targets.dtype), targets.shape
    kind = _checks.target_kind(dname, tshape, shape)
    if kind == "index":
        return kind, _foreign(ad, targets).reshape(-1)
    return kind, _foreign(ad, targets).reshape(int(np.prod(shape[:-1])), shape[-1])


def _weight(ad, weight, n_classes, compute):
    if weight is None:
        return None
    if _arrays.is_device(weight):
        other = _arrays.adapter(weight)
        dname, wshape = other.dtype_name(weight), other.shape(weight)
        _checks.logits_format(dname, wshape, name="weight on the GPU", scalar_ok=True)
        _checks.weight_shape(wshape, n_classes)
        # the kernels read float32 or float64 weights; half precision is widened (V values)
        return other.view(weight) if dname in ("float32", "float64") else other.float64(weight)
    w = _checks.weight(weight, n_classes)
    return ad.cuda.to_device(w.astype(compute), stream=ad.stream())


def _grad_output(ad, value, reduction, lead):
    """(scalar, device float64 array or None): the upstream gradient."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return float(value), None
    if _arrays.is_device(value):
        other = _arrays.adapter(value)
        _checks.grad_output_shape(other.shape(value), reduction, lead)
        return 0.0, other.float64(value).reshape(-1)
    g = _checks.grad_output(value, reduction, lead)
    if reduction != "none":
        return float(g), None
    return 0.0, ad.cuda.to_device(np.ascontiguousarray(g, dtype=np.float64).reshape(-1),
                                  stream=ad.stream())


def _gpu_logits(logits):
    """(backend, adapter, dtype name, shape, lead shape, V, N) of GPU logits, checked."""
    ad = _arrays.adapter(logits)
    dname, shape = _logits(ad, logits)
    _checks.classes(shape)
    lead, v = shape[:-1], shape[-1]
    return _backend(ad), ad, dname, shape, lead, v, int(np.prod(lead))


class _Pending(NamedTuple):
    event: object  # recorded behind the copy of the flag
    flag: np.ndarray  # (1,) pinned host memory: -1, or the first row out of range
    error: Callable  # the row -> its IndexError


_pending = []
_spares = []  # (event, pinned flag) pairs of flags already read


def _out_of_range(targets, lead, n_classes, ignore, stream):
    """The IndexError of ``row`` (reads that class index back: only on the way to raising)."""
    def error(row):
        value = targets[row:row + 1].copy_to_host(stream=stream)
        stream.synchronize()
        pos = tuple(int(i) for i in np.unravel_index(row, lead)) if lead else ()
        return IndexError(_checks.out_of_range(pos, int(value[0]), n_classes, ignore))
    return error


def _flag(ad, bad, error, wait):
    """The out-of-range flag of a call: raised now (``wait``: the call waits for its kernels), or
    copied to the host behind the call's work and left for :func:`check_targets`."""
    stream = ad.stream()
    if wait:
        row = int(bad.copy_to_host(stream=stream)[0])
        stream.synchronize()
        if row >= 0:
            raise error(row)
        return
    # pinned memory and events are reused: allocating pinned memory costs far more than a launch
    event, host = _spares.pop() if _spares else (ad.cuda.event(),
                                                  ad.cuda.pinned_array(1, np.int64))
    bad.copy_to_host(host, stream=stream)
    event.record(stream)
    _pending.append(_Pending(event, host, error))


def check_targets(wait=True):
    """Raises the ``IndexError`` of the earliest earlier call whose class indices were out of
    range, among those whose flag has reached the host (``wait``: all of them, waiting for
    their work); forgets the flags it has read."""
    still, row, error = [], -1, None
    for p in _pending:
        if wait:
            p.event.synchronize()
        elif not getattr(p.event, "query", lambda: True)():  # (the simulator has no query)
            still.append(p)
            continue
        if error is None and p.flag[0] >= 0:
            row, error = int(p.flag[0]), p.error
        _spares.append((p.event, p.flag))
    _pending[:] = still
    if error is not None:
        raise error(row)


def _overlaps(a, b):
    """Whether two GPU arrays (of any libraries) share memory, from their address ranges."""
    a0, a1 = _arrays.adapter(a).address_range(a)
    b0, b1 = _arrays.adapter(b).address_range(b)
    return a0 < b1 and b0 < a1


def _on_device_overlap(dst, value):
    """The overlap test of ``checks.apart`` on the GPU: ``value`` a GPU array sharing memory
    with the GPU destination ``dst`` (host values cannot)."""
    return _arrays.is_device(value) and _overlaps(value, dst)


def chunk_losses(x, targets, *, weight, label_smoothing, z_loss, softcap, scale=None,
                 lse=False):
    """``losses.cross_entropy.chunk_losses`` on the GPU: the per-row losses (and log-sum-exps,
    or None) of a chunk of logits ``x`` (a tensor), and with ``scale`` the gradient over ``x``,
    from checked values. The class indices were checked on the host: the call leaves no flag."""
    grad = scale is not None
    result = cross_entropy(x, targets, weight, ("none", -1, label_smoothing, z_loss, softcap),
                           grad=grad, grad_output=scale if grad else 1.0, inplace=grad,
                           checked_targets=True, parts=(False, lse))
    loss = result[0] if grad else result
    return loss if lse else (loss, None)


def _host_values(a):
    """A GPU array's values on the host (O(N) values: targets, upstream gradients), or a host
    array as it is."""
    if not _arrays.is_device(a):
        return a
    other = _arrays.adapter(a)
    half = other.dtype_name(a) in ("float16", "bfloat16")  # (whose storage views are integers)
    host = (other.float64(a) if half else other.view(a)).copy_to_host(stream=other.stream())
    other.stream().synchronize()
    return host


def cross_entropy(logits, targets, weight, options, *, grad=False, grad_output=1.0, out=None,
                  inplace=False, checked_targets=False, shift=0, parts=(False, False),
                  wait=False):
    """``cross_entropy`` (``grad=False``) or ``cross_entropy_with_grad`` of
    ``fastxent.losses.cross_entropy`` on the GPU, its ``options`` checked
    (``checks.loss_options``)."""
    red, ignore, eps, z, cap = options
    check_targets(wait=False)  # an earlier call's error, if its flag has landed
    be, ad, dname, shape, lead, v, n = _gpu_logits(logits)
    compute = "float64" if dname == "float64" else "float32"
    s = _checks.shift(shift, shape)
    user_targets = targets
    if s:  # shifted on the host (O(N), checked there), so the kernels need not report a target
        targets = _checks.shifted(_host_values(targets), lead, s, ignore, v)
        checked_targets = True
    kind, t = _targets(ad, targets, shape)
    w = _weight(ad, weight, v, compute)
    go, go_rows, dst, grad_view = 1.0, None, None, None
    if grad:
        if s and red == "none" and not isinstance(grad_output, numbers.Real):
            grad_output = _checks.padded(_checks.grad_output(
                _host_values(grad_output), red, _checks.shifted_shape(lead, s)), lead, s)
        go, go_rows = _grad_output(ad, grad_output, red, lead)
        inputs = (("targets", user_targets), ("weight", weight), ("grad_output", grad_output))
        if inplace:
            _check_inplace(ad, logits, inputs)
        elif out is not None:
            _check_out(ad, out, logits, dname, shape, inputs)
    x = ad.view(logits).reshape(n, v)
    if grad:
        if inplace and ad.kind != "host":
            dst, grad_view = logits, x
        elif inplace or ad.kind == "host":  # host arrays: the gradient goes over the device copy
            grad_view = x
        else:
            dst = out if out is not None else ad.empty(shape, dname)
            grad_view = ad.view(dst).reshape(n, v)
    per_row = (n,) if red == "none" else (1,)
    res = ad.empty(per_row, compute)
    z_res = ad.empty(per_row, compute) if parts[0] else None
    lse_res = ad.empty((n,), compute) if parts[1] else None
    call = LossCall(x, INDEX if kind == "index" else PROBS, t, ignore, w, eps, z, cap, red, go,
                    go_rows, grad_view)
    bad = be.cross_entropy(call, LossOut(*(None if a is None else ad.view(a)
                                           for a in (res, z_res, lse_res))))
    if kind == "index" and not checked_targets:
        # host arrays come back to the host anyway: their call waits, and raises at once
        _flag(ad, bad, _out_of_range(t, lead, v, ignore, be.stream), wait or ad.kind == "host")

    def per_row_result(a):
        return _unshifted(ad, ad.reshape(a, lead), s) if red == "none" else ad.scalar(a)

    loss = per_row_result(res)
    if any(parts):
        loss = (loss,) + ((per_row_result(z_res),) if parts[0] else ()) + (
            (_unshifted(ad, ad.reshape(lse_res, lead), s),) if parts[1] else ())
    if not grad:
        return loss
    if ad.kind == "host":
        return loss, _host_gradient(ad, grad_view, shape, logits, inplace, out)
    return loss, dst


def _unshifted(ad, rows, s):
    """``checks.unshifted`` for results of the caller's kind (a view on the GPU)."""
    if isinstance(rows, np.ndarray):
        return _checks.unshifted(rows, s)
    return rows if not s else rows[..., :tuple(rows.shape)[-1] - s]


def _host_gradient(ad, grad_view, shape, logits, inplace, out):
    """The gradient of a call on host arrays, copied back from the device: into the caller's
    array (the logits in place, or ``out``) where there is one."""
    host = ad.host(grad_view).reshape(shape)
    target = logits if inplace else out
    if target is None:
        return host.view(_dtypes.native_dtype(np.asarray(logits).dtype))
    _dtypes.copy_into(target, host)
    return target


def _check_inplace(ad, logits, inputs):
    if ad.kind == "host":
        _checks.inplace_target(logits, inputs)
    else:
        _checks.contiguous(ad.is_contiguous(logits), "inplace=True needs C-contiguous logits on "
                           "the GPU (the gradient is written over them)")
        _checks.apart(logits, "logits (overwritten by inplace=True)", inputs,
                      _on_device_overlap)


def _check_out(ad, out, logits, dname, shape, inputs):
    if ad.kind == "host":
        _checks.out_array(out, _checks.logits_array(logits), (("logits", logits),) + inputs)
        return
    _checks.same_kind(out, _arrays.adapter(out).kind, ad.kind)
    _checks.like_logits(ad.shape(out), ad.dtype_name(out), shape, dname)
    _checks.contiguous(ad.is_contiguous(out), "out must be C-contiguous")
    _checks.apart(out, "out", (("logits", logits),) + inputs, _on_device_overlap)


def logsumexp(logits):
    """``losses.cross_entropy.logsumexp`` on the GPU."""
    ad = _arrays.adapter(logits)
    dname, shape = _logits(ad, logits)
    be = _backend(ad)
    lead, v = shape[:-1], shape[-1]
    n = int(np.prod(lead))
    x = ad.view(logits).reshape(n, v)
    res = ad.empty((n,), "float64" if dname == "float64" else "float32")
    be.logsumexp(x, None, ad.view(res))
    return ad.reshape(res, lead)


def token_stats(logits, targets, *, ignore_index):
    """``fastxent.token_stats`` on the GPU: the statistics come back to the host (O(N))."""
    ignore = _checks.ignore_index(ignore_index)
    be, ad, dname, shape, lead, v, n = _gpu_logits(logits)
    stream = ad.stream()
    # the targets are checked and coded on the host: N integers, against N·V logits
    host_t = (_foreign(ad, targets).copy_to_host(stream=stream) if _arrays.is_device(targets)
              else np.asarray(targets))
    stream.synchronize()
    kind, t = _checks.targets(host_t, shape, ignore)
    _checks.index_targets(kind, host_t.dtype, "token_stats")
    ignored = t < 0
    stats, ints = _token_partials(be, ad, ad.view(logits).reshape(n, v), t, stream)
    return tuple(f.reshape(lead) for f in finish(stats, ints, ignored))


def _token_partials(be, ad, x, codes, stream):
    """The token-statistics partials of device logits ``x`` (N, V) against host class codes
    (N,) (negative: ignored), back on the host: ``(stats (N, 4), ints (N, 2))``."""
    from ..core.codes import IGNORED
    codes = ad.cuda.to_device(np.where(codes < 0, IGNORED, codes), stream=stream)
    stats, ints = be.token_partials(x, codes)
    stats, ints = stats.copy_to_host(stream=stream), ints.copy_to_host(stream=stream)
    stream.synchronize()
    return stats, ints


def token_partials(logits, codes):
    """:func:`_token_partials` of a 2-D GPU array of logits (a chunk whose arguments its caller
    has checked: ``fastxent.torch.linear_token_stats``)."""
    be, ad, *_ = _gpu_logits(logits)
    return _token_partials(be, ad, ad.view(logits), codes, ad.stream())


def binary(kind, logits, targets, weights, pos_weight, eps, reduction, grad, grad_scale, out,
           inplace, count_name):
    """The element-wise binary losses on the GPU (``fastxent.losses.family`` checks the arguments
    and factors the weights on the host): ``(loss, gradient or None)``, both on the device in the
    caller's kind of array; a mean or a sum is a 0-d float64 array."""
    ad = _arrays.adapter(logits)
    be = _backend(ad)
    dname, shape = ad.dtype_name(logits), ad.shape(logits)
    _checks.logits_format(dname, shape, scalar_ok=True)
    v = shape[-1] if shape else 1
    n = int(np.prod(shape[:-1])) if shape else 1
    compute = "float64" if dname == "float64" else "float32"
    stream = ad.stream()
    x = ad.view(logits).reshape(n, v)
    if _arrays.is_device(targets):
        other = _arrays.adapter(targets)
        _checks.shape_of(other.shape(targets), shape, "targets", "the input's shape")
        _checks.logits_format(other.dtype_name(targets), shape, name="targets on the GPU",
                              scalar_ok=True)
        t = other.view(targets).reshape(n, v)
    else:
        h = _checks.host_array(targets, "targets")
        _checks.shape_of(h.shape, shape, "targets", "the input's shape")
        if not _dtypes.is_float(h.dtype):
            h = h.astype(compute)
        t = ad.cuda.to_device(_dtypes.storage_view(np.ascontiguousarray(h)).reshape(n, v),
                              stream=stream)

    def dev(a):
        return None if a is None else ad.cuda.to_device(np.ascontiguousarray(a).reshape(-1),
                                                        stream=stream)

    losses = ad.empty(shape, compute) if reduction == "none" else None
    total = ad.empty((1,), "float64")
    g = gview = None
    if grad:
        inputs = (("targets", targets),)  # (weights come factored, on the host)
        if inplace:
            _check_inplace(ad, logits, inputs)
            g, gview = logits, x
        elif out is not None:
            _check_out(ad, out, logits, dname, shape, inputs)
            g = out
            gview = ad.view(out).reshape(n, v)
        else:
            g = ad.empty(shape, dname)
            gview = ad.view(g).reshape(n, v)
    scale = (None, None) if grad_scale is None else tuple(dev(a) for a in grad_scale)
    size = n * v
    row_sums, bad = be.binary(kind, x, t, tuple(dev(a) for a in weights), dev(pos_weight), eps,
                              None if losses is None else ad.view(losses).reshape(-1), gview,
                              scale)
    flag = be.binary_total(row_sums, bad, 1.0 / size if reduction == "mean" and size else
                           (float("nan") if reduction == "mean" else 1.0), ad.view(total))
    count = flag.copy_to_host(stream=stream)
    stream.synchronize()
    _checks.none_outside_unit(int(count[0]), count_name)
    loss = losses if reduction == "none" else ad.scalar(total)
    if ad.kind == "host":
        loss = ad.host(loss).reshape(shape) if reduction == "none" else float(ad.host(total)[0])
        if grad:
            return loss, _host_gradient(ad, gview, shape, logits, inplace, out)
    return (loss, g) if grad else (loss, None)

