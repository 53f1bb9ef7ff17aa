"""``fastxent bench --device cuda``: the GPU benchmark's pipeline, run on CPU tensors (host timers,
no memory figures) so that it is checked without a GPU; its command-line errors."""

import importlib.util
import statistics

import numpy as np
import pytest

from fastxent import cli
from fastxent.bench import gpu

torch = pytest.importorskip("torch")


def test_pipeline_on_cpu_tensors():
    rep = gpu.run_gpu_bench(rows=[3], vocab=[50], dtypes=["float32"], peers=("torch", "liger"),
                            device="cpu", ceiling_bytes=1 << 20, repeat=2)
    liger = [r for r in rep["results"] if r["contender"] == "liger"]
    others = [r for r in rep["results"] if r["contender"] != "liger"]
    got = {(r["contender"], r["variant"], r["workload"]) for r in others}
    assert got == {("fastxent", "", "forward"), ("torch", "", "forward"),
                   ("fastxent", "", "fwd+bwd"), ("fastxent", "in place", "fwd+bwd"),
                   ("torch", "", "fwd+bwd")}
    for r in others:
        assert r["error"] is None, r
        assert r["time_s"] > 0 and r["tbps"] > 0 and r["floor_fraction"] > 0
        assert r["bytes"] == gpu.bytes_moved(r["workload"], 3, 50, "float32")
    fastxent = [r for r in rep["results"] if r["contender"] == "fastxent" and not r["variant"]]
    assert all(r["ratio"] == 1.0 and r["loss_rel_error"] < 1e-6 for r in fastxent)
    if importlib.util.find_spec("liger_kernel") is None:  # not installed: skipped, saying why
        assert not liger and "liger_kernel is not importable" in rep["skipped"]["liger"]
    else:  # installed: it ran both workloads (Triton refuses CPU tensors: an error, not a skip)
        assert "liger" not in rep["skipped"]
        assert sorted(r["workload"] for r in liger) == ["forward", "fwd+bwd"]
        assert all(r["error"] is not None or r["time_s"] > 0 for r in liger), liger
    text = gpu.format_report(rep)
    assert "## N=3, V=50, float32" in text and "% of ceiling" in text


def test_default_cases_are_the_targets():
    shapes = {(n, v, d) for n, v, d, _ in gpu.DEFAULT_CASES}
    assert {(8192, 131072, "bfloat16"), (8192, 131072, "float32"), (1, 256000, "bfloat16"),
            (16, 256000, "bfloat16")} <= shapes
    assert {v for n, v, d, _ in gpu.DEFAULT_CASES if n == 8192 and d == "bfloat16"} == \
        {32000, 50257, 128256, 131072, 256000}
    assert gpu._cases([4], None, None, ["forward"]) == [(4, 131072, "bfloat16", ("forward",))]


def test_clock_and_median():
    clock = gpu.Clock(torch, "cpu")
    calls, times = [], []

    def recording(fn, setup=None):
        times.append(clock(fn, setup))
        return times[-1]

    def work():  # microseconds, so that no host timer reads 0
        calls.append(sum(range(1000)))

    median, first = gpu.time_call(recording, work, repeat=5, warmup=2)
    assert len(calls) == len(times) and all(0 < s < 1 for s in times)
    timed = times[2:]  # after the 2 warm-up calls: at least 5, and 0.2 s in all or the most calls
    assert len(timed) >= 5 and (sum(timed) >= gpu.MIN_TIMED_S or len(timed) == gpu.MAX_CALLS)
    assert first == times[0] and median == statistics.median(timed)
    # scripted seconds: the warm-up calls are left out, and the median is not the mean
    script = iter([9.0, 8.0, 0.1, 0.3, 0.2, 0.9, 0.4])
    assert gpu.time_call(lambda fn, setup=None: next(script), work, repeat=5, warmup=2) == \
        (0.3, 9.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is usable here")
def test_cuda_device_without_gpu_says_so(capsys):
    assert cli.main(["bench", "--device", "cuda", "--peers"]) == 1
    assert "needs PyTorch with a usable CUDA GPU" in capsys.readouterr().err


def test_liger_needs_the_gpu_benchmark():
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--peers", "liger"])
    assert exc.value.code == 2


def test_jax_child_on_cpu(monkeypatch):
    pytest.importorskip("jax")
    out = gpu._run_jax(2, 16, "float32", ["forward", "fwd+bwd"], seed=0)
    assert set(out["results"]) == {"forward", "fwd+bwd"}
    assert all(np.isfinite(r["time_s"]) for r in out["results"].values())
