"""The CUDA backend's tests (``tests/test_cuda_backend.py``) run in Numba's CUDA simulator, in a
process of their own (the simulator replaces ``numba.cuda`` for the whole process). ``conftest``
starts that process when the session is collected, so that it runs alongside the other tests, and
puts these tests last.

One test here per simulated test, named after it: the simulated suite's test ids come from a quick
``--collect-only`` under the simulator, and each test reports its own outcome from the run's JUnit
XML report (a failure with its own traceback, a skip with its own reason)."""

import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest
from conftest import SIMULATED_SUITE, SIMULATOR_RUN, start_simulated_suite

# the optional package: without it numba.cuda may still import (Numba's own, deprecated target)
pytest.importorskip("numba_cuda")


def _simulated_ids(root):
    """The simulated suite's test ids (after ``SIMULATED_SUITE::``), collected under the
    simulator."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--collect-only", SIMULATED_SUITE],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    prefix = f"{SIMULATED_SUITE}::"
    ids = [line[len(prefix):] for line in proc.stdout.splitlines() if line.startswith(prefix)]
    if proc.returncode or not ids:
        raise RuntimeError(f"collecting {SIMULATED_SUITE} under the simulator failed (exit "
                           f"status {proc.returncode}):\n{proc.stdout[-6000:]}"
                           f"{proc.stderr[-6000:]}")
    return ids


def pytest_generate_tests(metafunc):
    if "simulated_id" in metafunc.fixturenames:
        ids = _simulated_ids(metafunc.config.rootpath)
        metafunc.parametrize("simulated_id", ids, ids=ids)


def _outcomes(report):
    """{test id: (outcome, text)} from a JUnit XML report: "failed" with the failure's (or
    error's) own text, "skipped" with the reason, or "passed"."""
    module = SIMULATED_SUITE.removesuffix(".py").replace("/", ".")
    outcomes = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        classes = case.get("classname", "")[len(module) + 1:]
        test_id = "::".join([*filter(None, classes.split(".")), case.get("name")])
        bad = [el for el in case if el.tag in ("failure", "error")]
        skip = case.find("skipped")
        if bad:
            text = "\n\n".join(f"{el.tag}: {el.text or el.get('message', '')}" for el in bad)
            outcomes[test_id] = ("failed", text)
        elif skip is not None:
            outcomes[test_id] = ("skipped", skip.get("message") or skip.text or "")
        else:
            outcomes[test_id] = ("passed", "")
    return outcomes


@pytest.fixture(scope="module")
def simulated_run(request):
    """(outcomes by test id, the run's last lines): the whole simulated suite, run once."""
    run = request.config.stash.get(SIMULATOR_RUN, None)
    proc, out, report = run if run is not None else start_simulated_suite(request.config.rootpath)
    try:
        proc.wait(timeout=900)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    out.seek(0)
    tail = "\n".join(out.read().splitlines()[-40:])
    out.close()
    try:
        outcomes = _outcomes(report) if os.path.getsize(report) else {}
    finally:
        os.remove(report)
    failed = any(outcome == "failed" for outcome, _ in outcomes.values())
    # exit status 1 is failed tests, which report themselves; any other failure is the run's
    if proc.returncode not in (0, 1) or (proc.returncode == 1) != failed:
        pytest.fail(f"the simulated CUDA suite exited with status {proc.returncode}:\n{tail}",
                    pytrace=False)
    return outcomes, tail


def test_simulated(simulated_id, simulated_run):
    """``SIMULATED_SUITE::simulated_id``'s outcome in the simulator."""
    outcomes, tail = simulated_run
    if simulated_id not in outcomes:
        pytest.fail(f"{SIMULATED_SUITE}::{simulated_id} has no outcome in the simulated run; its "
                    f"last lines:\n{tail}", pytrace=False)
    outcome, text = outcomes[simulated_id]
    if outcome == "failed":
        pytest.fail(f"{SIMULATED_SUITE}::{simulated_id} in the simulator:\n{text}",
                    pytrace=False)
    if outcome == "skipped":
        pytest.skip(text)
