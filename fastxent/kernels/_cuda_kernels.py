"""The CUDA kernels and their device functions (importable without a GPU: the PTX tests compile
them with ``numba.cuda.compile_ptx``). How they are launched is ``_cuda_plan``'s business; what
they compute is described in ``fastxent/kernels/cuda.py``.
"""

import math

import numpy as np

from ._compat import numpy_compat

numpy_compat()  # before numba.cuda compiles anything

import numba_cuda  # noqa: E402, F401  (the maintained CUDA target, not numba's deprecated one)
from numba import config as _numba_config  # noqa: E402  (after the compatibility shim)
from numba import cuda  # noqa: E402

from ._groups import group_merge  # noqa: E402
from ._lanes import compute as as_compute  # noqa: E402
from ._lanes import decode as load  # noqa: E402
from ._lanes import empty_word, get, lanes, lowest, put  # noqa: E402
from ._lanes import encode as store  # noqa: E402

SIMULATED = bool(_numba_config.ENABLE_CUDASIM)

# Device functions are inlined into the kernels (the simulator runs them as Python).
_DEVICE = dict(device=True) if SIMULATED else dict(device=True, forceinline=True)

# kinds of targets
NO_TARGETS, INDEX, PROBS = 0, 1, 2
# reductions
NONE, SUM, MEAN = 0, 1, 2

REDUCE_SLOTS = 1024  # shared slots of the one-block reductions (launched with up to this many)


# --- per element ---------------------------------------------------------------------------------


@cuda.jit(**_DEVICE)
def _log(s):
    # CUDA's log(0) is -inf; Python's (the simulator) raises
    return -math.inf if s == 0 else math.log(s)


@cuda.jit(**_DEVICE)
def _capped(y, capc):
    return y if capc <= 0 else capc * math.tanh(y / capc)


@cuda.jit(**_DEVICE)
def _visit(y, col, base, m, s, a, b, c, capc, one, pe, kind, w, weighted, want_sy, like):
    """Adds element ``col`` (value ``y``) of a row to a thread's partial statistics."""
    y = _capped(y, capc)
    if y > m:
        s = s * math.exp(m - y) + one
        m = y
    elif y == m:  # also two infinities, whose difference would be NaN
        s += one
    else:
        s += math.exp(y - m)
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
    y = _capped(y, capc)
    g = math.exp(y - m) * scl
    if kind == PROBS or c1 != 0 or col == t:
        wj = as_compute(w[col], like) if weighted else one
        if kind == PROBS:
            q = as_compute(load(pe[base + col]), like)
        else:
            q = one if col == t else one - one
        g -= (c0 * q + c1) * wj
    if capc > 0:
        u = y / capc
        g *= one - u * u
    return g


# --- per row -------------------------------------------------------------------------------------


@cuda.jit(**_DEVICE)
def _span(k0, base, v, nwords, ne):
    """Words ``[lo, hi)`` wholly inside the row, and the elements before and after them."""
    lo = (base - k0 + ne - 1) // ne
    hi = min((base + v - k0) // ne, nwords)
    if hi <= lo:
        return lo, lo, base + v, base + v
    return lo, hi, k0 + lo * ne, k0 + hi * ne


@cuda.jit(**_DEVICE)
def _row_stats(xe, xw, k0, base, v, tid, g, m, s, a, b, c, capc, one, pe, kind, w, weighted,
               want_sy):
    ne = lanes(xe)
    lo, hi, head_end, tail_start = _span(k0, base, v, xw.size, ne)
    for e in range(base + tid, head_end, g):
        m, s, a, b, c = _visit(load(xe[e]), e - base, base, m, s, a, b, c, capc, one, pe, kind,
                               w, weighted, want_sy, xe)
    for e in range(tail_start + tid, base + v, g):
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
def _row_gradient(xe, xw, k0, base, v, tid, g, t, m, scl, c0, c1, zero_row, capc, one, pe, kind, w,
                  weighted, ge, gw):
    ne = lanes(xe)
    lo, hi, head_end, tail_start = _span(k0, base, v, xw.size, ne)
    for e in range(base + tid, head_end, g):
        ge[e] = store(_gradient(load(xe[e]), e - base, base, t, m, scl, c0, c1, zero_row, capc, one,
                                pe, kind, w, weighted, xe), ge)
    for e in range(tail_start + tid, base + v, g):
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
def _div(a, b):
    """a / b with IEEE results for b == 0 (Python's division, in the simulator, raises)."""
    if b != 0:
        return a / b
    if a == 0 or a != a:
        return math.nan
    return math.inf if a > 0 else -math.inf


@cuda.jit(**_DEVICE)
def _row_loss(lse, swqy, swq, swy, eps, z, v, wsum):
    """The loss of one counted row from its statistics, as ``fastxent._api._loss``."""
    ce = (1.0 - eps) * (lse * swq - swqy)
    if eps > 0:
        ce += eps / v * (lse * wsum - swy)
    if lse == math.inf:  # PyTorch's log_softmax is NaN for a row holding +inf
        ce = math.nan
    zt = z * lse * lse if z > 0 else 0.0
    return ce, zt


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
    sc = cuda.shared.array(REDUCE_SLOTS, np.float64)
    sw = cuda.shared.array(REDUCE_SLOTS, np.float64)
    sa = cuda.shared.array(REDUCE_SLOTS, np.float64)
    sf = cuda.shared.array(REDUCE_SLOTS, np.int64)
    sc[t] = cnt
    sw[t] = wsum
    sa[t] = wall
    sf[t] = first
    cuda.syncthreads()
    half = nt // 2
    while half > 0:
        if t < half:
            sc[t] += sc[t + half]
            sw[t] += sw[t + half]
            sa[t] += sa[t + half]
            sf[t] = min(sf[t], sf[t + half])
        cuda.syncthreads()
        half //= 2
    if t == 0:
        totals[0] = sc[0]
        totals[1] = sw[0]
        totals[2] = sa[0]
        bad[0] = sf[0] if sf[0] < n else -1


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
    wsum = totals[2]
    for it in range((n + n_groups - 1) // n_groups):  # the same count in every group
        r = group + it * n_groups
        active = r < n
        row = r if active else 0
        base = row * v
        counted = active
        t = -1
        if active and kind == INDEX:
            t = targets[row]
            if t == ignore or t < 0 or t >= v:
                counted = False
                t = -1
        m = lowest(xe)
        s = one - one
        a = 0.0  # the plain sums are float64: a row of one class must cancel exactly
        b = 0.0
        c = 0.0
        # the target's weight and logit, in float64 (a row of one class has a loss of exactly 0)
        tw = 0.0
        ty = 0.0
        if counted:
            if t >= 0:
                tw = np.float64(w[t]) if weighted else 1.0
                if tid == 0:  # read before any thread of the group writes the gradient
                    ty = np.float64(_capped(load(xe[base + t]), capc))
            m, s, a, b, c = _row_stats(xe, xw, k0, base, v, tid, g, m, s, a, b, c, capc, one, pe,
                                       kind, w, weighted, want_sy)
        # new names: merged partials may be float64, the loops above keep the compute type
        mm, ms, ma, mb, mc = group_merge(m, s, a, b, c, g)
        lse = np.float64(mm) + _log(np.float64(ms))
        ma = np.float64(ma) + tw * ty
        mb = np.float64(mb) + tw
        if active and tid == 0:
            if counted:
                stats[row, 0] = lse
                stats[row, 1] = ma
                stats[row, 2] = mb
                stats[row, 3] = mc
            else:
                for k in range(4):
                    stats[row, k] = 0.0
            if write_loss:
                loss = 0.0
                if counted:
                    ce, zt = _row_loss(lse, np.float64(ma), np.float64(mb), np.float64(mc), eps,
                                       z, v, wsum)
                    loss = ce + zt
                losses[row] = loss
        if write_grad and active and allowed:
            up = go
            if per_row_go:  # on the device: one value per row, or one for all
                up = go_rows[row if go_rows.size > 1 else 0]
            sc = up
            sz = up
            if red == MEAN:
                sc = _div(up, totals[1])
                sz = _div(up, totals[0])
            c0 = 0.0
            c1 = 0.0
            scl = 0.0
            if counted:
                c0 = sc * (1.0 - eps)
                c1 = sc * eps / v
                big_a = c0 * np.float64(mb) + c1 * wsum
                if z > 0:
                    big_a += sz * 2.0 * z * lse
                scl = _div(big_a, np.float64(ms))
                if lse == math.inf:  # as PyTorch: a row holding +inf has a NaN gradient
                    scl = math.nan
            _row_gradient(xe, xw, k0, base, v, tid, g, t, as_compute(mm, xe), as_compute(scl, xe),
                          as_compute(c0, xe), as_compute(c1, xe), not counted, capc, one, pe,
                          kind, w, weighted, ge, gw)


@cuda.jit
def reduce_kernel(stats, n, v, eps, z, red, totals, out):
    """One block: the mean or the sum of the row losses into ``out[0]``, in a fixed order."""
    t = cuda.threadIdx.x
    wsum = totals[2]
    nt = cuda.blockDim.x
    ce_sum = np.float64(0.0)
    zt_sum = np.float64(0.0)
    for r in range(t, n, nt):
        ce, zt = _row_loss(stats[r, 0], stats[r, 1], stats[r, 2], stats[r, 3], eps, z, v, wsum)
        ce_sum += ce
        zt_sum += zt
    sce = cuda.shared.array(REDUCE_SLOTS, np.float64)
    szt = cuda.shared.array(REDUCE_SLOTS, np.float64)
    sce[t] = ce_sum
    szt[t] = zt_sum
    cuda.syncthreads()
    half = nt // 2
    while half > 0:
        if t < half:
            sce[t] += sce[t + half]
            szt[t] += szt[t + half]
        cuda.syncthreads()
        half //= 2
    if t == 0:
        if red == MEAN:
            out[0] = _div(sce[0], totals[1]) + _div(szt[0], totals[0])
        else:
            out[0] = sce[0] + szt[0]


@cuda.jit
def lse_kernel(stats, out):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = stats[i, 0]



#: Every kernel, by name (the PTX tests compile each of them).
KERNELS = {"targets_kernel": targets_kernel, "rows_kernel": rows_kernel,
           "reduce_kernel": reduce_kernel, "lse_kernel": lse_kernel}
