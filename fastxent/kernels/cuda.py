"""Numba CUDA kernels: streaming log-sum-exp statistics, the fused gradient and the reductions.

One group of threads owns a row: a warp when the row is small (``config.CUDA_WARP_ROW_BYTES``), the
whole block otherwise. Each thread walks its share of the row as 8-byte words, four loads in
flight (``_lanes``), keeping a running ``(max, sum of exp)`` pair; the group merges the pairs
(``_groups``), and the same group then writes the gradient of the row it has just read, so that the
second read comes from L2. Blocks stay resident and loop over rows, and for the fused kernel their
number is chosen so that the rows in flight fit in L2. Row starts that are not 8-byte aligned
(odd vocabularies) are handled element by element up to the first full word, and so are the tails.

Three kernels per call, all on the caller's stream and none waiting for the host:

``_totals``
    one block: the number of counted rows and the sum of their weights (what "mean" divides by),
    and the first row whose class index is out of range (the caller reads this flag back once and
    raises; the gradient kernel writes nothing while it is set, so that ``inplace`` leaves the
    logits untouched);
``_rows``
    per row: the statistics ``[lse, Σwqy, Σwq, Σwy]`` of ``fastxent/kernels/__init__.py``, the
    row's loss for ``reduction="none"``, and with a gradient buffer the gradient
    ``(softmax(y)·(c0·Σwq + c1·Σw + c2·lse) − c0·w·q − c1·w)·dy/dx`` whose coefficients it computes
    from ``grad_output`` and ``_totals`` on the device;
``_reduce``
    one block: the mean or sum of the row losses, in a fixed order (deterministic).

Arithmetic is float32 (float64 for float64 logits); the merges across threads and the row
statistics are float64. ``p = exp(y - m)·(A/s)`` uses the row's maximum ``m``, an element of the
row, so the exponent is exact for the terms that matter.
"""

import math

import numpy as np


def numpy_compat():
    """numba-cuda 0.30 calls ``np.row_stack`` when it compiles a kernel; NumPy 2.5 removed it.

    Applied on import, before anything is compiled, and only where the name is missing: it is the
    same function as ``np.vstack`` (NumPy deprecated the alias in 2.0 and removed it in 2.5).
    """
    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack


numpy_compat()

from numba import config as _numba_config  # noqa: E402  (after the compatibility shim)
from numba import cuda  # noqa: E402

from .. import config  # noqa: E402
from ._groups import WARP, group_merge  # noqa: E402
from ._lanes import compute as as_compute  # noqa: E402
from ._lanes import decode as load  # noqa: E402
from ._lanes import empty_word, get, lanes, lowest, put  # noqa: E402
from ._lanes import encode as store  # noqa: E402

name = "cuda"

SIMULATED = bool(_numba_config.ENABLE_CUDASIM)

if not cuda.is_available():
    raise ImportError("numba.cuda finds no usable GPU (no NVIDIA driver or device is visible)")

_DEVICE = dict(device=True) if SIMULATED else dict(device=True, forceinline=True)

# kinds of targets
NO_TARGETS, INDEX, PROBS = 0, 1, 2
# reductions
NONE, SUM, MEAN = 0, 1, 2
REDUCTIONS = {"none": NONE, "sum": SUM, "mean": MEAN}

_TOTALS_THREADS = 256  # a power of two: the block's tree reduction halves it


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
            wq = wj * as_compute(load(pe[base + col]), like)
            a += wq * y
            b += wq
        if want_sy:
            c += wj * y
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
def _totals(targets, ignore, v, n, kind, w, weighted, totals, bad):
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    cnt = np.float64(0.0)
    wsum = np.float64(0.0)
    first = n
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
    sc = cuda.shared.array(_TOTALS_THREADS, np.float64)
    sw = cuda.shared.array(_TOTALS_THREADS, np.float64)
    sf = cuda.shared.array(_TOTALS_THREADS, np.int64)
    sc[t] = cnt
    sw[t] = wsum
    sf[t] = first
    cuda.syncthreads()
    half = nt // 2
    while half > 0:
        if t < half:
            sc[t] += sc[t + half]
            sw[t] += sw[t + half]
            sf[t] = min(sf[t], sf[t + half])
        cuda.syncthreads()
        half //= 2
    if t == 0:
        totals[0] = sc[0]
        totals[1] = sw[0]
        bad[0] = sf[0] if sf[0] < n else -1


@cuda.jit
def _rows(xe, xw, k0, n, v, g, kind, targets, ignore, pe, w, weighted, wsum, cap, want_sy, eps, z,
          red, go, go_rows, per_row_go, totals, bad, stats, losses, write_loss, ge, gw, write_grad):
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
        counted = active
        t = -1
        if active and kind == INDEX:
            t = targets[row]
            if t == ignore or t < 0 or t >= v:
                counted = False
                t = -1
        m = lowest(xe)
        s = one - one
        a = s
        b = s
        c = s
        if counted:
            if t >= 0 and tid == 0:  # read before any thread of the group writes the gradient
                wt = as_compute(w[t], xe) if weighted else one
                a = wt * _capped(load(xe[base + t]), capc)
                b = wt
            m, s, a, b, c = _row_stats(xe, xw, k0, base, v, tid, g, m, s, a, b, c, capc, one, pe,
                                       kind, w, weighted, want_sy)
        # new names: merged partials may be float64, the loops above keep the compute type
        mm, ms, ma, mb, mc = group_merge(m, s, a, b, c, g)
        lse = np.float64(mm) + _log(np.float64(ms))
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
            if red == MEAN:
                sc = _div(go, totals[1])
                sz = _div(go, totals[0])
            elif red == SUM:
                sc = go
                sz = go
            else:
                sc = go_rows[row] if per_row_go else go
                sz = sc
            c0 = sc * (1.0 - eps)
            c1 = sc * eps / v
            big_a = c0 * np.float64(mb) + c1 * wsum
            if z > 0:
                big_a += sz * 2.0 * z * lse
            scl = _div(big_a, np.float64(ms))
            _row_gradient(xe, xw, k0, base, v, tid, g, t, as_compute(mm, xe), as_compute(scl, xe),
                          as_compute(c0, xe), as_compute(c1, xe), not counted, capc, one, pe,
                          kind, w, weighted, ge, gw)


@cuda.jit
def _reduce(stats, n, v, eps, z, wsum, red, totals, out):
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    ce_sum = np.float64(0.0)
    zt_sum = np.float64(0.0)
    for r in range(t, n, nt):
        ce, zt = _row_loss(stats[r, 0], stats[r, 1], stats[r, 2], stats[r, 3], eps, z, v, wsum)
        ce_sum += ce
        zt_sum += zt
    sce = cuda.shared.array(_TOTALS_THREADS, np.float64)
    szt = cuda.shared.array(_TOTALS_THREADS, np.float64)
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


# --- host side -----------------------------------------------------------------------------------

KERNELS = {"_totals": _totals, "_rows": _rows, "_reduce": _reduce}

_dummies = {}
_device_facts = {}


def _dummy(dtype, ndim=1):
    """A one-element device array standing for an absent argument of the given type."""
    key = (np.dtype(dtype), ndim)
    if key not in _dummies:
        _dummies[key] = cuda.to_device(np.zeros((1,) * ndim, dtype=dtype))
    return _dummies[key]


def _no_words(dtype):
    """An empty word array: every element is then read one by one."""
    return _dummy(np.float64 if dtype == np.float64 else np.uint64)[:0]


def _facts():
    """(multiprocessors, L2 bytes) of the current device."""
    dev = cuda.get_current_device()
    key = getattr(dev, "id", 0)
    if key not in _device_facts:
        _device_facts[key] = (int(getattr(dev, "MULTIPROCESSOR_COUNT", 132)),
                              int(getattr(dev, "L2_CACHE_SIZE", 50 << 20)))
    return _device_facts[key]


def _address(a):
    cai = getattr(a, "__cuda_array_interface__", None)
    return cai["data"][0] if cai is not None else a.ctypes.data  # the simulator's arrays


def words(flat):
    """``(words, k0)``: the 8-byte words of a 1-D contiguous storage view, starting at element
    ``k0`` (the first 8-byte boundary); float64 arrays are their own words."""
    if flat.dtype == np.float64:
        return flat, 0
    size = flat.dtype.itemsize
    ne = 8 // size
    k0 = (-_address(flat) % 8) // size
    if flat.size <= k0:
        return _no_words(flat.dtype), 0
    count = (flat.size - k0) // ne
    return flat[k0:k0 + count * ne].view(np.uint64), k0


def plan(n, v, itemsize, fused):
    """(threads per block, threads per row, blocks) of the row kernel."""
    sms, l2 = _facts()
    row_bytes = v * itemsize
    if row_bytes <= config.CUDA_WARP_ROW_BYTES:
        threads, group = config.CUDA_WARP_BLOCK_THREADS, WARP
    else:
        threads = group = config.CUDA_BLOCK_THREADS
    per_block = threads // group
    blocks = max(1, -(-n // per_block))
    if fused:  # rows in flight small enough that each row is still in L2 for its gradient
        rows = max(sms, int(config.CUDA_L2_SHARE * l2) // max(row_bytes, 1))
        blocks = min(blocks, max(1, rows // per_block))
    return threads, group, min(blocks, sms * config.CUDA_BLOCKS_PER_SM)


def run(x, kind, targets, ignore, probs, weight, wsum, softcap, want_sy, reduction, eps, z, go,
        go_rows, grad, stream, empty):
    """Launches the kernels for one call; returns ``(out, bad)`` device arrays without waiting.

    ``x`` is the (N, V) C-contiguous storage view on the device; ``targets`` (N,) integers,
    ``probs`` an (N, V) storage view or None; ``weight`` a (V,) float array or None (``wsum`` its
    sum, or V); ``go`` the scalar ``grad_output`` or ``go_rows`` per row (reduction "none");
    ``grad`` the (N, V) storage view to write the gradient to (``x`` itself in place) or None;
    ``empty(shape, dtype)`` allocates device arrays the caller's way. ``out`` holds the loss
    (shape (1,), or (N,) for "none") in the compute type; ``bad[0]`` is -1, or the first row whose
    class index is out of range.
    """
    n, v = x.shape
    compute = np.float64 if x.dtype == np.float64 else np.float32
    xe = x.reshape(n * v)
    xw, k0 = words(xe)
    red = REDUCTIONS[reduction]
    tg = targets if targets is not None else _dummy(np.int64)
    pe = probs.reshape(n * v) if probs is not None else _dummy(x.dtype)
    w = weight if weight is not None else _dummy(compute)
    if grad is not None:
        ge = grad.reshape(n * v)
        gw, gk0 = (xw, k0) if grad is x else words(ge)
        if gk0 != k0:  # the two arrays start differently against 8-byte words: element by element
            xw = gw = _no_words(x.dtype)
    else:
        ge, gw = xe, xw
    totals = empty((2,), np.float64)
    bad = empty((1,), np.int64)
    stats = empty((n, 4), np.float64)
    out = empty((n,) if red == NONE else (1,), compute)
    go_arr = go_rows if go_rows is not None else _dummy(np.float64)
    _totals[1, _TOTALS_THREADS, stream](tg, ignore, v, n, kind, w, weight is not None, totals, bad)
    if n:
        threads, group, blocks = plan(n, v, x.dtype.itemsize, grad is not None)
        _rows[blocks, threads, stream](
            xe, xw, k0, n, v, group, kind, tg, ignore, pe, w, weight is not None, wsum,
            0.0 if softcap is None else softcap, want_sy, eps, z, red, go, go_arr,
            go_rows is not None, totals, bad, stats, out, red == NONE, ge, gw, grad is not None)
    if red != NONE:
        _reduce[1, _TOTALS_THREADS, stream](stats, n, v, eps, z, wsum, red, totals, out)
    return out, bad


def logsumexp(x, softcap, stream, empty):
    """Launches the log-sum-exp of each row of the (N, V) storage view ``x``; returns the
    float64 (N, 4) statistics array whose column 0 holds it."""
    n, v = x.shape
    xe = x.reshape(n * v)
    xw, k0 = words(xe)
    compute = np.float64 if x.dtype == np.float64 else np.float32
    stats = empty((n, 4), np.float64)
    if n:
        threads, group, blocks = plan(n, v, x.dtype.itemsize, False)
        _rows[blocks, threads, stream](
            xe, xw, k0, n, v, group, NO_TARGETS, _dummy(np.int64), -1, _dummy(x.dtype),
            _dummy(compute), False, float(v), 0.0 if softcap is None else softcap, False, 0.0,
            0.0, NONE, 1.0, _dummy(np.float64), False, _dummy(np.float64), _dummy(np.int64),
            stats, _dummy(compute), False, xe, xw, False)
    return stats
