"""The machine's own ceilings, measured in the same run as the cases, and the floors they imply.

Read and copy bandwidth bound any kernel that streams the logits from main memory; the rate of the
package's vectorised float32 exp (:func:`fastxent.kernels.cpu.numeric.exp32`) bounds any kernel that
takes one exponential per logit. A case's *floor* is the time its bytes take at the measured
bandwidth: the logits read once for ``forward`` and ``logsumexp``; the logits read once plus the
gradient written once for ``fwd+bwd`` (at the copy bandwidth, which counts both). Its *exp floor*
is one exponential per logit at the measured exp rate.
"""

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit, prange

from ..kernels.cpu.numeric import exp32

#: 256 MiB: several times any last-level cache, so the sums and copies run from main memory.
DEFAULT_BANDWIDTH_MIB = 256

#: float32 elements summed by each thread in the exp measurement: 16 KiB, resident in L1.
EXP_ARRAY = 4096

#: Passes over that array per thread and timed call (about 16 M exponentials per thread).
EXP_SWEEPS = 4000

# reassoc lets LLVM spread the sum over SIMD lanes, as the kernels' own flags do.
_FLAGS = dict(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"})


def bytes_moved(workload, rows, vocab, itemsize):
    """Bytes a workload must move at least: the logits read, plus the gradient written.

    Examples
    --------
    >>> bytes_moved("forward", 2, 4, 4), bytes_moved("fwd+bwd", 2, 4, 4)
    (32, 64)
    >>> bytes_moved("logsumexp", 2, 4, 2)
    16
    """
    per_array = rows * vocab * itemsize
    return 2 * per_array if workload == "fwd+bwd" else per_array


def floor_seconds(workload, nbytes, ceilings):
    """Seconds ``nbytes`` take at the bandwidth that bounds ``workload`` (read, or copy).

    >>> floor_seconds("fwd+bwd", 2e9, {"read_GBps": 20.0, "copy_GBps": 40.0})
    0.05
    """
    gbps = ceilings["copy_GBps"] if workload == "fwd+bwd" else ceilings["read_GBps"]
    return nbytes / (gbps * 1e9)


def _best_time(fn, repeat):
    """The shortest of ``repeat`` timed calls after a warm-up call: a ceiling is what the machine
    can do, and on a shared machine the slower passes measure the other processes."""
    fn()  # warm-up: first touches, thread pool start-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _numba_threads():
    import numba

    from ..core.threads import ensure_threading_layer

    # numba.get_num_threads() starts Numba's threads: fastxent must pick the layer first
    ensure_threading_layer()
    return numba.get_num_threads()


def measure_bandwidth(nbytes=DEFAULT_BANDWIDTH_MIB << 20, threads=None, repeat=5):
    """Read and copy bandwidth of main memory, in GB/s (1e9 bytes per second), with NumPy.

    Read: the sum of a float32 array. Copy: ``np.copyto`` into a preallocated (already touched)
    array, counting the bytes read plus the bytes written. The arrays are split between
    ``threads`` Python threads (NumPy releases the GIL in both), by default as many as Numba
    uses, so the ceiling is measured with the parallelism the kernels have. The best of
    ``repeat`` passes is kept.

    Returns
    -------
    dict
        ``bytes`` (size of one array), ``threads``, ``read_GBps``, ``copy_GBps``.
    """
    if threads is None:
        threads = _numba_threads()
    n = max(nbytes // 4, threads)
    # np.full, not np.zeros: calloc'd pages would only appear during the first timed pass
    src = np.full(n, 1.0, dtype=np.float32)
    dst = np.full(n, 0.0, dtype=np.float32)
    bounds = np.linspace(0, n, threads + 1).astype(int)
    parts = [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    with ThreadPoolExecutor(threads) as pool:
        read = _best_time(lambda: list(pool.map(lambda s: src[s].sum(), parts)), repeat)
        copy = _best_time(lambda: list(pool.map(lambda s: np.copyto(dst[s], src[s]), parts)),
                            repeat)
    size = n * 4
    return {"bytes": size, "threads": threads, "read_GBps": size / read / 1e9,
            "copy_GBps": 2 * size / copy / 1e9}


@njit(**_FLAGS)
def _exp_sweeps(x, sweeps):
    s = np.float32(0.0)
    for k in range(sweeps):
        # a shift that changes with k, so that LLVM cannot compute one sweep and reuse it
        d = np.float32(k & 7) * np.float32(-0.125)
        for j in range(x.size):
            s += exp32(x[j] + d)
    return s


@njit(parallel=True, **_FLAGS)
def _exp_in_threads(x, sweeps, out):
    for i in prange(out.size):  # one task per thread, each over the same L1-resident array
        out[i] = _exp_sweeps(x, sweeps)


def measure_exp_rate(threads=None, sweeps=EXP_SWEEPS, repeat=5):
    """Rate of fastxent's vectorised float32 exp with every thread busy, in G exp/s.

    Each thread sums ``exp32`` over the same :data:`EXP_ARRAY` float32 values in [-10, 0] (in
    L1), ``sweeps`` times: memory plays no part, so this is the arithmetic ceiling of a kernel
    that takes one exponential per logit. The best of ``repeat`` calls is kept.

    Returns
    -------
    dict
        ``exp_threads``, ``exp_Gps`` (exponentials per second, all threads together, / 1e9).
    """
    if threads is None:
        threads = _numba_threads()
    x = np.linspace(-10.0, 0.0, EXP_ARRAY, dtype=np.float32)
    out = np.zeros(threads, dtype=np.float32)
    seconds = _best_time(lambda: _exp_in_threads(x, sweeps, out), repeat)
    if not np.isfinite(out).all():  # keeps the sums alive, and checks them
        raise RuntimeError("the exp measurement produced non-finite sums")
    return {"exp_threads": threads, "exp_Gps": threads * sweeps * x.size / seconds / 1e9}


def measure_ceilings(bandwidth_mib=DEFAULT_BANDWIDTH_MIB):
    """Bandwidth (arrays of ``bandwidth_mib`` MiB) and exp rate, as one dict (see the two above)."""
    out = measure_bandwidth(bandwidth_mib << 20)
    out.update(measure_exp_rate())
    return out
