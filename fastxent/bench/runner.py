"""A benchmark run from start to end: ceilings, the grid's cases shape by shape, peak memory, and
one progress line per case on stderr, with an estimate of the time left."""

import collections
import datetime
import gc
import itertools
import sys
import time

from . import grid
from .ceilings import DEFAULT_BANDWIDTH_MIB, bytes_moved, measure_ceilings
from .inputs import ITEMSIZE, make_inputs
from .machine import machine_description, versions
from .memory import measure as measure_memory
from .peers import PEERS, build_cases, missing_reason
from .report import SCHEMA, ms
from .timing import Result, add_ratios, time_case

DEFAULT_REPEAT = 5
#: Seconds of timed calls after which a slow case stops (it still gets one call).
DEFAULT_TIME_BUDGET = 0.5
#: Weight of a fresh process in the estimate of the time left, in bytes of logits that take as
#: long to time (starting Python, NumPy, Numba and a peer's package takes a few seconds).
_PROCESS_WEIGHT = 2 << 30


def log(message):
    """One line of progress on stderr."""
    print(f"[fastxent bench] {message}", file=sys.stderr, flush=True)


def _duration(seconds):
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Counts steps and estimates the time left, step kind by step kind ("time" and "memory"),
    from the bytes of logits each step handles: seconds per byte so far times the bytes left."""

    def __init__(self, plan, enabled=True):
        self.total = len(plan)
        self.left = collections.Counter()
        for kind, weight in plan:
            self.left[kind] += weight
        self.done = collections.Counter()
        self.spent = collections.Counter()
        self.count = 0
        self.last = time.perf_counter()
        self.enabled = enabled

    def _seconds_per_weight(self, kind):
        for k in (kind, *self.done):  # a kind not started yet borrows another's rate
            if self.done[k] > 0:
                return self.spent[k] / self.done[k]
        return 0.0

    def seconds_left(self):
        return sum(self._seconds_per_weight(k) * w for k, w in self.left.items() if w > 0)

    def step(self, kind, weight, message):
        now = time.perf_counter()
        self.spent[kind] += now - self.last
        self.last = now
        self.done[kind] += weight
        self.left[kind] -= weight
        self.count += 1
        if not self.enabled:
            return
        left = self.seconds_left()
        eta = f"; about {_duration(left)} left" if left > 0 else ""
        width = len(str(self.total))
        log(f"[{self.count:>{width}}/{self.total}] {message}{eta}")


def _weight(spec, fresh_process=False):
    return spec.rows * spec.vocab * ITEMSIZE[spec.dtype] + (_PROCESS_WEIGHT if fresh_process
                                                            else 1 << 26)


def _error_text(exc):
    text = f"{type(exc).__name__}: {exc}".strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:200]


def _result(spec):
    nbytes = bytes_moved(spec.workload, spec.rows, spec.vocab, ITEMSIZE[spec.dtype])
    return Result(spec.contender, spec.workload, spec.variant, spec.rows, spec.vocab, spec.dtype,
                  nbytes)


def _measure(case, spec, repeat, time_budget):
    result = _result(spec)
    result.notes = case.notes
    try:
        result.time_s, result.times_s, result.first_call_s = time_case(case, repeat, time_budget)
    except Exception as exc:  # e.g. torch.compile without a working C++ compiler: report, go on
        result.error = _error_text(exc)
        return result
    if case.compiles and result.first_call_s is not None:
        first = f"first call ({case.compiles}) {result.first_call_s:.1f} s"
        result.notes = "; ".join(n for n in (result.notes, first) if n)
    return result


def _describe(spec, result):
    what = f"{spec.label} {spec.workload} N={spec.rows} V={spec.vocab} {spec.dtype}"
    if result.error:
        return f"{what}: failed: {result.error}"
    calls = len(result.times_s)
    return f"{what}: {ms(result.time_s)} ms ({calls} call{'s' * (calls > 1)})"


def _time_specs(specs, seed, repeat, time_budget, progress):
    """Time every spec, making each shape's inputs once; the results in the specs' order."""
    results = []
    for shape, group in itertools.groupby(specs, key=lambda s: s.shape):
        group = list(group)
        x, t = make_inputs(*shape, seed=seed)
        for contender, cspecs in itertools.groupby(group, key=lambda s: s.contender):
            cspecs = list(cspecs)
            try:
                cases = {(c.workload, c.variant): c
                         for c in build_cases(contender, x, t, {s.workload for s in cspecs})}
                failure = None
            except Exception as exc:
                cases, failure = {}, _error_text(exc)
            for spec in cspecs:
                case = cases.get((spec.workload, spec.variant))
                if case is None:
                    result = _result(spec)
                    result.error = failure or "no such case"
                else:
                    result = _measure(case, spec, repeat, time_budget)
                results.append(result)
                progress.step("time", _weight(spec), _describe(spec, result))
            del cases
            gc.collect()  # free a contender's buffers before the next one allocates its own
        del x, t
        gc.collect()
    return results


def _as_tuple(value):
    return (value,) if isinstance(value, (int, str)) else tuple(value)


def run_bench(rows=grid.SIZES["quick"]["rows"], vocab=grid.SIZES["quick"]["vocab"],
              dtypes=("float32",), workloads=grid.QUICK_WORKLOADS, peers=PEERS,
              repeat=DEFAULT_REPEAT, time_budget=DEFAULT_TIME_BUDGET, memory=False,
              memory_budget=None, bandwidth_mib=DEFAULT_BANDWIDTH_MIB, seed=0, command=None,
              progress=True):
    """Run the benchmark over a grid; return the report as a JSON-ready dict.

    Parameters
    ----------
    rows, vocab : int or sequence of int
        Rows N and classes V of the logits; every combination is run.
    dtypes : sequence of {"float32", "bfloat16", "float16"}
        Dtypes of the logits.
    workloads : sequence of {"forward", "fwd+bwd", "logsumexp"}
        What each contender computes (see :mod:`fastxent.bench.peers`).
    peers : sequence of str
        Contenders besides fastxent, from :data:`~fastxent.bench.peers.PEERS`; those not
        installed are skipped and reported as such.
    repeat : int
        Timed calls per case for calls that are neither very fast nor slow (see
        :mod:`fastxent.bench.timing`); the median is reported.
    time_budget : float
        Seconds of timed calls after which a slow case stops, after one call at least.
    memory : bool
        Also measure the peak RSS growth of each case at the largest row count, each in a fresh
        process.
    memory_budget : int, optional
        Bytes a case may need by its estimate (:func:`~fastxent.bench.grid.estimated_bytes`);
        cases above it are dropped and reported. Default: 60% of the machine's memory.
    bandwidth_mib : int
        Size of the arrays of the bandwidth measurement; 0 skips the ceilings.
    seed : int
        Seed of the random inputs.
    command : str, optional
        The command line, recorded in the report.
    progress : bool
        Print one line per case on stderr.

    Returns
    -------
    dict
        ``schema``, ``date``, ``command``, ``config``, ``versions``, ``machine``, ``ceilings``
        (or None), ``results`` (one dict per case, see :class:`~fastxent.bench.timing.Result`),
        ``skipped`` ({contender: reason}), ``dropped`` (cases over the memory budget),
        ``elapsed_s``.
    """
    start = time.perf_counter()
    rows, vocab, dtypes = _as_tuple(rows), _as_tuple(vocab), _as_tuple(dtypes)
    workloads, peers = _as_tuple(workloads), tuple(dict.fromkeys(_as_tuple(peers)))
    if memory_budget is None:
        memory_budget = grid.default_memory_budget()
    config = dict(rows=list(rows), vocab=list(vocab), dtypes=list(dtypes),
                  workloads=list(workloads), peers=list(peers), repeat=repeat,
                  time_budget_s=time_budget, memory=memory, memory_budget_bytes=memory_budget,
                  bandwidth_mib=bandwidth_mib, seed=seed)
    say = log if progress else (lambda message: None)

    ceilings = None
    if bandwidth_mib > 0:
        say(f"measuring the ceilings: bandwidth ({bandwidth_mib} MiB arrays), exp rate ...")
        ceilings = measure_ceilings(bandwidth_mib)
        gc.collect()
    skipped, contenders = {}, []
    for name in ("fastxent", *peers):
        reason = missing_reason(name)
        if reason:
            skipped[name] = reason
            say(f"{name}: skipped ({reason})")
        else:
            contenders.append(name)
    specs, dropped = grid.cases(rows, vocab, dtypes, workloads, contenders, memory_budget)
    for spec, reason in dropped:
        say(f"{spec.id}: dropped ({reason})")
    memory_specs = [s for s in specs if s.rows == max(rows)] if memory else []
    steps = Progress([("time", _weight(s)) for s in specs]
                     + [("memory", _weight(s, True)) for s in memory_specs], progress)

    results = _time_specs(specs, seed, repeat, time_budget, steps)
    add_ratios(results, ceilings)
    in_memory_run = set(memory_specs)
    for spec, result in zip(specs, results):
        if spec not in in_memory_run:
            continue
        if result.error is None:
            result.peak_rss_growth_bytes, why = measure_memory(spec, seed)
            if why:
                result.notes = "; ".join(n for n in (result.notes, why) if n)
        growth = result.peak_rss_growth_bytes
        steps.step("memory", _weight(spec, True), f"{spec.id}: peak memory " + (
            "not measured" if growth is None else f"+{growth / 2**20:.0f} MiB"))

    return {
        "schema": SCHEMA,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "config": config,
        "versions": versions(),
        "machine": machine_description(),
        "ceilings": ceilings,
        "results": [r.as_dict() for r in results],
        "skipped": skipped,
        "dropped": [dict(s.as_dict(), id=s.id, estimated_bytes=grid.estimated_bytes(s),
                         reason=why) for s, why in dropped],
        "elapsed_s": time.perf_counter() - start,
    }
