"""The CUDA backend's tests (``tests/test_cuda_backend.py``) run in Numba's CUDA simulator, in a
process of their own (the simulator replaces ``numba.cuda`` for the whole process). ``conftest``
starts that process when the session is collected, so that it runs alongside the other tests, and
puts this test last."""

import subprocess

import pytest

from conftest import SIMULATOR_RUN, start_simulated_suite

pytest.importorskip("numba.cuda")


def test_cuda_backend_in_the_simulator(request):
    run = request.config.stash.get(SIMULATOR_RUN, None)
    proc, out = run if run is not None else start_simulated_suite(request.config.rootpath)
    try:
        proc.wait(timeout=900)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    out.seek(0)
    log = out.read()
    tail = "\n".join(log.splitlines()[-40:])
    assert proc.returncode == 0, f"the simulated CUDA suite failed:\n{tail}"
    summary = log.strip().splitlines()[-1]
    assert " passed" in summary, summary
