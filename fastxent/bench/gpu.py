"""The GPU benchmark behind ``fastxent bench --device cuda``: fastxent's CUDA kernels against
PyTorch eager, ``torch.compile``, Liger-Kernel and JAX, on PyTorch CUDA tensors.

By default it runs the cases of the CUDA backend's targets: N=8192 rows at V=131072 (bfloat16 and
float32, forward and forward+backward), bfloat16 forward+backward at the vocabularies of real
models (32000, 50257, 128256, 256000), and batch-1 scoring (N=1 and 16 at V=256000). ``--rows``,
``--vocab``, ``--dtype`` and ``--workloads`` replace that set by their grid.

Every time is the median of CUDA-event timings of single calls after warm-up calls (compilation
happens there), launch included; JAX, which has no events, runs in a process of its own
(``XLA_PYTHON_CLIENT_PREALLOCATE=false``) and is timed by the host around
``block_until_ready()``. Each time is set against the device's ceilings measured in the same run:
the copy bandwidth (read + write) of a 1 GiB device-to-device copy and the read bandwidth of a
1 GiB reduction. The *floor* of a case is its bytes at that bandwidth: the logits read once for
``forward``, read once and the gradient written once for ``fwd+bwd``. Peak extra device memory
is PyTorch's allocator peak during one call over what was allocated before it (fastxent allocates
through PyTorch for tensors).

``device="cpu"`` runs the same code on CPU tensors, with host timers and no memory figures; the
tests use it to check the pipeline without a GPU.
"""

import json
import os
import statistics
import subprocess
import sys
import time

from . import report as _report
from .ceilings import bytes_moved as _bytes_moved
from .inputs import ITEMSIZE
from .machine import versions

WORKLOADS = ("forward", "fwd+bwd")
PEERS = ("torch", "torch.compile", "liger", "jax")

#: (rows, vocab, dtype, workloads): the CUDA backend's targets.
DEFAULT_CASES = (
    (8192, 131072, "bfloat16", WORKLOADS),
    (8192, 131072, "float32", WORKLOADS),
    *((8192, v, "bfloat16", ("fwd+bwd",)) for v in (32000, 50257, 128256, 256000)),
    (1, 256000, "bfloat16", ("fwd+bwd",)),
    (16, 256000, "bfloat16", ("fwd+bwd",)),
)

#: The targets of the CUDA backend on an H100 (issue text), in ms, for the report's last column.
TARGETS_MS = {
    (8192, 131072, "bfloat16", "fwd+bwd"): 1.6, (8192, 131072, "bfloat16", "forward"): 0.8,
    (8192, 131072, "float32", "forward"): 1.6, (8192, 131072, "float32", "fwd+bwd"): 3.2,
    (1, 256000, "bfloat16", "fwd+bwd"): 0.06, (16, 256000, "bfloat16", "fwd+bwd"): 0.06,
}

WARMUP = 3
MIN_CALLS = 20
MIN_TIMED_S = 0.2
MAX_CALLS = 500


def bytes_moved(workload, rows, vocab, dtype):
    """:func:`fastxent.bench.ceilings.bytes_moved` for a dtype name.

    >>> bytes_moved("fwd+bwd", 8192, 131072, "bfloat16") / 1e9
    4.294967296
    """
    return _bytes_moved(workload, rows, vocab, ITEMSIZE[dtype])


class Clock:
    """Seconds of one call: CUDA events on the current stream, or a host timer on the CPU."""

    def __init__(self, torch, device):
        self.torch = torch
        self.cuda = device == "cuda"

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def __call__(self, fn, setup=None):
        if setup is not None:
            setup()
        if not self.cuda:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        start = self.torch.cuda.Event(enable_timing=True)
        end = self.torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3


def time_call(clock, fn, setup=None, repeat=MIN_CALLS, warmup=WARMUP):
    """(median seconds, first warm-up call's seconds) of ``fn``."""
    first = None
    for _ in range(warmup):
        s = clock(fn, setup)
        first = s if first is None else first
    times = []
    while len(times) < MAX_CALLS and (len(times) < repeat or sum(times) < MIN_TIMED_S):
        times.append(clock(fn, setup))
    return statistics.median(times), first


def measure_ceilings(torch, device, nbytes=1 << 30, repeat=10):
    """Best-of-``repeat`` copy (read + write) and read bandwidth in TB/s on ``device``."""
    clock = Clock(torch, device)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    copy = min(clock(lambda: dst.copy_(src)) for _ in range(repeat))
    read = min(clock(lambda: src.sum()) for _ in range(repeat))
    return {"copy_TBps": 2 * nbytes / copy / 1e12, "read_TBps": nbytes / read / 1e12,
            "bytes": nbytes}


def make_inputs(torch, device, rows, vocab, dtype, seed):
    """Logits N(0, 2²) in ``dtype`` and uniform int64 targets, made on the device."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = (torch.randn(rows, vocab, device=device, generator=g) * 2).to(getattr(torch, dtype))
    t = torch.randint(0, vocab, (rows,), device=device, generator=g)
    return x, t


def build_calls(torch, x, t, workload, peers):
    """(contender, variant, call, setup) for fastxent and each peer that is installed; peers that
    are not come back as (name, reason) in the second list."""
    import torch.nn.functional as F

    import fastxent as fx

    calls, skipped = [], []
    if workload == "forward":
        calls.append(("fastxent", "", lambda: fx.cross_entropy(x, t), None))
    else:
        buf = torch.empty_like(x)
        # on the CPU (the pipeline check) in place needs the NumPy view of the same memory
        target = buf if buf.is_cuda else buf.numpy()
        calls.append(("fastxent", "", lambda: fx.cross_entropy_with_grad(x, t), None))
        calls.append(("fastxent", "in place",
                      lambda: fx.cross_entropy_with_grad(target, t, inplace=True),
                      lambda: buf.copy_(x)))

    def autograd(loss_fn, fresh_copy=False):
        """forward: the loss of ``x``; fwd+bwd: the loss and ``.backward()`` from a leaf."""
        if workload == "forward":
            return lambda: loss_fn(x, t), None
        leaf = (torch.empty_like(x) if fresh_copy else x.detach()).requires_grad_()

        def setup():
            leaf.grad = None
            if fresh_copy:  # Liger writes the gradient over its input
                with torch.no_grad():
                    leaf.copy_(x)

        return lambda: loss_fn(leaf, t).backward(), setup

    for peer in peers:
        if peer == "torch":
            calls.append(("torch", "", *autograd(F.cross_entropy)))
        elif peer == "torch.compile":
            calls.append(("torch.compile", "", *autograd(torch.compile(F.cross_entropy))))
        elif peer == "liger":
            try:
                from liger_kernel.transformers.functional import liger_cross_entropy
            except ImportError as exc:
                skipped.append(("liger", f"liger_kernel is not importable ({exc})"))
                continue
            calls.append(("liger", "", *autograd(liger_cross_entropy, fresh_copy=True)))
    return calls, skipped


def _peak_extra_bytes(torch, clock, fn, setup):
    """Peak device memory allocated during one call over what was allocated before it."""
    if not clock.cuda:
        return None
    if setup is not None:
        setup()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    kept = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del kept
    return int(peak)


def _accuracy(torch, x, t):
    """fastxent's loss against PyTorch's float64 loss on the same (up-cast) logits."""
    import fastxent as fx

    want = torch.nn.functional.cross_entropy(x.double(), t).item()
    got = float(fx.cross_entropy(x, t))
    return abs(got - want) / abs(want)


def jax_child(spec):
    """Runs in its own process: JAX's jitted loss and value_and_grad; prints seconds per workload."""
    import jax
    import jax.numpy as jnp

    rows, vocab, dtype = spec["rows"], spec["vocab"], spec["dtype"]
    key = jax.random.PRNGKey(spec["seed"])
    kx, kt = jax.random.split(key)
    x = (jax.random.normal(kx, (rows, vocab)) * 2).astype(getattr(jnp, dtype))
    t = jax.random.randint(kt, (rows,), 0, vocab)

    def loss(x, t):  # optax's integer-label softmax cross-entropy, averaged
        x = x.astype(jnp.float32)
        lse = jax.nn.logsumexp(x, axis=-1)
        return jnp.mean(lse - jnp.take_along_axis(x, t[:, None], axis=-1)[:, 0])

    fns = {"forward": jax.jit(loss), "fwd+bwd": jax.jit(jax.value_and_grad(loss))}
    out = {}
    for workload in spec["workloads"]:
        f = fns[workload]

        def call(f=f):
            jax.block_until_ready(f(x, t))

        first = None
        for _ in range(WARMUP):
            t0 = time.perf_counter()
            call()
            first = time.perf_counter() - t0 if first is None else first
        times = []
        while len(times) < MAX_CALLS and (len(times) < MIN_CALLS or sum(times) < MIN_TIMED_S):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        out[workload] = {"time_s": statistics.median(times), "first_call_s": first}
    print(json.dumps({"results": out, "jax": jax.__version__, "devices": str(jax.devices())}))


def _run_jax(rows, vocab, dtype, workloads, seed):
    spec = json.dumps({"rows": rows, "vocab": vocab, "dtype": dtype, "workloads": list(workloads),
                       "seed": seed})
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    proc = subprocess.run([sys.executable, "-m", "fastxent.bench.gpu", "--jax-child", spec],
                          capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr else
                           f"exit status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cases(rows, vocab, dtypes, workloads):
    if rows is None and vocab is None and dtypes is None and workloads is None:
        return list(DEFAULT_CASES)
    return [(n, v, d, tuple(workloads or WORKLOADS))
            for d in (dtypes or ("bfloat16",)) for v in (vocab or (131072,))
            for n in (rows or (8192,))]


def _log(message):
    print(message, file=sys.stderr, flush=True)


def run_gpu_bench(rows=None, vocab=None, dtypes=None, workloads=None, peers=PEERS, seed=0,
                  device="cuda", ceiling_bytes=1 << 30, repeat=MIN_CALLS, command=None):
    """Time every case; returns the report as a JSON-ready dict."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("fastxent bench --device cuda needs PyTorch with a usable CUDA GPU "
                           f"(torch {torch.__version__} sees none)")
    started = time.perf_counter()
    clock = Clock(torch, device)
    skipped = {}
    jax_peer = "jax" in peers
    if jax_peer:
        import importlib.util
        if importlib.util.find_spec("jax") is None:
            skipped["jax"] = "jax is not installed"
            jax_peer = False
    ceilings = measure_ceilings(torch, device, ceiling_bytes) if ceiling_bytes else None
    results = []
    for n, v, dtype, wls in _cases(rows, vocab, dtypes, workloads):
        x, t = make_inputs(torch, device, n, v, dtype, seed)
        accuracy = _accuracy(torch, x, t)
        for workload in wls:
            calls, missing = build_calls(torch, x, t, workload, peers)
            skipped.update(missing)
            for contender, variant, fn, setup in calls:
                _log(f"N={n} V={v} {dtype} {workload}: {contender} {variant}".rstrip())
                row = {"contender": contender, "variant": variant, "workload": workload,
                       "rows": n, "vocab": v, "dtype": dtype,
                       "bytes": bytes_moved(workload, n, v, dtype), "error": None}
                try:
                    row["time_s"], row["first_call_s"] = time_call(clock, fn, setup, repeat)
                    row["peak_extra_bytes"] = _peak_extra_bytes(torch, clock, fn, setup)
                except Exception as exc:  # a peer that fails at this size is reported, not fatal
                    row.update(time_s=None, first_call_s=None, peak_extra_bytes=None,
                               error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                if contender == "fastxent" and not variant:
                    row["loss_rel_error"] = accuracy
                results.append(row)
                clock.sync()
        del x, t
        if jax_peer:
            try:
                out = _run_jax(n, v, dtype, wls, seed)
                for workload, r in out["results"].items():
                    results.append({"contender": "jax", "variant": "", "workload": workload,
                                    "rows": n, "vocab": v, "dtype": dtype,
                                    "bytes": bytes_moved(workload, n, v, dtype), "error": None,
                                    "peak_extra_bytes": None, **r})
            except Exception as exc:
                skipped["jax"] = f"{type(exc).__name__}: {exc}"
                jax_peer = False
    _derive(results, ceilings)
    return {"schema": "fastxent-bench-gpu/1", "command": command, "device": _device(torch, device),
            "versions": versions(), "ceilings": ceilings, "skipped": skipped,
            "results": results, "elapsed_s": time.perf_counter() - started}


def _device(torch, device):
    if device != "cuda":
        return {"name": "cpu (pipeline check: host timers)"}
    p = torch.cuda.get_device_properties(0)
    return {"name": p.name, "multiprocessors": p.multi_processor_count,
            "memory_bytes": p.total_memory, "cuda": torch.version.cuda}


def _derive(results, ceilings):
    """TB/s, fraction of the floor, and the time against fastxent's (out of place)."""
    ref = {(r["rows"], r["vocab"], r["dtype"], r["workload"]): r["time_s"] for r in results
           if r["contender"] == "fastxent" and not r["variant"] and r["time_s"]}
    for r in results:
        key = (r["rows"], r["vocab"], r["dtype"], r["workload"])
        r["tbps"] = r["floor_fraction"] = r["ratio"] = None
        r["target_ms"] = TARGETS_MS.get(key)
        if not r["time_s"]:
            continue
        r["tbps"] = r["bytes"] / r["time_s"] / 1e12
        if ceilings:
            bw = ceilings["copy_TBps"] if r["workload"] == "fwd+bwd" else ceilings["read_TBps"]
            r["floor_fraction"] = r["bytes"] / (bw * 1e12) / r["time_s"]
        if ref.get(key):
            r["ratio"] = r["time_s"] / ref[key]


LEGEND = """\
- **time**: median of CUDA-event timings of single calls after warm-up, launch included (JAX:
  host timer around `block_until_ready`, in its own process).
- **TB/s**: bytes that must move / time: the logits read once, plus the gradient written once
  for fwd+bwd. **% of ceiling**: that over the measured read (forward) or copy (fwd+bwd)
  bandwidth, i.e. the floor's time / time.
- **× vs fastxent**: time / fastxent's time (out of place); above 1 means fastxent is faster.
- **extra MiB**: peak device memory allocated during one call beyond what was allocated before.
- **target**: the CUDA backend's target for this case (an H100), where there is one."""


def format_report(rep):
    d, ce, v = rep["device"], rep["ceilings"], rep["versions"]
    lines = ["# fastxent bench --device cuda", ""]
    if rep.get("command"):
        lines += [f"command: `{rep['command']}`", ""]
    lines.append(f"- device: {d['name']}" + (f", {d['multiprocessors']} SMs, "
                                             f"{d['memory_bytes'] / 2**30:.0f} GiB, CUDA "
                                             f"{d['cuda']}" if "multiprocessors" in d else ""))
    if ce:
        lines.append(f"- ceilings: copy {ce['copy_TBps']:.2f} TB/s (read + write), read "
                     f"{ce['read_TBps']:.2f} TB/s, on {ce['bytes'] / 2**30:.0f} GiB")
    shown = ("python", "numpy", "numba", "numba-cuda", "torch", "triton", "jax", "liger-kernel")
    lines.append("- versions: " + ", ".join(f"{k} {v[k]}" for k in shown if k in v))
    for name, why in rep["skipped"].items():
        lines.append(f"- skipped {name}: {why}")
    results = rep["results"]
    for shape in dict.fromkeys((r["rows"], r["vocab"], r["dtype"]) for r in results):
        n, vocab, dtype = shape
        group = [r for r in results if (r["rows"], r["vocab"], r["dtype"]) == shape]
        header = ["contender", "workload", "time (ms)", "TB/s", "% of ceiling", "× vs fastxent",
                  "extra MiB", "target (ms)", "notes"]
        rows = []
        for r in group:
            notes = []
            if r.get("loss_rel_error") is not None:
                notes.append(f"loss rel. error {r['loss_rel_error']:.1e} vs float64")
            if r["error"]:
                notes.append(f"failed: {r['error']}")
            extra = r.get("peak_extra_bytes")
            rows.append([f"{r['contender']} ({r['variant']})" if r["variant"] else r["contender"],
                         r["workload"], _report.ms(r["time_s"]),
                         _report._fmt(r["tbps"], ".2f"), _report._pct(r["floor_fraction"]),
                         _report._fmt(r["ratio"], ".2f"),
                         _report._fmt(None if extra is None else extra / 2**20, ".0f"),
                         _report._fmt(r.get("target_ms"), "g"), "; ".join(notes)])
        size = _report._size(n * vocab * ITEMSIZE[dtype])
        lines += ["", f"## N={n}, V={vocab}, {dtype} ({size} of logits)", "",
                  _report.markdown_table(header, rows, right=set(range(2, 8)))]
    lines += ["", LEGEND]
    return "\n".join(lines)


def run_from_args(args, parser):
    """``fastxent bench --device cuda``: run, print the tables, write ``--json`` / ``--out``."""
    peers = args.peers if args.peers is not None else PEERS
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        parser.error(f"--device cuda compares with {', '.join(PEERS)}; not {', '.join(unknown)}")
    try:
        rep = run_gpu_bench(rows=args.rows, vocab=args.vocab, dtypes=args.dtype,
                            workloads=[w for w in (args.workloads or ()) if w in WORKLOADS] or None,
                            peers=peers, seed=args.seed, repeat=max(args.repeat, MIN_CALLS),
                            ceiling_bytes=(1 << 30) if args.bandwidth_mib else 0,
                            command=getattr(args, "command_line", None))
    except RuntimeError as exc:
        print(f"fastxent bench: {exc}", file=sys.stderr)
        return 1
    text = format_report(rep)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep, f, indent=1)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(rep, f, indent=1)
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(text + "\n")
    _log(f"done in {rep['elapsed_s']:.1f} s")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--jax-child":
        jax_child(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: fastxent bench --device cuda  (this module's own entry runs JAX cases)")
