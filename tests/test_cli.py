"""The ``fastxent`` command line: ``info``, ``bench``, argument errors, ``python -m fastxent``.

Times are only checked to be positive: the test machines are shared and noisy.
"""

import json
import subprocess
import sys

import pytest

import fastxent
from fastxent import bench
from fastxent.cli import main

ROW_KEYS = {"contender", "workload", "variant", "rows", "vocab", "dtype", "bytes", "time_s",
            "times_s", "first_call_s", "gbps", "ratio", "floor_fraction", "exp_floor_fraction",
            "peak_rss_growth_bytes", "notes", "error"}


def test_info_text(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for section in ("versions", "backends", "cpu", "numba"):
        assert f"\n{section}\n" in f"\n{out}"
    assert "fastxent  " in out and fastxent.__version__ in out
    assert "threading layer" in out


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) == {"versions", "backends", "cpu", "numba"}
    assert info["versions"]["fastxent"] == fastxent.__version__
    assert {"python", "numpy", "numba", "llvmlite"} <= set(info["versions"])
    assert info["backends"]["numpy"] is True
    assert info["cpu"]["cpu_count"] >= 1
    assert info["numba"]["threads"] >= 1
    # info runs a tiny parallel call first, so the layer reported is the one actually started
    assert "not started" not in info["numba"]["threading_layer"]


def test_bench_writes_json(tmp_path, capsys):
    path = tmp_path / "r.json"
    assert main(["bench", "--rows", "16", "--vocab", "1024", "--repeat", "1", "--peers", "numpy",
                 "--bandwidth-mib", "8", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "| contender" in out and "| numpy" in out
    report = json.loads(path.read_text())
    assert {"schema", "date", "command", "config", "versions", "machine", "ceilings", "results",
            "skipped", "dropped", "elapsed_s"} <= set(report)
    assert report["command"].startswith("fastxent bench --rows 16")
    config = report["config"]
    assert (config["rows"], config["vocab"], config["dtypes"]) == ([16], [1024], ["float32"])
    assert config["workloads"] == ["forward", "fwd+bwd"] and config["peers"] == ["numpy"]
    assert config["repeat"] == 1 and config["memory"] is False and config["seed"] == 0
    assert report["machine"]["cpu"]["cpu_count"] >= 1
    ceilings = report["ceilings"]
    assert ceilings["read_GBps"] > 0 and ceilings["copy_GBps"] > 0 and ceilings["exp_Gps"] > 0
    rows = {(r["contender"], r["workload"], r["variant"]): r for r in report["results"]}
    assert set(rows) == {("fastxent", "forward", ""), ("fastxent", "fwd+bwd", ""),
                         ("fastxent", "fwd+bwd", "in place"), ("fastxent", "forward", "torch"),
                         ("fastxent", "fwd+bwd", "torch"), ("numpy", "forward", ""),
                         ("numpy", "fwd+bwd", "")}
    for r in rows.values():
        assert set(r) == ROW_KEYS
        assert r["error"] is None
        assert r["time_s"] > 0 and len(r["times_s"]) >= 1 and r["gbps"] > 0
        assert r["floor_fraction"] > 0 and r["exp_floor_fraction"] > 0
    assert rows["fastxent", "forward", ""]["ratio"] == 1.0
    assert rows["numpy", "forward", ""]["bytes"] == 16 * 1024 * 4
    assert rows["numpy", "fwd+bwd", ""]["bytes"] == 2 * 16 * 1024 * 4


def test_bench_without_peers_or_ceilings(capsys):
    assert main(["bench", "--rows", "4", "--vocab", "64", "--repeat", "1", "--peers",
                 "--bandwidth-mib", "0"]) == 0
    out = capsys.readouterr().out
    assert "ceilings" not in out
    # 3 cases, and 2 through fastxent.torch
    assert sum(line.startswith("| fastxent") for line in out.splitlines()) == 5


@pytest.mark.torch
def test_bench_torch_eager(capsys):
    pytest.importorskip("torch")
    assert main(["bench", "--rows", "8", "--vocab", "256", "--repeat", "1", "--peers", "torch",
                 "--bandwidth-mib", "0"]) == 0
    assert capsys.readouterr().out.count("| torch ") == 2


def test_bench_bfloat16(capsys):
    pytest.importorskip("ml_dtypes")
    assert main(["bench", "--rows", "8", "--vocab", "256", "--repeat", "1", "--dtype", "bfloat16",
                 "--peers", "numpy", "--bandwidth-mib", "0"]) == 0
    out = capsys.readouterr().out
    assert "bfloat16" in out and "failed" not in out


@pytest.mark.parametrize("argv, message", [
    (["bench", "--peers", "tensorflow"], "invalid choice: 'tensorflow'"),
    (["bench", "--rows", "0"], "expected a positive integer, got 0"),
    (["bench", "--rows", "16", "-3"], "expected a positive integer, got -3"),
    (["bench", "--vocab", "many"], "expected a positive integer, got 'many'"),
    (["bench", "--dtype", "float64"], "invalid choice: 'float64'"),
    (["bench", "--workloads", "backward"], "invalid choice: 'backward'"),
    (["bench", "--time-budget", "0"], "expected a positive number, got 0"),
    (["bench", "--time-budget", "soon"], "expected a positive number, got 'soon'"),
    (["bench", "--memory-budget-gib", "-1"], "expected a positive number, got -1"),
    (["bench", "--bandwidth-mib", "-5"], "expected a positive integer, got -5"),
    (["bench", "--rows"], "expected at least one argument"),
    (["bench", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["bench", "--json", "/no/such/dir/results.json"], "no such directory to write it in"),
    (["eval", "a.npy", "b.npy", "--batch-mb", "0"], "expected a positive number, got 0"),
    (["info", "--yaml"], "unrecognized arguments: --yaml"),
    ([], "required: COMMAND"),
    (["serve"], "invalid choice: 'serve'"),
])
def test_bad_arguments_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: fastxent" in err and message in err


def test_python_dash_m_fastxent():
    done = subprocess.run([sys.executable, "-m", "fastxent", "info", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["versions"]["fastxent"] == fastxent.__version__


def test_memory_child_reports_growth():
    spec = dict(contender="fastxent", workload="fwd+bwd", variant="", rows=256, vocab=4096,
                dtype="float32", seed=0)
    done = subprocess.run([sys.executable, "-m", "fastxent.bench", "--_measure-memory",
                           json.dumps(spec)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    growth = json.loads(done.stdout.splitlines()[-1])["peak_rss_growth_bytes"]
    # the out-of-place gradient (4 MiB) is the only N×V allocation; allow for the allocator
    assert 0 <= growth < 64 * 2**20


def test_cpu_info_reads_model_and_flags(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: sse2 avx2 fma\n\n"
                    "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: sse2 avx2 fma\n")
    info = bench.cpu_info(str(path))
    assert info["model"] == "Test CPU 9000"
    assert info["simd"]["avx2"] and info["simd"]["fma"] and not info["simd"]["avx512f"]


def test_cpu_info_without_proc(tmp_path):
    info = bench.cpu_info(str(tmp_path / "missing"))
    assert info["simd"] == {} and info["model"]


def test_ratios_and_floor_fractions():
    rows = [bench.Result("fastxent", "forward", bytes=10**9, time_s=0.1),
            bench.Result("numpy", "forward", bytes=10**9, time_s=0.5),
            bench.Result("fastxent", "fwd+bwd", bytes=2 * 10**9, time_s=0.2),
            bench.Result("fastxent", "fwd+bwd", "in place", bytes=2 * 10**9, time_s=0.1),
            bench.Result("torch.compile", "fwd+bwd", bytes=2 * 10**9, error="no compiler")]
    bench.add_ratios(rows, {"read_GBps": 20.0, "copy_GBps": 40.0})
    assert [r.ratio for r in rows] == pytest.approx([1.0, 5.0, 1.0, 0.5, None])
    # forward: 1 GB at 20 GB/s is 50 ms; fwd+bwd: 2 GB at 40 GB/s is 50 ms
    assert [r.floor_fraction for r in rows] == pytest.approx([0.5, 0.1, 0.25, 0.5, None])


def test_failed_contender_is_a_table_row():
    report = {"config": dict(repeat=1, time_budget_s=1.0, memory=False),
              "machine": {"cpu": bench.cpu_info(), "numba": {"threads": 1,
                                                             "threading_layer": "tbb"}},
              "versions": {"numba": "0"}, "ceilings": None, "skipped": {}, "dropped": [],
              "results": [bench.Result("torch.compile", "forward", rows=1, vocab=2,
                                       error="CompilerError: no cc").as_dict()]}
    text = bench.format_report(report)
    assert "| torch.compile | forward" in text and "CompilerError: no cc" in text
    assert "## N=1, V=2, float32" in text


def test_numpy_peer_matches_fastxent():
    x, t = bench.make_inputs(8, 512, seed=1)
    loss, grad = bench.numpy_loss_and_grad(x, t)
    ref_loss, ref_grad = fastxent.cross_entropy_with_grad(x, t)
    assert bench.numpy_loss(x, t) == pytest.approx(ref_loss, rel=1e-5)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert abs(grad - ref_grad).max() < 1e-6
