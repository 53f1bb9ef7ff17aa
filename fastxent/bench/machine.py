"""The machine a benchmark ran on: versions, CPU, memory, Numba's threads and threading layer."""

import importlib.metadata
import os
import platform
import sys

import numpy as np

SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16")

#: Optional packages whose versions matter to a benchmark, looked up where installed.
OPTIONAL_PACKAGES = ("torch", "jax", "jaxlib", "scipy", "ml_dtypes", "tbb", "matplotlib",
                     "pytest-benchmark", "numba-cuda", "cupy", "triton", "liger-kernel")


def versions():
    """Versions of Python and of the packages that matter to the benchmark, where installed.

    Optional packages are looked up in the installed distributions' metadata rather than imported:
    importing torch takes seconds, and ``fastxent info`` should not.
    """
    import llvmlite
    import numba

    import fastxent

    out = {"fastxent": fastxent.__version__, "python": platform.python_version(),
           "numpy": np.__version__, "numba": numba.__version__, "llvmlite": llvmlite.__version__}
    for dist in OPTIONAL_PACKAGES:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def cpu_info(path="/proc/cpuinfo"):
    """CPU model, CPU counts and SIMD flags (flags only where ``/proc/cpuinfo`` exists).

    Returns
    -------
    dict
        ``model`` (str), ``cpu_count`` (logical CPUs), ``usable_cpus`` (those this process may
        run on) and ``simd`` ({flag: bool} for :data:`SIMD_FLAGS`, empty when unknown).
    """
    model, flags = None, None
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and flags is None:
            flags = set(value.split())
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "model": model or platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "simd": {name: name in flags for name in SIMD_FLAGS} if flags is not None else {},
    }


def memory_bytes():
    """Physical memory of the machine in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def numba_facts():
    """Numba's thread count, the threading layer actually started, and whether SVML is in use.

    Numba picks its threading layer when the first parallel region runs, so a tiny
    ``logsumexp`` runs first: the layer reported is the one fastxent's kernels use.
    """
    import numba

    import fastxent

    from ..core import threads as _threading

    facts = {}
    try:
        fastxent.logsumexp(np.zeros((4, 8), dtype=np.float32), backend="cpu")
    except Exception as exc:  # a broken Numba is worth reporting, not a reason to stop `info`
        facts["error"] = f"{type(exc).__name__}: {exc}"
    facts.update(_threading.describe())
    # USING_SVML is Numba's own verdict (the library is loaded and llvmlite is patched for it);
    # `numba -s` prints it as "SVML Operational".
    svml = getattr(numba.config, "USING_SVML", None)
    if svml is not None:
        facts["svml"] = bool(svml)
    return facts


def machine_description():
    """Everything a result needs to be compared with another machine's: CPU, memory, threads."""
    desc = {"cpu": cpu_info(), "memory_bytes": memory_bytes(), "numba": numba_facts(),
            "platform": platform.platform()}
    if "torch" in sys.modules:  # only once a torch contender has run: importing torch is slow
        desc["torch_threads"] = sys.modules["torch"].get_num_threads()
    return desc
