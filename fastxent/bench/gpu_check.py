"""``python -m fastxent.bench.gpu_check``: the prepared check for a machine with one NVIDIA GPU.

Steps, within ``--budget-s`` seconds:

1. the GPU as PyTorch, numba-cuda and ``nvidia-smi`` see it, and :func:`.machine.versions`;
2. the GPU tests, with pytest, for at most :data:`TESTS_SHARE` of the budget (then SIGINT);
3. each of :data:`CASES` in a process of its own (a crash, a hang or a broken CUDA context
   stays there), if the budget left, less :data:`RESERVE_S`, still holds its estimate.

Outputs, in ``--out``: ``summary.md`` (printed at the end) and ``gpu-check.json``, rewritten
after every step; ``junit.xml`` and ``tests.log``; ``bench.log`` and ``case-NAME.json``.

Exit status: 0 when the check ran to its end on a GPU (failures are in the summary), 1 without a
usable CUDA GPU (nothing is run), 2 for bad arguments or an ``--out`` that cannot be created.
"""

import argparse
import importlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from collections import namedtuple
from contextlib import suppress
from pathlib import Path

from ..core.argtypes import positive_float
from . import gpu, linear, machine
from .report import markdown_table

MODULE = "fastxent.bench.gpu_check"
DEFAULT_BUDGET_S = 420.0
TESTS_SHARE = 0.35  #: the share of the budget the tests may take
RESERVE_S = 10.0  #: seconds kept back for the summary at the end
KILL_GRACE_S = 20.0  #: seconds a stopped process has to end before its group is killed
ROOT = Path(__file__).resolve().parents[2]  #: the source checkout: every process runs there
#: The files with GPU tests, run with ``-k "cuda or gpu"``.
TEST_FILES = ("tests/test_cuda_backend.py", "tests/test_cuda_dispatch.py",
              "tests/test_cuda_ptx.py", "tests/test_linear.py", "tests/test_torch_module.py",
              "tests/test_bench_gpu.py")

#: ``estimate_s``: about how long its process takes; ``loss`` / ``linear``: arguments of
#: ``gpu.run_gpu_bench`` / ``linear.run_gpu``.
Case = namedtuple("Case", "name title estimate_s loss linear", defaults=(None, None))
NO_JAX = ("torch", "torch.compile", "liger")
#: All of ``gpu.TARGETS_MS``, then the fused linear loss at ``linear.GPU_SHAPE``.
CASES = (
    Case("bfloat16", "cross-entropy, bfloat16, N=8192, V=131072", 90,
         dict(rows=[8192], vocab=[131072], dtypes=["bfloat16"], peers=gpu.PEERS)),
    Case("float32", "cross-entropy, float32, N=8192, V=131072", 75,
         dict(rows=[8192], vocab=[131072], dtypes=["float32"], peers=NO_JAX)),
    Case("few-rows", "cross-entropy, bfloat16, few rows: N=1 and 16, V=256000", 50,
         dict(rows=[1, 16], vocab=[256000], dtypes=["bfloat16"], workloads=["fwd+bwd"],
              peers=NO_JAX)),
    Case("linear", "fused linear cross-entropy, bfloat16, N=8192, H=4096, V=131072", 50,
         linear=dict(linear.GPU_SHAPE)),
)


def _error(exc):
    """An exception in one line: its type and the first line of its message."""
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"


def _tail(path, lines=15):
    with open(path, errors="replace") as f:
        return "\n".join(f.read().rstrip().splitlines()[-lines:])


def _probe(fn):
    """``fn()``, or ``{"error": ...}`` when it raises: no probe stops the check."""
    try:
        return fn()
    except Exception as exc:
        return {"error": _error(exc)}


def torch_gpu():
    import torch

    facts = {"version": torch.__version__, "cuda_build": torch.version.cuda,
             "usable": torch.cuda.is_available()}
    if facts["usable"]:
        p = torch.cuda.get_device_properties(0)
        facts.update(name=p.name, capability=f"{p.major}.{p.minor}",
                     sms=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30))
    return facts


def nvidia_smi():
    """The driver's version and its CUDA version, from ``nvidia-smi``'s header."""
    text = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
    return dict(re.findall(r"(Driver|CUDA) Version:\s*(\S+)", text))


def environment():
    """Step 1: the versions and three views of the GPU; never raises."""
    return {"versions": _probe(machine.versions),
            "torch": _probe(torch_gpu), "nvidia_smi": _probe(nvidia_smi), "numba": _probe(
                lambda: {"usable": importlib.import_module("numba.cuda").is_available()})}


def why_no_gpu(env):
    """None when PyTorch or numba-cuda can use a CUDA GPU, else why neither can."""
    t, n = env["torch"], env["numba"]
    if not (t.get("usable") or n.get("usable")):
        return "; ".join([t.get("error") or f"torch {t['version']} sees no GPU",
                          n.get("error") or "numba.cuda sees no GPU"])


def run_limited(argv, limit_s, log, stop=signal.SIGTERM):
    """Runs ``argv`` in :data:`ROOT` (output into ``log``) for ``limit_s`` seconds at most, then
    sends ``stop``, and :data:`KILL_GRACE_S` later kills its process group. Returns (exit
    status, whether it was stopped, seconds)."""
    start, stopped = time.monotonic(), False
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        stopped = True
        proc.send_signal(stop)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=KILL_GRACE_S)
    finally:  # what is left of it (compile workers, JAX's process), also on Ctrl-C
        with suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.returncode, stopped, time.monotonic() - start


def parse_junit(path):
    """``counts`` (passed, failed, errors, skipped) and ``failures`` ({test, message}: the first
    line of the error) from pytest's JUnit XML."""
    counts = dict(passed=0, failed=0, errors=0, skipped=0)
    kinds = {"failure": "failed", "error": "errors", "skipped": "skipped"}
    failures = []
    for case in ET.parse(path).getroot().iter("testcase"):
        if not case.get("name"):  # what was running when pytest was interrupted
            continue
        marks = [child for child in case if child.tag in kinds]
        bad = [child for child in marks if child.tag != "skipped"]
        counts[kinds[(bad or marks)[0].tag] if marks else "passed"] += 1
        if bad:
            message = (bad[0].get("message") or bad[0].text or "").strip().split("\n")[0]
            failures.append({"test": f"{case.get('classname')}::{case.get('name')}",
                             "message": message[:300]})
    return {"counts": counts, "failures": failures}


def run_tests(out, limit_s, argv=None):
    """Step 2: pytest on the GPU tests (or ``argv``) for at most ``limit_s`` seconds: its
    status, exit status, the end of ``tests.log``, and :func:`parse_junit`'s findings."""
    junit, log_path = os.path.join(out, "junit.xml"), os.path.join(out, "tests.log")
    argv = argv or [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
                    f"--junitxml={junit}", "-k", "cuda or gpu", *TEST_FILES]
    with open(log_path, "w") as log:
        rc, stopped, seconds = run_limited(argv, limit_s, log, stop=signal.SIGINT)
    result = {"status": "timed out" if stopped else "ran", "returncode": rc, "seconds": seconds,
              "command": shlex.join(["python", *argv[1:]]), "log_tail": _tail(log_path)}
    with suppress(OSError, ET.ParseError):  # no JUnit XML: the end of tests.log says why
        result.update(parse_junit(junit))
    return result


def _child(name, result_path):
    """``--_case NAME --out DIR``, in a case's own process: its results (JSON-ready) and their
    Markdown tables, or its error, written as JSON to ``result_path``, DIR/case-NAME.json."""
    case = next(c for c in CASES if c.name == name)
    try:
        if case.loss is not None:
            data = gpu.run_gpu_bench(**case.loss, command=f"python -m {MODULE} --_case {name}")
            markdown = gpu.format_report(data)
        else:
            data = dict(zip(("results", "missing"), linear.run_gpu(**case.linear)))
            markdown = linear.format_gpu_table(**data, **case.linear)
        payload = {"status": "ok", "data": data, "markdown": markdown}
    except BaseException as exc:  # whatever stops the case is its result
        payload = {"status": "failed", "error": _error(exc),
                   "traceback": "\n".join(traceback.format_exc().splitlines()[-15:])}
    with open(result_path, "w") as f:
        json.dump(payload, f, default=str)
    return 0


def run_case_in_child(case, limit_s, out):
    """One case in a process of its own for at most ``limit_s`` seconds (its output appended to
    ``bench.log``): its entry, with ``status`` "ok", "failed" or "timed out"."""
    result, log_path = os.path.join(out, f"case-{case.name}.json"), os.path.join(out, "bench.log")
    with suppress(FileNotFoundError):  # a stale result would pass for this run's
        os.remove(result)
    with open(log_path, "a") as log:
        print(f"\n===== {case.name}: {case.title} =====", file=log, flush=True)
        rc, stopped, seconds = run_limited(
            [sys.executable, "-m", MODULE, "--_case", case.name, "--out", out], limit_s, log)
    entry = {"name": case.name, "title": case.title, "seconds": seconds}
    if os.path.exists(result):
        with open(result) as f:
            return dict(entry, **json.load(f))
    why = "stopped: out of time" if stopped else f"its process ended with status {rc}, no result"
    return dict(entry, status="timed out" if stopped else "failed", error=why,
                log_tail=_tail(log_path))


def run_cases(cases, left, runner, on_progress):
    """Step 3: ``runner(case, limit_s)`` for each case whose estimate ``left()`` seconds less
    :data:`RESERVE_S` still hold, the others skipped; ``on_progress(entries)`` after each."""
    entries = []
    for case in cases:
        limit = left() - RESERVE_S
        if limit >= case.estimate_s:
            print(f"gpu-check: case {case.name} (at most {limit:.0f} s)", file=sys.stderr)
            entries.append(runner(case, limit))
        else:
            entries.append({"name": case.name, "title": case.title, "status": "skipped",
                            "seconds": 0, "note": f"out of time: {max(limit, 0):.0f} s left, "
                            f"the case needs about {case.estimate_s:.0f} s"})
        on_progress(entries)
    return entries


def environment_lines(env):
    t, smi, versions = env["torch"], env["nvidia_smi"], env["versions"]
    return [f"- GPU: {t['name']}, compute capability {t['capability']}, {t['sms']} SMs, "
            f"{t['memory_gib']} GiB" if "name" in t else "- GPU: none that torch can use",
            f"- driver {smi.get('Driver', '?')}, CUDA {smi.get('CUDA', '?')} (nvidia-smi); torch "
            f"built with CUDA {t.get('cuda_build', '?')}; numba.cuda "
            f"{'can' if env['numba'].get('usable') else 'cannot'} use it",
            *(f"- {key}: {env[key]['error']}" for key in ("versions", "torch", "numba",
                                                          "nvidia_smi") if "error" in env[key]),
            "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "error")]


def tests_lines(tests):
    if tests["status"] == "not run":
        return [f"not run: {tests['note']}"]
    lines = [f"`{tests['command']}`: {tests['status']} after {tests['seconds']:.0f} s, exit "
             f"status {tests['returncode']}"]
    if "counts" in tests:
        c = tests["counts"]
        lines += ["", f"**{c['failed']} failed, {c['errors']} errors**, {c['passed']} passed, "
                  f"{c['skipped']} skipped"]
        lines += [f"- `{f['test']}`: `{f['message']}`" for f in tests["failures"][:40]]
    if tests["status"] != "ran" or tests["returncode"] not in (0, 1) or "counts" not in tests:
        lines += ["", "The end of tests.log:", "", "```", tests["log_tail"], "```"]
    return lines


def benchmark_lines(cases):
    if not cases:
        return ["not run"]
    lines = [markdown_table(["case", "status", "seconds", "note"],
                            [[e["name"], e["status"], f"{e['seconds']:.0f}",
                              e.get("note") or e.get("error", "")] for e in cases], right={2})]
    for e in cases:
        if e["status"] == "ok":  # the case's tables, less title and legend, headings nested
            tables = e["markdown"].replace(gpu.LEGEND, "").strip().splitlines()
            lines += ["", f"### {e['title']}", *("##" + s if s.startswith("#") else s
                                                  for s in tables if not s.startswith("# "))]
        elif e["status"] != "skipped":
            lines += ["", f"### {e['title']}: {e['status']}", "", "```",
                      e.get("traceback") or e["log_tail"], "```"]
    legend = any(gpu.LEGEND in e.get("markdown", "") for e in cases)
    return lines + (["", gpu.LEGEND] if legend else [])


def format_summary(rep):
    """The Markdown summary of a check's report (the dict :func:`main` writes as JSON)."""
    state = (f"**no usable CUDA GPU**: {rep['no_gpu']}" if rep["no_gpu"] else
             "ran to its end" if rep["finished"] else
             "**incomplete**: stopped before its end (these are the results it had)")
    return "\n".join([
        "# fastxent GPU check", "", f"- command: `{rep['command']}`",
        f"- {rep['elapsed_s']:.0f} s of a {rep['budget_s']:.0f} s budget: {state}",
        "", "## Environment", "", *environment_lines(rep["environment"]),
        "", "## Tests", "", *tests_lines(rep["tests"]),
        "", "## Benchmark", "", *benchmark_lines(rep["cases"])]) + "\n"


def build_parser():
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}", description="The prepared check for one NVIDIA GPU "
        "(docs/benchmarks.md). Exit status 0 when it ran to its end on a GPU, 1 without a usable "
        "CUDA GPU, 2 for bad arguments.")
    parser.add_argument("--out", metavar="DIR",
                        help="output folder (default: $OUT where it is set, else gpu-check)")
    parser.add_argument("--budget-s", type=positive_float, default=DEFAULT_BUDGET_S,
                        metavar="SECONDS", help=f"time for the whole check (default "
                        f"{DEFAULT_BUDGET_S:g}); the tests get {100 * TESTS_SHARE:.0f}%% of it")
    parser.add_argument("--_case", help=argparse.SUPPRESS)
    return parser


def main(argv=None):
    """``python -m fastxent.bench.gpu_check``; the exit status (see the module's docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out or os.environ.get("OUT") or "gpu-check")
    if args._case:
        return _child(args._case, os.path.join(out, f"case-{args._case}.json"))
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        parser.error(f"--out {out!r} cannot be created ({exc})")
    start, env, argv = time.monotonic(), environment(), sys.argv[1:] if argv is None else argv
    no_gpu = why_no_gpu(env)
    rep = {"command": shlex.join(["python", "-m", MODULE, *argv]), "budget_s": args.budget_s,
           "finished": False, "no_gpu": no_gpu, "environment": env, "cases": [], "tests": {
               "status": "not run", "note": "no usable CUDA GPU" if no_gpu else "not reached"}}

    def save():
        rep["elapsed_s"] = time.monotonic() - start
        with open(os.path.join(out, "gpu-check.json"), "w") as f:
            json.dump(rep, f, indent=1, default=str)
        with open(os.path.join(out, "summary.md"), "w") as f:
            f.write(format_summary(rep))
        return format_summary(rep)

    try:
        if no_gpu is None:  # step 2, then step 3, the summary saved before and after each
            save()
            rep["tests"] = run_tests(out, args.budget_s * TESTS_SHARE)
            save()
            run_cases(CASES, lambda: args.budget_s - (time.monotonic() - start),
                      lambda case, limit: run_case_in_child(case, limit, out),
                      lambda entries: (rep.update(cases=list(entries)), save()))
        rep["finished"] = True
    finally:
        print(save(), end="", flush=True)
    return 1 if no_gpu else 0


if __name__ == "__main__":
    sys.exit(main())
