"""pytest-benchmark suites on the grid of ``fastxent bench``: every contender of
:mod:`fastxent.bench.peers` (no peer code here) on the shapes and dtypes of one grid size.

::

    python -m pytest benchmarks --benchmark-only                      # the quick size
    python -m pytest benchmarks --benchmark-only --bench-size full    # every shape and dtype
    python -m pytest benchmarks --bench-size smoke --benchmark-disable  # each case called once

Options, each also read from an environment variable: ``--bench-size smoke|quick|full``
(``FASTXENT_BENCH_SIZE``, default quick), ``--bench-peers`` (``FASTXENT_BENCH_PEERS``, comma
separated, default all), ``--bench-rounds`` (``FASTXENT_BENCH_ROUNDS``, timed calls per case,
default 5). Peers that are not installed, and cases over the memory budget of ``fastxent bench``,
are skipped with the reason. Every case's result is checked against fastxent's, so a suite run
also shows that the contenders compute the same thing.
"""

import os

import numpy as np
import pytest

import fastxent
from fastxent.bench import grid, peers
from fastxent.bench.ceilings import bytes_moved
from fastxent.bench.inputs import ITEMSIZE, make_inputs
from fastxent.bench.machine import numba_facts, versions


def pytest_addoption(parser):
    group = parser.getgroup("fastxent benchmarks")
    group.addoption("--bench-size", default=os.environ.get("FASTXENT_BENCH_SIZE", "quick"),
                    help=f"grid size, one of {', '.join(grid.SIZES)} (default quick)")
    group.addoption("--bench-peers", default=os.environ.get("FASTXENT_BENCH_PEERS",
                                                            ",".join(peers.PEERS)),
                    help=f"comma-separated peers among {', '.join(peers.PEERS)} (default all)")
    group.addoption("--bench-rounds", default=os.environ.get("FASTXENT_BENCH_ROUNDS", "5"),
                    help="timed calls per case (default 5)")


def _selected_peers(config):
    names = [p.strip() for p in config.getoption("--bench-peers").split(",") if p.strip()]
    unknown = sorted(set(names) - set(peers.PEERS))
    if unknown:
        raise pytest.UsageError(f"--bench-peers: unknown {', '.join(unknown)}; expected some of "
                                f"{', '.join(peers.PEERS)}")
    return tuple(dict.fromkeys(names))


def pytest_configure(config):
    size = config.getoption("--bench-size")
    if size not in grid.SIZES:
        raise pytest.UsageError(f"--bench-size {size!r}: expected one of {', '.join(grid.SIZES)}")
    rounds = config.getoption("--bench-rounds")
    if not str(rounds).isdigit() or int(rounds) < 1:
        raise pytest.UsageError(f"--bench-rounds {rounds!r}: expected a positive integer")
    _selected_peers(config)
    # raised inside torch.compile's own imports, not by anything a contender does
    config.addinivalue_line("filterwarnings",
                            "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def pytest_generate_tests(metafunc):
    if "spec" not in metafunc.fixturenames:
        return
    config = metafunc.config
    kept, dropped = grid.sized(config.getoption("--bench-size"), (metafunc.module.WORKLOAD,),
                               ("fastxent", *_selected_peers(config)),
                               grid.default_memory_budget())
    params = [pytest.param(s, id=s.id) for s in kept]
    params += [pytest.param(s, id=s.id, marks=pytest.mark.skip(reason=f"dropped: {why}"))
               for s, why in dropped]
    metafunc.parametrize("spec", params)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["fastxent"] = {"versions": versions(), "numba": numba_facts()}


_inputs = {}


def _inputs_for(spec):
    """The inputs of a spec's shape; one shape is kept at a time (they reach gigabytes)."""
    if spec.shape not in _inputs:
        _inputs.clear()
        _inputs[spec.shape] = make_inputs(*spec.shape)
    return _inputs[spec.shape]


@pytest.fixture
def case(spec):
    """The timed case of ``spec``, its inputs converted by the contender (untimed)."""
    reason = peers.missing_reason(spec.contender)
    if reason:
        pytest.skip(reason)
    x, t = _inputs_for(spec)
    return next(c for c in peers.build_cases(spec.contender, x, t, [spec.workload])
                if c.variant == spec.variant)


def _check(spec, value, grad):
    """The case computed what fastxent computes: same loss or row log-sum-exps, a gradient of
    the logits' shape. Half-precision peers round their results to the half type."""
    x, t = _inputs_for(spec)
    rtol = 1e-4 if spec.dtype == "float32" else 2e-2
    if spec.workload == "logsumexp":
        np.testing.assert_allclose(value, fastxent.logsumexp(x), rtol=rtol)
    else:
        np.testing.assert_allclose(value, fastxent.cross_entropy(x, t), rtol=rtol)
    if spec.workload == "fwd+bwd":
        assert grad.shape == x.shape and np.isfinite(grad).all()


@pytest.fixture
def measure(benchmark, spec, request):
    """``measure(case)``: time the case with pytest-benchmark, then check its result."""

    def run(case):
        benchmark.group = f"{spec.workload} N={spec.rows} V={spec.vocab} {spec.dtype}"
        benchmark.extra_info.update(spec.as_dict(), notes=case.notes, bytes=bytes_moved(
            spec.workload, spec.rows, spec.vocab, ITEMSIZE[spec.dtype]))
        result = benchmark.pedantic(case.run, setup=case.setup, warmup_rounds=case.warmup,
                                    rounds=int(request.config.getoption("--bench-rounds")))
        _check(spec, *case.unpack(result))

    return run
