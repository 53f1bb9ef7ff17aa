"""What the CPU kernels share: their compiler flags, the serial copies that forked children run,
the plan that cuts few rows into chunks, and the small pieces whose kind is decided by type."""

from numba import get_num_threads, njit, types
from numba.extending import overload

from ... import config
from ...core.threads import ensure_threading_layer
from .numeric import load

ensure_threading_layer()

# ``reassoc`` lets LLVM split the sums into SIMD lanes; no ``nnan``/``ninf``, so that NaN and
# infinite logits keep PyTorch's meaning.
REDUCE = dict(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz"})
PARALLEL = dict(REDUCE, parallel=True)
OVERLOAD = dict(inline="always")


def sliced(w, lo, hi):
    """w[lo:hi], or None."""


@overload(sliced, **OVERLOAD)
def _sliced_impl(w, lo, hi):
    if isinstance(w, types.NoneType):
        return lambda w, lo, hi: None
    return lambda w, lo, hi: w[lo:hi]


def row_sliced(q, r, lo, hi):
    """q[r, lo:hi], or None."""


@overload(row_sliced, **OVERLOAD)
def _row_sliced_impl(q, r, lo, hi):
    if isinstance(q, types.NoneType):
        return lambda q, r, lo, hi: None
    return lambda q, r, lo, hi: q[r, lo:hi]


# --- one segment of one row ----------------------------------------------------------------------
# Segments are passed as 1-D slices and walked from index 0: Numba then knows the index is not
# negative and emits no wrap-around select, which otherwise blocks vectorisation (measured: the
# block maximum ran at 3.6 GB/s instead of memory speed when indexed as x[r, j] from j = lo).


@njit(**REDUCE)
def any_nan(xs):
    for j in range(xs.size):
        v = load(xs[j])
        if v != v:
            return True
    return False


# --- the backend interface -----------------------------------------------------------------------


def plan(n, v):
    """How many chunks to cut each row into so that every thread has work (1 for large batches)."""
    threads = get_num_threads()
    if n >= config.ROWS_PER_THREAD_FOR_ROW_TASKS * threads or v <= config.MIN_CHUNK:
        return 1, v
    nchunk = min(-(-config.TASKS_PER_THREAD * threads // max(n, 1)), -(-v // config.MIN_CHUNK))
    size = -(-v // nchunk)
    size = -(-size // config.BLOCK) * config.BLOCK  # whole blocks
    return -(-v // size), size


_serial_kernels = {}


def serial(kernel):
    """The same kernel compiled without threads (``prange`` runs as ``range``), made on demand."""
    if kernel not in _serial_kernels:
        # the kernel's own flags (its module's fast-math and error model), without threads; not
        # cached: Numba's cache key ignores ``parallel``, so a cached serial twin would load the
        # parallel machine code (and the parallel one the serial code)
        flags = {k: v for k, v in kernel.targetoptions.items() if k != "nopython"}
        flags.update(parallel=False, cache=False)
        _serial_kernels[kernel] = njit(**flags)(kernel.py_func)
    return _serial_kernels[kernel]
