"""CUDA kernels of the element-wise binary losses and the categorical terms (``binary`` of the
backend interface, as ``kernels/cpu/elementwise.py`` computes them on the CPU).

A block owns a row at a time (blocks loop over rows); its threads walk the row's elements
(coalesced), each adding its elements' weighted losses in float64 and writing their losses
(``reduction="none"``) or gradients; the block merges the sums and the count of out-of-range
inputs in shared memory as a tree in a fixed order (deterministic), into one value per row.
``sum_kernel`` then adds the rows, in a fixed order, into the loss. Numba's CUDA simulator runs
the same code.
"""

import math

import numpy as np

from ...core.codes import BINARY_LOGITS, BINARY_PROBS
from .lanes import compute as as_compute
from .lanes import decode as load
from .lanes import encode as store
from .softmax import _DEVICE, cuda

THREADS = 256  # shared slots: the most threads per block (``config.CUDA_TOKEN_THREADS``)
BLOCKS_PER_SM = 8


@cuda.jit(**_DEVICE)
def _logit_term(x, y, pw, one):
    """(loss, dloss/dx) of a logit: two non-negative terms for either sign (see
    ``kernels/cpu/elementwise.py``)."""
    lw = one + (pw - one) * y
    e = math.exp(-abs(x))
    linear = (one - y) * x if x >= 0 else -(pw * y * x)
    loss = lw * math.log1p(e) + linear
    sig = one / (one + e)
    if x < 0:
        sig = e * sig
    return loss, lw * sig - pw * y


@cuda.jit(**_DEVICE)
def _log(z):
    # CUDA's log(0) is -inf; Python's (the simulator) raises
    return -math.inf if z == 0 else math.log(z)


@cuda.jit(**_DEVICE)
def _logs(p, eps, one):
    """(log p, log(1 - p)) from the smaller of p and 1 - p (exact for p >= 1/2), clipped to
    [eps, 1 - eps], or clamped at -100 when eps is 0."""
    zero = one - one
    upper = p >= one / (one + one)
    small = max(one - p, eps) if upper else max(p, eps)
    log_small = _log(small)
    log_big = math.log1p(-small) if small < one else -math.inf
    log_p = log_big if upper else log_small
    log_q = log_small if upper else log_big
    if not eps > zero:
        log_p = max(log_p, zero - 100)
        log_q = max(log_q, zero - 100)
    return log_p, log_q


@cuda.jit(**_DEVICE)
def _term(kind, x, y, pw, eps, one):
    """(loss, derivative, inputs in range) of one element (see ``cpu/elementwise.py::_term``)."""
    zero = one - one
    if kind == BINARY_LOGITS:
        loss, d = _logit_term(x, y, pw, one)
        return loss, d, y >= zero and y <= one
    if kind == BINARY_PROBS:
        ok = x >= zero and x <= one and y >= zero and y <= one
        if not ok:
            return zero, zero, False
        log_p, log_q = _logs(x, eps, one)
        den = max(x * (one - x), one * np.float32(1e-12))  # PyTorch's float32 floor
        d = (x - y) / den
        if eps > zero and not (x > eps and x < one - eps):
            d = zero  # clipped: the loss does not move with p there
        return -(y * log_p + (one - y) * log_q), d, True
    ok = x >= zero and x <= one and y >= zero
    if not ok:
        return zero, zero, False
    log_p, _ = _logs(x, eps, one)
    # d/dp = -q/p where the log moves with p: not clipped to [eps, 1 - eps], not clamped at -100
    moves = (x > eps and x < one - eps) if eps > zero else log_p > zero - 100
    d = -y / x if moves and y != zero else zero
    return (zero if y == zero else -y * log_p), d, True


@cuda.jit(**_DEVICE)
def _target(ye, k, like):
    return as_compute(load(ye[k]), like)


@cuda.jit(**_DEVICE)
def _tree_sums(acc_s, bad_s, tid, acc, nbad):
    """The block's sums of ``acc`` (float64) and ``nbad`` (int64), as a tree in a fixed order
    through the shared slots; every thread must call it, and gets them."""
    acc_s[tid] = acc
    bad_s[tid] = nbad
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if tid < half:
            acc_s[tid] += acc_s[tid + half]
            bad_s[tid] += bad_s[tid + half]
        cuda.syncthreads()
        half //= 2
    total, count = acc_s[0], bad_s[0]
    cuda.syncthreads()  # the slots are free again for the next call
    return total, count


@cuda.jit(**_DEVICE)
def _element_weight(cw, has_cw, ew, has_ew, j, k, like, one):
    w = one
    if has_cw:
        w *= as_compute(cw[j], like)
    if has_ew:
        w *= as_compute(ew[k], like)
    return w


@cuda.jit
def binary_kernel(kind, xe, ye, n, v, cw, has_cw, rw, has_rw, ew, has_ew, pw, has_pw, eps,
                  losses, want_losses, g, want_grad, rs, ge, has_ge, row_sums, bad):
    """Row sums of the weighted element losses into ``row_sums`` (n,) float64 and the count of
    out-of-range elements into ``bad`` (n,); ``losses`` (flat, n·v) and ``g`` (flat storage)
    when wanted. ``ye`` holds the targets flat, in a float storage type or as bytes."""
    acc_s = cuda.shared.array(THREADS, np.float64)
    bad_s = cuda.shared.array(THREADS, np.int64)
    tid = cuda.threadIdx.x
    one = as_compute(1.0, xe)
    epsc = as_compute(eps, xe)
    for row in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        base = np.int64(row) * v
        row_w = as_compute(rw[row], xe) if has_rw else one
        row_g = (as_compute(rs[row], xe) if want_grad else one) * row_w
        acc = np.float64(0.0)
        nbad = np.int64(0)
        for j in range(tid, v, cuda.blockDim.x):
            k = base + j
            x = as_compute(load(xe[k]), xe)
            y = _target(ye, k, xe)
            we = _element_weight(cw, has_cw, ew, has_ew, j, k, xe, one)
            w = row_w * we
            pwj = as_compute(pw[j], xe) if has_pw else one
            loss, d, ok = _term(kind, x, y, pwj, epsc, one)
            if not ok:
                nbad += 1
            acc += np.float64(w * loss)
            if want_losses:
                losses[k] = w * loss
            if want_grad:
                scale = row_g * (as_compute(ge[k], xe) if has_ge else one)
                g[k] = store(scale * we * d, g)
        total, count = _tree_sums(acc_s, bad_s, tid, acc, nbad)
        if tid == 0:
            row_sums[row] = total
            bad[row] = count


@cuda.jit
def sum_kernel(row_sums, bad, n, scale, out, flag):
    """One block: ``scale·Σ row_sums`` into ``out[0]`` and ``Σ bad`` into ``flag[0]``, as a tree
    in a fixed order."""
    acc_s = cuda.shared.array(THREADS, np.float64)
    bad_s = cuda.shared.array(THREADS, np.int64)
    tid = cuda.threadIdx.x
    acc = np.float64(0.0)
    nbad = np.int64(0)
    for r in range(tid, n, cuda.blockDim.x):
        acc += row_sums[r]
        nbad += bad[r]
    total, count = _tree_sums(acc_s, bad_s, tid, acc, nbad)
    if tid == 0:
        out[0] = total * scale
        flag[0] = count
