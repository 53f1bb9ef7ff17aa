"""A Numba threading layer that is safe from several Python threads and in forked children.

Numba picks its layer when it first runs a parallel region. Left alone it prefers OpenMP where
libgomp is present (PyTorch ships one): GNU OpenMP terminates a forked child that enters a parallel
region after the parent did ("fork() called from a process already using GNU OpenMP"), which breaks
``multiprocessing`` and DataLoader workers. The ``workqueue`` layer survives a fork but aborts when
two threads enter it at once. TBB does both. So, before the first parallel call:

1. if the user set ``NUMBA_THREADING_LAYER``, that is their choice and it is kept;
2. else TBB, when the ``tbb`` package is installed (its ``libtbb.so.12`` sits in the environment's
   ``lib/``, which the loader does not search inside a virtual environment, so it is loaded here);
3. else ``workqueue``, with calls from different threads taken one at a time.

If another library had already started Numba's threads with GNU OpenMP before fastxent was
imported, a forked child runs fastxent's kernels single-threaded instead of crashing.
"""

import contextlib
import ctypes
import glob
import os
import sys
import threading

import numba

_lock = threading.Lock()
_forked_from_gnu_omp = False
_chosen = None


def _launched_layer():
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        return None


def _load_tbb():
    """Load libtbb.so.12 globally from the environment's lib/ if it is there; True on success."""
    try:
        ctypes.CDLL("libtbb.so.12", mode=ctypes.RTLD_GLOBAL)
        return True
    except OSError:
        pass
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix, sys.exec_prefix)):
        for path in sorted(glob.glob(os.path.join(prefix, "lib", "libtbb.so.12*"))):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                return True
            except OSError:
                continue
    return False


def _tbb_usable():
    if not _load_tbb():
        return False
    try:
        from numba.np.ufunc import tbbpool  # noqa: F401  (the layer's own extension)
    except ImportError:
        return False
    return True


def ensure_threading_layer():
    """Choose the layer once, before Numba starts its threads; return the name chosen."""
    global _chosen
    if _chosen is not None:
        return _chosen
    launched = _launched_layer()
    if launched is not None:
        _chosen = launched
    elif os.environ.get("NUMBA_THREADING_LAYER"):
        _chosen = numba.config.THREADING_LAYER
    else:
        _chosen = "tbb" if _tbb_usable() else "workqueue"
        numba.config.THREADING_LAYER = _chosen
    return _chosen


def _serialise_calls():
    layer = _launched_layer() or numba.config.THREADING_LAYER
    return layer == "workqueue"


@contextlib.contextmanager
def parallel_guard():
    """Around every parallel kernel call: yields False where parallel regions must not run."""
    if _forked_from_gnu_omp:
        yield False
    elif _serialise_calls():
        with _lock:
            yield True
    else:
        yield True


def _after_fork_in_child():
    global _lock, _forked_from_gnu_omp
    _lock = threading.Lock()  # a lock held by another thread at fork time would never be released
    if _launched_layer() == "omp":
        from numba.np.ufunc import omppool

        _forked_from_gnu_omp = getattr(omppool, "openmp_vendor", "GNU") == "GNU"


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def describe():
    """Threading facts for ``fastxent info``."""
    return {
        "threading_layer": _launched_layer() or f"{ensure_threading_layer()} (not started yet)",
        "threads": numba.get_num_threads(),
        "forked_child_runs_serial": _forked_from_gnu_omp,
    }
