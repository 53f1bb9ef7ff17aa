"""Peak memory of one case, measured in a fresh process so that nothing else is counted.

The child (``python -m fastxent.bench --_measure-memory SPEC``) makes the inputs, builds the case,
calls it once to warm up, resets the kernel's peak-RSS mark and calls it once more: the growth of
the peak over what the process held before that call is what the call needed beyond its inputs.
Every peer's N×V temporaries show there; fastxent's out-of-place gradient shows as one array.
"""

import gc
import json
import subprocess
import sys

from ..evaluation.peak_memory import peak_rss_bytes as _peak_rss_bytes
from ..evaluation.peak_memory import reset_peak_rss as _reset_peak_rss
from .grid import Spec
from .inputs import make_inputs
from .peers import build_cases
from .timing import call_once


def peak_memory_growth(case):
    """Bytes by which one call raises the process's peak RSS, after inputs and a warm-up call.

    Where the peak cannot be reset, the warm-up call (compilation included) is counted too.
    """
    before = _peak_rss_bytes()
    call_once(case)  # warm-up: Numba's cache, Inductor's and XLA's compilation
    gc.collect()
    if case.setup is not None:
        case.setup()
    if _reset_peak_rss():
        before = _peak_rss_bytes()
    case.run()
    return _peak_rss_bytes() - before


def child(spec):
    """In the fresh process: build the inputs and the case of ``spec`` (a dict of
    :class:`~fastxent.bench.grid.Spec` fields plus ``seed``), print its peak-RSS growth as JSON."""
    spec = dict(spec)
    seed = spec.pop("seed", 0)
    s = Spec(**spec)
    x, t = make_inputs(s.rows, s.vocab, s.dtype, seed)
    case = next(c for c in build_cases(s.contender, x, t, [s.workload]) if c.variant == s.variant)
    print(json.dumps({"peak_rss_growth_bytes": peak_memory_growth(case)}))


def measure(spec, seed=0, timeout=600):
    """Peak-RSS growth of one case (a :class:`~fastxent.bench.grid.Spec`) in a fresh process.

    Returns
    -------
    (int or None, str or None)
        The bytes, and why they are missing when the child failed.
    """
    payload = json.dumps(dict(spec.as_dict(), seed=seed))
    cmd = [sys.executable, "-m", "fastxent.bench", "--_measure-memory", payload]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"memory measurement timed out after {timeout} s"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"memory measurement failed: {last[:200]}"
    try:
        return int(json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_growth_bytes"]), None
    except (ValueError, IndexError, KeyError):
        return None, f"memory measurement printed no result: {done.stdout[-200:]!r}"
