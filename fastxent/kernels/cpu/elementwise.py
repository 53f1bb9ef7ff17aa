"""Numba CPU kernels of the element-wise binary losses (``binary`` in ``kernels/interface.py``):
binary cross-entropy on logits (many independent sigmoids per row: multi-label classification)
and on probabilities, with the fused gradient on logits.

Each element is independent, so the work is cut into (row, column chunk) tasks spread over
threads, walked in blocks whose float32 sums are added into a float64 total per task. The
logarithms are the vectorising ones of :mod:`._logs`.

On logits ``x``, targets ``y``, positive-class weight ``pw`` and ``lw = 1 + (pw - 1)·y``::

    loss = (1 - y)·x + lw·softplus(-x)      (PyTorch's stable form; for x < 0 the same value
         = lw·softplus(x) - pw·y·x           is taken from this form, with no cancellation)
    dloss/dx = lw·sigmoid(x) - pw·y

On probabilities ``p``: ``loss = -(y·log p + (1 - y)·log(1 - p))``, each log clamped at -100
(PyTorch's ``BCELoss``), or with ``eps`` the probabilities clipped to [eps, 1 - eps] instead
(scikit-learn, Keras). ``log(1 - p)`` is ``log1p(-p)`` below one half, where ``1 - p`` would
round. Probabilities or targets outside [0, 1] are counted, and the caller raises.

The categorical kind sums ``-q·log p`` over a row: cross-entropy from probabilities against a
target distribution ``q`` (0·log 0 = 0), and with ``q = p`` the entropy of ``p``.
"""

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ...core.codes import BINARY_LOGITS, BINARY_PROBS, CATEGORICAL
from ...core.threads import parallel_guard
from .common import REDUCE, plan, row_sliced, serial, sliced
from .logs import flog, flog1p
from .numeric import as_compute
from .numeric import fexp as exp32_or_libm
from .numeric import load, store, weight_at

# NumPy's error model: a division by zero gives inf instead of raising, so loops with divisions
# vectorise (Python's model checks every divisor)
_ELEMENT = dict(REDUCE, error_model="numpy")
PARALLEL = dict(_ELEMENT, parallel=True)
# elements per float32 partial sum: 32 per SIMD lane, so that the sum of a task keeps float32
# rounding far below 1e-6 relative (the loss is the sum itself, not its logarithm)
_SUM = 256


def _target(v, x):
    """A target element in the compute type of ``x``: a storage element (floats), or a byte
    (booleans, 8-bit integers: multi-label targets at one byte per element)."""


@overload(_target, inline="always")
def _target_impl(v, x):
    if isinstance(v, types.Boolean):
        # a select of 1 or 0 (one masked move), not a conversion: the compiler also knows the
        # value is in [0, 1], and drops the range check
        return lambda v, x: as_compute(1.0, x) if v else as_compute(0.0, x)
    if isinstance(v, types.Integer) and v.bitwidth == 8:
        return lambda v, x: as_compute(np.float32(v), x)
    return lambda v, x: as_compute(load(v), x)


@njit(inline="always", **_ELEMENT)
def _logit_term(x, y, pw, one):
    """(loss, dloss/dx) of one logit, from one exponential ``e = exp(-|x|)``, which gives both
    ``L = log1p(e)`` and sigmoid(x). The loss is written as a sum of two non-negative terms for
    either sign of x, so that it keeps float32's relative precision (no cancellation):
    ``lw·L + (1 - y)·x`` for x >= 0 and ``lw·L - pw·y·x`` for x < 0, with lw = 1 + (pw - 1)·y
    (``pw`` None: 1, and ``lw`` 1)."""
    lw, pwy = _positive_weights(pw, y, one)
    e = exp32_or_libm(-abs(x))
    linear = (one - y) * x if x >= 0 else -(pwy * x)
    loss = lw * flog1p(e) + linear
    sig = one / (one + e)
    sig = sig if x >= 0 else e * sig
    return loss, lw * sig - pwy


def _positive_weights(pw, y, one):
    """``(1 + (pw - 1)·y, pw·y)``; ``(1, y)`` when ``pw`` is None (decided when compiled: with a
    weight of 1 the products would still be computed, as ``0·y`` is not 0 for every float)."""


@overload(_positive_weights, inline="always")
def _positive_weights_impl(pw, y, one):
    if isinstance(pw, types.NoneType):
        return lambda pw, y, one: (one, y)
    return lambda pw, y, one: (one + (pw - one) * y, pw * y)


@njit(inline="always", **_ELEMENT)
def _prob_term(p, y, eps, one):
    """(loss, dloss/dp) of one probability, and whether p and y are in [0, 1]. ``eps`` > 0 clips
    p to [eps, 1 - eps]; 0 clamps the logs at -100 instead.

    One log and one log1p of the smaller of p and 1 - p (1 - p is exact when p >= 1/2), so
    that neither loses precision near 0 or 1."""
    ok = p >= 0 and p <= one and y >= 0 and y <= one
    zero = one - one
    upper = p >= one / (one + one)
    small = max(one - p, eps) if upper else max(p, eps)
    log_small = flog(small)
    log_big = flog1p(-small)
    log_p = log_big if upper else log_small
    log_q = log_small if upper else log_big
    floor = zero - np.float32(100.0)
    if not eps > zero:
        log_p = log_p if log_p > floor else floor
        log_q = log_q if log_q > floor else floor
    loss = -(y * log_p + (one - y) * log_q)
    # PyTorch's BCELoss backward: (p - y) / max(p·(1 - p), 1e-12), the floor a float32 constant
    den = p * (one - p)
    tiny = zero + np.float32(1e-12)
    d = (p - y) / (den if den > tiny else tiny)
    # clipped (eps > 0): the loss does not move with p outside [eps, 1 - eps]
    d = d if not eps > zero or (p > eps and p < one - eps) else zero
    return loss, d, ok


@njit(inline="always", **_ELEMENT)
def _categorical_term(p, q, eps, one):
    """(-q·log p, d/dp) of one probability ``p`` and its target share ``q`` (0·log 0 = 0), and
    whether p is in [0, 1] and q >= 0. The derivative ``-q/p`` is 0 where the log does not move
    with p: p clipped to [eps, 1 - eps], or its log clamped at -100."""
    ok = p >= 0 and p <= one and q >= 0
    zero = one - one
    upper = p >= one / (one + one)
    small = max(one - p, eps) if upper else max(p, eps)
    log_p = flog1p(-small) if upper else flog(small)
    floor = zero - np.float32(100.0)
    if eps > zero:
        moves = p > eps and p < one - eps
    else:
        moves = log_p > floor
        log_p = log_p if moves else floor
    d = zero if q == zero or not moves else -q / p
    return (zero if q == zero else -q * log_p), d, ok


def _term(x, y, pw, c, one):
    """(loss, derivative, inputs in range) of one element: binary on a logit when ``c`` is
    None, binary on a probability when ``c`` is a number (the clipping eps; 0: PyTorch's clamp
    of the logs), categorical on a probability when ``c`` is a 1-tuple holding the eps."""


@overload(_term, inline="always")
def _term_impl(x, y, pw, c, one):
    if isinstance(c, types.NoneType):
        def logit(x, y, pw, c, one):
            loss, d = _logit_term(x, y, pw, one)
            return loss, d, y >= 0 and y <= one
        return logit
    if isinstance(c, types.BaseTuple):
        return lambda x, y, pw, c, one: _categorical_term(x, y, c[0], one)
    return lambda x, y, pw, c, one: _prob_term(x, y, c, one)


@njit(inline="always", **_ELEMENT)
def _task(k, nchunk, size, v):
    """Task k's (row, first column, end column): row k // nchunk, chunk k % nchunk of ``size``
    columns."""
    r = k // nchunk
    lo = (k % nchunk) * size
    return r, lo, min(lo + size, v)


@njit(**PARALLEL)
def _tasks(x, y, cw, rw, ew, pw, c, losses, g, rs, ge, nchunk, size, part, bad):
    """Task k = (row k // nchunk, columns of chunk k % nchunk). The weight of element (r, j) is
    ``cw[j]·rw[r]·ew[r, j]`` (each factor 1 where None), its gradient scale ``rs[r]·ge[r, j]``."""
    n, v = x.shape
    one = as_compute(1.0, x)
    zero = one - one
    for k in prange(n * nchunk):
        r, lo, hi = _task(k, nchunk, size, v)
        row_w = as_compute(weight_at(rw, r), x)
        row_g = as_compute(weight_at(rs, r), x) * row_w
        total = 0.0
        nbad = 0
        for b in range(lo, hi, _SUM):
            e = min(b + _SUM, hi)
            # 1-D contiguous slices walked from 0: no wrap-around of negative indices and a known
            # stride, either of which would turn the loads into gathers (see cpu._segment_stats)
            xs = x[r, b:e]
            ys = y[r, b:e]
            cws = sliced(cw, b, e)
            ews = row_sliced(ew, r, b, e)
            pws = sliced(pw, b, e)
            ls = row_sliced(losses, r, b, e)
            gr = row_sliced(g, r, b, e)
            ges = row_sliced(ge, r, b, e)
            s = zero
            # out-of-range elements counted in the compute type (exact to 2**24 > _SUM): an
            # integer count here widened the loop's masks to 512-bit int64 lanes
            nb = zero
            for j in range(e - b):
                xv = load(xs[j])
                yv = _target(ys[j], x)
                wv = as_compute(weight_at(cws, j), x) * as_compute(weight_at(ews, j), x)
                loss, d, ok = _term(xv, yv, _weight_or_none(pws, j, x), _eps(c, x), one)
                nb += zero if ok else one
                loss = wv * loss
                s += loss
                if losses is not None:
                    ls[j] = row_w * loss
                if g is not None:
                    gr[j] = store(row_g * as_compute(weight_at(ges, j), x) * wv * d, gr)
            total += np.float64(s)
            nbad += int(nb)
        part[k] = total * np.float64(row_w)
        bad[k] = nbad


def _weight_or_none(ws, j, x):
    """``ws[j]`` in the compute type of ``x``, or None."""


@overload(_weight_or_none, inline="always")
def _weight_or_none_impl(ws, j, x):
    if isinstance(ws, types.NoneType):
        return lambda ws, j, x: None
    return lambda ws, j, x: as_compute(ws[j], x)


def _eps(c, x):
    return c


@overload(_eps, inline="always")
def _eps_impl(c, x):
    if isinstance(c, types.NoneType):
        return lambda c, x: None
    if isinstance(c, types.BaseTuple):
        return lambda c, x: (as_compute(c[0], x),)
    return lambda c, x: as_compute(c, x)


def binary(kind, x, targets, weights=(None, None, None), pos_weight=None, eps=0.0, losses=None,
           grad=None, scale=(None, None)):
    """See ``reference.binary``: the same sums, losses and gradient from a Numba kernel."""
    n, v = x.shape
    if n == 0 or v == 0:
        return np.zeros(n), 0
    nchunk, size = plan(n, v)
    part = np.empty(n * nchunk)
    bad = np.zeros(n * nchunk, np.int64)
    with parallel_guard() as parallel:
        kernel = _tasks if parallel else serial(_tasks)
        c = {BINARY_LOGITS: None, BINARY_PROBS: float(eps), CATEGORICAL: (float(eps),)}[kind]
        kernel(x, targets, *weights, pos_weight, c, losses, grad, *scale, nchunk, size, part,
               bad)
    return part.reshape(n, nchunk).sum(axis=1), int(bad.sum())


def _probs_ok(xs, j, x):
    """Whether probability ``xs[j]`` is in [0, 1], in the compute type of ``x`` (True when
    ``xs`` is None: logits)."""


@overload(_probs_ok, inline="always")
def _probs_ok_impl(xs, j, x):
    if isinstance(xs, types.NoneType):
        return lambda xs, j, x: True

    def ok(xs, j, x):
        p = as_compute(load(xs[j]), x)
        return p >= as_compute(0.0, x) and p <= as_compute(1.0, x)
    return ok


@njit(**PARALLEL)
def _outside(x, probs, y, nchunk, size, bad):
    """Task k = (row, column chunk) as in :func:`_tasks`: how many of its targets (and
    probabilities, ``probs`` not None) are outside [0, 1], read alone."""
    n, v = x.shape
    one = as_compute(1.0, x)
    zero = one - one
    for k in prange(n * nchunk):
        r, lo, hi = _task(k, nchunk, size, v)
        ys = y[r, lo:hi]
        ps = row_sliced(probs, r, lo, hi)
        # counted in the compute type, as in _tasks (integer counts widen the loop's masks);
        # past 2**24 in one chunk (float32) the count stops growing, but never returns to 0
        nb = zero
        for j in range(hi - lo):
            yv = _target(ys[j], x)
            ok = yv >= zero and yv <= one and _probs_ok(ps, j, x)
            nb += zero if ok else one
        bad[k] = int(nb)


def outside(kind, x, targets):
    """See ``reference.binary_outside``: the targets (and probabilities) read alone, a pass
    that costs a fraction of the loss kernel's."""
    n, v = x.shape
    if n == 0 or v == 0:
        return 0
    nchunk, size = plan(n, v)
    bad = np.zeros(n * nchunk, np.int64)
    with parallel_guard() as parallel:
        kernel = _outside if parallel else serial(_outside)
        kernel(x, x if kind == BINARY_PROBS else None, targets, nchunk, size, bad)
    return int(bad.sum())
