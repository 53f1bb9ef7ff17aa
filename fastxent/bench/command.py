"""The options of ``fastxent bench`` (and ``python -m fastxent.bench``), and running them."""

import argparse
import importlib.util
import os
import shlex
import sys

from ..core.argtypes import non_negative_int, positive_float, positive_int
from . import gpu, grid, report
from .ceilings import DEFAULT_BANDWIDTH_MIB
from .inputs import DTYPES
from .peers import PEERS, WORKLOADS
from .runner import DEFAULT_REPEAT, DEFAULT_TIME_BUDGET, log, run_bench

_QUICK, _FULL = grid.SIZES["quick"], grid.SIZES["full"]


def _words(values):
    return " ".join(str(v) for v in values)


def add_arguments(parser):
    """Add the benchmark's options to an ``argparse`` parser (``fastxent bench`` uses this)."""
    parser.add_argument("--full", action="store_true",
                        help=f"the whole grid: rows {_words(_FULL['rows'])} × vocab "
                             f"{_words(_FULL['vocab'])} × {_words(_FULL['dtypes'])} × every "
                             "workload, with --memory (about 50 minutes on 2 cores); the options "
                             "below narrow it")
    parser.add_argument("--rows", type=positive_int, nargs="+", metavar="N",
                        help=f"rows of the logits (default {_words(_QUICK['rows'])})")
    parser.add_argument("--vocab", type=positive_int, nargs="+", metavar="V",
                        help=f"classes of the logits (default {_words(_QUICK['vocab'])})")
    parser.add_argument("--dtype", choices=DTYPES, nargs="+", metavar="DTYPE",
                        help=f"dtypes of the logits, among {', '.join(DTYPES)} (default "
                             f"{_words(_QUICK['dtypes'])}; bfloat16 needs ml_dtypes)")
    parser.add_argument("--workloads", choices=WORKLOADS, nargs="+", metavar="WORKLOAD",
                        help=f"among {', '.join(WORKLOADS)} (default "
                             f"{_words(grid.QUICK_WORKLOADS)})")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cpu (default): NumPy arrays on this machine's CPU; cuda: PyTorch "
                             "CUDA tensors against PyTorch eager, torch.compile, Liger-Kernel and "
                             "JAX, at the CUDA backend's target cases (the options that follow "
                             "narrow them; --full, --memory and the CPU ceilings do not apply)")
    parser.add_argument("--peers", nargs="*", choices=PEERS + ("liger",), metavar="PEER",
                        help=f"peers to compare with, among {', '.join(PEERS)} (default: those "
                             f"installed among {_words(grid.QUICK_PEERS)}, or all with --full; "
                             "none: fastxent only); with --device cuda among "
                             f"{', '.join(gpu.PEERS)}")
    parser.add_argument("--repeat", type=positive_int, default=DEFAULT_REPEAT,
                        help="timed calls per case, median reported; fewer for calls that reach "
                             f"the time budget (default {DEFAULT_REPEAT})")
    parser.add_argument("--time-budget", type=positive_float, default=DEFAULT_TIME_BUDGET,
                        metavar="SECONDS", help="seconds of timed calls after which a slow case "
                        f"stops, after one call (default {DEFAULT_TIME_BUDGET:g})")
    parser.add_argument("--memory", action="store_true",
                        help="also measure the peak RSS growth of each case at the largest row "
                             "count, each in a fresh process (a few seconds per case)")
    parser.add_argument("--memory-budget-gib", type=positive_float, metavar="GIB",
                        help="drop cases estimated to need more memory than this (default: 60%% "
                             "of the machine's memory)")
    parser.add_argument("--bandwidth-mib", type=non_negative_int, default=DEFAULT_BANDWIDTH_MIB,
                        help="array size of the bandwidth measurement, MiB (default "
                             f"{DEFAULT_BANDWIDTH_MIB}; 0 skips the ceilings)")
    parser.add_argument("--linear", action="store_true",
                        help="instead of the grid: the fused linear cross-entropy (forward + "
                             "backward from hidden states) against the unfused path, at N=512 "
                             "H=1024 V=131072 float32; with --device cuda against PyTorch, "
                             "Liger-Kernel and Cut Cross-Entropy at N=8192 H=4096 V=131072 "
                             "bfloat16 (--rows, --hidden, --vocab, --dtype change it)")
    parser.add_argument("--hidden", type=positive_int, metavar="H",
                        help="hidden size of --linear (default 1024)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the results and the machine description to PATH")
    parser.add_argument("--out", metavar="DIR",
                        help="write results.json, results.md and PNG plots (with matplotlib) "
                             "into DIR")
    return parser


def run_from_args(args, parser):
    """Run the benchmark for parsed options, print the tables; the exit status."""
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        parser.error(f"--json {args.json!r}: no such directory to write it in")
    if args.linear:
        from . import linear

        return linear.run_from_args(args)
    if getattr(args, "device", "cpu") == "cuda":
        return gpu.run_from_args(args, parser)
    if args.peers and "liger" in args.peers:
        parser.error("--peers liger needs --device cuda (Liger-Kernel runs on GPUs only)")
    size = _FULL if args.full else _QUICK
    dtypes = args.dtype or size["dtypes"]
    if "bfloat16" in dtypes and importlib.util.find_spec("ml_dtypes") is None:
        parser.error("--dtype bfloat16 needs ml_dtypes (pip install ml_dtypes)")
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out {args.out!r} exists and is not a directory")
    peers = args.peers if args.peers is not None else (PEERS if args.full else grid.QUICK_PEERS)
    result = run_bench(
        rows=args.rows or size["rows"], vocab=args.vocab or size["vocab"], dtypes=dtypes,
        workloads=args.workloads or (WORKLOADS if args.full else grid.QUICK_WORKLOADS),
        peers=peers, repeat=args.repeat, time_budget=args.time_budget,
        memory=args.memory or args.full,
        memory_budget=args.memory_budget_gib and int(args.memory_budget_gib * 2**30),
        bandwidth_mib=args.bandwidth_mib, seed=args.seed,
        command=getattr(args, "command_line", None))
    print(report.format_report(result))
    if args.json:
        report.write_json(result, args.json)
    if args.out:
        paths, message = report.write_outputs(result, args.out)
        if message:
            log(message)
        log(f"wrote {', '.join(paths)}")
    log(f"done in {result['elapsed_s']:.1f} s")
    return 0


def main(argv=None):
    """``python -m fastxent.bench``: the same options as ``fastxent bench``."""
    from . import __doc__ as doc
    from .memory import child

    parser = argparse.ArgumentParser(prog="python -m fastxent.bench",
                                     description=doc.split("\n\n")[0])
    add_arguments(parser)
    # the child process of the memory measurement; not for users
    parser.add_argument("--_measure-memory", dest="measure_memory", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["python", "-m", "fastxent.bench",
                                    *(sys.argv[1:] if argv is None else argv)])
    if args.measure_memory:
        import json

        child(json.loads(args.measure_memory))
        return 0
    return run_from_args(args, parser)
