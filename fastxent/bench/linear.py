"""``fastxent bench --linear``: the fused linear cross-entropy against the unfused path.

One workload, forward + backward of the mean cross-entropy of ``hidden @ weight.T`` (float32,
N×H hidden states, a V×H weight), six ways, and PyTorch's own fused loss:

``fastxent``, ``fastxent (64 rows)``, ``fastxent (256 rows × 16384 classes)``
    :func:`fastxent.linear_cross_entropy_with_grad` (BLAS products, fastxent's kernel per chunk),
    with its default chunks, with ``chunk_size=64`` and with blocks of classes, ``chunk_size=(256,
    16384)`` (16 MiB of float32 logits);
``numpy + fastxent``
    NumPy's product for the N×V logits, :func:`fastxent.cross_entropy_with_grad` in place, and
    NumPy's products for the gradients: the unfused path of the NumPy function;
``fastxent.torch``
    :func:`fastxent.torch.linear_cross_entropy` and ``.backward()`` (PyTorch's products);
``torch``
    ``F.cross_entropy(hidden @ weight.T, target).backward()``: the unfused path of PyTorch;
``torch linear_cross_entropy``, ``torch linear_cross_entropy (chunked)``
    PyTorch's own ``F.linear_cross_entropy`` (2.13+, where installed): its reference path
    (``options=None``) and its chunked path (``options=torch.nn.LinearCrossEntropyOptions()``).

Each is timed as the median of ``repeat`` calls after one warm-up call (fewer when a contender's
calls pass the time budget, ``--time-budget``, at least ten seconds here), and its peak extra memory
is measured in the same process: the growth of the peak RSS during one call beyond the memory
before it, less the gradients it returns (what every path must allocate).

With ``--device cuda`` (:func:`run_gpu`) the contenders are PyTorch CUDA tensors, by default at
the H100 case of the targets (N=8192, H=4096, V=131072, bfloat16): ``fastxent.torch`` with its
default chunks, with other chunk sizes (``GPU_CHUNKS`` rows: fewer chunks make fewer passes over
the weight, and ``g_weight += Gᵀ·h`` with few rows is bound by memory, not by the tensor cores)
and with ``accum_dtype=torch.float32``; PyTorch's unfused matmul + ``F.cross_entropy``; and,
where installed, Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss`` and Apple's Cut
Cross-Entropy (``cut_cross_entropy``).
Times come from CUDA events (``bench.gpu.Clock``) and the extra memory from PyTorch's allocator
peak during one call, less the gradients. On ``device="cpu"`` the same code runs with host timers
(the tests check the pipeline that way).
"""

import gc
import sys
import time

import numpy as np

from ..evaluation.peak_memory import _status_kib, peak_rss_bytes, reset_peak_rss
from .report import _size as format_bytes

DEFAULT_SHAPE = dict(rows=512, hidden=1024, vocab=131072)
#: the blocks of classes timed on the CPU: 16 MiB of float32 logits at the default shape
CLASS_CHUNK = (256, 16384)
GPU_SHAPE = dict(rows=8192, hidden=4096, vocab=131072, dtype="bfloat16")
#: PyTorch's own fused linear loss (2.13+): ``options=None``, and ``LinearCrossEntropyOptions()``
TORCH_LINEAR = "torch linear_cross_entropy"
#: the other chunk sizes (rows) ``fastxent.torch`` is timed with on a GPU
GPU_CHUNKS = (128, 384, 512, 1024)


def _contenders(h, w, t):
    import fastxent as fx

    def fused():
        return fx.linear_cross_entropy_with_grad(h, w, t)

    def unfused():
        loss, g = fx.cross_entropy_with_grad(h @ w.T, t, inplace=True)
        return loss, (g @ w, g.T @ h)

    def chunked(size):
        return lambda: fx.linear_cross_entropy_with_grad(h, w, t, chunk_size=size)

    found = {"fastxent": fused, "fastxent (64 rows)": chunked(64),
             f"fastxent ({CLASS_CHUNK[0]} rows × {CLASS_CHUNK[1]} classes)": chunked(CLASS_CHUNK),
             "numpy + fastxent": unfused}
    try:
        import torch

        import fastxent.torch as fxt
    except ImportError:
        return found
    th = torch.from_numpy(h).requires_grad_()
    tw = torch.from_numpy(w).requires_grad_()
    tt = torch.from_numpy(t)

    def backward(loss_fn):
        def call():
            loss = loss_fn()
            loss.backward()
            grads = (th.grad, tw.grad)
            th.grad = tw.grad = None  # the next call starts from no gradient, as the first
            return loss.item(), grads
        return call

    F = torch.nn.functional
    found["fastxent.torch"] = backward(lambda: fxt.linear_cross_entropy(th, tw, tt))
    found["torch"] = backward(lambda: F.cross_entropy(th @ tw.T, tt))
    if hasattr(F, "linear_cross_entropy"):  # PyTorch 2.13's own fused loss, both of its paths
        found[TORCH_LINEAR] = backward(lambda: F.linear_cross_entropy(th, tw, tt))
        options = getattr(torch.nn, "LinearCrossEntropyOptions", None)
        if options is not None:
            found[TORCH_LINEAR + " (chunked)"] = backward(
                lambda: F.linear_cross_entropy(th, tw, tt, options=options()))
    return found


def _extra_memory(call, results_bytes):
    gc.collect()
    before = (_status_kib("VmRSS") or 0) * 1024
    if not reset_peak_rss():
        return None
    result = call()
    extra = peak_rss_bytes() - before - results_bytes
    del result
    return max(extra, 0)


def run(rows, hidden, vocab, repeat=5, seed=0, time_budget=10.0):
    """{contender: (median seconds, peak extra bytes or None)} at one shape: ``repeat`` timed
    calls each, fewer for a contender whose timed calls pass ``time_budget`` seconds (at least
    one)."""
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((rows, hidden), dtype=np.float32)
    w = rng.standard_normal((vocab, hidden), dtype=np.float32) * np.float32(hidden ** -0.5)
    t = rng.integers(0, vocab, rows)
    results_bytes = (rows * hidden + vocab * hidden) * 4
    out = {}
    for name, call in _contenders(h, w, t).items():
        call()  # warm-up: compilation, first touch of the pages
        memory = _extra_memory(call, results_bytes)
        times = []
        while len(times) < max(repeat, 1) and (not times or sum(times) < time_budget):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        out[name] = (float(np.median(times)), memory)
    return out


def format_table(results, rows, hidden, vocab):
    lines = [f"linear cross-entropy, forward + backward: N={rows} H={hidden} V={vocab} float32",
             "", "| contender | time (median) | vs. its unfused path | peak extra memory |",
             "|---|---:|---:|---:|"]
    for name, (seconds, memory) in results.items():
        ref = results.get("torch" if name == "fastxent.torch" or name.startswith(TORCH_LINEAR)
                          else "numpy + fastxent" if name.startswith("fastxent") else None)
        ratio = f"{seconds / ref[0]:.2f}×" if ref else ""
        mem = "n/a" if memory is None else format_bytes(memory)
        lines.append(f"| {name} | {seconds * 1e3:.0f} ms | {ratio} | {mem} |")
    return "\n".join(lines)


def _gpu_contenders(torch, h, w, t):
    """{name: call} on tensors; each call runs forward and backward and returns the loss."""
    import fastxent.torch as fxt

    def autograd(loss_fn):
        def call():
            h.grad = w.grad = None
            loss = loss_fn()
            loss.backward()
            return loss
        return call

    found = {"fastxent.torch": autograd(lambda: fxt.linear_cross_entropy(h, w, t))}
    for rows in GPU_CHUNKS:
        found[f"fastxent.torch ({rows} rows)"] = autograd(
            lambda rows=rows: fxt.linear_cross_entropy(h, w, t, chunk_size=rows))
    if h.dtype.itemsize < 4:
        found["fastxent.torch (float32 accumulation)"] = autograd(
            lambda: fxt.linear_cross_entropy(h, w, t, accum_dtype=torch.float32))
    found["torch"] = autograd(lambda: torch.nn.functional.cross_entropy((h @ w.T).float(), t))
    missing = {}
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        liger = LigerFusedLinearCrossEntropyLoss()
        found["liger"] = autograd(lambda: liger(w, h, t))
    except ImportError as exc:
        missing["liger"] = str(exc)
    try:
        from cut_cross_entropy import linear_cross_entropy as cce
        found["cut cross-entropy"] = autograd(lambda: cce(h, w, t))
    except ImportError as exc:
        missing["cut cross-entropy"] = str(exc)
    return found, missing


def run_gpu(rows, hidden, vocab, dtype="bfloat16", device="cuda", seed=0):
    """{contender: (median seconds, peak extra bytes or None, loss)} and {missing: reason}."""
    import torch

    from .gpu import Clock, time_call

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--linear --device cuda needs PyTorch with a usable CUDA GPU "
                           f"(torch {torch.__version__} sees none)")
    g = torch.Generator(device=device).manual_seed(seed)
    dt = getattr(torch, dtype)
    h = (torch.randn(rows, hidden, device=device, generator=g)).to(dt).requires_grad_()
    w = (torch.randn(vocab, hidden, device=device, generator=g) * hidden ** -0.5).to(dt)
    w.requires_grad_()
    t = torch.randint(0, vocab, (rows,), device=device, generator=g)
    grads_bytes = (h.numel() + w.numel()) * h.element_size()
    clock = Clock(torch, device)
    found, missing = _gpu_contenders(torch, h, w, t)
    out = {}
    for name, call in found.items():
        seconds, _ = time_call(clock, call)
        memory = None
        if clock.cuda:
            h.grad = w.grad = None
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            loss = call()
            torch.cuda.synchronize()
            memory = max(int(torch.cuda.max_memory_allocated() - base - grads_bytes), 0)
        else:
            loss = call()
        out[name] = (seconds, memory, float(loss.detach()))
    return out, missing


def format_gpu_table(results, missing, rows, hidden, vocab, dtype):
    lines = [f"linear cross-entropy, forward + backward: N={rows} H={hidden} V={vocab} {dtype}",
             "", "| contender | time (median) | vs. fastxent.torch | peak extra memory | loss |",
             "|---|---:|---:|---:|---:|"]
    base = results["fastxent.torch"][0]
    for name, (seconds, memory, loss) in results.items():
        mem = "n/a" if memory is None else format_bytes(memory)
        lines.append(f"| {name} | {seconds * 1e3:.1f} ms | {seconds / base:.2f}× | {mem} | "
                     f"{loss:.5f} |")
    lines += [f"\n{name} not run: {why}" for name, why in missing.items()]
    return "\n".join(lines)


def run_from_args(args):
    if getattr(args, "device", "cpu") == "cuda":
        shape = dict(GPU_SHAPE)
        for key, value in (("rows", args.rows and args.rows[0]),
                           ("vocab", args.vocab and args.vocab[0]), ("hidden", args.hidden),
                           ("dtype", args.dtype and args.dtype[0])):
            if value:
                shape[key] = value
        try:
            results, missing = run_gpu(**shape, seed=args.seed)
        except RuntimeError as exc:
            print(f"fastxent bench: {exc}", file=sys.stderr)
            return 1
        print(format_gpu_table(results, missing, **shape))
        return 0
    shape = dict(DEFAULT_SHAPE)
    if args.rows:
        shape["rows"] = args.rows[0]
    if args.vocab:
        shape["vocab"] = args.vocab[0]
    if args.hidden:
        shape["hidden"] = args.hidden
    results = run(shape["rows"], shape["hidden"], shape["vocab"], repeat=args.repeat,
                  seed=args.seed, time_budget=max(args.time_budget, 10.0))
    print(format_table(results, **shape))
    return 0
