"""fastxent.core.threads: the CPU kernels are safe from several Python threads at once and in a
forked child (docs/design.md#threads-and-fork).

The fork tests run in a fresh interpreter (``sys.executable -c ...``) with a timeout, so that a
child killed by the threading layer ("fork() called from a process already using GNU OpenMP")
cannot take pytest down with it, and so that the threading layer is chosen from scratch.
"""

import importlib.metadata
import os
import subprocess
import sys
import textwrap
import threading

import pytest
from conftest import F32, bits, random_logits, random_targets

import fastxent as fx
from fastxent import config
from fastxent.core import threads as _threading

TIMEOUT = 300  # seconds; a cold Numba cache compiles a few kernels first


def test_concurrent_calls_match_serial_calls(rng):
    """4 Python threads × several calls, row path, chunked path and logsumexp, all at once."""
    rows = random_logits(rng, (64, 20_000), F32)
    rows_t = random_targets(rng, (64,), 20_000, ignore_index=-100)
    few = random_logits(rng, (2, 3 * config.MIN_CHUNK + 5), F32)
    few_t = random_targets(rng, (2,), few.shape[1])
    jobs = [
        lambda: fx.cross_entropy_with_grad(rows, rows_t, backend="cpu", reduction="none"),
        lambda: fx.cross_entropy_with_grad(few, few_t, backend="cpu"),
        lambda: (fx.cross_entropy(rows, rows_t, backend="cpu"),),
        lambda: (fx.logsumexp(few, backend="cpu"),),
    ]
    serial = [job() for job in jobs]
    n_threads, n_calls = 4, 6
    barrier = threading.Barrier(n_threads)
    results = [[] for _ in range(n_threads)]
    errors = []

    def worker(k):
        try:
            barrier.wait()
            for i in range(n_calls):
                j = (k + i) % len(jobs)
                results[k].append((j, jobs[j]()))
        except BaseException as exc:  # reported below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors
    for per_thread in results:
        assert len(per_thread) == n_calls
        for j, outputs in per_thread:
            for got, want in zip(outputs, serial[j]):
                assert bits(got) == bits(want)


def _run_python(code, timeout=TIMEOUT):
    env = dict(os.environ)
    env.pop("NUMBA_THREADING_LAYER", None)  # let fastxent choose, as for a user
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env)
    return proc


_FORK_SCRIPT = """
    import multiprocessing as mp
    import sys
    {prelude}
    import numpy as np
    import fastxent as fx

    def compute():
        rng = np.random.default_rng(7)
        rows = rng.standard_normal((64, 3000)).astype(np.float32)
        few = rng.standard_normal((1, 60000)).astype(np.float32)
        t = rng.integers(0, 3000, 64)
        loss, grad = fx.cross_entropy_with_grad(rows, t, backend="cpu", reduction="none")
        loss1, grad1 = fx.cross_entropy_with_grad(few, np.array([59999]), backend="cpu")
        return [loss.tobytes(), grad.tobytes(), repr(loss1), grad1.tobytes(),
                fx.logsumexp(rows, backend="cpu").tobytes()]

    def child(conn):
        conn.send(compute())
        conn.close()

    if __name__ == "__main__":
        parent_result = compute()  # the parent starts the threading layer first
        ctx = mp.get_context("fork")
        for _ in range(2):
            recv, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=child, args=(send,))
            p.start()
            send.close()
            if not recv.poll(240):
                p.kill()
                sys.exit("the forked child did not answer")
            child_result = recv.recv()
            p.join(60)
            if p.exitcode != 0:
                sys.exit(f"the forked child exited with {{p.exitcode}}")
            if child_result != parent_result:
                sys.exit("the forked child computed something else")
        print("OK", fx.core.threads.describe()["threading_layer"])
"""


@pytest.mark.parametrize("prelude", ["", "torch"])
def test_forked_child_after_parent_used_the_kernels(prelude):
    if prelude == "torch":  # torch ships (and loads) GNU OpenMP: the classic DataLoader case
        pytest.importorskip("torch")
        prelude = "import torch; torch.zeros(1000).sum()"
    proc = _run_python(_FORK_SCRIPT.format(prelude=prelude))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK"), proc.stdout + proc.stderr


def test_threading_layer_is_tbb_when_tbb_is_installed():
    try:
        importlib.metadata.distribution("tbb")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the tbb package is not installed")
    proc = _run_python("""
        import numpy as np
        import fastxent as fx
        from fastxent.core import threads as _threading
        fx.cross_entropy(np.zeros((4, 8), np.float32), np.arange(4), backend="cpu")
        print(_threading.describe())
    """)
    assert proc.returncode == 0, proc.stderr
    info = eval(proc.stdout)  # a dict literal printed by the child
    assert info["threading_layer"] == "tbb"
    assert info["threads"] >= 1
    assert info["forked_child_runs_serial"] is False


def test_describe_in_this_process():
    info = _threading.describe()
    assert set(info) == {"threading_layer", "threads", "forked_child_runs_serial"}
    assert info["threading_layer"].split()[0] in ("tbb", "omp", "workqueue")


def test_serial_copies_keep_their_kernels_own_flags():
    """What a forked child runs is its kernel compiled alike, threads aside: the binary kernels'
    error model ``numpy``, which their loops need to vectorise, included."""
    from numba.core.registry import CPUDispatcher

    from fastxent.kernels.cpu import common, divergence, elementwise, softmax, tokens
    kernels = [k for m in (softmax, elementwise, divergence, tokens) for k in vars(m).values()
               if isinstance(k, CPUDispatcher) and k.targetoptions.get("parallel")]
    assert len(kernels) >= 6
    assert any(k.targetoptions.get("error_model") == "numpy" for k in kernels)
    for kernel in kernels:
        assert common.serial(kernel).targetoptions == dict(kernel.targetoptions, parallel=False)
