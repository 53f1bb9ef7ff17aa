"""The package's one reduction (``formulas.merge``) across the threads of a CUDA group (a warp or
a whole block).

A thread's partial statistics of a row are ``(m, s, a, b, c)``: a running maximum ``m``, the sum
``s`` of ``exp(y - m)``, and three plain sums. Two partials merge as ``formulas.merge`` says for
``(m, s)``, and the plain sums add.

:func:`group_merge` merges the partials of ``size`` consecutive threads (32, or the whole block)
and hands every one of them the result. On a GPU it uses warp shuffles, then one slot of shared
memory per warp; Numba's CUDA simulator has no shuffles, so there the same function merges through
shared memory one entry at a time. Everything else in the kernels is the same code on both. Both
merge in a fixed order, so results are deterministic. Every thread of the block must call it (it
synchronises the block when ``size`` is larger than a warp, and always in the simulator).
"""

from numba import config, cuda, float64

from ...core import formulas

WARP = 32
_FULL = 0xFFFFFFFF
_MAX_THREADS = 1024


@cuda.jit(device=True)
def merge(m1, s1, a1, b1, c1, m2, s2, a2, b2, c2):
    """Two threads' partials merged: ``(m, s)`` by ``formulas.merge``, the plain sums added."""
    big, s, _ = formulas.merge(m1, s1, s1 - s1, m2, s2, s2 - s2)
    return big, s, a1 + a2, b1 + b2, c1 + c2


@cuda.jit(device=True)
def _shuffled_merge(m, s, a, b, c, size):
    lane = cuda.threadIdx.x % WARP
    off = WARP // 2
    while off > 0:
        m2 = cuda.shfl_down_sync(_FULL, m, off)
        s2 = cuda.shfl_down_sync(_FULL, s, off)
        a2 = cuda.shfl_down_sync(_FULL, a, off)
        b2 = cuda.shfl_down_sync(_FULL, b, off)
        c2 = cuda.shfl_down_sync(_FULL, c, off)
        if lane + off < WARP:
            m, s, a, b, c = merge(m, s, a, b, c, m2, s2, a2, b2, c2)
        off //= 2
    if size <= WARP:  # lane 0 holds the warp's result: hand it to every lane
        return (cuda.shfl_sync(_FULL, m, 0), cuda.shfl_sync(_FULL, s, 0),
                cuda.shfl_sync(_FULL, a, 0), cuda.shfl_sync(_FULL, b, 0),
                cuda.shfl_sync(_FULL, c, 0))
    slots = cuda.shared.array((5, WARP), float64)
    if lane == 0:
        _put(slots, cuda.threadIdx.x // WARP, m, s, a, b, c)
    cuda.syncthreads()
    merged = _merge_slots(slots, 0, cuda.blockDim.x // WARP)
    cuda.syncthreads()  # the slots are free again for the next call
    return merged


@cuda.jit(device=True)
def _shared_merge(m, s, a, b, c, size):
    slots = cuda.shared.array((5, _MAX_THREADS), float64)
    t = cuda.threadIdx.x
    _put(slots, t, m, s, a, b, c)
    cuda.syncthreads()
    merged = _merge_slots(slots, t - t % size, size)
    cuda.syncthreads()
    return merged


@cuda.jit(device=True)
def _put(slots, k, m, s, a, b, c):
    slots[0, k] = m
    slots[1, k] = s
    slots[2, k] = a
    slots[3, k] = b
    slots[4, k] = c


@cuda.jit(device=True)
def _merge_slots(slots, first, count):
    """The partials in slots ``[first, first + count)`` merged in order."""
    m, s, a, b, c = slots[0, first], slots[1, first], slots[2, first], slots[3, first], \
        slots[4, first]
    for k in range(first + 1, first + count):
        m, s, a, b, c = merge(m, s, a, b, c, slots[0, k], slots[1, k], slots[2, k], slots[3, k],
                              slots[4, k])
    return m, s, a, b, c


#: ``group_merge(m, s, a, b, c, size)``: the merged partials of the ``size`` threads of this
#: thread's group, in every one of them (in float64 where they went through shared memory: callers
#: convert them back to their compute type).
group_merge = _shared_merge if config.ENABLE_CUDASIM else _shuffled_merge
