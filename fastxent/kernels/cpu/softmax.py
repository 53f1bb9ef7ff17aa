"""Numba CPU kernels: streaming log-sum-exp statistics and the fused gradient, row-parallel.

Every row is walked in blocks of ``config.BLOCK`` elements that stay in L1: the block's maximum,
then the sum of ``exp(y - block_max)`` from L1, merged into a running pair with
``s = s·exp(m - m') + s_blk·exp(m_blk - m')`` (Milakov & Gimelshein, "Online normalizer calculation
for softmax", 2018). So the logits come from main memory once for the statistics. The fused kernel
keeps each term exp(y - block_max) where the gradient goes (a float32 scratch row for half
precision) and, once the row's statistics are known, scales them into the gradient while the row
is still in L2: one exponential per element. In half precision each task takes a run of
consecutive rows, and the gradient of one row is written block by block beside the statistics of
the next (``_row_pipeline``), so that its stores overlap the exponentials.

Rows are spread over threads with ``prange``. With fewer rows than threads can share (batch-1
scoring of a 256K vocabulary) each row is cut into ``nchunk`` chunks; every chunk returns its
partial statistics and the rows are merged with the same reduction.

Options that change the arithmetic (class weights, soft-cap, integer or probability targets,
forward-only or fused) are decided by the arguments' types (``None`` or an array/number), so each
combination compiles to its own loop without branches in it.
"""

import math

import numpy as np
from numba import get_num_threads, get_thread_id, njit, prange, types
from numba.extending import overload

from ... import config
from ...core.formulas import merge, softmax_factor
from ...core.threads import parallel_guard
from .common import OVERLOAD, PARALLEL, REDUCE, any_nan, sliced, plan, row_sliced, serial
from .numeric import (as_compute, block_max, cap, cap_and_slope, exp_term, fexp, load, store,
                      weight_at)

_BLOCK = config.BLOCK

_BLOCK = config.BLOCK


# --- pieces that depend on the targets' kind (integer, probabilities, none) ----------------------


def _ignored(t, r):
    return False


@overload(_ignored, **OVERLOAD)
def _ignored_impl(t, r):
    if isinstance(t, types.NoneType):
        return lambda t, r: False
    return lambda t, r: t[r] < 0


def _target_terms(x, t, r, w, c):
    """(x_t, w_t) of an integer target (its logit before the soft-cap, in float64), else
    zeros."""


@overload(_target_terms, **OVERLOAD)
def _target_terms_impl(x, t, r, w, c):
    if isinstance(t, types.NoneType):
        return lambda x, t, r, w, c: (0.0, 0.0)

    def terms(x, t, r, w, c):
        j = t[r]
        return np.float64(load(x[r, j])), np.float64(weight_at(w, j))

    return terms


def _q_sums(xs, qs, ws, c):
    """(Σ w·q·y, Σ w·q) over a segment for probability targets, else zeros."""


@overload(_q_sums, **OVERLOAD)
def _q_sums_impl(xs, qs, ws, c):
    if isinstance(qs, types.NoneType):
        return lambda xs, qs, ws, c: (0.0, 0.0)

    def sums(xs, qs, ws, c):
        sqy = 0.0
        sq = 0.0
        for j in range(xs.size):
            wq = np.float64(weight_at(ws, j)) * np.float64(load(qs[j]))
            sqy += wq * np.float64(cap(load(xs[j]), c))
            sq += wq
        return sqy, sq

    return sums


def _q_at(qs, j):
    """Probability target qs[j] in the compute type, or 0 for integer targets."""


@overload(_q_at, **OVERLOAD)
def _q_at_impl(qs, j):
    if isinstance(qs, types.NoneType):
        return lambda qs, j: np.float32(0.0)
    return lambda qs, j: load(qs[j])


@njit(**REDUCE)
def _block_sumexp(xs, m, c):
    s = _sum_zero(m, c)
    for j in range(xs.size):
        s += exp_term(cap(load(xs[j]), c) - m)
    return s


def _sum_zero(m, c):
    """The zero a block's sum of exponentials starts from: in the compute type (the loop runs in
    SIMD lanes, a partial sum per lane), or float64 with a soft-cap, whose libm exponential per
    element keeps the loop out of SIMD lanes: one float32 sum over a block drifted by 1e-6."""


@overload(_sum_zero, **OVERLOAD)
def _sum_zero_impl(m, c):
    if isinstance(c, types.NoneType):
        return lambda m, c: m - m  # (m is finite here)
    return lambda m, c: 0.0


@njit(**REDUCE)
def _block_sum_wy(xs, ws, c):
    s = 0.0  # float64: Σy cancels against V·lse in the smoothing term
    for j in range(xs.size):
        s += np.float64(weight_at(ws, j)) * np.float64(cap(load(xs[j]), c))
    return s


@njit(**REDUCE)
def _block_sumexp_kept(xs, es, m):
    """Σ exp(y − m) over a block, each term also written to ``es`` (compute type), or over ``xs``
    itself when ``es`` is None (one pointer, so that LLVM vectorises; see ``_segment_grad``)."""
    dst = _dst(xs, es)
    s = m - m
    for j in range(xs.size):
        e = fexp(load(xs[j]) - m)
        dst[j] = e
        s += e
    return s


@njit(**REDUCE)
def _segment_stats(x, q, r, lo, hi, w, c, want_sy, kept, bm):
    """(max, sum-exp, Σwqy, Σwq, Σwy) of x[r, lo:hi], block by block (:func:`_add_block`).

    With ``kept`` (not None) each term exp(y − block max) is also written to ``kept[lo:hi]`` (a
    row indexed by column), or over the logits themselves when ``kept`` is the tag True (in
    place), and each block's maximum to ``bm`` (indexed by block), so that the gradient pass only
    scales them.
    """
    m = -np.inf
    s = 0.0
    sqy = 0.0
    sq = 0.0
    sy = 0.0
    for b in range(lo, hi, _BLOCK):
        m, s, sqy, sq, sy = _add_block(x, q, r, b, hi, w, c, want_sy, kept, bm, m, s, sqy, sq,
                                       sy)
    return m, s, sqy, sq, sy


@njit(inline="always", **REDUCE)
def _add_block(x, q, r, b, hi, w, c, want_sy, kept, bm, m, s, sqy, sq, sy):
    """The running statistics (m, s, Σwqy, Σwq, Σwy) of row r with the block x[r, b:b + BLOCK]
    (cut at ``hi``) added: its maximum, then its sums from L1."""
    e = min(b + _BLOCK, hi)
    xs = x[r, b:e]
    ws = sliced(w, b, e)
    # before the terms may overwrite the block (in place)
    a, bq = _q_sums(xs, row_sliced(q, r, b, e), ws, c)
    sqy += a
    sq += bq
    if want_sy:
        sy += _block_sum_wy(xs, ws, c)
    # tanh is increasing, so the capped block maximum is the cap of the raw maximum
    mb = cap(block_max(xs), c)
    if kept is not None:
        bm[b // _BLOCK] = mb
    if mb > -np.inf:
        if kept is None:
            sb = _block_sumexp(xs, mb, c)
        else:
            sb = _keep_terms(xs, kept, b, e, mb)
        m, s, _ = merge(m, s, 0.0, np.float64(mb), np.float64(sb), 0.0)
    else:
        nan = any_nan(xs)  # the maximum may have passed over a NaN among -inf
        if nan:
            s = np.nan
        if kept is not None:  # the terms of an all -inf block are 0 (NaN with a NaN)
            _fill_terms(xs, kept, b, e, np.nan if nan else 0.0)
    return m, s, sqy, sq, sy


def _keep_terms(xs, kept, lo, hi, mb):
    """``_block_sumexp_kept`` into ``kept[lo:hi]``, or over ``xs`` when ``kept`` is the tag for
    "in place"."""


@overload(_keep_terms, **OVERLOAD)
def _keep_terms_impl(xs, kept, lo, hi, mb):
    if isinstance(kept, types.Boolean):  # in place: the terms overwrite the logits
        return lambda xs, kept, lo, hi, mb: _block_sumexp_kept(xs, None, mb)
    return lambda xs, kept, lo, hi, mb: _block_sumexp_kept(xs, kept[lo:hi], mb)


def _fill_terms(xs, kept, lo, hi, value):
    """Set the kept terms of a block (or the block itself, in place) to ``value``."""


@overload(_fill_terms, **OVERLOAD)
def _fill_terms_impl(xs, kept, lo, hi, value):
    if isinstance(kept, types.Boolean):
        def fill_inplace(xs, kept, lo, hi, value):
            for j in range(xs.size):
                xs[j] = store(value, xs)
        return fill_inplace

    def fill(xs, kept, lo, hi, value):
        kept[lo:hi] = value
    return fill


def _dst(xs, gs):
    """Where a segment's gradient goes: ``gs``, or over ``xs`` itself when ``gs`` is None."""


@overload(_dst, **OVERLOAD)
def _dst_impl(xs, gs):
    if isinstance(gs, types.NoneType):
        return lambda xs, gs: xs
    return lambda xs, gs: gs


@njit(**REDUCE)
def _segment_grad(xs, gs, qs, ws, m, inv_s, a, c0, c1, c):
    """gs = (p·a − c1·w − c0·w·q)·dy/dx over a segment, with p = exp(y − m)·inv_s.

    In place (``gs`` None) the destination is the very value ``xs``: LLVM then sees one pointer
    and vectorises. Two arrays over the same memory would fail its runtime overlap check and run
    the scalar loop (measured: 391 ms instead of 110 ms at N=2048, V=131072).
    """
    dst = _dst(xs, gs)
    for j in range(xs.size):
        y, slope = cap_and_slope(load(xs[j]), c)
        wj = weight_at(ws, j)
        gj = fexp(y - m) * inv_s * a - wj * (c1 + c0 * _q_at(qs, j))
        dst[j] = store(gj * slope, dst)


@njit(**REDUCE)
def _segment_scale(ds, es, qs, ws, scale, c0, c1):
    """ds = e·scale − c1·w − c0·w·q from kept terms e = exp(y − block max): ``es``, or ``ds``
    itself when ``es`` is None (the terms were kept in the destination)."""
    src = _dst(ds, es)
    for j in range(ds.size):
        wj = weight_at(ws, j)
        ds[j] = store(load(src[j]) * scale - wj * (c1 + c0 * _q_at(qs, j)), ds)


@njit(**REDUCE)
def _zero(gs):
    for j in range(gs.size):
        gs[j] = store(0.0, gs)


# --- rows and chunks -----------------------------------------------------------------------------


@njit(inline="always", **REDUCE)
def _put_row(st, r, stats, x, xt, wt, c):
    """Row r's statistics ``(m, s, Σwqy, Σwq, Σwy)`` into ``st``, the one-hot target's terms
    ``w_t·y_t`` and ``w_t`` added to its sums."""
    m, s, sqy, sq, sy = stats
    st[r, 0] = m
    st[r, 1] = s
    st[r, 2] = sqy + wt * np.float64(cap(as_compute(xt, x), c))
    st[r, 3] = sq + wt
    st[r, 4] = sy


@njit(inline="always", **REDUCE)
def _put_ignored(st, r):
    """An ignored row's statistics: zeros, and lse 0 (s = 1), like the reference."""
    st[r, :] = 0.0
    st[r, 1] = 1.0


@njit(inline="always", **REDUCE)
def _grad_factors(x, r, st, coef, w_sum):
    """What the gradient of row r is computed from, once its statistics are finished: float64
    (m, s, a) and, in the compute type, (m, 1/s, a, c0, c1), with ``a`` the softmax factor of
    ``formulas.softmax_factor``."""
    m64 = st[r, 0]
    s = st[r, 1]
    lse = m64 + math.log(s)
    c0 = coef[r, 0]
    c1 = coef[r, 1]
    a64 = softmax_factor(c0, c1, coef[r, 2], st[r, 3], w_sum, lse)
    # exp(y - lse) as exp(y - m) / s: m is a logit value, so y - m loses nothing for large logits
    return (m64, s, a64, as_compute(m64, x), as_compute(1.0 / s, x), as_compute(a64, x),
            as_compute(c0, x), as_compute(c1, x))


@njit(inline="always", **REDUCE)
def _scale_block(x, q, g, r, b, hi, w, kept, bm, m64, s, a64, c0, c1):
    """The gradient of row r over the block at column ``b`` (cut at ``hi``) from its kept terms:
    each scaled by exp(block max − m)·a/s (``c0``, ``c1`` in the compute type)."""
    e = min(b + _BLOCK, hi)
    scale = as_compute(math.exp(bm[b // _BLOCK] - m64) * a64 / s, x)
    _scale_terms(g[r, b:e], kept, b, e, row_sliced(q, r, b, e), sliced(w, b, e), scale, c0, c1)


@njit(inline="always", **REDUCE)
def _one_hot(x, t, g, r, lo, hi, c, coef, xt, wt, m, inv_s, a):
    """The gradient of row r at its integer target (when the target is in [lo, hi)), written
    once over what the row's pass wrote there, so that half precision rounds it once."""
    if t is not None:
        j = t[r]
        if lo <= j < hi:
            y, slope = cap_and_slope(as_compute(xt, x), c)
            gj = fexp(y - m) * inv_s * a - as_compute(wt * (coef[r, 0] + coef[r, 1]), x)
            g[r, j] = store(gj * slope, g)


@njit(**REDUCE)
def _row_grad(x, t, q, g, inplace, r, lo, hi, w, c, st, coef, w_sum, xt, wt, kept, bm):
    """Write the gradient of row r over [lo, hi) from its finished statistics: from the terms
    kept by the statistics pass when ``kept`` is given (scaled block by block), else recomputed
    from the logits (soft-cap). ``inplace`` is True (``g`` is ``x``) or None."""
    m64, s, a64, m, inv_s, a, c0c, c1c = _grad_factors(x, r, st, coef, w_sum)
    if kept is None:
        qs = row_sliced(q, r, lo, hi)
        ws = sliced(w, lo, hi)
        if inplace is not None:
            _segment_grad(x[r, lo:hi], None, qs, ws, m, inv_s, a, c0c, c1c, c)
        else:
            _segment_grad(x[r, lo:hi], g[r, lo:hi], qs, ws, m, inv_s, a, c0c, c1c, c)
    else:
        for b in range(lo, hi, _BLOCK):
            _scale_block(x, q, g, r, b, hi, w, kept, bm, m64, s, a64, c0c, c1c)
    _one_hot(x, t, g, r, lo, hi, c, coef, xt, wt, m, inv_s, a)


def _scale_terms(gs, kept, lo, hi, qs, ws, scale, c0, c1):
    """``_segment_scale`` of a block whose terms are in ``kept[lo:hi]``, or in ``gs`` itself when
    ``kept`` is the tag for "kept in the destination"."""


@overload(_scale_terms, **OVERLOAD)
def _scale_terms_impl(gs, kept, lo, hi, qs, ws, scale, c0, c1):
    if isinstance(kept, types.Boolean):
        return lambda gs, kept, lo, hi, qs, ws, scale, c0, c1: _segment_scale(
            gs, None, qs, ws, scale, c0, c1)
    return lambda gs, kept, lo, hi, qs, ws, scale, c0, c1: _segment_scale(
        gs, kept[lo:hi], qs, ws, scale, c0, c1)


def _kept_row(keep, scratch, i):
    """Where the statistics pass keeps its terms for the gradient: nowhere (None: forward only, or
    a soft-cap, whose gradient recomputes them), in the destination (the tag True: the gradient's
    dtype is the compute type, so the terms go where the gradient will be), or row ``i`` of a
    float32 scratch (half-precision gradients, which must be rounded once)."""


@overload(_kept_row, **OVERLOAD)
def _kept_row_impl(keep, scratch, i):
    if isinstance(keep, types.NoneType):
        return lambda keep, scratch, i: None
    if isinstance(scratch, types.NoneType):
        return lambda keep, scratch, i: True
    return lambda keep, scratch, i: scratch[i]


def _stats(x, q, r, lo, hi, w, c, want_sy, g, inplace, kept, bm):
    """``_segment_stats`` of x[r, lo:hi] with the terms kept as ``kept`` says (``bm``: row r of
    the block maxima, or None)."""


@overload(_stats, **OVERLOAD)
def _stats_impl(x, q, r, lo, hi, w, c, want_sy, g, inplace, kept, bm):
    if isinstance(kept, types.NoneType):
        def forward(x, q, r, lo, hi, w, c, want_sy, g, inplace, kept, bm):
            return _segment_stats(x, q, r, lo, hi, w, c, want_sy, None, None)
        return forward
    if isinstance(kept, types.Boolean) and isinstance(inplace, types.NoneType):
        def in_destination(x, q, r, lo, hi, w, c, want_sy, g, inplace, kept, bm):
            return _segment_stats(x, q, r, lo, hi, w, c, want_sy, g[r], bm)
        return in_destination
    if isinstance(kept, types.Boolean):
        def over_logits(x, q, r, lo, hi, w, c, want_sy, g, inplace, kept, bm):
            # the tag True, so that the terms overwrite the logits through one pointer
            return _segment_stats(x, q, r, lo, hi, w, c, want_sy, True, bm)
        return over_logits

    def in_scratch(x, q, r, lo, hi, w, c, want_sy, g, inplace, kept, bm):
        return _segment_stats(x, q, r, lo, hi, w, c, want_sy, kept, bm)
    return in_scratch


@njit(**PARALLEL)
def _row_tasks(x, t, q, w, c, want_sy, coef, w_sum, g, inplace, st, keep, scratch, bm):
    """One task per row: statistics, then (when ``g`` is given) the gradient from L2."""
    n, v = x.shape
    for r in prange(n):
        if _ignored(t, r):
            _put_ignored(st, r)
            if g is not None:
                _zero(g[r])
            continue
        xt, wt = _target_terms(x, t, r, w, c)  # read before the terms may overwrite the row
        kept = _kept_row(keep, scratch, get_thread_id())
        bmr = _bm_row(bm, r)
        _put_row(st, r, _stats(x, q, r, 0, v, w, c, want_sy, g, inplace, kept, bmr), x, xt, wt,
                 c)
        if g is not None:
            _row_grad(x, t, q, g, inplace, r, 0, v, w, c, st, coef, w_sum, xt, wt, kept, bmr)


def _bm_row(bm, r):
    """Row r of the block maxima, or None when the terms are not kept."""


@overload(_bm_row, **OVERLOAD)
def _bm_row_impl(bm, r):
    if isinstance(bm, types.NoneType):
        return lambda bm, r: None
    return lambda bm, r: bm[r]


@njit(**PARALLEL)
def _row_pipeline(x, t, q, w, want_sy, coef, w_sum, g, st, scratch, bm, ntask):
    """The fused call in half precision, ``ntask`` runs of consecutive rows spread over threads.

    Each thread keeps two float32 scratch rows of terms. Block by block, the statistics of row r
    (its terms kept in one scratch row) alternate with the gradient of row r − 1 (scaled from the
    other), so that the gradient's stores to memory run while the exponentials are computed,
    instead of in a pass of their own (docs/performance-notes.md, "Half precision fused: the
    gradient's stores beside the next row's exponentials")."""
    n, v = x.shape
    for k in prange(ntask):
        first = k * n // ntask
        end = (k + 1) * n // ntask
        tid = get_thread_id()
        # the previous row's gradient factors and target terms, carried to the next iteration
        p_m64 = p_s = p_a64 = 0.0
        p_m = p_inv_s = p_a = p_c0 = p_c1 = as_compute(0.0, x)
        p_xt = p_wt = 0.0
        for r in range(first, end + 1):
            fresh = r < end and not _ignored(t, r)
            back = r > first and not _ignored(t, r - 1)
            kept = scratch[2 * tid + (r & 1)]
            old = scratch[2 * tid + ((r + 1) & 1)]
            xt = wt = 0.0
            if fresh:
                xt, wt = _target_terms(x, t, r, w, None)  # read before the terms may overwrite
            m = -np.inf
            s = sqy = sq = sy = 0.0
            for b in range(0, v, _BLOCK):
                if fresh:
                    m, s, sqy, sq, sy = _add_block(x, q, r, b, v, w, None, want_sy, kept, bm[r],
                                                   m, s, sqy, sq, sy)
                if back:
                    _scale_block(x, q, g, r - 1, b, v, w, old, bm[r - 1], p_m64, p_s, p_a64,
                                 p_c0, p_c1)
            if back:
                _one_hot(x, t, g, r - 1, 0, v, None, coef, p_xt, p_wt, p_m, p_inv_s, p_a)
            if r == end:
                continue
            if fresh:
                _put_row(st, r, (m, s, sqy, sq, sy), x, xt, wt, None)
                p_m64, p_s, p_a64, p_m, p_inv_s, p_a, p_c0, p_c1 = _grad_factors(x, r, st, coef,
                                                                                 w_sum)
                p_xt = xt
                p_wt = wt
            else:
                _put_ignored(st, r)
                _zero(g[r])


@njit(**PARALLEL)
def _chunks(x, t, q, w, c, want_sy, coef, w_sum, g, inplace, st, keep, scratch, bm, nchunk,
            size):
    """Rows cut into ``nchunk`` chunks of ``size`` columns: partials, merge, then the gradient."""
    n, v = x.shape
    part = np.empty((n * nchunk, 5))
    target = np.zeros((n, 2))
    for r in range(n):  # before the terms may overwrite the rows
        if not _ignored(t, r):
            xt, wt = _target_terms(x, t, r, w, c)
            target[r, 0] = xt
            target[r, 1] = wt
    for k in prange(n * nchunk):
        r = k // nchunk
        lo = (k % nchunk) * size
        hi = min(lo + size, v)
        if lo >= hi or _ignored(t, r):
            part[k, 0] = -np.inf
            part[k, 1:] = 0.0
            continue
        kept = _kept_row(keep, scratch, r)
        m, s, sqy, sq, sy = _stats(x, q, r, lo, hi, w, c, want_sy, g, inplace, kept,
                                   _bm_row(bm, r))
        part[k, 0] = m
        part[k, 1] = s
        part[k, 2] = sqy
        part[k, 3] = sq
        part[k, 4] = sy
    for r in range(n):
        if _ignored(t, r):
            _put_ignored(st, r)
            continue
        m = -np.inf
        s = sqy = sq = sy = 0.0
        for k in range(r * nchunk, (r + 1) * nchunk):
            m, s, _ = merge(m, s, 0.0, part[k, 0], part[k, 1], 0.0)
            sqy += part[k, 2]
            sq += part[k, 3]
            sy += part[k, 4]
        _put_row(st, r, (m, s, sqy, sq, sy), x, target[r, 0], target[r, 1], c)
    if g is not None:
        for k in prange(n * nchunk):
            r = k // nchunk
            lo = (k % nchunk) * size
            hi = min(lo + size, v)
            if _ignored(t, r):
                _zero(g[r, lo:hi])
            elif lo < hi:
                kept = _kept_row(keep, scratch, r)
                _row_grad(x, t, q, g, inplace, r, lo, hi, w, c, st, coef, w_sum, target[r, 0],
                          target[r, 1], kept, _bm_row(bm, r))


def _run(x, targets, weight, softcap, want_sy, coef, grad):
    n, v = x.shape
    st = np.zeros((n, 5))
    t = q = None
    if targets is not None:
        if targets.ndim == 1:
            t = targets
        else:
            q = targets
    w = None if weight is None else np.ascontiguousarray(weight, dtype=_compute_dtype(x))
    w_sum = float(v) if weight is None else float(np.sum(weight, dtype=np.float64))
    c = None if softcap is None else float(softcap)
    nchunk, size = plan(n, v)
    # True or None, not a bool: ``is not None`` is decided when the kernel is compiled, so the
    # branches that write over ``x`` are not compiled for an out-of-place call (read-only logits)
    inplace = True if grad is not None and _same_memory(grad, x) else None
    keep = scratch = bm = None
    pipeline = False
    if grad is not None and c is None:
        # the statistics pass keeps exp(y - block max) for the gradient pass, which then only
        # scales them: one exp per element instead of two (a soft-cap's slope needs y, so a capped
        # gradient recomputes instead)
        keep = True
        bm = np.empty((n, -(-v // _BLOCK)))
        if x.dtype.itemsize == 2:  # half-precision gradient: keep float32 terms beside it
            # one row per row cut into chunks; on the row path one per thread, or two for the
            # pipeline: never more bytes than the gradient (docs/design.md#memory)
            threads = get_num_threads()
            pipeline = nchunk == 1 and n >= 4 * threads
            scratch_rows = n if nchunk > 1 else threads * (2 if pipeline else 1)
            scratch = np.empty((scratch_rows, v), np.float32)
    with parallel_guard() as parallel:
        if pipeline:
            kernel = _row_pipeline if parallel else serial(_row_pipeline)
            ntask = min(n, config.TASKS_PER_THREAD * threads)
            kernel(x, t, q, w, want_sy, coef, w_sum, grad, st, scratch, bm, ntask)
        elif nchunk == 1:
            kernel = _row_tasks if parallel else serial(_row_tasks)
            kernel(x, t, q, w, c, want_sy, coef, w_sum, grad, inplace, st, keep, scratch, bm)
        else:
            kernel = _chunks if parallel else serial(_chunks)
            kernel(x, t, q, w, c, want_sy, coef, w_sum, grad, inplace, st, keep, scratch, bm,
                   nchunk, size)
    return st


def _same_memory(a, b):
    """True when ``a`` and ``b`` are the same elements (the in-place gradient)."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.strides == b.strides and a.dtype == b.dtype)


def _compute_dtype(x):
    return np.float64 if x.dtype == np.float64 else np.float32


@njit(cache=True, error_model="numpy")
def _public_stats(st):
    """Kernel statistics [m, s, Σwqy, Σwq, Σwy] → the interface's [lse, Σwqy, Σwq, Σwy]."""
    out = np.empty((st.shape[0], 4))
    for r in range(st.shape[0]):
        m = st[r, 0]
        out[r, 0] = m if m == np.inf else m + np.log(st[r, 1])
        out[r, 1], out[r, 2], out[r, 3] = st[r, 2], st[r, 3], st[r, 4]
    return out


@njit(**PARALLEL)
def _class_grad_rows(x, t, w, c, st, coef, w_sum, xt, wt):
    n, v = x.shape
    for r in prange(n):
        _row_grad(x, t, None, x, True, r, 0, v, w, c, st, coef, w_sum, xt[r], wt[r], None, None)
