"""Timing one case, and the figures derived from the times: GB/s, ratios, fractions of floors.

A case is called ``case.warmup`` times untimed (compilation happens there; the first call's time
is kept), then timed call by call until it has ``repeat`` calls and at least
:data:`MIN_TIMED_S` seconds of them, or until its calls add up to ``time_budget`` seconds, at
least one call and at most :data:`MAX_CALLS`. So a 30 µs call is timed a few hundred times and a
1.5 s call once. The median is reported.
"""

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

from .ceilings import floor_seconds
from .grid import Labelled

#: Seconds of timed calls a case gets at least, once it has ``repeat`` calls (fast calls are
#: noisy one by one).
MIN_TIMED_S = 0.05
#: Calls a case gets at most.
MAX_CALLS = 200


@dataclass
class Result(Labelled):
    """One row of the report. Times in seconds; ``None`` where not measured."""

    contender: str
    workload: str
    variant: str = ""
    rows: int = 0
    vocab: int = 0
    dtype: str = "float32"
    bytes: int = 0
    time_s: Optional[float] = None
    times_s: list = field(default_factory=list)
    first_call_s: Optional[float] = None
    gbps: Optional[float] = None
    ratio: Optional[float] = None
    floor_fraction: Optional[float] = None
    exp_floor_fraction: Optional[float] = None
    peak_rss_growth_bytes: Optional[int] = None
    notes: str = ""
    error: Optional[str] = None


    def as_dict(self):
        return asdict(self)


def call_once(case):
    """Seconds taken by one ``case.run()``; its result is dropped before the next call."""
    if case.setup is not None:
        case.setup()
    t0 = time.perf_counter()
    case.run()
    return time.perf_counter() - t0


def time_case(case, repeat=5, time_budget=1.0):
    """(median seconds, all timed seconds, first warm-up call's seconds or None) of a case."""
    warm = [call_once(case) for _ in range(case.warmup)]
    times = []
    while True:
        times.append(call_once(case))
        spent = sum(times)
        if (len(times) >= MAX_CALLS or spent >= time_budget
                or (len(times) >= repeat and spent >= MIN_TIMED_S)):
            break
    return statistics.median(times), times, (warm[0] if warm else None)


def add_ratios(results, ceilings):
    """Fill ``gbps``, ``ratio``, ``floor_fraction`` and ``exp_floor_fraction`` in place.

    ``ratio`` is the time over fastxent's (out of place) for the same workload, shape and dtype:
    above 1 means fastxent is faster. The floor fractions are the floor's time over the case's
    (see :mod:`.ceilings`); they need ``ceilings`` (None leaves them empty).
    """
    ref = {(r.workload, r.shape): r.time_s for r in results
           if r.contender == "fastxent" and not r.variant and r.time_s}
    for r in results:
        if not r.time_s:
            continue
        r.gbps = r.bytes / r.time_s / 1e9
        if (r.workload, r.shape) in ref:
            r.ratio = r.time_s / ref[r.workload, r.shape]
        if ceilings:
            r.floor_fraction = floor_seconds(r.workload, r.bytes, ceilings) / r.time_s
            if ceilings.get("exp_Gps"):
                r.exp_floor_fraction = r.rows * r.vocab / (ceilings["exp_Gps"] * 1e9) / r.time_s
