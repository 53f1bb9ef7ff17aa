"""CUDA kernel of the per-token statistics (``token_partials`` of the backend interface).

A block owns a row at a time (blocks loop over rows). Each thread walks the columns
``tid, tid + blockDim, ...`` (coalesced element loads) keeping a running maximum ``m``,
``s = Σ exp(y - m)``, ``w = Σ exp(y - m)·(y - m)``, the column of its first maximum, its first
NaN and how many logits exceed the target's; the block merges these in shared memory as a tree
in a fixed order (deterministic; Numba's CUDA simulator runs the same code). Element loads make
it simpler than the loss kernels' 8-byte words, and slower: see docs/cuda.md.
"""

import math

import numpy as np

from ...core.codes import IGNORED
from ...core.formulas import merge
from .lanes import compute as as_compute
from .lanes import decode as load
from .softmax import _DEVICE, cuda

THREADS = 256  # shared slots: the most threads per block (``config.CUDA_TOKEN_THREADS``)
BLOCKS_PER_SM = 8  # resident blocks aimed for per multiprocessor (blocks loop over rows)
_NO_COLUMN = np.int64(2**62)


@cuda.jit(**_DEVICE)
def _visit(y, col, m, s, w, arg, nan_col, one):
    """Adds element ``col`` (value ``y``, compute type) to a thread's partials: the part
    ``(y, 1, 0)`` merged in, its column kept when it is a new maximum, the first NaN's column."""
    if y != y:
        if nan_col == _NO_COLUMN:
            nan_col = col
        return m, s, w, arg, nan_col
    if y > m:
        arg = col
    m, s, w = merge(m, s, w, y, one, one - one)
    return m, s, w, arg, nan_col


@cuda.jit(**_DEVICE)
def _merge(m1, s1, w1, a1, m2, s2, w2, a2):
    """Merge two threads' partials (float64); on equal maxima the lower column wins."""
    arg = a1 if m1 > m2 or (m1 == m2 and a1 < a2) else a2
    big, s, w = merge(m1, s1, w1, m2, s2, w2)
    return big, s, w, arg


@cuda.jit
def token_kernel(xe, n, v, codes, thresholds, use_thresholds, stats, ints):
    """Partials of each row of the (n, v) storage view ``xe`` (flat) into ``stats`` (n, 4)
    ``[m, s, w, y_t]`` and ``ints`` (n, 2) ``[argmax, above]`` (see ``reference.token_partials``)."""
    fs = cuda.shared.array((3, THREADS), np.float64)
    js = cuda.shared.array((3, THREADS), np.int64)
    tid = cuda.threadIdx.x
    one = as_compute(1.0, xe)
    for row in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        t = codes[row]
        if t == IGNORED:  # the same branch for the whole block
            if tid == 0:
                for k in range(4):
                    stats[row, k] = math.nan
                ints[row, 0] = -1
                ints[row, 1] = -1
            continue
        base = np.int64(row) * v
        thr = as_compute(math.nan, xe)  # nothing is above NaN: no count
        counting = False
        if t >= 0:
            thr = as_compute(load(xe[base + t]), xe)
            counting = True
        elif use_thresholds and thresholds[row] == thresholds[row]:
            thr = as_compute(thresholds[row], xe)
            counting = True
        m = as_compute(-math.inf, xe)
        s = one - one
        w = one - one
        arg = np.int64(0)
        nan_col = _NO_COLUMN
        above = np.int64(0)
        for col in range(tid, v, cuda.blockDim.x):
            y = as_compute(load(xe[base + col]), xe)
            m, s, w, arg, nan_col = _visit(y, np.int64(col), m, s, w, arg, nan_col, one)
            if y > thr:
                above += 1
        fs[0, tid] = np.float64(m)
        fs[1, tid] = np.float64(s)
        fs[2, tid] = np.float64(w)
        js[0, tid] = arg
        js[1, tid] = nan_col
        js[2, tid] = above
        cuda.syncthreads()
        half = cuda.blockDim.x // 2
        while half > 0:
            if tid < half:
                o = tid + half
                fs[0, tid], fs[1, tid], fs[2, tid], js[0, tid] = _merge(
                    fs[0, tid], fs[1, tid], fs[2, tid], js[0, tid],
                    fs[0, o], fs[1, o], fs[2, o], js[0, o])
                js[1, tid] = min(js[1, tid], js[1, o])
                js[2, tid] += js[2, o]
            cuda.syncthreads()
            half //= 2
        if tid == 0:
            nan = js[1, 0] != _NO_COLUMN
            stats[row, 0] = math.nan if nan else fs[0, 0]
            stats[row, 1] = fs[1, 0]
            stats[row, 2] = fs[2, 0]
            stats[row, 3] = np.float64(thr) if t >= 0 else math.nan
            ints[row, 0] = js[1, 0] if nan else js[0, 0]
            ints[row, 1] = js[2, 0] if counting else -1
        cuda.syncthreads()  # the shared slots are free again for the next row
