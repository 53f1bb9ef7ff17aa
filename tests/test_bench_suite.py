"""The pytest-benchmark suites in ``benchmarks/`` run: every case of the smoke size, called once.

The suites are not collected by a plain ``python -m pytest`` (``testpaths`` leaves them out);
this test runs them the way their documentation says, in a subprocess.
"""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not (ROOT / "benchmarks").is_dir(),
                                reason="the benchmarks/ directory is not part of this install")


def _pytest(*args):
    return subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider",
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_benchmark_suites_pass_at_the_smoke_size():
    pytest.importorskip("pytest_benchmark")
    done = _pytest("-q", "--bench-size", "smoke", "--benchmark-disable")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    passed = int(re.search(r"(\d+) passed", done.stdout).group(1))
    # forward, fused (out of place and in place) and logsumexp for fastxent, in two dtypes
    assert passed >= 2 * 4
    assert "failed" not in done.stdout.splitlines()[-1]


def test_benchmark_suites_reject_an_unknown_size():
    pytest.importorskip("pytest_benchmark")
    done = _pytest("--bench-size", "huge", "--collect-only")
    assert done.returncode != 0
    assert "--bench-size 'huge': expected one of smoke, quick, full" in done.stderr
