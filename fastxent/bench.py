"""The quick benchmark behind ``fastxent bench``: fastxent against NumPy and PyTorch on one batch.

One large-vocabulary batch (by default N=2048 rows of V=131072 float32 logits, normal values × 2,
uniform integer targets) and two workloads:

``forward``
    the mean loss. Bytes moved: the logits, read once (N·V·itemsize).
``fwd+bwd``
    the mean loss and its gradient with respect to the logits. Bytes moved: the logits read once
    plus the gradient written once (2·N·V·itemsize). A kernel that reads each row twice from
    memory, or makes N×V temporaries, moves more than this: these bytes are the floor, not an
    estimate of the traffic.

Contenders: fastxent (out of place, and in place for fwd+bwd), a naive NumPy log-softmax, PyTorch
eager ``F.cross_entropy`` and ``torch.compile`` of it. Peers that cannot be imported are skipped.

Each row reports the median wall time of ``repeat`` calls after warm-up calls (Numba's and
Inductor's compilation happen there; the first call's time is kept as ``first_call_s``), the
effective bandwidth ``bytes / time``, the ratio ``time / fastxent time`` of the same workload (out
of place; above 1 means fastxent is faster), and the fraction of the floor reached: the time the
row's bytes take at the bandwidth measured in the same run (read bandwidth for ``forward``, copy
bandwidth for ``fwd+bwd``) divided by the row's time.

The functions are small so that the benchmark suite can reuse them: :func:`make_inputs`,
:func:`measure_bandwidth`, the ``*_cases`` builders, :func:`time_case`, :func:`run_bench`,
:func:`format_report`.
"""

import argparse
import datetime
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import numpy as np

PEERS = ("numpy", "torch", "torch.compile")
WORKLOADS = ("forward", "fwd+bwd")
DTYPES = ("float32", "bfloat16")
DEFAULT_ROWS = 2048
DEFAULT_VOCAB = 131072
DEFAULT_REPEAT = 5
#: 1 GiB: far beyond any last-level cache, so the sums and copies run from main memory.
DEFAULT_BANDWIDTH_MIB = 1024
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16")
SCHEMA = "fastxent-bench/1"


# --- the machine ----------------------------------------------------------------------------------


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
    for dist in ("torch", "scipy", "ml_dtypes", "tbb"):
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


def numba_facts():
    """Numba's thread count, the threading layer actually started, and whether SVML is in use.

    Numba picks its threading layer when the first parallel region runs, so a tiny
    ``logsumexp`` runs first: the layer reported is the one fastxent's kernels use.
    """
    import numba

    import fastxent
    from fastxent import _threading

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
    """Everything a result needs to be compared with another machine's: CPU, threads, platform."""
    desc = {"cpu": cpu_info(), "numba": numba_facts(), "platform": platform.platform()}
    if "torch" in sys.modules:  # only once a torch contender has run: importing torch is slow
        desc["torch_threads"] = sys.modules["torch"].get_num_threads()
    return desc


# --- inputs and ceilings --------------------------------------------------------------------------


def make_inputs(rows=DEFAULT_ROWS, vocab=DEFAULT_VOCAB, dtype="float32", seed=0):
    """Random logits (standard normal × 2) of shape ``(rows, vocab)`` and int64 targets.

    ``dtype="bfloat16"`` needs ``ml_dtypes``; the values are drawn in float32 and rounded.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, vocab), dtype=np.float32)
    x *= 2.0
    if dtype == "bfloat16":
        import ml_dtypes

        x = x.astype(ml_dtypes.bfloat16)
    elif dtype != "float32":
        raise ValueError(f"dtype={dtype!r} is not one of {DTYPES}")
    t = rng.integers(0, vocab, size=rows, dtype=np.int64)
    return x, t


def bytes_moved(workload, rows, vocab, itemsize):
    """Bytes a workload must move at least: the logits read, plus the gradient written.

    Examples
    --------
    >>> bytes_moved("forward", 2, 4, 4), bytes_moved("fwd+bwd", 2, 4, 4)
    (32, 64)
    """
    per_array = rows * vocab * itemsize
    return per_array if workload == "forward" else 2 * per_array


def _median_time(fn, repeat):
    fn()  # warm-up: first touches, thread pool start-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_bandwidth(nbytes=DEFAULT_BANDWIDTH_MIB << 20, threads=None, repeat=3):
    """Read and copy bandwidth of main memory, in GB/s (1e9 bytes per second), with NumPy.

    Read: the sum of a float32 array. Copy: ``np.copyto`` into a preallocated (already touched)
    array, counting the bytes read plus the bytes written. The arrays are split between
    ``threads`` Python threads (NumPy releases the GIL in both), by default as many as Numba
    uses, so the ceiling is measured with the parallelism the kernels have.

    Returns
    -------
    dict
        ``bytes`` (size of one array), ``threads``, ``read_GBps``, ``copy_GBps``.
    """
    if threads is None:
        import numba

        from fastxent._threading import ensure_threading_layer

        # numba.get_num_threads() starts Numba's threads: fastxent must pick the layer first
        ensure_threading_layer()
        threads = numba.get_num_threads()
    n = max(nbytes // 4, threads)
    # np.full, not np.zeros: calloc'd pages would only appear during the first timed pass
    src = np.full(n, 1.0, dtype=np.float32)
    dst = np.full(n, 0.0, dtype=np.float32)
    bounds = np.linspace(0, n, threads + 1).astype(int)
    parts = [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    with ThreadPoolExecutor(threads) as pool:
        read = _median_time(lambda: list(pool.map(lambda s: src[s].sum(), parts)), repeat)
        copy = _median_time(lambda: list(pool.map(lambda s: np.copyto(dst[s], src[s]), parts)),
                            repeat)
    size = n * 4
    return {"bytes": size, "threads": threads, "read_GBps": size / read / 1e9,
            "copy_GBps": 2 * size / copy / 1e9}


# --- contenders -----------------------------------------------------------------------------------


@dataclass
class Case:
    """One timed call: ``run()`` is timed, ``setup()`` (if any) runs untimed before each call."""

    contender: str
    workload: str
    run: Callable[[], object]
    setup: Optional[Callable[[], None]] = None
    variant: str = ""
    warmup: int = 1

    @property
    def label(self):
        return f"{self.contender} ({self.variant})" if self.variant else self.contender


def fastxent_cases(x, t):
    """fastxent forward, fused forward+backward out of place, and in place."""
    import fastxent

    state = {}

    def refill():
        # in place overwrites its input: give every call fresh logits, outside the timing
        if "buf" not in state:
            state["buf"] = np.empty_like(x)
        np.copyto(state["buf"], x)

    return [
        Case("fastxent", "forward", lambda: fastxent.cross_entropy(x, t)),
        Case("fastxent", "fwd+bwd", lambda: fastxent.cross_entropy_with_grad(x, t)),
        Case("fastxent", "fwd+bwd",
             lambda: fastxent.cross_entropy_with_grad(state["buf"], t, inplace=True),
             setup=refill, variant="in place"),
    ]


def numpy_loss(x, t):
    """Mean cross-entropy the way one writes it in NumPy: a log-softmax with N×V temporaries."""
    xf = x.astype(np.float32, copy=False)
    m = xf.max(axis=-1)
    lse = m + np.log(np.exp(xf - m[:, None]).sum(axis=-1))
    return float(np.mean(lse - xf[np.arange(xf.shape[0]), t]))


def numpy_loss_and_grad(x, t):
    """Mean cross-entropy and its gradient ``(softmax - onehot) / N`` in plain NumPy float32."""
    xf = x.astype(np.float32, copy=False)
    n = xf.shape[0]
    rows = np.arange(n)
    m = xf.max(axis=-1, keepdims=True)
    p = np.exp(xf - m)
    s = p.sum(axis=-1, keepdims=True)
    loss = float(np.mean(m[:, 0] + np.log(s[:, 0]) - xf[rows, t]))
    p /= s
    p[rows, t] -= 1.0
    p /= n
    return loss, p.astype(x.dtype, copy=False)  # the gradient in the logits' dtype, as fastxent's


def numpy_cases(x, t):
    """The naive NumPy peer, forward and forward+backward."""
    return [Case("numpy", "forward", lambda: numpy_loss(x, t)),
            Case("numpy", "fwd+bwd", lambda: numpy_loss_and_grad(x, t))]


def _as_torch(x, t):
    """Zero-copy torch views of the inputs (bfloat16 goes through its bits: torch cannot read
    ml_dtypes arrays)."""
    import torch

    if x.dtype.name == "bfloat16":
        xt = torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    else:
        xt = torch.from_numpy(x)
    return xt, torch.from_numpy(t)


def _torch_loss():
    import torch.nn.functional as F

    def loss(x, t):
        return F.cross_entropy(x, t)

    return loss


def _torch_cases(contender, fwd, fwdbwd, xt, tt, warmup):
    state = {}

    def new_leaf():
        # a fresh leaf each call, so backward allocates its .grad as fastxent allocates its
        # gradient (accumulating into an old .grad would add a read of N×V)
        state["x"] = xt.detach().requires_grad_()

    def forward_backward():
        leaf = state["x"]
        loss = fwdbwd(leaf, tt)
        loss.backward()
        return loss, leaf.grad

    return [Case(contender, "forward", lambda: fwd(xt, tt), warmup=warmup),
            Case(contender, "fwd+bwd", forward_backward, setup=new_leaf, warmup=warmup)]


def torch_cases(x, t):
    """PyTorch eager ``F.cross_entropy``; fwd+bwd calls ``.backward()`` on the loss."""
    xt, tt = _as_torch(x, t)
    return _torch_cases("torch", _torch_loss(), _torch_loss(), xt, tt, warmup=1)


def torch_compile_cases(x, t):
    """``torch.compile`` of ``F.cross_entropy``; fwd+bwd calls ``.backward()`` on its output.

    Compilation happens in the first warm-up call, whose time is reported as ``first_call_s``;
    a second warm-up call lets any recompilation happen before timing too.
    """
    import torch

    xt, tt = _as_torch(x, t)
    # separate compiled objects, so that each workload's first call holds its own compilation
    return _torch_cases("torch.compile", torch.compile(_torch_loss()),
                        torch.compile(_torch_loss()), xt, tt, warmup=2)


BUILDERS = {"fastxent": fastxent_cases, "numpy": numpy_cases, "torch": torch_cases,
            "torch.compile": torch_compile_cases}
#: the module each contender needs, to skip those that are not installed
REQUIRES = {"fastxent": "numba", "numpy": "numpy", "torch": "torch", "torch.compile": "torch"}


# --- timing ---------------------------------------------------------------------------------------


@dataclass
class Result:
    """One row of the report."""

    contender: str
    workload: str
    variant: str = ""
    bytes: int = 0
    time_s: Optional[float] = None
    times_s: list = field(default_factory=list)
    first_call_s: Optional[float] = None
    gbps: Optional[float] = None
    ratio: Optional[float] = None
    floor_fraction: Optional[float] = None
    peak_rss_growth_bytes: Optional[int] = None
    error: Optional[str] = None

    @property
    def label(self):
        return f"{self.contender} ({self.variant})" if self.variant else self.contender


def _call(case):
    """Seconds taken by one ``case.run()``; its result is dropped before the next call."""
    if case.setup is not None:
        case.setup()
    t0 = time.perf_counter()
    case.run()
    return time.perf_counter() - t0


def time_case(case, repeat):
    """(median seconds, all timed seconds, first warm-up call's seconds) of a case."""
    warm = [_call(case) for _ in range(case.warmup)]
    times = [_call(case) for _ in range(repeat)]
    return statistics.median(times), times, (warm[0] if warm else None)


def _error_text(exc):
    text = f"{type(exc).__name__}: {exc}".strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:200]


def _progress(message):
    print(f"[fastxent bench] {message}", file=sys.stderr, flush=True)


def _measure(case, repeat, nbytes):
    result = Result(case.contender, case.workload, case.variant, nbytes)
    _progress(f"{case.label} {case.workload} ...")
    try:
        result.time_s, result.times_s, result.first_call_s = time_case(case, repeat)
    except Exception as exc:  # e.g. torch.compile without a working C++ compiler: report, go on
        result.error = _error_text(exc)
        _progress(f"{case.label} {case.workload} failed: {result.error}")
        return result
    result.gbps = nbytes / result.time_s / 1e9
    _progress(f"{case.label} {case.workload}: {result.time_s * 1e3:.1f} ms "
              f"(first call {result.first_call_s:.2f} s)")
    return result


def run_contender(name, x, t, repeat):
    """Time every case of one contender; a contender that cannot be set up gives error rows."""
    rows, vocab = x.shape
    try:
        cases = BUILDERS[name](x, t)
    except Exception as exc:
        return [Result(name, w, bytes=bytes_moved(w, rows, vocab, x.itemsize),
                       error=_error_text(exc)) for w in WORKLOADS]
    results = []
    for case in cases:
        results.append(_measure(case, repeat, bytes_moved(case.workload, rows, vocab, x.itemsize)))
        gc.collect()  # free what a case left behind before the next one allocates its N×V arrays
    return results


def add_ratios(results, bandwidth):
    """Fill ``ratio`` (against fastxent out of place) and ``floor_fraction`` in place."""
    ref = {r.workload: r.time_s for r in results
           if r.contender == "fastxent" and not r.variant and r.time_s}
    for r in results:
        if r.time_s is None:
            continue
        if r.workload in ref:
            r.ratio = r.time_s / ref[r.workload]
        if bandwidth:
            gbps = bandwidth["read_GBps"] if r.workload == "forward" else bandwidth["copy_GBps"]
            r.floor_fraction = r.bytes / (gbps * 1e9) / r.time_s


# --- peak memory, each case in a fresh process ---------------------------------------------------


def _status_kib(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss():
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); True on success."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes():
    # VmHWM, not ru_maxrss: a child started from a large parent inherits the parent's peak in
    # ru_maxrss (Linux keeps the pre-exec address space's peak), and only VmHWM can be reset.
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":  # bytes there
            return kib
    return kib * 1024


def peak_memory_growth(case):
    """Bytes by which one call raises the process's peak RSS, after inputs and a warm-up call.

    Where the peak cannot be reset, the warm-up call (compilation included) is counted too.
    """
    before = _peak_rss_bytes()
    _call(case)  # warm-up: Numba's cache, Inductor's compilation
    gc.collect()
    if case.setup is not None:
        case.setup()
    if _reset_peak_rss():
        before = _peak_rss_bytes()
    case.run()
    return _peak_rss_bytes() - before


def _memory_child(spec):
    """In a fresh process: build the inputs and one case, print its peak-RSS growth as JSON."""
    x, t = make_inputs(spec["rows"], spec["vocab"], spec["dtype"], spec["seed"])
    cases = [c for c in BUILDERS[spec["contender"]](x, t)
             if c.workload == spec["workload"] and c.variant == spec["variant"]]
    print(json.dumps({"peak_rss_growth_bytes": peak_memory_growth(cases[0])}))


def measure_memory(result, rows, vocab, dtype, seed, timeout=600):
    """Run ``python -m fastxent.bench --_measure-memory`` for one result's case; fill it in."""
    spec = dict(contender=result.contender, workload=result.workload, variant=result.variant,
                rows=rows, vocab=vocab, dtype=dtype, seed=seed)
    _progress(f"{result.label} {result.workload}: peak memory in a fresh process ...")
    cmd = [sys.executable, "-m", "fastxent.bench", "--_measure-memory", json.dumps(spec)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
        result.peak_rss_growth_bytes = json.loads(done.stdout.strip().splitlines()[-1])[
            "peak_rss_growth_bytes"]
    except (subprocess.SubprocessError, ValueError, IndexError, KeyError) as exc:
        stderr = getattr(exc, "stderr", "") or ""
        _progress(f"memory measurement failed: {_error_text(exc)} {stderr[-500:]}")


# --- the whole run --------------------------------------------------------------------------------


def _available(name):
    return importlib.util.find_spec(REQUIRES[name]) is not None


def run_bench(rows=DEFAULT_ROWS, vocab=DEFAULT_VOCAB, dtype="float32", repeat=DEFAULT_REPEAT,
              peers=PEERS, memory=False, bandwidth_mib=DEFAULT_BANDWIDTH_MIB, seed=0):
    """Run the quick benchmark; return the report as a JSON-ready dict.

    Parameters
    ----------
    rows, vocab : int
        Shape of the logits.
    dtype : {"float32", "bfloat16"}
        Dtype of the logits.
    repeat : int
        Timed calls per case; the median is reported.
    peers : sequence of str
        Contenders besides fastxent, from :data:`PEERS`; those not installed are skipped.
    memory : bool
        Also measure each case's peak RSS growth, each in a fresh process (slow at large sizes).
    bandwidth_mib : int
        Size of the arrays of the bandwidth measurement; 0 skips it.
    seed : int
        Seed of the random inputs.

    Returns
    -------
    dict
        ``schema``, ``date``, ``config``, ``versions``, ``machine``, ``bandwidth`` (or None),
        ``results`` (one dict per row, see :class:`Result`), ``skipped`` ({peer: reason}),
        ``elapsed_s``.
    """
    start = time.perf_counter()
    config = dict(rows=rows, vocab=vocab, dtype=dtype, repeat=repeat, peers=list(peers),
                  memory=memory, seed=seed)
    bandwidth = None
    if bandwidth_mib > 0:
        _progress(f"measuring memory bandwidth ({bandwidth_mib} MiB arrays) ...")
        bandwidth = measure_bandwidth(bandwidth_mib << 20)
        gc.collect()
    _progress(f"making inputs: {rows} x {vocab} {dtype} ...")
    x, t = make_inputs(rows, vocab, dtype, seed)
    results, skipped = [], {}
    for name in ("fastxent", *peers):
        if not _available(name):
            skipped[name] = f"{REQUIRES[name]} is not installed"
            _progress(f"{name}: skipped ({skipped[name]})")
            continue
        results += run_contender(name, x, t, repeat)
    add_ratios(results, bandwidth)
    if memory:
        del x, t
        gc.collect()
        for r in results:
            if r.error is None:
                measure_memory(r, rows, vocab, dtype, seed)
    return {
        "schema": SCHEMA,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "versions": versions(),
        "machine": machine_description(),
        "bandwidth": bandwidth,
        "results": [asdict(r) for r in results],
        "skipped": skipped,
        "elapsed_s": time.perf_counter() - start,
    }


# --- the report -----------------------------------------------------------------------------------


def _fmt(value, spec, empty="–"):
    return empty if value is None else format(value, spec)


def _row_cells(r, memory):
    notes = r["error"] or ""
    if r["contender"] == "torch.compile" and r["first_call_s"] is not None:
        notes = f"first call (compilation) {r['first_call_s']:.1f} s"
    label = f"{r['contender']} ({r['variant']})" if r["variant"] else r["contender"]
    cells = [label, r["workload"], _fmt(r["time_s"] and r["time_s"] * 1e3, ".1f"),
             _fmt(r["gbps"], ".1f"), _fmt(r["ratio"], ".2f"),
             _fmt(r["floor_fraction"] and 100 * r["floor_fraction"], ".0f")]
    if memory:
        growth = r["peak_rss_growth_bytes"]
        cells.append(_fmt(growth if growth is None else growth / 2**20, ".0f"))
    return cells + [notes]


def markdown_table(header, rows, right=()):
    """A Markdown table whose columns are padded so it also reads as plain text."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def line(cells):
        padded = [str(c).rjust(w) if i in right else str(c).ljust(w)
                  for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2)
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule] + [line(r) for r in rows])


def format_report(report):
    """The report as text: a few lines on the setup and the ceilings, then a Markdown table."""
    c, m, v = report["config"], report["machine"], report["versions"]
    cpu, nb = m["cpu"], m["numba"]
    simd = " ".join(k for k, on in cpu["simd"].items() if on) or "unknown"
    itemsize = 4 if c["dtype"] == "float32" else 2
    gib = c["rows"] * c["vocab"] * itemsize / 2**30
    lines = [
        f"fastxent bench: N={c['rows']}, V={c['vocab']}, {c['dtype']} ({gib:.2f} GiB of logits), "
        f"median of {c['repeat']} calls after warm-up",
        f"machine: {cpu['model']}, {cpu['usable_cpus']} CPUs ({simd}); "
        f"numba {v['numba']} with {nb['threads']} threads ({nb['threading_layer']})"
        + (f"; torch {v['torch']} with {m['torch_threads']} threads" if "torch_threads" in m
           else ""),
    ]
    bw = report["bandwidth"]
    if bw:
        lines.append(f"memory bandwidth (NumPy, {bw['threads']} threads, {bw['bytes'] / 2**30:.2f} "
                     f"GiB arrays): read {bw['read_GBps']:.1f} GB/s, copy {bw['copy_GBps']:.1f} "
                     "GB/s (read + write)")
    for name, why in report["skipped"].items():
        lines.append(f"skipped {name}: {why}")
    header = ["contender", "workload", "time (ms)", "GB/s", "× vs fastxent", "% of floor"]
    if c["memory"]:
        header.append("peak RSS + (MiB)")
    header.append("notes")
    rows = [_row_cells(r, c["memory"]) for r in report["results"]]
    lines += ["", markdown_table(header, rows, right=set(range(2, len(header) - 1))), "",
              "GB/s: bytes that must move (forward: logits read once; fwd+bwd: logits read once + "
              "gradient written once) / time.",
              "× vs fastxent: time / fastxent's time for the same workload (out of place); above 1 "
              "means fastxent is faster.",
              "% of floor: time those bytes take at the measured bandwidth (read for forward, "
              "copy for fwd+bwd) / time."]
    return "\n".join(lines)


# --- command line ---------------------------------------------------------------------------------


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text):
    return 0 if text.strip() == "0" else _positive_int(text)


def add_arguments(parser):
    """Add the benchmark's options to an ``argparse`` parser (``fastxent bench`` uses this)."""
    parser.add_argument("--rows", type=_positive_int, default=DEFAULT_ROWS,
                        help=f"rows N of the logits (default {DEFAULT_ROWS})")
    parser.add_argument("--vocab", type=_positive_int, default=DEFAULT_VOCAB,
                        help=f"classes V of the logits (default {DEFAULT_VOCAB})")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="dtype of the logits (default float32; bfloat16 needs ml_dtypes)")
    parser.add_argument("--repeat", type=_positive_int, default=DEFAULT_REPEAT,
                        help=f"timed calls per case, median reported (default {DEFAULT_REPEAT})")
    parser.add_argument("--peers", nargs="*", choices=PEERS, default=list(PEERS),
                        metavar="PEER", help="peers to compare with, among "
                        f"{', '.join(PEERS)} (default: all installed; none: fastxent only)")
    parser.add_argument("--memory", action="store_true",
                        help="also measure each case's peak RSS growth in a fresh process "
                             "(adds about a minute at the default size)")
    parser.add_argument("--bandwidth-mib", type=_non_negative_int, default=DEFAULT_BANDWIDTH_MIB,
                        help="array size of the bandwidth measurement, MiB (default "
                             f"{DEFAULT_BANDWIDTH_MIB}; 0 skips it)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the results and the machine description to PATH")
    return parser


def run_from_args(args, parser):
    """Run the benchmark for parsed options, print the table; the exit status."""
    if args.dtype == "bfloat16" and importlib.util.find_spec("ml_dtypes") is None:
        parser.error("--dtype bfloat16 needs ml_dtypes (pip install ml_dtypes)")
    report = run_bench(rows=args.rows, vocab=args.vocab, dtype=args.dtype, repeat=args.repeat,
                       peers=list(dict.fromkeys(args.peers)), memory=args.memory,
                       bandwidth_mib=args.bandwidth_mib, seed=args.seed)
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    _progress(f"done in {report['elapsed_s']:.1f} s")
    return 0


def main(argv=None):
    """``python -m fastxent.bench``: the same options as ``fastxent bench``."""
    parser = argparse.ArgumentParser(prog="python -m fastxent.bench", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    # the child process of the memory measurement; not for users
    parser.add_argument("--_measure-memory", dest="measure_memory", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_memory:
        _memory_child(json.loads(args.measure_memory))
        return 0
    return run_from_args(args, parser)


if __name__ == "__main__":
    sys.exit(main())
