"""The benchmark package: its grid, its contenders' results, the runner's reports and plots.

Everything runs at a tiny size; times are only checked to be positive and consistent with each
other (the test machines are shared and noisy).
"""

import json

import numpy as np
import pytest

import fastxent
from fastxent.bench import command, grid, inputs, peers, report, runner
from fastxent.bench.ceilings import measure_bandwidth, measure_exp_rate
from fastxent.bench.peers import CONTENDERS, WORKLOADS
from fastxent.cli import main

RESULT_KEYS = {"contender", "workload", "variant", "rows", "vocab", "dtype", "bytes", "time_s",
               "times_s", "first_call_s", "gbps", "ratio", "floor_fraction", "exp_floor_fraction",
               "peak_rss_growth_bytes", "notes", "error"}


@pytest.fixture(scope="module")
def tiny_report():
    """One tiny run of every workload, fastxent against NumPy and SciPy, with the ceilings."""
    return runner.run_bench(rows=4, vocab=1000, dtypes=["float32", "bfloat16"],
                            workloads=WORKLOADS, peers=["numpy", "scipy"], repeat=1,
                            bandwidth_mib=8, progress=False)


# --- the grid -------------------------------------------------------------------------------------


def test_full_grid_enumerates_every_case():
    kept, dropped = grid.sized("full", WORKLOADS, CONTENDERS,
                               memory_budget=grid.default_memory_budget(24 << 30))
    assert dropped == []  # the large batch was chosen to fit a 24 GiB machine
    per_shape = {}
    for s in kept:
        per_shape.setdefault(s.shape, []).append((s.contender, s.workload, s.variant))
    assert set(per_shape) == {(n, v, d) for n in (1, 16, 512, 2048)
                              for v in (32000, 50257, 128256, 256000)
                              for d in ("float32", "bfloat16", "float16")}
    expected = [("fastxent", "forward", ""), ("fastxent", "fwd+bwd", ""),
                ("fastxent", "fwd+bwd", "in place"), ("fastxent", "logsumexp", ""),
                ("fastxent", "forward", "torch"), ("fastxent", "fwd+bwd", "torch")]
    expected += [(p, w, "") for p in ("numpy", "scipy", "torch") for w in WORKLOADS]
    expected += [("torch.compile", "forward", ""), ("torch.compile", "fwd+bwd", "")]
    expected += [("jax", w, "") for w in WORKLOADS]
    for cases in per_shape.values():
        assert sorted(cases) == sorted(expected)
    assert len(kept) == 48 * 20
    # each shape's cases are together, so that the runner makes each input once
    shapes = [s.shape for s in kept]
    assert sum(a != b for a, b in zip(shapes, shapes[1:])) == 47


def test_quick_and_smoke_sizes():
    kept, _ = grid.sized("quick", grid.QUICK_WORKLOADS, ("fastxent", "numpy"))
    assert [s.id for s in kept] == [
        "fastxent-forward-N2048-V131072-float32", "fastxent-torch-forward-N2048-V131072-float32",
        "fastxent-fwd+bwd-N2048-V131072-float32", "fastxent-inplace-fwd+bwd-N2048-V131072-float32",
        "fastxent-torch-fwd+bwd-N2048-V131072-float32", "numpy-forward-N2048-V131072-float32",
        "numpy-fwd+bwd-N2048-V131072-float32"]
    kept, _ = grid.sized("smoke", ("logsumexp",), CONTENDERS)
    assert {s.contender for s in kept} == set(CONTENDERS) - {"torch.compile"}


def test_memory_budget_drops_the_cases_that_need_more():
    kept, dropped = grid.cases([2048], [256000], ["float32"], ["forward", "fwd+bwd"],
                               ("fastxent", "numpy", "torch"), memory_budget=6 << 30)
    need = {s.id: grid.estimated_bytes(s) for s in kept + [s for s, _ in dropped]}
    assert all(need[s.id] <= 6 << 30 for s in kept)
    assert {s.id for s, _ in dropped} == {"torch-fwd+bwd-N2048-V256000-float32"}
    (spec, why), = dropped
    assert "over the budget of 6.0 GiB" in why
    assert ("fastxent", "forward") in {(s.contender, s.workload) for s in kept}


def test_default_memory_budget():
    assert grid.default_memory_budget(24 << 30) == int(0.6 * (24 << 30))
    assert grid.default_memory_budget(0) == 16 << 30


# --- inputs and ceilings --------------------------------------------------------------------------


def test_inputs_depend_on_seed_and_shape_only(monkeypatch):
    monkeypatch.setattr(inputs, "_CHUNK", 1000)  # several blocks of rows, filled by threads
    a, ta = inputs.make_inputs(7, 300, "float32", seed=3, threads=1)
    b, tb = inputs.make_inputs(7, 300, "float32", seed=3, threads=3)
    assert np.array_equal(a, b) and np.array_equal(ta, tb)
    c, _ = inputs.make_inputs(7, 300, "float32", seed=4)
    assert not np.array_equal(a, c)
    assert 1.5 < a.std() < 2.5  # normal × 2
    h, _ = inputs.make_inputs(7, 300, "bfloat16", seed=3, threads=2)
    assert h.dtype.name == "bfloat16"
    assert np.allclose(h.astype(np.float32), a, rtol=2**-8)
    with pytest.raises(ValueError, match="dtype='float64' is not one of"):
        inputs.make_inputs(2, 3, "float64")


def test_ceilings_are_positive():
    bw = measure_bandwidth(1 << 20, threads=2, repeat=1)
    assert bw["read_GBps"] > 0 and bw["copy_GBps"] > 0 and bw["threads"] == 2
    exp = measure_exp_rate(sweeps=10, repeat=1)
    assert exp["exp_Gps"] > 0 and exp["exp_threads"] >= 1


# --- the contenders -------------------------------------------------------------------------------


def _installed(names):
    return [pytest.param(n, marks=pytest.mark.skipif(peers.missing_reason(n) is not None,
                                                     reason=f"{n} is not installed"))
            for n in names]


# torch.compile runs in the smoke run of the benchmark suite (tests/test_bench_suite.py), which
# checks every contender's results the same way; it is left out here for its compilation time.
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("contender", _installed(["fastxent", "numpy", "scipy", "torch", "jax"]))
def test_contenders_compute_what_fastxent_computes(contender, dtype):
    x, t = inputs.make_inputs(4, 1000, dtype, seed=1)
    loss, grad = fastxent.cross_entropy_with_grad(x, t)
    lse = fastxent.logsumexp(x)
    rtol = 1e-5 if dtype == "float32" else 2e-2
    cases = peers.build_cases(contender, x, t)
    expected = {("fastxent", "fwd+bwd", "in place"), ("fastxent", "forward", "torch"),
                ("fastxent", "fwd+bwd", "torch")} if contender == "fastxent" else set()
    assert {(c.contender, c.workload, c.variant) for c in cases} == expected | {
        (contender, w, "") for w in WORKLOADS}
    for case in cases:
        if case.setup:
            case.setup()
        value, g = case.unpack(case.run())
        if case.workload == "logsumexp":
            assert value.shape == (4,) and g is None
            np.testing.assert_allclose(value, lse, rtol=rtol)
        else:
            assert value == pytest.approx(loss, rel=rtol)
        if case.workload == "fwd+bwd":
            assert g.shape == x.shape
            np.testing.assert_allclose(g.astype(np.float32), grad.astype(np.float32),
                                       atol=1e-6 if dtype == "float32" else 4e-3)
        else:
            assert g is None
    assert np.isfinite(x.astype(np.float32)).all()  # the in-place case worked on a copy


def test_numpy_peers_note_their_float32_copy():
    x, t = inputs.make_inputs(2, 16, "bfloat16")
    for case in peers.build_cases("numpy", x, t, ["forward"]):
        assert "float32 copy of the bfloat16 logits" in case.notes
    x, t = inputs.make_inputs(2, 16, "float32")
    assert all(c.notes == "" for c in peers.build_cases("numpy", x, t))


# --- the runner and its reports -------------------------------------------------------------------


def test_report_rows_are_well_formed(tiny_report):
    rep = json.loads(json.dumps(tiny_report))  # JSON-ready as it is
    assert rep["schema"] == report.SCHEMA and rep["skipped"] == {} and rep["dropped"] == []
    results = rep["results"]
    assert len(results) == 2 * (6 + 3 + 3)  # fastxent: 4 cases, and 2 through fastxent.torch
    ref = {(r["workload"], r["dtype"]): r["time_s"] for r in results
           if r["contender"] == "fastxent" and not r["variant"]}
    for r in results:
        assert set(r) == RESULT_KEYS
        assert r["error"] is None and r["rows"] == 4 and r["vocab"] == 1000
        assert r["time_s"] > 0 and len(r["times_s"]) >= 1
        assert min(r["times_s"]) <= r["time_s"] <= max(r["times_s"])
        itemsize = 4 if r["dtype"] == "float32" else 2
        assert r["bytes"] == (2 if r["workload"] == "fwd+bwd" else 1) * 4 * 1000 * itemsize
        assert r["gbps"] == pytest.approx(r["bytes"] / r["time_s"] / 1e9)
        assert r["ratio"] == pytest.approx(r["time_s"] / ref[r["workload"], r["dtype"]])
        assert 0 < r["floor_fraction"] <= 1.5
        assert 0 < r["exp_floor_fraction"] <= 1.5
        assert r["peak_rss_growth_bytes"] is None
    notes = {(r["contender"], r["dtype"]): r["notes"] for r in results
             if r["workload"] == "forward"}
    assert "float32 copy" in notes["scipy", "bfloat16"] and notes["scipy", "float32"] == ""


def test_markdown_has_one_table_per_shape(tiny_report):
    text = report.format_report(tiny_report)
    assert "## N=4, V=1000, float32 (15.6 KiB of logits)" in text
    assert "## N=4, V=1000, bfloat16 (7.81 KiB of logits)" in text
    assert text.count("| contender ") == 2
    assert "- ceilings (" in text and "G exp/s" in text
    for block in text.split("\n\n"):
        if block.startswith("| contender"):  # padded columns: every line of a table is as wide
            assert len({len(line) for line in block.splitlines()}) == 1
    assert sum(line.startswith("| scipy ") for line in text.splitlines()) == 6
    assert "peak RSS" not in text.split("- **time**")[0]  # no memory column without --memory


def test_outputs_written_with_plots(tiny_report, tmp_path):
    pytest.importorskip("matplotlib")
    rep = json.loads(json.dumps(tiny_report))
    rep["results"][0]["peak_rss_growth_bytes"] = 4096  # as if --memory had measured one
    paths, message = report.write_outputs(rep, str(tmp_path / "out"))
    assert message is None
    names = {p.split("/")[-1] for p in paths}
    assert {"results.json", "results.md", "memory.png"} <= names
    assert {f"time_vs_vocab_{w}_{d}.png" for w in WORKLOADS
            for d in ("float32", "bfloat16")} <= names
    for name in names - {"results.json", "results.md"}:
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == rep
    md = (tmp_path / "out" / "results.md").read_text()
    assert "![memory](memory.png)" in md and "| fastxent " in md


def test_outputs_without_matplotlib(tiny_report, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # import fails
    paths, message = report.write_outputs(tiny_report, str(tmp_path))
    assert "matplotlib is not installed" in message
    assert sorted(p.split("/")[-1] for p in paths) == ["results.json", "results.md"]


def test_missing_peer_is_reported_as_skipped(monkeypatch, capsys):
    monkeypatch.setitem(peers.REQUIRES, "jax", "fastxent_no_such_module")
    rep = runner.run_bench(rows=2, vocab=64, workloads=["forward"], peers=["jax"], repeat=1,
                           bandwidth_mib=0)
    assert rep["skipped"] == {"jax": "fastxent_no_such_module is not installed"}
    assert {r["contender"] for r in rep["results"]} == {"fastxent"}
    assert "- skipped jax: fastxent_no_such_module is not installed" in report.format_report(rep)
    err = capsys.readouterr().err
    assert "jax: skipped" in err and "[1/2] fastxent forward N=2 V=64 float32" in err


def test_dropped_cases_are_reported():
    rep = runner.run_bench(rows=4, vocab=1000, workloads=["fwd+bwd"], peers=["numpy"], repeat=1,
                           bandwidth_mib=0, memory_budget=40000, progress=False)
    assert {r["contender"] for r in rep["results"]} == {"fastxent"}
    assert [d["id"] for d in rep["dropped"]] == ["numpy-fwd+bwd-N4-V1000-float32"]
    text = report.format_report(rep)
    assert "- dropped numpy-fwd+bwd-N4-V1000-float32: needs about" in text


def test_failing_contender_gives_error_rows(monkeypatch):
    def broken(x, t, workloads):
        raise RuntimeError("no compiler\nsecond line")

    monkeypatch.setitem(peers.BUILDERS, "numpy", broken)
    rep = runner.run_bench(rows=2, vocab=64, peers=["numpy"], repeat=1, bandwidth_mib=0,
                           progress=False)
    errors = [r for r in rep["results"] if r["contender"] == "numpy"]
    assert [r["workload"] for r in errors] == ["forward", "fwd+bwd"]
    assert all(r["error"] == "RuntimeError: no compiler" and r["time_s"] is None for r in errors)
    assert "failed: RuntimeError: no compiler" in report.format_report(rep)


def test_memory_column_from_fresh_processes(capsys):
    assert main(["bench", "--rows", "64", "--vocab", "4096", "--peers", "--workloads", "fwd+bwd",
                 "--repeat", "1", "--bandwidth-mib", "0", "--memory"]) == 0
    out, err = capsys.readouterr()
    assert "| peak RSS + (MiB) |" in out
    assert "peak memory +" in err
    # the out-of-place gradient is 1 MiB; in place allocates nothing N×V
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| fastxent")]
    assert len(rows) == 3 and all(cells[8].strip().isdigit() for cells in rows)


def test_progress_estimates_time_left(capsys):
    progress = runner.Progress([("time", 10), ("time", 10), ("memory", 30)])
    progress.step("time", 10, "first")
    progress.step("time", 10, "second")
    progress.step("memory", 30, "last")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("[fastxent bench] [1/3] first; about ")
    assert lines[0].endswith(" left") and lines[2] == "[fastxent bench] [3/3] last"


class _Called(Exception):
    pass


@pytest.mark.parametrize("argv, expected", [
    ([], dict(rows=(2048,), vocab=(131072,), dtypes=("float32",),
              workloads=("forward", "fwd+bwd"), memory=False)),
    (["--full"], dict(rows=grid.FULL_ROWS, vocab=grid.FULL_VOCAB,
                      dtypes=("float32", "bfloat16", "float16"), workloads=WORKLOADS,
                      memory=True)),
    (["--full", "--dtype", "float32", "--rows", "2048"],
     dict(rows=[2048], vocab=grid.FULL_VOCAB, dtypes=["float32"], workloads=WORKLOADS,
          memory=True)),
    (["--vocab", "32000", "256000", "--memory-budget-gib", "2", "--time-budget", "0.5"],
     dict(vocab=[32000, 256000], memory_budget=2 << 30, time_budget=0.5)),
])
def test_options_select_the_grid(argv, expected, monkeypatch):
    def fake_run_bench(**kwargs):
        raise _Called(kwargs)

    monkeypatch.setattr(command, "run_bench", fake_run_bench)
    with pytest.raises(_Called) as called:
        main(["bench", *argv])
    kwargs = called.value.args[0]
    assert {k: kwargs[k] for k in expected} == expected


def test_out_must_be_a_directory(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--out", str(path)])
    assert exc.value.code == 2
    assert "exists and is not a directory" in capsys.readouterr().err


def test_out_writes_the_files(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["bench", "--rows", "4", "--vocab", "256", "--peers", "--repeat", "1",
                 "--bandwidth-mib", "0", "--out", str(out)]) == 0
    assert {"results.json", "results.md"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "results.json").read_text())["command"].endswith(f"--out {out}")
