"""``python -m fastxent.bench.gpu_check`` without a GPU: the summary of synthetic results, the
budget, missing packages, the time limits (on stand-in commands) and the command's outcomes."""

import json
import signal
import subprocess
import sys

import pytest

from fastxent.bench import gpu, gpu_check, linear

GPU_ENV = {"versions": {"python": "3.12.3", "torch": "2.11.0"},
           "torch": {"usable": True, "version": "2.11.0", "cuda_build": "13.0",
                     "name": "NVIDIA H100 80GB HBM3", "capability": "9.0", "sms": 132,
                     "memory_gib": 80},
           "numba": {"usable": True}, "nvidia_smi": {"Driver": "580.159.04", "CUDA": "13.0"}}


def report(**changes):
    """A check's made-up report: failing tests; cases ok, failed, timed out and skipped."""
    rows = [{"contender": c, "variant": "", "workload": "fwd+bwd", "rows": 8192, "vocab": 131072,
             "dtype": "bfloat16", "time_s": t, "error": e, "bytes": 2 * 8192 * 131072 * 2}
            for c, t, e in (("fastxent", 1.6e-3, None), ("torch.compile", None, "OOM"))]
    gpu._derive(rows, {"copy_TBps": 3.0, "read_TBps": 2.9})
    bench = {"command": None, "device": {"name": "NVIDIA H100"}, "ceilings": None,
             "versions": {}, "skipped": {"jax": "jax is not installed"}, "results": rows}
    linear_results = {"fastxent.torch": (0.2, 2**20, 11.25), "torch": (0.25, 2**31, 11.25)}
    cases = [("bfloat16", "ok", 61, dict(markdown=gpu.format_report(bench))),
             ("few-rows", "failed", 3, dict(error="RuntimeError: bad launch",
                                            traceback="Traceback (most...")),
             ("linear", "ok", 40, dict(markdown=linear.format_gpu_table(
                 linear_results, {}, **linear.GPU_SHAPE))),
             ("hang", "timed out", 80, dict(error="stopped: out of time", log_tail="compiling")),
             ("extra", "skipped", 0, dict(note="out of time: 5 s left, the case needs 50 s"))]
    return dict({"command": "python -m fastxent.bench.gpu_check", "budget_s": 420.0,
                 "elapsed_s": 300.0, "finished": True, "no_gpu": None, "environment": GPU_ENV,
                 "tests": {"status": "ran", "command": "python -m pytest", "returncode": 1,
                           "seconds": 95.0, "log_tail": "=== 2 failed ===",
                           "counts": {"passed": 150, "failed": 2, "errors": 0, "skipped": 3},
                           "failures": [{"test": "tests.test_cuda_ptx::test_b", "message": "no"},
                                        {"test": "tests.test_x::test_c", "message": "Grid"}]},
                 "cases": [dict(name=n, title=f"{n} case", status=st, seconds=sec, **more)
                           for n, st, sec, more in cases]}, **changes)


def test_summary_of_synthetic_results():
    text = gpu_check.format_summary(report())
    assert "- 300 s of a 420 s budget: ran to its end" in text
    assert "- GPU: NVIDIA H100 80GB HBM3, compute capability 9.0, 132 SMs, 80 GiB" in text
    assert "- driver 580.159.04, CUDA 13.0 (nvidia-smi); torch built with CUDA 13.0" in text
    assert "- versions: python 3.12.3, torch 2.11.0" in text
    assert "**2 failed, 0 errors**, 150 passed, 3 skipped" in text
    assert "- `tests.test_cuda_ptx::test_b`: `no`" in text
    assert "=== 2 failed ===" not in text  # the log's end only where it says more
    assert "| hang     | timed out |      80 | stopped: out of time" in text
    assert "| extra    | skipped   |       0 | out of time: 5 s left" in text
    # the cases' own tables, two heading levels down, the legend once, at the end
    assert "### bfloat16 case\n\n- device: NVIDIA H100" in text
    assert "#### N=8192, V=131072, bfloat16 (2.00 GiB of logits)" in text
    assert "failed: OOM" in text and "- skipped jax: jax is not installed" in text
    assert text.count(gpu.LEGEND) == 1 and text.rstrip().endswith(gpu.LEGEND)
    assert "| fastxent.torch | 200.0 ms | 1.00× | 1.00 MiB | 11.25000 |" in text
    assert "### few-rows case: failed\n\n```\nTraceback (most...\n```" in text
    assert "### hang case: timed out\n\n```\ncompiling\n```" in text
    assert "# fastxent bench" not in text and "### extra" not in text
    # an interrupted check: what it has, and where the tests stopped
    tests = {"status": "timed out", "command": "python -m pytest", "returncode": 2,
             "seconds": 150.0, "log_tail": "tests/test_cuda_backend.py:9: KeyboardInterrupt"}
    text = gpu_check.format_summary(report(finished=False, tests=tests, cases=[]))
    assert "**incomplete**: stopped before its end" in text and "not run" in text
    assert "`python -m pytest`: timed out after 150 s, exit status 2\n\nThe end of " \
        "tests.log:\n\n```\ntests/test_cuda_backend.py:9: KeyboardInterrupt\n```" in text


def test_budget_skips_the_cases_it_cannot_hold():
    clock = [100.0]
    took = {"a": 50, "b": 35, "d": 1}
    limits, seen = {}, []

    def runner(case, limit_s):
        limits[case.name] = limit_s
        clock[0] -= took[case.name]
        return {"name": case.name, "status": "ok"}

    cases = [gpu_check.Case(n, n, e) for n, e in (("a", 30), ("b", 30), ("c", 20), ("d", 1))]
    entries = gpu_check.run_cases(cases, lambda: clock[0], runner, lambda e: seen.append(len(e)))
    assert [e["status"] for e in entries] == ["ok", "ok", "skipped", "ok"]
    # each case may use all that is left, less what is kept for the summary
    assert limits == {k: v - gpu_check.RESERVE_S for k, v in (("a", 100), ("b", 50), ("d", 15))}
    assert entries[2]["note"] == "out of time: 5 s left, the case needs about 20 s"
    assert seen == [1, 2, 3, 4]


def test_headline_cases_cover_the_targets():
    covered = {(n, v, d, w) for c in gpu_check.CASES if c.loss for n in c.loss["rows"]
               for v in c.loss["vocab"] for d in c.loss["dtypes"]
               for w in c.loss.get("workloads", gpu.WORKLOADS)}
    assert set(gpu.TARGETS_MS) <= covered
    assert [c.linear for c in gpu_check.CASES if c.linear] == [linear.GPU_SHAPE]
    assert all((gpu_check.ROOT / f).is_file() for f in gpu_check.TEST_FILES)


def test_environment_with_torch_and_the_gpu_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "numba.cuda", None)
    monkeypatch.setenv("PATH", "")
    env = gpu_check.environment()
    assert env["torch"]["error"].startswith("ModuleNotFoundError: import of torch halted")
    assert "error" in env["numba"] and env["nvidia_smi"]["error"].startswith("FileNotFound")
    why = gpu_check.why_no_gpu(env)
    assert why.startswith("ModuleNotFoundError: import of torch") and "numba.cuda" in why
    text = "\n".join(gpu_check.environment_lines(env))
    assert "- GPU: none that torch can use\n- driver ?, CUDA ? (nvidia-smi)" in text
    assert "- torch: ModuleNotFoundError" in text and "- versions: fastxent " in text


def test_parse_junit(tmp_path):
    """What pytest writes when interrupted: a test case without a name, not counted."""
    (tmp_path / "j.xml").write_text(
        '<testsuites><testsuite><testcase classname="t" name="a" />'
        '<testcase classname="t" name="b"><failure message="AssertionError: boom&#10;more">'
        'E text</failure></testcase><testcase classname="t" name="c"><error message="">'
        'E   RuntimeError: no context</error></testcase><testcase classname="t" name="d">'
        '<skipped message="no GPU" /></testcase><testcase time="0.0" /></testsuite></testsuites>')
    got = gpu_check.parse_junit(tmp_path / "j.xml")
    assert got["counts"] == {"passed": 1, "failed": 1, "errors": 1, "skipped": 1}
    assert got["failures"] == [{"test": "t::b", "message": "AssertionError: boom"},
                               {"test": "t::c", "message": "E   RuntimeError: no context"}]


def test_time_limits(tmp_path, monkeypatch):
    """A hanging test run is interrupted (SIGINT: pytest writes its JUnit XML); a process that
    ignores its signal is killed after the grace period."""
    hang = ("import sys, time; open(sys.argv[1], 'w').write('<testsuites><testsuite><testcase "
            "classname=\"t\" name=\"a\" /></testsuite></testsuites>'); time.sleep(60)")
    got = gpu_check.run_tests(str(tmp_path), 1.0, [sys.executable, "-c", hang,
                                                   str(tmp_path / "junit.xml")])
    assert got["status"] == "timed out" and got["seconds"] < gpu_check.KILL_GRACE_S
    assert got["counts"]["passed"] == 1 and got["log_tail"].endswith("KeyboardInterrupt")
    monkeypatch.setattr(gpu_check, "KILL_GRACE_S", 0.5)
    deaf = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    with open(tmp_path / "log", "w") as log:
        rc, stopped, seconds = gpu_check.run_limited([sys.executable, "-c", deaf], 0.5, log)
    assert stopped and rc == -signal.SIGKILL and seconds < 10


def test_a_case_process_reports_its_error(tmp_path, monkeypatch):
    """The real case process, with a torch that cannot be imported: its error comes back."""
    (tmp_path / "torch.py").write_text('raise ImportError("torch hidden by this test")\n')
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    entry = gpu_check.run_case_in_child(gpu_check.CASES[0], 60, str(tmp_path))
    assert entry["status"] == "failed" and entry["name"] == "bfloat16"
    assert entry["error"] == "ImportError: torch hidden by this test"
    assert "in run_gpu_bench" in entry["traceback"]
    assert (tmp_path / "bench.log").read_text().startswith("\n===== bfloat16:")


def test_main_without_a_gpu(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(gpu_check, "environment", lambda: dict(
        GPU_ENV, torch={"usable": False, "version": "2.13.0+cpu"}, numba={"usable": False}))
    monkeypatch.setattr(gpu_check, "run_tests", None)  # must not be reached
    assert gpu_check.main(["--out", str(tmp_path), "--budget-s", "60"]) == 1
    summary = (tmp_path / "summary.md").read_text()
    assert "**no usable CUDA GPU**: torch 2.13.0+cpu sees no GPU" in summary
    assert summary == capsys.readouterr().out
    rep = json.loads((tmp_path / "gpu-check.json").read_text())
    assert rep["finished"] and rep["tests"]["status"] == "not run" and rep["cases"] == []


def test_main_with_a_gpu_runs_every_step(monkeypatch, tmp_path):
    synthetic = report()
    summaries = []
    monkeypatch.setattr(gpu_check, "environment", lambda: GPU_ENV)
    monkeypatch.setattr(gpu_check, "run_tests", lambda out, limit: dict(
        synthetic["tests"], limit=limit))

    def fake_case(case, limit_s, out):
        summaries.append((tmp_path / "summary.md").read_text())
        return dict(synthetic["cases"][len(summaries) - 1], name=case.name)

    monkeypatch.setattr(gpu_check, "run_case_in_child", fake_case)
    assert gpu_check.main(["--out", str(tmp_path)]) == 0
    rep = json.loads((tmp_path / "gpu-check.json").read_text())
    assert rep["tests"]["limit"] == pytest.approx(420 * gpu_check.TESTS_SHARE)
    assert [c["status"] for c in rep["cases"]] == ["ok", "failed", "ok", "timed out"]
    assert "**2 failed, 0 errors**" in summaries[0]  # saved before each case
    assert "| float32  | failed" in summaries[2] and "**incomplete**" in summaries[2]
    assert "ran to its end" in (tmp_path / "summary.md").read_text()


def test_bad_arguments_and_an_out_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("a file, not a folder")
    for argv in (["--budget-s", "0"], ["--out", str(tmp_path / "f")]):
        with pytest.raises(SystemExit) as exc:
            gpu_check.main(argv)
        assert exc.value.code == 2


def test_help():
    out = subprocess.run([sys.executable, "-m", "fastxent.bench.gpu_check", "--help"],
                         capture_output=True, text=True, cwd=gpu_check.ROOT, timeout=60)
    assert out.returncode == 0 and "--budget-s SECONDS" in out.stdout, out.stderr
    assert "1 without a usable CUDA GPU" in " ".join(out.stdout.split())
