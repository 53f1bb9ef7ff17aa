"""The CUDA kernels and their device functions (importable without a GPU: the PTX tests compile
them with ``numba.cuda.compile_ptx``). How they are launched is ``plan``'s business; what
they compute is described in ``fastxent/kernels/cuda/__init__.py``.
"""

import math

import numpy as np

from .compat import numpy_compat

numpy_compat()  # before numba.cuda compiles anything

import numba_cuda  # noqa: E402, F401  (the maintained CUDA target, not numba's deprecated one)
from numba import config as _numba_config  # noqa: E402  (after the compatibility shim)
from numba import cuda  # noqa: E402

from ...core.codes import INDEX, MEAN, PROBS  # noqa: E402
from ...core.formulas import (cap, capped, coefficients, merge, row_loss,  # noqa: E402
                              softmax_factor, z_term)
from .groups import group_merge  # noqa: E402
from .groups import merge as merge_partials  # noqa: E402
from .lanes import compute as as_compute  # noqa: E402
from .lanes import decode as load  # noqa: E402
from .lanes import empty_word  # noqa: E402
from .lanes import encode as store  # noqa: E402
from .lanes import get, lanes, lowest, put

SIMULATED = bool(_numba_config.ENABLE_CUDASIM)

# Device functions are inlined into the kernels (the simulator runs them as Python).
_DEVICE = dict(device=True) if SIMULATED else dict(device=True, forceinline=True)


REDUCE_SLOTS = 1024  # shared slots of the one-block reductions (launched with up to this many)


# --- per element ---------------------------------------------------------------------------------


@cuda.jit(**_DEVICE)
def _log(s):
    # CUDA's log(0) is -inf; Python's (the simulator) raises
    return -math.inf if s == 0 else math.log(s)


@cuda.jit(**_DEVICE)
def _capped(y, capc):
    """The soft-capped logit (``capc`` 0: no cap)."""
    return y if capc <= 0 else cap(y, capc)


@cuda.jit(**_DEVICE)
def _visit(y, col, base, m, s, a, b, c, capc, one, pe, kind, w, weighted, want_sy, like):
    """Adds element ``col`` (value ``y``) of a row to a thread's partial statistics: the
    part ``(y, 1)`` merged into ``(m, s)``."""
    y = _capped(y, capc)
    m, s, _ = merge(m, s, one - one, y, one, one - one)
    if kind == PROBS or want_sy:
        wj = as_compute(w[col], like) if weighted else one
        if kind == PROBS:
            wq = np.float64(wj) * np.float64(as_compute(load(pe[base + col]), like))
            a += wq * np.float64(y)
            b += wq
        if want_sy:
            c += np.float64(wj) * np.float64(y)
    return m, s, a, b, c


@cuda.jit(**_DEVICE)
def _word_stats(word, col, base, m, s, a, b, c, capc, one, pe, kind, w, weighted, want_sy, like):
    for j in range(lanes(like)):
        m, s, a, b, c = _visit(get(word, j, like), col + j, base, m, s, a, b, c, capc, one, pe,
                               kind, w, weighted, want_sy, like)
    return m, s, a, b, c


@cuda.jit(**_DEVICE)
def _gradient(y, col, base, t, m, scl, c0, c1, zero_row, capc, one, pe, kind, w, weighted, like):
    """The gradient at element ``col`` of a row, in the compute type."""
    if zero_row:  # ignored rows get zeros, whatever their logits hold
        return one - one
    slope = one
    if capc > 0:
        y, slope = capped(y, capc, one)
    g = math.exp(y - m) * scl
    if kind == PROBS or c1 != 0 or col == t:
        wj = as_compute(w[col], like) if weighted else one
        if kind == PROBS:
            q = as_compute(load(pe[base + col]), like)
        else:
            q = one if col == t else one - one
        g -= (c0 * q + c1) * wj
    return g * slope


# --- per row -------------------------------------------------------------------------------------


@cuda.jit(**_DEVICE)
def _span(k0, start, end, nwords, ne):
    """Words ``[lo, hi)`` wholly inside elements ``[start, end)``, and the elements before and
    after them (read one by one)."""
    lo = (start - k0 + ne - 1) // ne
    hi = min((end - k0) // ne, nwords)
    if hi <= lo:
        return lo, lo, end, end
    return lo, hi, k0 + lo * ne, k0 + hi * ne


@cuda.jit(**_DEVICE)
def _row_stats(xe, xw, k0, base, start, end, tid, g, m, s, a, b, c, capc, one, pe, kind, w,
               weighted, want_sy):
    """A thread's partial statistics of elements ``[start, end)`` of the row starting at
    ``base``; the ``g`` threads of its group share them out."""
    ne = lanes(xe)
    lo, hi, head_end, tail_start = _span(k0, start, end, xw.size, ne)
    for e in range(start + tid, head_end, g):
        m, s, a, b, c = _visit(load(xe[e]), e - base, base, m, s, a, b, c, capc, one, pe, kind,
                               w, weighted, want_sy, xe)
    for e in range(tail_start + tid, end, g):
        m, s, a, b, c = _visit(load(xe[e]), e - base, base, m, s, a, b, c, capc, one, pe, kind,
                               w, weighted, want_sy, xe)
    k = lo + tid
    col0 = k0 - base
    while k + 3 * g < hi:  # four independent 8-byte loads in flight
        w0 = xw[k]
        w1 = xw[k + g]
        w2 = xw[k + 2 * g]
        w3 = xw[k + 3 * g]
        m, s, a, b, c = _word_stats(w0, col0 + k * ne, base, m, s, a, b, c, capc, one, pe, kind,
                                    w, weighted, want_sy, xe)
        m, s, a, b, c = _word_stats(w1, col0 + (k + g) * ne, base, m, s, a, b, c, capc, one, pe,
                                    kind, w, weighted, want_sy, xe)
        m, s, a, b, c = _word_stats(w2, col0 + (k + 2 * g) * ne, base, m, s, a, b, c, capc, one,
                                    pe, kind, w, weighted, want_sy, xe)
        m, s, a, b, c = _word_stats(w3, col0 + (k + 3 * g) * ne, base, m, s, a, b, c, capc, one,
                                    pe, kind, w, weighted, want_sy, xe)
        k += 4 * g
    while k < hi:
        m, s, a, b, c = _word_stats(xw[k], col0 + k * ne, base, m, s, a, b, c, capc, one, pe,
                                    kind, w, weighted, want_sy, xe)
        k += g
    return m, s, a, b, c


@cuda.jit(**_DEVICE)
def _word_gradient(word, col, base, t, m, scl, c0, c1, zero_row, capc, one, pe, kind, w, weighted,
                   ge):
    out = empty_word(ge)
    for j in range(lanes(ge)):
        out = put(out, j, _gradient(get(word, j, ge), col + j, base, t, m, scl, c0, c1, zero_row,
                                    capc, one, pe, kind, w, weighted, ge), ge)
    return out


@cuda.jit(**_DEVICE)
def _row_gradient(xe, xw, k0, base, start, end, tid, g, t, m, scl, c0, c1, zero_row, capc, one, pe,
                  kind, w, weighted, ge, gw):
    """The gradient of elements ``[start, end)`` of the row starting at ``base``."""
    ne = lanes(xe)
    lo, hi, head_end, tail_start = _span(k0, start, end, xw.size, ne)
    for e in range(start + tid, head_end, g):
        ge[e] = store(_gradient(load(xe[e]), e - base, base, t, m, scl, c0, c1, zero_row, capc, one,
                                pe, kind, w, weighted, xe), ge)
    for e in range(tail_start + tid, end, g):
        ge[e] = store(_gradient(load(xe[e]), e - base, base, t, m, scl, c0, c1, zero_row, capc, one,
                                pe, kind, w, weighted, xe), ge)
    k = lo + tid
    col0 = k0 - base
    while k + 3 * g < hi:
        w0 = xw[k]
        w1 = xw[k + g]
        w2 = xw[k + 2 * g]
        w3 = xw[k + 3 * g]
        gw[k] = _word_gradient(w0, col0 + k * ne, base, t, m, scl, c0, c1, zero_row, capc, one, pe,
                               kind, w, weighted, ge)
        gw[k + g] = _word_gradient(w1, col0 + (k + g) * ne, base, t, m, scl, c0, c1, zero_row, capc,
                                   one, pe, kind, w, weighted, ge)
        gw[k + 2 * g] = _word_gradient(w2, col0 + (k + 2 * g) * ne, base, t, m, scl, c0, c1,
                                       zero_row, capc, one, pe, kind, w, weighted, ge)
        gw[k + 3 * g] = _word_gradient(w3, col0 + (k + 3 * g) * ne, base, t, m, scl, c0, c1,
                                       zero_row, capc, one, pe, kind, w, weighted, ge)
        k += 4 * g
    while k < hi:
        gw[k] = _word_gradient(xw[k], col0 + k * ne, base, t, m, scl, c0, c1, zero_row, capc, one,
                               pe, kind, w, weighted, ge)
        k += g


@cuda.jit(**_DEVICE)
def _target(targets, row, kind, ignore, v):
    """The row's class index, or -1 when it is ignored, out of range or there is none; and
    whether the row counts (an index row that is not ignored, or any other row)."""
    if kind != INDEX:
        return -1, True
    t = targets[row]
    if t == ignore or t < 0 or t >= v:
        return -1, False
    return t, True


@cuda.jit(**_DEVICE)
def _coefficients(row, counted, red, go, go_rows, per_row_go, totals, eps, z, v, swq, lse, s):
    """(c0, c1, A/s) of a row's gradient formula, from ``grad_output`` and the call's totals."""
    if not counted:
        return 0.0, 0.0, 0.0
    up = go
    if per_row_go:  # on the device: one value per row, or one for all
        up = go_rows[row if go_rows.size > 1 else 0]
    sc = up
    sz = up
    if red == MEAN:
        sc = _div(up, totals[1])
        sz = _div(up, totals[0])
    c0, c1, c2 = coefficients(sc, sz, eps, z, v)
    return c0, c1, _div(softmax_factor(c0, c1, c2, swq, totals[2], lse), s)


@cuda.jit(**_DEVICE)
def _div(a, b):
    """a / b with IEEE results for b == 0 (Python's division, in the simulator, raises)."""
    if b != 0:
        return a / b
    if a == 0 or a != a:
        return math.nan
    return math.inf if a > 0 else -math.inf


@cuda.jit(**_DEVICE)
def _block_reduce(value, take_min):
    """The sum (with ``take_min``, the minimum) of a float64 over the threads of a one-block
    kernel, as a tree in a fixed order; every thread gets it. All threads must call it."""
    slots = cuda.shared.array(REDUCE_SLOTS, np.float64)
    t = cuda.threadIdx.x
    slots[t] = value
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if t < half:
            other = slots[t + half]
            slots[t] = min(slots[t], other) if take_min else slots[t] + other
        cuda.syncthreads()
        half //= 2
    total = slots[0]
    cuda.syncthreads()  # the slots are free again for the next call
    return total


# --- kernels -------------------------------------------------------------------------------------


@cuda.jit
def targets_kernel(targets, ignore, v, n, kind, w, weighted, totals, bad):
    """One block: ``totals`` = [counted rows, their summed weights, Σ of all class weights] and
    ``bad[0]`` = the first row with an out-of-range class index, or -1."""
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    cnt = np.float64(0.0)
    wsum = np.float64(0.0)
    wall = np.float64(0.0)
    first = n
    if weighted:
        for j in range(t, v, nt):
            wall += np.float64(w[j])
    elif t == 0:
        wall = np.float64(v)
    if kind == INDEX:
        for r in range(t, n, nt):
            c = targets[r]
            if c != ignore:
                if c >= 0 and c < v:
                    cnt += 1.0
                    wsum += np.float64(w[c]) if weighted else 1.0
                elif r < first:
                    first = r
    elif t == 0:
        cnt = np.float64(n)
        wsum = np.float64(n)
    cnt = _block_reduce(cnt, False)
    wsum = _block_reduce(wsum, False)
    wall = _block_reduce(wall, False)
    first = _block_reduce(np.float64(first), True)
    if t == 0:
        totals[0] = cnt
        totals[1] = wsum
        totals[2] = wall
        bad[0] = np.int64(first) if first < n else -1


@cuda.jit(**_DEVICE)
def _finish_row(row, counted, lse, swqy, swq, swy, eps, z, v, wsum, stats, losses, write_loss,
                targets, kind, ignore):
    """Writes a row's statistics (zeros for a row that does not count) and its loss: NaN for a
    class index out of range (the call's error is raised later, docs/cuda.md)."""
    for k in range(4):
        stats[row, k] = 0.0
    if counted:
        stats[row, 0] = lse
        stats[row, 1] = swqy
        stats[row, 2] = swq
        stats[row, 3] = swy
    if write_loss:
        loss = 0.0
        if counted:
            ce, zt = row_loss(lse, swqy, swq, swy, eps, z, v, wsum)
            loss = ce + zt
        elif kind == INDEX and targets[row] != ignore:
            loss = math.nan
        losses[row] = loss


@cuda.jit(**_DEVICE)
def _target_terms(xe, w, weighted, t, base, capc, read_logit):
    """The target's weight and (soft-capped) logit in float64: added to the merged sums, so that a
    row of one class cancels exactly. The logit is read only where ``read_logit``."""
    if t < 0:
        return 0.0, 0.0
    tw = np.float64(w[t]) if weighted else 1.0
    ty = np.float64(_capped(load(xe[base + t]), capc)) if read_logit else 0.0
    return tw, ty


@cuda.jit
def rows_kernel(xe, xw, k0, n, v, g, kind, targets, ignore, pe, w, weighted, cap, want_sy, eps, z,
                red, go, go_rows, per_row_go, totals, bad, stats, losses, write_loss, ge, gw,
                write_grad):
    """Groups of ``g`` threads loop over rows: statistics, loss, then (``write_grad``) gradient."""
    tid = cuda.threadIdx.x % g
    per_block = cuda.blockDim.x // g
    group = cuda.blockIdx.x * per_block + cuda.threadIdx.x // g
    n_groups = cuda.gridDim.x * per_block
    one = as_compute(1.0, xe)
    capc = as_compute(cap, xe)
    allowed = bad[0] < 0
    for it in range((n + n_groups - 1) // n_groups):  # the same count in every group
        r = group + it * n_groups
        active = r < n
        row = r if active else 0
        base = row * v
        t, counted = _target(targets, row, kind, ignore, v)
        counted = counted and active
        m = lowest(xe)
        s = one - one
        a = 0.0  # the plain sums are float64
        b = 0.0
        c = 0.0
        tw = 0.0
        ty = 0.0
        if counted:
            # thread 0 reads the target's logit before any thread of the group writes the gradient
            tw, ty = _target_terms(xe, w, weighted, t, base, capc, tid == 0)
            m, s, a, b, c = _row_stats(xe, xw, k0, base, base, base + v, tid, g, m, s, a, b, c,
                                       capc, one, pe, kind, w, weighted, want_sy)
        # new names: merged partials may be float64, the loops above keep the compute type
        mm, ms, ma, mb, mc = group_merge(m, s, a, b, c, g)
        lse = np.float64(mm) + _log(np.float64(ms))
        swq = np.float64(mb) + tw
        if active and tid == 0:
            _finish_row(row, counted, lse, np.float64(ma) + tw * ty, swq, np.float64(mc), eps, z,
                        v, totals[2], stats, losses, write_loss, targets, kind, ignore)
        if write_grad and active and allowed:
            c0, c1, scl = _coefficients(row, counted, red, go, go_rows, per_row_go, totals, eps, z,
                                        v, swq, lse, np.float64(ms))
            _row_gradient(xe, xw, k0, base, base, base + v, tid, g, t, as_compute(mm, xe),
                          as_compute(scl, xe), as_compute(c0, xe), as_compute(c1, xe), not counted,
                          capc, one, pe, kind, w, weighted, ge, gw)


# Few rows with many classes: each row is cut into ``splits`` segments of ``seg`` columns, one
# block each, so that the whole GPU works on them. The segments' partial statistics are merged by
# ``merge_kernel``, then ``split_gradient_kernel`` writes each segment's gradient.


@cuda.jit
def partials_kernel(xe, xw, k0, v, splits, seg, kind, targets, ignore, pe, w, weighted, cap,
                    want_sy, parts):
    """Block ``row * splits + part``: the statistics of one segment into ``parts[row, part]``."""
    row = cuda.blockIdx.x // splits
    part = cuda.blockIdx.x % splits
    tid = cuda.threadIdx.x
    g = cuda.blockDim.x
    one = as_compute(1.0, xe)
    capc = as_compute(cap, xe)
    base = row * v
    start = base + part * seg
    end = min(base + v, start + seg)
    t, counted = _target(targets, row, kind, ignore, v)
    m = lowest(xe)
    s = one - one
    a = 0.0
    b = 0.0
    c = 0.0
    if counted:
        m, s, a, b, c = _row_stats(xe, xw, k0, base, start, end, tid, g, m, s, a, b, c, capc, one,
                                   pe, kind, w, weighted, want_sy)
    mm, ms, ma, mb, mc = group_merge(m, s, a, b, c, g)
    if tid == 0:
        parts[row, part, 0] = mm
        parts[row, part, 1] = ms
        parts[row, part, 2] = ma
        parts[row, part, 3] = mb
        parts[row, part, 4] = mc


@cuda.jit
def merge_kernel(xe, n, v, splits, kind, targets, ignore, w, weighted, cap, eps, z, totals, parts,
                 rowms, stats, losses, write_loss):
    """A thread per row: merges the row's segments in order; statistics, (m, s) and loss."""
    row = cuda.grid(1)
    if row >= n:
        return
    t, counted = _target(targets, row, kind, ignore, v)
    m = parts[row, 0, 0]
    s = parts[row, 0, 1]
    a = parts[row, 0, 2]
    b = parts[row, 0, 3]
    c = parts[row, 0, 4]
    for k in range(1, splits):
        m, s, a, b, c = merge_partials(m, s, a, b, c, parts[row, k, 0], parts[row, k, 1],
                                       parts[row, k, 2], parts[row, k, 3], parts[row, k, 4])
    tw, ty = _target_terms(xe, w, weighted, t, row * v, as_compute(cap, xe), counted)
    rowms[row, 0] = m
    rowms[row, 1] = s
    _finish_row(row, counted, m + _log(s), a + tw * ty, b + tw, c, eps, z, v, totals[2], stats,
                losses, write_loss, targets, kind, ignore)


@cuda.jit
def split_gradient_kernel(xe, xw, k0, v, splits, seg, kind, targets, ignore, pe, w, weighted, cap,
                          eps, z, red, go, go_rows, per_row_go, totals, bad, stats, rowms, ge, gw):
    """Block ``row * splits + part``: the gradient of one segment."""
    if bad[0] >= 0:
        return
    row = cuda.blockIdx.x // splits
    part = cuda.blockIdx.x % splits
    base = row * v
    start = base + part * seg
    end = min(base + v, start + seg)
    t, counted = _target(targets, row, kind, ignore, v)
    c0, c1, scl = _coefficients(row, counted, red, go, go_rows, per_row_go, totals, eps, z, v,
                                stats[row, 2], stats[row, 0], rowms[row, 1])
    one = as_compute(1.0, xe)
    _row_gradient(xe, xw, k0, base, start, end, cuda.threadIdx.x, cuda.blockDim.x, t,
                  as_compute(rowms[row, 0], xe), as_compute(scl, xe), as_compute(c0, xe),
                  as_compute(c1, xe), not counted, as_compute(cap, xe), one, pe, kind, w, weighted,
                  ge, gw)


@cuda.jit
def reduce_kernel(stats, n, v, eps, z, red, totals, bad, out):
    """One block: the mean or the sum of the row losses into ``out[0]``, in a fixed order (NaN
    when a class index is out of range)."""
    t = cuda.threadIdx.x
    wsum = totals[2]
    nt = cuda.blockDim.x
    ce_sum = np.float64(0.0)
    zt_sum = np.float64(0.0)
    for r in range(t, n, nt):
        ce, zt = row_loss(stats[r, 0], stats[r, 1], stats[r, 2], stats[r, 3], eps, z, v, wsum)
        ce_sum += ce
        zt_sum += zt
    ce_sum = _block_reduce(ce_sum, False)
    zt_sum = _block_reduce(zt_sum, False)
    if t == 0:
        if red == MEAN:
            out[0] = _div(ce_sum, totals[1]) + _div(zt_sum, totals[0])
        else:
            out[0] = ce_sum + zt_sum
        if bad[0] >= 0:
            out[0] = math.nan


@cuda.jit
def lse_kernel(stats, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = stats[i, 0]


@cuda.jit
def z_rows_kernel(stats, z, out):
    """Each row's z-loss term (``formulas.z_term``; 0 for a row that does not count: its lse is
    0)."""
    i = cuda.grid(1)
    if i < out.size:
        out[i] = z_term(stats[i, 0], z)


@cuda.jit
def z_reduce_kernel(stats, n, z, red, totals, bad, out):
    """One block: the z-loss term of the call, reduced as the loss (over the counted rows for
    a mean), into ``out[0]``, in a fixed order."""
    t = cuda.threadIdx.x
    zt_sum = np.float64(0.0)
    for r in range(t, n, cuda.blockDim.x):
        zt_sum += z_term(stats[r, 0], z)
    zt_sum = _block_reduce(zt_sum, False)
    if t == 0:
        out[0] = _div(zt_sum, totals[0]) if red == MEAN else zt_sum
        if bad[0] >= 0:
            out[0] = math.nan


#: Every kernel, by name (the PTX tests compile each of them).
KERNELS = {"targets_kernel": targets_kernel, "rows_kernel": rows_kernel,
           "partials_kernel": partials_kernel, "merge_kernel": merge_kernel,
           "split_gradient_kernel": split_gradient_kernel, "reduce_kernel": reduce_kernel,
           "lse_kernel": lse_kernel, "z_rows_kernel": z_rows_kernel,
           "z_reduce_kernel": z_reduce_kernel}
