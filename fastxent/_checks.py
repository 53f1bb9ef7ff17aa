"""Validation of user arguments, shared by every public function. Messages name the argument,
what it was, and what is allowed."""

import math
import numbers

import numpy as np

from . import _arrays, _dtypes

REDUCTIONS = ("mean", "sum", "none")


def logits_array(logits, *, name="logits"):
    """The logits as an ndarray (no copy for ndarrays and buffer-protocol objects)."""
    if isinstance(logits, np.ndarray):
        a = logits
    else:
        if _arrays.is_device(logits):
            raise TypeError(f"{name} lives on a GPU, but the 'cpu' and 'numpy' backends take host "
                            "arrays: pass backend='cuda' (or 'auto'), or copy it to the host")
        try:
            a = np.asarray(logits)
        except Exception as exc:  # e.g. a torch tensor that requires grad
            raise TypeError(f"{name} must be an array of floats, got {type(logits).__name__}: "
                            f"{exc}") from exc
    if not _dtypes.is_float(a.dtype):
        raise TypeError(f"{name} has dtype {a.dtype}, expected one of "
                        f"{', '.join(_dtypes.SUPPORTED)}")
    if a.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension (the classes, last), "
                         "got a scalar")
    return a


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
    if w.shape != (n_classes,):
        raise ValueError(f"weight has shape {w.shape}, expected ({n_classes},) to match "
                         "logits.shape[-1]")
    return w.astype(np.float64)


def targets(value, logits_shape, ignore):
    """Integer class indices shaped ``logits.shape[:-1]``, or probabilities shaped like the logits.

    Returns ``(kind, array)``: ``("index", int64 array with -1 for ignored entries)`` or
    ``("prob", float array)``.
    """
    t = value if isinstance(value, np.ndarray) else np.asarray(value)
    lead, n_classes = logits_shape[:-1], logits_shape[-1]
    if t.dtype.kind in "iu":
        if t.shape != lead:
            raise ValueError(f"targets has shape {t.shape}, expected {lead} to match "
                             "logits.shape[:-1] (class indices) or "
                             f"{tuple(logits_shape)} (probabilities)")
        valid = t != ignore
        bad = valid & ((t < 0) | (t >= n_classes))
        if bad.any():
            pos = tuple(int(i) for i in np.argwhere(bad)[0])
            where = f"targets[{', '.join(map(str, pos))}]" if pos else "targets"
            raise IndexError(f"{where} = {int(t[pos])} is out of range: class indices must be in "
                             f"[0, {n_classes}) or equal ignore_index={ignore}")
        return "index", np.where(valid, t, -1).astype(np.int64).reshape(-1)
    if _dtypes.is_float(t.dtype):
        if t.shape != tuple(logits_shape):
            raise ValueError(f"targets has shape {t.shape} and a floating dtype, so it is read "
                             f"as probabilities, which need the logits' shape "
                             f"{tuple(logits_shape)}; class indices need an integer dtype and "
                             f"shape {lead}")
        return "prob", t
    raise TypeError(f"targets has dtype {t.dtype}, expected integer class indices or "
                    f"floating probabilities ({', '.join(_dtypes.SUPPORTED)})")


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
    if out.shape != logits.shape or out.dtype != logits.dtype:
        raise ValueError(f"out has shape {out.shape} and dtype {out.dtype}, expected shape "
                         f"{logits.shape} and dtype {logits.dtype} (those of logits)")
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
