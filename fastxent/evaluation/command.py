"""``fastxent eval LOGITS TARGETS``: evaluate saved logits in bounded memory.

Logits (``(..., V)``) and targets (``(...)``) are read from ``.npy`` or ``.npz`` files batch by
batch (:mod:`fastxent.evaluation.files`), scored by :func:`fastxent.token_stats` and accumulated
by an :class:`fastxent.Evaluator`; the summary goes to stdout, progress to stderr.
"""

import json
import os
import sys
import time
import zipfile
import zlib

import numpy as np

from ..core import dtypes as _dtypes
from ..core.argtypes import positive_float
from .evaluator import Evaluator
from .files import ArraySource, FileFormatError
from .peak_memory import peak_rss_bytes

_RECORD = np.dtype([("nll", "<f8"), ("lse", "<f8"), ("entropy", "<f8"), ("argmax", "<i8"),
                    ("rank", "<i8")])
_SEQUENCE = np.dtype([("id", "<i8"), ("tokens", "<i8"), ("nll", "<f8"), ("perplexity", "<f8")])


def add_arguments(p):
    p.add_argument("logits", metavar="LOGITS",
                   help="logits of shape (..., V): FILE.npy, or FILE.npz[:NAME] (default NAME: "
                        "'logits', or the file's only array)")
    p.add_argument("targets", metavar="TARGETS",
                   help="integer targets of shape (...): FILE.npy or FILE.npz[:NAME] (default "
                        "NAME: 'targets'); may be the logits' .npz")
    p.add_argument("--topk", default="1,5,10", metavar="K,K,...",
                   help="top-k accuracies to report (default: 1,5,10)")
    p.add_argument("--ignore-index", type=int, default=-100,
                   help="target value that is not scored (default: -100)")
    p.add_argument("--batch-mb", type=positive_float, default=256.0, metavar="MIB",
                   help="logits read per batch, in MiB (default: 256): the memory it takes")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32", "float64"],
                   help="read the logits as this dtype (NumPy saves bfloat16 as raw 2-byte "
                        "values: pass bfloat16 for them)")
    p.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda", "numpy"],
                   help="where the statistics are computed (default: auto, the CPU kernels)")
    p.add_argument("--per-token", metavar="OUT.npy",
                   help="write each token's nll, lse, entropy, argmax and rank (a structured "
                        ".npy of the targets' shape)")
    p.add_argument("--per-sequence", metavar="OUT.npy",
                   help="for (B, T, V) logits: write each of the B sequences' token count, "
                        "mean NLL and perplexity")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--progress", choices=["auto", "always", "never"], default="auto",
                   help="progress bar on stderr (auto: when stderr is a terminal)")


class _Progress:
    """A one-line progress bar on stderr, redrawn at most 5 times a second."""

    def __init__(self, total, enabled):
        self.total, self.enabled = max(total, 1), enabled
        self.start = self.last = time.perf_counter()

    def show(self, done, final=False):
        now = time.perf_counter()
        if not self.enabled or (now - self.last < 0.2 and not final):
            return
        self.last = now
        frac = min(done / self.total, 1.0)
        rate = done / max(now - self.start, 1e-9)
        eta = (self.total - done) / rate if rate else 0.0
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\reval [{bar:<30}] {frac:6.1%}  {rate / 1e9:5.2f} GB/s  "
                         f"ETA {int(eta) // 60:02d}:{int(eta) % 60:02d}")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _sources(args):
    logits = ArraySource(args.logits, "logits", args.dtype and _dtypes.resolve(args.dtype))
    targets = ArraySource(args.targets, "targets")
    if not _dtypes.is_float(logits.dtype):
        raise FileFormatError(f"{logits.where} has dtype {logits.dtype}: logits must be float16, "
                              "bfloat16, float32 or float64")
    if targets.dtype.kind not in "iu":
        raise FileFormatError(f"{targets.where} has dtype {targets.dtype}: targets must be "
                              "integer class indices")
    if len(logits.shape) == 0 or tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise FileFormatError(f"shapes do not match: logits {tuple(logits.shape)} and targets "
                              f"{tuple(targets.shape)}; targets must have the logits' shape "
                              "without the last axis (the classes)")
    return logits, targets


def _topk(text):
    try:
        return tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        raise ValueError(f"--topk must be integers separated by commas, got {text!r}") from None


def evaluate(args):
    """Run the evaluation described by the parsed ``args``; returns (EvalResult, facts)."""
    logits, targets = _sources(args)
    v = logits.shape[-1]
    n = targets.size
    ev = Evaluator(_topk(args.topk), ignore_index=args.ignore_index, backend=args.backend)
    seq_len = logits.shape[1] if len(logits.shape) == 3 else None
    if args.per_sequence and seq_len is None:
        raise FileFormatError("--per-sequence needs (B, T, V) logits: each of the B rows is a "
                              f"sequence; these have shape {tuple(logits.shape)}")
    rows = max(1, int(args.batch_mb * 2**20 // max(v * logits.dtype.itemsize, 1)))
    progress = _Progress(logits.nbytes, args.progress == "always" or (
        args.progress == "auto" and sys.stderr.isatty()))
    # written beside its destination and moved there once complete: a run that fails leaves
    # no partial file under the name asked for (nor replaces an earlier one)
    if args.per_token and os.path.isdir(args.per_token):
        raise FileFormatError(f"--per-token {args.per_token} is a directory: name a file")
    partial = f"{args.per_token}.partial"
    out = open(partial, "wb") if args.per_token else None
    start = time.perf_counter()
    done = False
    try:
        if out is not None:
            np.lib.format.write_array_header_1_0(out, dict(
                descr=np.lib.format.dtype_to_descr(_RECORD), fortran_order=False,
                shape=tuple(targets.shape)))
        for (lo, x), (_, t) in zip(logits.batches(rows, v), targets.batches(rows, 1)):
            t = t.reshape(-1)
            ids = None if seq_len is None else np.arange(lo, lo + len(t)) // seq_len
            stats = ev.update(x, t, sequence_ids=ids)
            if out is not None:
                rec = np.empty(len(t), _RECORD)
                for name in _RECORD.names:
                    rec[name] = getattr(stats, name)
                out.write(rec.tobytes())
            progress.show((lo + len(t)) * v * logits.dtype.itemsize)
        done = True
    finally:
        if out is not None:
            out.close()
            if done:
                os.replace(partial, args.per_token)
            else:
                os.unlink(partial)
    seconds = time.perf_counter() - start
    progress.show(logits.nbytes, final=True)
    result = ev.result()
    if args.per_sequence:
        s = result.sequences
        rec = np.empty(len(s.ids), _SEQUENCE)
        rec["id"], rec["tokens"], rec["nll"], rec["perplexity"] = (s.ids, s.tokens, s.nll,
                                                                    s.perplexity)
        np.save(args.per_sequence, rec)
    facts = dict(rows=n, classes=v, dtype=_dtypes.name(logits.dtype), seconds=seconds,
                 gb_per_s=logits.nbytes / max(seconds, 1e-9) / 1e9, batch_rows=min(rows, n),
                 peak_rss_mib=peak_rss_bytes() / 2**20)
    return result, facts


def run(args, parser):
    try:
        result, facts = evaluate(args)
    except (OSError, FileFormatError, ValueError, IndexError, zipfile.BadZipFile, zlib.error,
            EOFError, RuntimeError) as exc:  # RuntimeError: a backend not usable here
        parser.error(str(exc))
    report(result, facts, args.json,
           f"{facts['rows']:,} tokens × {facts['classes']:,} classes ({facts['dtype']}) in "
           f"{facts['seconds']:.2f} s ({facts['gb_per_s']:.2f} GB/s), "
           f"peak memory {facts['peak_rss_mib']:.0f} MiB")
    return 0


def report(result, facts, as_json, summary):
    """The evaluation commands' output: the figures and ``facts`` as JSON, or the figures as a
    table and the one-line ``summary`` of the run."""
    if as_json:
        print(json.dumps(dict(result.as_dict(), **facts), indent=2))
    else:
        print(result)
        print(f"\n{summary}")
