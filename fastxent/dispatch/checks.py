"""Validation of user arguments, shared by every public function. Messages name the argument,
what it was, and what is allowed.

Arrays enter through :func:`host_array` (and :func:`logits_array`, :func:`real_values` on top of
it): no copy for NumPy arrays, buffer-protocol objects and CPU tensors in the machine's byte
order, one converted copy for arrays in the other byte order (``">f4"`` read from a file written
on another machine), which the kernels could not read. Read-only arrays are used as they are.
"""

import math
import numbers

import numpy as np

from ..core import codes
from ..core import dtypes as _dtypes
from . import arrays as _arrays

REDUCTIONS = tuple(codes.REDUCTIONS)  # ("mean", "sum", "none")
_TOO_HARD = getattr(np, "exceptions", np).TooHardError  # (numpy.exceptions: NumPy 1.25+)


def host_array(value, name, what="numbers"):
    """``value`` as a NumPy array in native byte order: itself when it is one, a zero-copy view
    of a buffer or CPU tensor (bfloat16 included), a converted copy otherwise."""
    if isinstance(value, np.ndarray):
        a = value
    else:
        if _arrays.is_device(value):
            raise TypeError(f"{name} lives on a GPU, but the 'cpu' and 'numpy' backends take host "
                            "arrays: pass backend='cuda' (or 'auto'), or copy it to the host")
        a = _arrays.torch_bfloat16_host(value)
        try:
            a = np.asarray(value) if a is None else a
        except Exception as exc:  # e.g. a torch tensor that requires grad
            raise TypeError(f"{name} must be an array of {what}, got {type(value).__name__}: "
                            f"{exc}") from exc
    return native(a)


def native(a):
    """``a`` in the machine's byte order: itself, or one converted copy."""
    if a.dtype.isnative:
        return a
    return a.astype(a.dtype.newbyteorder("="))


def logits_array(logits, *, name="logits", scalar_ok=False):
    """The logits as an ndarray of a supported floating dtype (see :func:`host_array`)."""
    a = logits if isinstance(logits, np.ndarray) else host_array(logits, name, "floats")
    logits_format(_dtypes.name(a.dtype), a.shape, name=name, shown=a.dtype, scalar_ok=scalar_ok)
    return native(a)


def real_dtype(a, name, what="an array of real numbers"):
    """``a`` (an array) if its dtype holds real numbers: integers, or floats of any width
    (float16 and bfloat16 included), not booleans."""
    if a.dtype == np.bool_ or (a.dtype.kind not in "iuf" and not _dtypes.is_float(a.dtype)):
        raise TypeError(f"{name} has dtype {a.dtype}: {name} must be {what} (integers, or "
                        f"floats: {', '.join(_dtypes.SUPPORTED)})")
    return a


def real_values(value, name, what="an array of real numbers"):
    """An array of real numbers given as an option (class weights, ``pos_weight``, sample
    weights, an upstream gradient), as float64: O(V) or O(N) values, copied."""
    return real_dtype(host_array(value, name), name, what).astype(np.float64)


def broadcast(a, shape, name, what):
    """``a`` broadcast to ``shape`` (read-only view), or a ValueError naming ``name`` and
    ``what`` the shape is."""
    try:
        return np.broadcast_to(a, tuple(shape))
    except ValueError:
        raise ValueError(f"{name} has shape {np.shape(a)}, which does not broadcast to {what} "
                         f"{tuple(shape)}") from None


# The checks below look at a dtype's name and a shape only, so that the host path and the GPU
# path (``fastxent.dispatch.device``, whose arrays are tensors or device arrays) share them.


def logits_format(dname, shape, *, name="logits", shown=None, scalar_ok=False):
    """A supported floating dtype (by name) and at least one dimension (or any, for the
    element-wise losses: ``scalar_ok``)."""
    if dname not in _dtypes.SUPPORTED:
        raise TypeError(f"{name} has dtype {shown or dname}, expected one of "
                        f"{', '.join(_dtypes.SUPPORTED)} (a floating dtype)")
    if len(shape) == 0 and not scalar_ok:
        raise ValueError(f"{name} must have at least one dimension (the classes, last), "
                         "got a scalar")


def classes(shape):
    """The class axis (last) of logits shaped ``shape`` must not be empty for a loss."""
    if shape[-1] == 0:
        raise ValueError(f"logits has shape {tuple(shape)}: the last axis holds the classes and "
                         "must not be empty")


def target_kind(dname, shape, logits_shape, shown=None):
    """``"index"`` for integer targets shaped ``logits.shape[:-1]``, ``"prob"`` for floating
    targets shaped like the logits; anything else raises."""
    lead = tuple(logits_shape[:-1])
    shape = tuple(shape)
    if dname.startswith(("int", "uint")):
        if shape != lead:
            raise ValueError(f"targets has shape {shape}, expected {lead} to match "
                             "logits.shape[:-1] (class indices) or "
                             f"{tuple(logits_shape)} (probabilities)")
        return "index"
    if dname in _dtypes.SUPPORTED:
        if shape != tuple(logits_shape):
            raise ValueError(f"targets has shape {shape} and a floating dtype, so it is read "
                             f"as probabilities, which need the logits' shape "
                             f"{tuple(logits_shape)}; class indices need an integer dtype and "
                             f"shape {lead}")
        return "prob"
    raise TypeError(f"targets has dtype {shown or dname}, expected integer class indices or "
                    f"floating probabilities ({', '.join(_dtypes.SUPPORTED)})")


def weight_shape(shape, n_classes, name="weight"):
    if tuple(shape) != (n_classes,):
        raise ValueError(f"{name} has shape {tuple(shape)}, expected ({n_classes},) to match "
                         "logits.shape[-1] (one weight per class)")


def like_logits(shape, dname, logits_shape, logits_dname):
    """``out`` must have the logits' shape and dtype."""
    if tuple(shape) != tuple(logits_shape) or dname != logits_dname:
        raise ValueError(f"out has shape {tuple(shape)} and dtype {dname}, expected shape "
                         f"{tuple(logits_shape)} and dtype {logits_dname} (those of logits)")


def reduction(value, size_average=None, reduce=None):
    """The reduction, checked; given PyTorch's deprecated ``size_average`` or ``reduce``, the
    one PyTorch's rule makes of them instead (either defaults to True)."""
    if size_average is not None or reduce is not None:
        reduce = True if reduce is None else reduce
        size_average = True if size_average is None else size_average
        value = ("mean" if size_average else "sum") if reduce else "none"
    if value not in REDUCTIONS:
        raise ValueError(f"reduction={value!r} is not one of {', '.join(map(repr, REDUCTIONS))}")
    return value


def row_options(label_smoothing, z_loss, softcap_):
    """The options of each row's softmax cross-entropy, checked: ``(label smoothing, z-loss
    coefficient, soft-cap or None)``."""
    return (real(label_smoothing, "label_smoothing", low=0.0, high=1.0),
            real(z_loss, "z_loss", low=0.0), softcap(softcap_))


def loss_options(reduction_, ignore_index_, label_smoothing, z_loss, softcap_):
    """The softmax cross-entropy's options, checked once for every backend: ``(reduction,
    ignore_index)`` and :func:`row_options`."""
    return (reduction(reduction_), ignore_index(ignore_index_),
            *row_options(label_smoothing, z_loss, softcap_))


def real(value, name, *, low=None, high=None, low_open=False):
    """A finite real number, optionally within bounds; returned as float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name}={value!r} must be finite")
    if low is not None and (v < low or (low_open and v == low)):
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"{name}={value!r} must be {bound}" +
                         (f" and <= {high}" if high is not None else ""))
    if high is not None and v > high:
        raise ValueError(f"{name}={value!r} must be <= {high}")
    return v


def softcap(value):
    return None if value is None else real(value, "softcap", low=0.0, low_open=True)


def ignore_index(value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"ignore_index must be an integer, got {type(value).__name__}")
    return int(value)


def weight(value, n_classes, name="weight"):
    """Class weights: None, or a 1-D real array of length V (negative values are allowed), as
    float64."""
    if value is None:
        return None
    w = real_values(value, name)
    weight_shape(w.shape, n_classes, name)
    return w


def targets(value, logits_shape, ignore):
    """Integer class indices shaped ``logits.shape[:-1]``, or probabilities shaped like the logits.

    Returns ``(kind, array)``: ``("index", int64 array with -1 for ignored entries)`` or
    ``("prob", float array)``.
    """
    t = host_array(value, "targets")
    n_classes = logits_shape[-1]
    if target_kind(_dtypes.name(t.dtype), t.shape, logits_shape, shown=t.dtype) == "prob":
        return "prob", t
    in_range(t, n_classes, ignore)
    return "index", np.where(t != ignore, t, -1).astype(np.int64).reshape(-1)


def in_range(t, n_classes, ignore, offset=0):
    """An IndexError naming the first class index of ``t`` outside ``[0, n_classes)`` that is
    not ``ignore``; its position along the last axis is reported ``offset`` further on (the
    targets' own position, for the shifted ones)."""
    bad = (t != ignore) & ((t < 0) | (t >= n_classes))
    if bad.any():
        pos = [int(i) for i in np.argwhere(bad)[0]]
        value = int(t[tuple(pos)])
        if pos:
            pos[-1] += offset
        raise IndexError(out_of_range(tuple(pos), value, n_classes, ignore))


def out_of_range(pos, value, n_classes, ignore):
    """The message of an out-of-range class index at position ``pos`` of the targets."""
    where = f"targets[{', '.join(map(str, pos))}]" if pos else "targets"
    return (f"{where} = {value} is out of range: class indices must be in [0, {n_classes}) or "
            f"equal ignore_index={ignore}")


def shift(value, shape, name="logits"):
    """``shift=`` of a causal language model: how many positions ahead of each row its target
    lies, along the time axis (-2) of ``shape`` ((..., T, V) logits or (..., T, H) hidden
    states). 0 (or False) for none, True for 1."""
    if value is None or value is False:
        return 0
    if isinstance(value, (bool, np.bool_)):
        return 1
    if not isinstance(value, numbers.Integral):
        raise TypeError(f"shift must be an integer or a bool, got {type(value).__name__}")
    if value == 0:
        return 0
    if len(shape) < 2:
        raise ValueError(f"shift={value} needs a time axis: {name} of shape (..., T, "
                         f"{'V' if name == 'logits' else 'H'}), got {tuple(shape)}")
    if not 0 < value < shape[-2]:
        raise ValueError(f"shift={value} must be in [0, {shape[-2]}): {name}.shape[-2] is the "
                         f"time axis, T = {shape[-2]}")
    return int(value)


def shifted(targets, lead, s, ignore, n_classes):
    """Class indices of shape ``lead`` (..., T) moved ``s`` positions back along their last axis,
    so that position i holds the target of position i + s; the last ``s`` positions, which have
    no target, hold ``ignore``. One int64 copy of the targets (O(N)); the logits are not
    touched. The targets used are checked here (an error names their own position); the first
    ``s``, which no position predicts, are not read."""
    t = host_array(targets, "targets")
    no_shift_of_probabilities(_dtypes.is_float(t.dtype))
    if t.dtype.kind not in "iu":
        raise TypeError(f"targets has dtype {t.dtype}: shift= takes integer class indices")
    if t.shape != tuple(lead):
        raise ValueError(f"targets has shape {t.shape}, expected {tuple(lead)} (the logits' "
                         "shape without the classes) for shift=")
    used = t[..., s:]
    in_range(used, n_classes, ignore, offset=s)
    out = np.full(t.shape, ignore, np.int64)
    out[..., :t.shape[-1] - s] = used
    return out


def shifted_shape(lead, s):
    """The shape of per-row results (losses, log-sum-exps) under ``shift=s``: the last ``s``
    positions of the time axis have no target, and no result."""
    return tuple(lead) if not s else tuple(lead[:-1]) + (lead[-1] - s,)


def unshifted(rows, s):
    """Per-row results of shape (..., T) → (..., T - s) (a contiguous copy when ``s``)."""
    return rows if not s else np.ascontiguousarray(rows[..., :rows.shape[-1] - s])


def padded(values, lead, s):
    """Per-row values given for the ``shifted_shape`` → shape ``lead``, zeros for the last ``s``
    positions."""
    if not s:
        return np.broadcast_to(values, lead)
    out = np.zeros(lead)
    out[..., :lead[-1] - s] = values
    return out


def grad_output_shape(shape, red, loss_shape):
    """The shape of a GPU array passed as ``grad_output`` (read on the device): one value for a
    scalar loss; for reduction='none' the loss shape, or one value."""
    size = int(np.prod(shape))
    if red != "none" and size != 1:
        raise ValueError(f"grad_output has shape {tuple(shape)}; with reduction={red!r} the "
                         "loss is a scalar, so grad_output must be one")
    if red == "none" and tuple(shape) != tuple(loss_shape) and size != 1:
        raise ValueError(f"grad_output on the GPU has shape {tuple(shape)}: it must have the "
                         f"loss shape {tuple(loss_shape)} or hold one value")


def index_targets(kind, dtype, what):
    """``what`` takes class indices only (``kind``: what :func:`target_kind` found)."""
    if kind != "index":
        raise TypeError(f"{what} needs integer class indices as targets, got dtype {dtype}")


def none_outside_unit(count, name):
    """A ValueError when a kernel counted ``count`` elements of ``name`` outside [0, 1]."""
    if count:
        raise ValueError(f"{name} must be in [0, 1] ({count} elements are not)")


def same_kind(out, kind, logits_kind):
    """``out`` is an array of the logits' kind (a GPU library's, or host memory)."""
    if kind != logits_kind:
        raise TypeError(f"out must be an array of the same kind as logits ({logits_kind}), got "
                        f"{type(out).__name__}")


def grad_output(value, red, loss_shape):
    """Upstream gradient: a scalar, or for reduction='none' an array broadcastable to the loss."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return np.float64(value)
    g = real_values(value, "grad_output", "a real number or array")
    if red != "none":
        if g.ndim != 0:
            raise ValueError(f"grad_output has shape {g.shape}; with reduction={red!r} the loss "
                             "is a scalar, so grad_output must be one")
        return g[()]
    return broadcast(g, loss_shape, "grad_output", "the loss shape")


def out_array(out, like, inputs):
    """``out``, where a gradient is written: a writable NumPy array with the shape and dtype of
    ``like`` (the checked logits) that shares no memory with any of ``inputs`` ((name, value)
    pairs as the caller passed them: the logits, targets, weights, upstream gradient)."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    # by name: an ``out`` in the other byte order gets the gradient through a buffer
    like_logits(out.shape, _dtypes.name(out.dtype), like.shape, _dtypes.name(like.dtype))
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    apart(out, "out", inputs)
    return out


def inplace_target(logits, inputs=()):
    """Checked before any work, so that a refused call leaves everything as it was: the logits
    must be a writable NumPy array sharing no memory with ``inputs`` (see :func:`out_array`)."""
    if not isinstance(logits, np.ndarray):
        raise TypeError("inplace=True needs logits to be a NumPy array that the gradient can "
                        f"overwrite, got {type(logits).__name__}")
    if not logits.flags.writeable:
        raise ValueError("inplace=True but logits is read-only (flags.writeable is False)")
    apart(logits, "logits (overwritten by inplace=True)", inputs)


def apart(dst, name, inputs, overlap=None):
    """A ValueError if ``dst``, where results are written, shares memory with one of ``inputs``
    ((name, value) pairs). ``overlap(dst, value)`` says whether they do: by default, for NumPy
    arrays (other values are skipped); the GPU path passes its own, on address ranges."""
    for other, a in inputs:
        if (overlap(dst, a) if overlap is not None
                else isinstance(a, np.ndarray) and overlaps(dst, a)):
            hint = ("; to write the gradient over the logits pass inplace=True instead"
                    if other in ("logits", "probs") and name == "out" else
                    ": the result would be written over an input while it is read; pass "
                    "arrays that share no memory")
            raise ValueError(f"{name} overlaps {other}{hint}")


def overlaps(a, b):
    """Whether two arrays share memory (when that is too hard to decide: assumed so)."""
    if not np.may_share_memory(a, b):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=1 << 20))
    except _TOO_HARD:
        return True


# the element-wise (binary and categorical) losses

def binary_targets(value, shape, name, like):
    """A floating array of ``shape`` for ``value`` (targets): floats as they are (any supported
    dtype), booleans and integers converted to the compute type of ``like``."""
    t = host_array(value, name)
    shape_of(t.shape, shape, name, "the input's shape")
    if _dtypes.is_float(t.dtype) or t.dtype in (np.bool_, np.uint8, np.int8):
        return t  # (booleans and bytes are read as they are: one byte per element)
    if t.dtype.kind in "biu":
        return t.astype(_dtypes.compute_dtype(like))
    raise TypeError(f"{name} has dtype {t.dtype}, expected floats (or booleans/integers)")


def factors(value, shape, name, dtype):
    """``value`` broadcast to ``shape``, as the kernels take it: ``(per class (V,), per row (N,),
    per element (N, V))``, each None where it is not needed. Class and row factors are O(V) and
    O(N); only a value that varies along both axes becomes an (N, V) array (copied into the
    compute type unless it already is one, C-contiguous)."""
    if value is None:
        return None, None, None
    w = real_dtype(host_array(value, name), name)
    v = shape[-1] if len(shape) else 1
    n = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) else 1
    broadcast(w, shape, name, "the input's shape")
    if w.ndim > len(shape):
        raise ValueError(f"{name} has shape {w.shape}: more dimensions than the input's "
                         f"{tuple(shape)}")
    compute = _dtypes.compute_dtype(dtype)
    lead_one = all(k == 1 for k in w.shape[:-1])
    if w.ndim == 0 or lead_one:  # per class
        return np.ascontiguousarray(np.broadcast_to(w.reshape(-1), (v,)), dtype=compute), \
            None, None
    if w.shape[-1] == 1:  # per row
        rows = np.broadcast_to(w[..., 0], tuple(shape[:-1])).reshape(n)
        return None, np.ascontiguousarray(rows, dtype=compute), None
    full = np.broadcast_to(w, tuple(shape))
    return None, None, np.ascontiguousarray(full, dtype=compute).reshape(n, v)


def pos_weight(value, shape, dtype):
    """The positive-class weights, one per class (the last axis), in the compute type."""
    if value is None:
        return None
    v = shape[-1] if len(shape) else 1
    pw = real_values(value, "pos_weight")
    pw = broadcast(pw, (v,), "pos_weight", "one weight per class,")
    return np.ascontiguousarray(pw, dtype=_dtypes.compute_dtype(dtype))


def clip_eps(eps, dtype):
    """The clipping eps: None (clamp the logs at -100), "auto" (the dtype's machine epsilon, as
    scikit-learn), or a number in (0, 1/2)."""
    if eps is None:
        return 0.0
    if isinstance(eps, str):
        if eps != "auto":
            raise ValueError(f"eps={eps!r}: expected None, 'auto' or a number in (0, 0.5)")
        if _dtypes.name(dtype) == "bfloat16":
            return 2.0**-7  # (np.finfo does not know ml_dtypes' bfloat16)
        return float(np.finfo(dtype).eps)
    return real(eps, "eps", low=0.0, high=0.5, low_open=True)


def first_outside_unit(checks):
    """The message of the first element out of range, for ``(name, array, non-negative only)``
    checks (the arrays are read again only on this error path)."""
    for name, arr, low_only in checks:
        flat = _dtypes.decode(_dtypes.row_view(arr)).reshape(-1)
        bad = ~((flat >= 0) & (low_only | (flat <= 1)))
        if bad.any():
            k = int(np.argmax(bad))
            pos = ", ".join(map(str, np.unravel_index(k, arr.shape))) if arr.ndim else ""
            rule = ">= 0" if low_only else "in [0, 1]"
            raise ValueError(f"{name} must be {rule}, got {name}[{pos}] = {flat[k]}")


def one_destination(out, inplace):
    """``out=`` and ``inplace=True`` both name where the gradient goes: one of them at most."""
    if inplace and out is not None:
        raise ValueError("pass either out= or inplace=True, not both")


def choice(value, name, allowed, why=None):
    """``value`` if it is one of ``allowed``, else a ValueError listing them (or saying
    ``why``)."""
    if value not in allowed:
        raise ValueError(f"{why}, got {name}={value!r}" if why else
                         f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")
    return value


def contiguous(ok, message):
    """A ValueError saying ``message`` unless ``ok``: an array's layout (an array that a kernel
    writes whole must be C-contiguous; the classes where the kernels read them)."""
    if not ok:
        raise ValueError(message)


def on_host(pairs, where):
    """The (name, value) ``pairs`` that must be host values (numbers or host arrays) for a call
    on ``where``."""
    for name, value in pairs:
        if _arrays.is_device(value):
            raise TypeError(f"{name} must be a host array or a number for {where}")


def row_values(value, lead, name, what):
    """Real values of the shape ``lead`` (one per row) as a flat array."""
    s = real_values(value, name)
    if s.shape != tuple(lead):
        raise ValueError(f"{name} has shape {s.shape}: expected {what}, {tuple(lead)}")
    return s.reshape(-1)


def in_unit_interval(values, name, where):
    """``values`` if all lie in [0, 1], else a ValueError naming the first that does not."""
    outside = (values < 0) | (values > 1)
    if outside.any():
        raise ValueError(f"{name} must be in [0, 1], got {values[outside][0]} {where}")
    return values


def same_shape(names, a_shape, b_shape):
    """Two arrays that pair element by element (``names``: "p and q") have one shape."""
    if tuple(a_shape) != tuple(b_shape):
        raise ValueError(f"{names} must have the same shape, got {tuple(a_shape)} and "
                         f"{tuple(b_shape)}")


# the fused linear cross-entropy

def linear_shapes(h_shape, w_shape, b_shape, dnames):
    """Check the shapes (and dtype names: hidden, weight, bias) of a linear cross-entropy call;
    returns (leading shape, H, V)."""
    if len(w_shape) != 2:
        raise ValueError(f"weight has shape {tuple(w_shape)}: it must be 2-D, (V, H), the layout "
                         "of torch.nn.Linear(H, V).weight")
    v, hdim = w_shape
    if len(h_shape) == 0 or h_shape[-1] != hdim:
        raise ValueError(f"hidden has shape {tuple(h_shape)} and weight {tuple(w_shape)}: hidden's "
                         f"last axis must be H = {hdim}, the second axis of weight (V, H)")
    if v == 0:
        raise ValueError(f"weight has shape {tuple(w_shape)}: V, its first axis, must not be 0")
    if b_shape is not None and tuple(b_shape) != (v,):
        raise ValueError(f"bias has shape {tuple(b_shape)}, expected ({v},): one per class")
    names = [d for d in dnames if d is not None]
    if len(set(names)) != 1:
        raise TypeError("hidden, weight and bias must have one dtype, got "
                        f"{', '.join(names)}")
    return tuple(h_shape[:-1]), hdim, v


def linear_host_arrays(hidden, weight, bias):
    """``(hidden, weight, bias)`` of the NumPy linear cross-entropy as host arrays of float32 or
    float64 (``bias`` None or an array)."""
    for name, a in (("hidden", hidden), ("weight", weight), ("bias", bias)):
        if _arrays.is_device(a) or getattr(a, "is_cuda", False):
            raise TypeError(f"{name} is a GPU array ({type(a).__name__}): "
                            "fx.linear_cross_entropy takes host arrays; for CUDA tensors use "
                            "fastxent.torch.linear_cross_entropy (a CuPy array converts with "
                            "torch.from_dlpack, without a copy)")
    h = host_array(hidden, "hidden")
    w = host_array(weight, "weight")
    b = None if bias is None else host_array(bias, "bias")
    for name, a in (("hidden", h), ("weight", w), ("bias", b)):
        if a is not None and _dtypes.name(a.dtype) not in ("float32", "float64"):
            raise TypeError(f"{name} has dtype {a.dtype}: the NumPy linear cross-entropy takes "
                            "float32 or float64 (NumPy has no fast half-precision matrix product; "
                            "fastxent.torch.linear_cross_entropy takes bfloat16 and float16)")
    return h, w, b


def chunk_size(value, n_classes, whole_rows):
    """``chunk_size=`` given (not None): ``(rows, classes)`` per chunk, positive ints, from an int
    of rows or a pair; ``whole_rows`` (probability targets) refuses blocks of classes."""
    error = ValueError(f"chunk_size={value!r} must be rows per chunk (a positive integer), a "
                       "pair (rows, classes) of them, or None (chosen from a memory budget)")
    parts = value if isinstance(value, (tuple, list)) else (value,)
    if not 1 <= len(parts) <= 2 or any(
            isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral) or k < 1
            for k in parts):
        raise error
    rows, classes = int(parts[0]), int(parts[1]) if len(parts) == 2 else n_classes
    if whole_rows and classes < n_classes:
        raise ValueError(f"chunk_size={value!r}: blocks of classes take class-index targets; "
                         "with probability targets, chunk by rows (chunk_size=rows)")
    return rows, classes


def no_shift_of_probabilities(shift_):
    """``shift=`` moves class indices; probability targets refuse it."""
    if shift_:
        raise ValueError("shift= takes class-index targets, not probabilities")


# front ends' own types

def instances(pairs, cls, what, none_ok=True):
    """Each (name, value) of ``pairs`` is an instance of ``cls`` (``what`` names it), or None
    where ``none_ok``."""
    for name, value in pairs:
        if not (none_ok and value is None) and not isinstance(value, cls):
            raise TypeError(f"{name} must be {what}, got {type(value).__name__}")


def one_device(pairs):
    """The tensors of ``pairs`` ((name, tensor or None)) all live on one device."""
    devices = {t.device for _, t in pairs if t is not None}
    if len(devices) != 1:
        raise ValueError(f"{', '.join(n for n, _ in pairs[:-1])} and {pairs[-1][0]} must be on "
                         f"one device, got {', '.join(sorted(map(str, devices)))}")


def wider_dtype(value, name, own, allowed, whose):
    """None where ``value`` is None or ``own``; else ``value``, one of the floating dtypes
    ``allowed`` at least as wide as ``own`` (``whose``: "the input's", "the weight's")."""
    if value is None or value == own:
        return None
    if value not in allowed:
        raise ValueError(f"{name}={value!r} must be None ({whose} dtype), "
                         f"{' or '.join(map(str, allowed))}, as wide as {own} or wider")
    if value.itemsize < own.itemsize:
        raise ValueError(f"{name}={value} is narrower than {whose} {own}: the result is "
                         f"computed in {whose} dtype or a wider one")
    return value


# evaluation

def topk(topk):
    """The sorted distinct k of ``topk``: one positive integer or a sequence of them."""
    ks = (topk,) if isinstance(topk, numbers.Integral) else topk
    try:
        ks = tuple(ks)
    except TypeError:
        raise TypeError(f"topk must hold positive integers (one k, or a sequence of them), "
                        f"got {type(topk).__name__}") from None
    if not ks or any(isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral)
                     or k < 1 for k in ks):
        raise ValueError(f"topk must hold positive integers (one k, or a sequence of them), "
                         f"got {topk!r}")
    return tuple(sorted({int(k) for k in ks}))


def sequence_ids(value, shape):
    """``sequence_ids=`` of ``Evaluator.add``: integers of the targets' ``shape``, or one per row
    of 2-D targets (then broadcast to ``shape``)."""
    ids = host_array(value, "sequence_ids")
    integers(ids.dtype, "sequence_ids", "integers")
    if ids.shape != shape:
        if len(shape) == 2 and ids.shape == shape[:1]:
            return np.broadcast_to(ids[:, None], shape)
        raise ValueError(f"sequence_ids has shape {ids.shape}: expected the targets' shape "
                         f"{shape}, or {shape[:1]} for 2-D targets")
    return ids


def integers(dtype, name, what):
    """An integer ``dtype`` (``what``: "integer class indices", ...)."""
    if dtype.kind not in "iu":
        raise TypeError(f"{name} must be {what}, got dtype {dtype}")


def shape_of(shape, expected, name, what):
    """``name`` has the ``expected`` shape (``what`` names it: "the input's shape")."""
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(shape)}: expected {what} {tuple(expected)}")
