"""Validation of user arguments, shared by every public function. Messages name the argument,
what it was, and what is allowed."""

import math
import numbers

import numpy as np

from . import _arrays, _dtypes

REDUCTIONS = ("mean", "sum", "none")


def logits_array(logits, *, name="logits", scalar_ok=False):
    """The logits as an ndarray (no copy for ndarrays and buffer-protocol objects)."""
    if isinstance(logits, np.ndarray):
        a = logits
    else:
        if _arrays.is_device(logits):
            raise TypeError(f"{name} lives on a GPU, but the 'cpu' and 'numpy' backends take host "
                            "arrays: pass backend='cuda' (or 'auto'), or copy it to the host")
        a = _arrays.torch_bfloat16_host(logits)
        try:
            a = np.asarray(logits) if a is None else a
        except Exception as exc:  # e.g. a torch tensor that requires grad
            raise TypeError(f"{name} must be an array of floats, got {type(logits).__name__}: "
                            f"{exc}") from exc
    logits_format(_dtypes.name(a.dtype), a.shape, name=name, shown=a.dtype, scalar_ok=scalar_ok)
    return a


# The checks below look at a dtype's name and a shape only, so that the host path and the GPU
# path (``fastxent._device``, whose arrays are tensors or device arrays) share them.


def logits_format(dname, shape, *, name="logits", shown=None, scalar_ok=False):
    """A supported floating dtype (by name) and at least one dimension (or any, for the
    element-wise losses: ``scalar_ok``)."""
    if dname not in _dtypes.SUPPORTED:
        raise TypeError(f"{name} has dtype {shown or dname}, expected one of "
                        f"{', '.join(_dtypes.SUPPORTED)}")
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


def weight_shape(shape, n_classes):
    if tuple(shape) != (n_classes,):
        raise ValueError(f"weight has shape {tuple(shape)}, expected ({n_classes},) to match "
                         "logits.shape[-1]")


def like_logits(shape, dname, logits_shape, logits_dname):
    """``out`` must have the logits' shape and dtype."""
    if tuple(shape) != tuple(logits_shape) or dname != logits_dname:
        raise ValueError(f"out has shape {tuple(shape)} and dtype {dname}, expected shape "
                         f"{tuple(logits_shape)} and dtype {logits_dname} (those of logits)")


def reduction(value):
    if value not in REDUCTIONS:
        raise ValueError(f"reduction={value!r} is not one of {', '.join(map(repr, REDUCTIONS))}")
    return value


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


def weight(value, n_classes):
    """Class weights: None, or a 1-D real array of length V (negative values are allowed)."""
    if value is None:
        return None
    w = np.asarray(value)
    if w.dtype.kind not in "fiu" or w.dtype == np.bool_:
        raise TypeError(f"weight has dtype {w.dtype}, expected a real (floating) dtype")
    weight_shape(w.shape, n_classes)
    return w.astype(np.float64)


def targets(value, logits_shape, ignore):
    """Integer class indices shaped ``logits.shape[:-1]``, or probabilities shaped like the logits.

    Returns ``(kind, array)``: ``("index", int64 array with -1 for ignored entries)`` or
    ``("prob", float array)``.
    """
    t = value if isinstance(value, np.ndarray) else np.asarray(value)
    n_classes = logits_shape[-1]
    if target_kind(_dtypes.name(t.dtype), t.shape, logits_shape, shown=t.dtype) == "prob":
        return "prob", t
    valid = t != ignore
    bad = valid & ((t < 0) | (t >= n_classes))
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        raise IndexError(out_of_range(pos, int(t[pos]), n_classes, ignore))
    return "index", np.where(valid, t, -1).astype(np.int64).reshape(-1)


def out_of_range(pos, value, n_classes, ignore):
    """The message of an out-of-range class index at position ``pos`` of the targets."""
    where = f"targets[{', '.join(map(str, pos))}]" if pos else "targets"
    return (f"{where} = {value} is out of range: class indices must be in [0, {n_classes}) or "
            f"equal ignore_index={ignore}")


def grad_output(value, red, loss_shape):
    """Upstream gradient: a scalar, or for reduction='none' an array broadcastable to the loss."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return np.float64(value)
    g = np.asarray(value)
    if g.dtype.kind not in "fiu" or g.dtype == np.bool_:
        raise TypeError(f"grad_output must be a real number or array, got dtype {g.dtype}")
    g = g.astype(np.float64)
    if red != "none":
        if g.ndim != 0:
            raise ValueError(f"grad_output has shape {g.shape}; with reduction={red!r} the loss "
                             "is a scalar, so grad_output must be one")
        return g[()]
    try:
        return np.broadcast_to(g, loss_shape)
    except ValueError:
        raise ValueError(f"grad_output has shape {g.shape}, which does not broadcast to the "
                         f"loss shape {loss_shape}") from None


def out_array(out, logits):
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    like_logits(out.shape, out.dtype, logits.shape, logits.dtype)
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    if np.shares_memory(out, logits):
        raise ValueError("out overlaps logits; to write the gradient over the logits pass "
                         "inplace=True instead")
    return out


def inplace_target(logits):
    """Checked before any work, so that a refused call leaves everything as it was."""
    if not isinstance(logits, np.ndarray):
        raise TypeError("inplace=True needs logits to be a NumPy array that the gradient can "
                        f"overwrite, got {type(logits).__name__}")
    if not logits.flags.writeable:
        raise ValueError("inplace=True but logits is read-only (flags.writeable is False)")
