"""Numba CPU kernel of the per-token statistics (``token_partials``, see ``kernels/interface.py``).

One pass over each row, block by block as in :mod:`.cpu`: the block's maximum, then from L1 the
sums of ``e = exp(y - block max)`` and of ``e·(y - block max)`` (what the entropy needs) and the
count of logits above the target's, merged into a running triple. The argmax is found by
scanning a block only when its maximum beats the row's so far (a few blocks per row).

The triple (m, s, w), with ``s = Σ exp(y - m)`` and ``w = Σ exp(y - m)·(y - m)``, merges with
the package's one reduction, ``formulas.merge``.
"""

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ... import config
from ...core.codes import IGNORED
from ...core.formulas import merge
from ...core.partials import merge_partials
from ...core.threads import parallel_guard
from .common import REDUCE, any_nan, plan, serial  # the CPU kernels' flags and helpers
from .numeric import as_compute, block_max, exp_term, floored, load

PARALLEL = dict(REDUCE, parallel=True)
_BLOCK = config.BLOCK


@njit(**REDUCE)
def _block_sums(xs, mb, thr):
    """(Σ e, Σ e·d, #{y > thr}) with y the logits, d = y − mb and e = exp(d), one walk over the
    block (in L1) for all three; no count when ``thr`` is None (entropy alone)."""
    zero = as_compute(0.0, xs)  # (not mb - mb: mb may be +inf)
    s = zero
    w = zero
    k = zero  # counted in the compute type (exact up to 2**24 > BLOCK): every lane stays float
    for j in range(xs.size):
        y = load(xs[j])
        d = y - mb
        e = exp_term(d)
        # -inf logits (masked classes) give d = -inf; clamped, their e·d is about -1e-36
        w += e * floored(d)
        s += e
        k += _above(y, thr, xs)
    return s, w, np.int64(k)


def _above(y, thr, xs):
    """1 when ``y > thr`` else 0, in the compute type of ``xs``; 0 when ``thr`` is None."""


@overload(_above, inline="always")
def _above_impl(y, thr, xs):
    if isinstance(thr, types.NoneType):
        return lambda y, thr, xs: as_compute(0.0, xs)
    return lambda y, thr, xs: as_compute(1.0, xs) if y > thr else as_compute(0.0, xs)


@njit(**REDUCE)
def _count_above(xs, thr):
    k = 0
    for j in range(xs.size):
        k += np.int64(_above(load(xs[j]), thr, xs))
    return k


@njit(**REDUCE)
def _first(xs, value):
    """Index of the first element equal to ``value`` (one is), or of the first NaN for NaN."""
    for j in range(xs.size):
        y = load(xs[j])
        if y == value or (value != value and y != y):
            return j
    return 0


@njit(**REDUCE)
def _segment(x, r, lo, hi, thr, stats, ints, k):
    """Partial statistics of x[r, lo:hi] into stats[k, :3] = [m, s, w] and ints[k] = [argmax
    (a column of x), count above ``thr``, or -1 when ``thr`` is None]."""
    m = -np.inf
    s = 0.0
    w = 0.0
    arg = 0
    above = 0
    nan = False
    for b in range(lo, hi, _BLOCK):
        e = min(b + _BLOCK, hi)
        xs = x[r, b:e]
        mb = block_max(xs)
        if mb > m and not nan:
            arg = b + _first(xs, mb)
        if mb > -np.inf:
            sb, wb, kb = _block_sums(xs, mb, thr)
            above += kb
            if sb != sb and not nan and any_nan(xs):
                nan = True
                arg = b + _first(xs, np.nan)
            m, s, w = merge(m, s, w, np.float64(mb), np.float64(sb), np.float64(wb))
        else:
            above += _count_above(xs, thr)
            if not nan and any_nan(xs):  # the maximum may have passed over a NaN among -inf
                nan = True
                arg = b + _first(xs, np.nan)
    stats[k, 0] = np.nan if nan else m
    stats[k, 1] = s
    stats[k, 2] = w
    ints[k, 0] = arg
    ints[k, 1] = -1 if thr is None else above


@njit(**PARALLEL)
def _tasks(x, targets, thresholds, nchunk, size, stats, ints):
    """Task k = (row k // nchunk, columns of chunk k % nchunk)."""
    n, v = x.shape
    for k in prange(n * nchunk):
        r = k // nchunk
        lo = (k % nchunk) * size
        hi = min(lo + size, v)
        t = targets[r]
        if t == IGNORED or lo >= hi:
            stats[k, 0] = np.nan if t == IGNORED else -np.inf
            stats[k, 1:] = np.nan if t == IGNORED else 0.0
            ints[k, 0] = -1 if t == IGNORED else 0
            ints[k, 1] = -1 if t == IGNORED else 0
            continue
        # the count's threshold: the target's logit, a given threshold (a logit read back: exact
        # in the compute type), or none (entropy alone: the loop compiled without the count)
        thr = load(x[r, max(t, 0)])
        counting = t >= 0
        if not counting and thresholds is not None and thresholds[r] == thresholds[r]:
            thr = as_compute(thresholds[r], x)
            counting = True
        if counting:
            _segment(x, r, lo, hi, thr, stats, ints, k)
        else:
            _segment(x, r, lo, hi, None, stats, ints, k)
        stats[k, 3] = thr if t >= 0 else np.nan


def token_partials(x, targets, thresholds=None):
    """See ``reference.token_partials``: the same partials from a Numba kernel, rows spread over
    threads (and cut into column chunks, merged here, when there are fewer rows than threads)."""
    n, v = x.shape
    stats = np.empty((n, 4))
    ints = np.empty((n, 2), np.int64)
    if n == 0:
        return stats, ints
    if v == 0:
        stats[:] = [-np.inf, 0.0, 0.0, np.nan]
        ints[:] = [-1, 0]
        return _ignore(stats, ints, targets)
    nchunk, size = plan(n, v)
    part = stats if nchunk == 1 else np.empty((n * nchunk, 4))
    pint = ints if nchunk == 1 else np.empty((n * nchunk, 2), np.int64)
    thr = None if thresholds is None else np.ascontiguousarray(thresholds, dtype=np.float64)
    with parallel_guard() as parallel:
        kernel = _tasks if parallel else serial(_tasks)
        kernel(x, targets, thr, nchunk, size, part, pint)
    if nchunk > 1:

        # the argmax columns are already the row's; every chunk read the target's logit
        stats, ints = merge_partials(part.reshape(n, nchunk, 4), pint.reshape(n, nchunk, 2))
    return stats, ints


def _ignore(stats, ints, targets):
    ign = targets == IGNORED
    stats[ign] = np.nan
    ints[ign] = -1
    return stats, ints
