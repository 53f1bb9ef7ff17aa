"""The CUDA backend against the float64 oracle and the CPU backend: every option and dtype, rows
owned by a warp or by a block, aligned and unaligned rows, device arrays staying on the device,
``out=`` and ``inplace``, out-of-range targets found on the device, non-finite logits.

They run on a GPU when one is visible, and in Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, at
small sizes: each simulated thread is a Python thread), which ``tests/test_cuda_simulated.py``
starts in a separate process. Without either they are skipped; a broken numba-cuda, or none where
CUDA is expected (the simulator, or a GPU device node), fails the module instead.
"""

import glob
import importlib.util
import itertools
import os

import numpy as np
import pytest
from conftest import (BF16, DTYPES, F16, F32, F64, ROUNDING, assert_fused_matches_oracle,
                      assert_grad_close, assert_loss_close, bits, dtype_id, oracle, random_logits,
                      random_probs, random_targets, random_weight, to64)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastxent as fx
from fastxent import config

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
#: Where these tests must run: in the simulator, or where the NVIDIA driver shows a GPU (Linux).
CUDA_EXPECTED = SIMULATED or bool(glob.glob("/dev/nvidia[0-9]*"))


def _cuda():
    """numba.cuda, or None where it finds no GPU or numba-cuda (the optional package) is not
    installed, unless CUDA is expected here; a broken install fails the module."""
    if importlib.util.find_spec("numba_cuda") is None:  # numba.cuda alone is Numba's old target
        if CUDA_EXPECTED:
            raise ImportError('CUDA is expected here (the simulator, or a GPU) but numba-cuda is '
                              'not installed: pip install "fastxent[cuda]"')
        return None
    from numba import cuda
    return cuda if cuda.is_available() else None


cuda = _cuda()
pytestmark = pytest.mark.skipif(cuda is None, reason="no CUDA GPU (these tests also run in the "
                                "CUDA simulator: tests/test_cuda_simulated.py)")


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    """Two blocks at most, so that every block loops over rows; in the simulator, blocks of a few
    threads (each simulated thread is a Python thread)."""
    monkeypatch.setattr(config, "CUDA_MAX_BLOCKS", 2)
    if SIMULATED:
        monkeypatch.setattr(config, "CUDA_WARP_BLOCK_THREADS", 32)
        monkeypatch.setattr(config, "CUDA_BLOCK_THREADS", 64)
        monkeypatch.setattr(config, "CUDA_REDUCE_THREADS", 16)
        monkeypatch.setattr(config, "CUDA_TOKEN_THREADS", 16)


@pytest.fixture(params=["warp", "block"])
def layout(request, monkeypatch):
    """Rows owned by one warp, or by a whole block, whatever their length."""
    monkeypatch.setattr(config, "CUDA_WARP_ROW_BYTES", 1 << 40 if request.param == "warp" else 0)
    return request.param


@pytest.fixture
def split(monkeypatch):
    """Few rows with many classes: every row cut into segments of 8 columns, one block each."""
    monkeypatch.setattr(config, "CUDA_WARP_ROW_BYTES", 0)
    monkeypatch.setattr(config, "CUDA_SPLIT_MIN_COLUMNS", 8)
    if SIMULATED:
        monkeypatch.setattr(config, "CUDA_BLOCK_THREADS", 32)


# V odd, so that rows start at every offset against 8-byte words.
N, V = 5, 45

OPTIONS = {
    "plain": dict(),
    "ignore-sum": dict(reduction="sum", ignore_index=3),
    "weight-smoothing": dict(weight="w", label_smoothing=0.2),
    "zloss-softcap": dict(z_loss=1e-3, softcap=4.0, reduction="sum"),
    "none-grad-output": dict(reduction="none", grad_output="rows"),
}


def _options(rng, name, lead, v):
    opts = dict(OPTIONS[name])
    if opts.get("weight") == "w":
        opts["weight"] = random_weight(rng, v)
    if opts.get("grad_output") == "rows":
        opts["grad_output"] = rng.uniform(0.5, 2.0, lead)
    return opts


# Every option in both layouts on float32; the other dtypes on the options that touch the
# arithmetic most (the simulator is slow: each case costs about a second there).
CASES = ([(F32, name) for name in OPTIONS] +
         [(d, name) for d in DTYPES if d != F32 for name in ("plain", "weight-smoothing")])


@pytest.mark.parametrize("dtype, name", CASES, ids=lambda c: c if isinstance(c, str) else c.name)
def test_index_targets_match_oracle(rng, layout, dtype, name):
    x = random_logits(rng, (N, V), dtype)
    t = random_targets(rng, (N,), V, ignore_index=OPTIONS[name].get("ignore_index", -100))
    opts = _options(rng, name, (N,), V)
    assert_fused_matches_oracle(x, t, dtype, backend="cuda", **opts)
    opts.pop("grad_output", None)
    want, _ = oracle(x, t, **opts)
    assert_loss_close(fx.cross_entropy(x, t, backend="cuda", **opts), want, dtype)


@pytest.mark.parametrize("dtype, name", [(F32, "plain"), (F64, "plain"),
                                         (BF16, "weight-smoothing"), (F16, "zloss-softcap"),
                                         (F32, "none-grad-output"), (F32, "ignore-sum")],
                         ids=lambda c: c if isinstance(c, str) else c.name)
def test_rows_split_across_blocks_match_oracle(rng, split, dtype, name):
    from fastxent.kernels.cuda import plan as _cuda_plan
    n = 3
    assert _cuda_plan.splits(n, V, dtype.itemsize, (132, 50 << 20)) == 5
    x = random_logits(rng, (n, V), dtype)
    t = random_targets(rng, (n,), V, ignore_index=OPTIONS[name].get("ignore_index", -100))
    opts = _options(rng, name, (n,), V)
    assert_fused_matches_oracle(x, t, dtype, backend="cuda", **opts)


def test_split_rows_probabilities_logsumexp_and_in_place(rng, split):
    x = random_logits(rng, (3, V), F32)
    q = random_probs(rng, (3, V), F32)
    assert_fused_matches_oracle(x, q, F32, backend="cuda", label_smoothing=0.1)
    np.testing.assert_allclose(fx.logsumexp(x, backend="cuda"), fx.logsumexp(x), rtol=1e-6)
    t = random_targets(rng, (3,), V)
    y = x.copy()
    t[2] = -1
    with pytest.raises(IndexError, match=r"targets\[2\] = -1"):
        fx.cross_entropy_with_grad(y, t, backend="cuda", inplace=True)
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_probability_targets_match_oracle(rng, layout, dtype):
    x = random_logits(rng, (N, V), dtype)
    q = random_probs(rng, (N, V), dtype)
    assert_fused_matches_oracle(x, q, dtype, backend="cuda", weight=random_weight(rng, V),
                                label_smoothing=0.1)
    assert_fused_matches_oracle(x, q, dtype, backend="cuda", reduction="none")


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 4), v=st.integers(1, 70), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**32 - 1), smoothing=st.sampled_from([0.0, 0.3]),
       reduction=st.sampled_from(["mean", "sum", "none"]), weighted=st.booleans())
def test_random_inputs_match_oracle(n, v, dtype, seed, smoothing, reduction, weighted):
    rng = np.random.default_rng(seed)
    x = random_logits(rng, (n, v), dtype, scale=rng.uniform(0.1, 20))
    t = random_targets(rng, (n,), v, ignore_index=-100)
    w = random_weight(rng, v) if weighted else None
    assert_fused_matches_oracle(x, t, dtype, backend="cuda", label_smoothing=smoothing,
                                reduction=reduction, weight=w)


def test_large_logits_and_lead_dimensions(rng):
    """|logits| up to 1e4 (docs/design.md#exactness) with a 3-D logits array."""
    x = random_logits(rng, (2, 3, 67), F32, scale=3e3)
    t = random_targets(rng, (2, 3), 67)
    assert_fused_matches_oracle(x, t, F32, backend="cuda")


def test_matches_cpu_backend(rng, layout):
    x = random_logits(rng, (N, V), F32)
    t = random_targets(rng, (N,), V, ignore_index=-100)
    lc, gc = fx.cross_entropy_with_grad(x, t, backend="cpu", z_loss=1e-4, label_smoothing=0.05)
    lg, gg = fx.cross_entropy_with_grad(x, t, backend="cuda", z_loss=1e-4, label_smoothing=0.05)
    assert_loss_close(lg, lc, F32)
    assert_grad_close(gg, gc, F32, atol=2e-7)


# --- arrays that live on the device --------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, np.dtype(np.float16), F64], ids=dtype_id)
def test_device_arrays_stay_on_device(rng, dtype):
    x = random_logits(rng, (2, 3, V), dtype)
    t = random_targets(rng, (2, 3), V, ignore_index=-100)
    dx, dt = cuda.to_device(x), cuda.to_device(t)
    loss = fx.cross_entropy(dx, dt)
    assert fx.dispatch.arrays.is_device(loss)
    assert loss.shape == ()
    rows = fx.cross_entropy(dx, dt, reduction="none")
    assert rows.shape == (2, 3)
    assert rows.dtype == (F64 if dtype == F64 else F32)
    total, grad = fx.cross_entropy_with_grad(dx, dt, reduction="sum")
    assert grad.shape == x.shape and grad.dtype == dtype
    want, want_grad = oracle(x, t, reduction="sum")
    assert_loss_close(float(total.copy_to_host()), want, dtype)
    assert_grad_close(grad.copy_to_host(), want_grad, dtype)
    np.testing.assert_array_equal(dx.copy_to_host(), x)  # the logits are left alone


def test_device_logsumexp(rng):
    x = random_logits(rng, (3, V), F32)
    x[1, :] = -np.inf
    x[2, 4] = np.inf
    got = fx.logsumexp(cuda.to_device(x))
    assert got.shape == (3,)
    np.testing.assert_allclose(got.copy_to_host(), fx.logsumexp(x), rtol=1e-6)
    empty = fx.logsumexp(cuda.to_device(np.zeros((2, 0), F32)))  # the log of an empty sum
    np.testing.assert_array_equal(empty.copy_to_host(), [-np.inf, -np.inf])


def test_inplace_on_device(rng):
    x = random_logits(rng, (N, V), F32)
    t = random_targets(rng, (N,), V)
    dx = cuda.to_device(x)
    _, grad = fx.cross_entropy_with_grad(dx, cuda.to_device(t), inplace=True)
    assert grad is dx
    assert_grad_close(dx.copy_to_host(), oracle(x, t)[1], F32)


def test_out_on_device(rng):
    x = random_logits(rng, (N, V), F32)
    t = random_targets(rng, (N,), V)
    dx = cuda.to_device(x)
    out = cuda.device_array_like(x)
    _, grad = fx.cross_entropy_with_grad(dx, cuda.to_device(t), out=out)
    assert grad is out
    assert_grad_close(out.copy_to_host(), oracle(x, t)[1], F32)
    with pytest.raises(ValueError, match="overlaps logits"):
        fx.cross_entropy_with_grad(dx, cuda.to_device(t), out=dx)
    with pytest.raises(ValueError, match="dtype"):
        fx.cross_entropy_with_grad(dx, cuda.to_device(t), out=cuda.device_array((N, V), F64))


def test_host_arrays_inplace_and_out_with_backend_cuda(rng):
    x = random_logits(rng, (N, V), F32)
    t = random_targets(rng, (N,), V)
    want = oracle(x, t)[1]
    out = np.empty_like(x)
    _, grad = fx.cross_entropy_with_grad(x, t, backend="cuda", out=out)
    assert grad is out
    assert_grad_close(out, want, F32)
    y = x.copy()
    _, grad = fx.cross_entropy_with_grad(y, t, backend="cuda", inplace=True)
    assert grad is y
    assert_grad_close(y, want, F32)


@pytest.mark.parametrize("dtype", [F32, np.dtype(np.float16)], ids=dtype_id)
@pytest.mark.parametrize("offset", [1, 3])
def test_rows_not_aligned_to_words(rng, dtype, offset):
    """Logits starting ``offset`` elements past an 8-byte boundary, with the gradient in a buffer
    that starts elsewhere against the words (element-by-element path) and in place."""
    x = random_logits(rng, (N, V), dtype)
    t = random_targets(rng, (N,), V)
    want_loss, want_grad = oracle(x, t)
    flat = cuda.to_device(np.zeros(N * V + 8, dtype))
    dx = flat[offset:offset + N * V].reshape(N, V)
    dx.copy_to_device(x)
    loss, grad = fx.cross_entropy_with_grad(dx, cuda.to_device(t))
    assert_loss_close(float(loss.copy_to_host()), want_loss, dtype)
    assert_grad_close(grad.copy_to_host(), want_grad, dtype)
    loss, grad = fx.cross_entropy_with_grad(dx, cuda.to_device(t), inplace=True)
    assert_grad_close(dx.copy_to_host(), want_grad, dtype)


# --- errors and special values -------------------------------------------------------------------


def test_out_of_range_target_raises_and_leaves_logits(rng):
    x = random_logits(rng, (2, 3, V), F32)
    t = random_targets(rng, (2, 3), V)
    t[1, 2] = V
    dx = cuda.to_device(x)
    with pytest.raises(IndexError, match=r"targets\[1, 2\] = 45 is out of range"):
        fx.cross_entropy_with_grad(dx, cuda.to_device(t), inplace=True, check_targets=True)
    np.testing.assert_array_equal(dx.copy_to_host(), x)
    with pytest.raises(IndexError, match=r"targets\[1, 2\]"):  # host arrays: always at once
        fx.cross_entropy(x, t, backend="cuda")


def _count_waits(monkeypatch):
    """The waits for the GPU of the calls that follow: stream and event synchronizations, and
    copies to new (pageable) host arrays; copies into given host arrays are queued."""
    waits = []
    for obj, name in ((cuda.stream(), "synchronize"), (cuda.event(), "synchronize"),
                      (cuda.to_device(np.zeros(1)), "copy_to_host")):
        original = getattr(type(obj), name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            if _name != "copy_to_host" or (not args and kwargs.get("ary") is None):
                waits.append(_name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(type(obj), name, counted)
    return waits


def test_calls_on_device_arrays_never_wait_and_raise_later(rng, monkeypatch):
    """docs/cuda.md#out-of-range-targets: no wait per call; an out-of-range class index makes the
    call's loss NaN, writes no gradient, and the next call (or check_gpu_targets) raises it."""
    x = random_logits(rng, (2, 3, V), F32)
    t = random_targets(rng, (2, 3), V)
    dx, dt = cuda.to_device(x), cuda.to_device(t)
    waits = _count_waits(monkeypatch)
    for opts in ({}, {"reduction": "none", "return_lse": True}, {"z_loss": 1e-3}):
        fx.cross_entropy_with_grad(dx, dt, **opts)
        fx.cross_entropy(dx, dt, **opts)
    assert waits == []
    fx.cross_entropy_with_grad(dx, dt, check_targets=True)
    assert waits.count("synchronize") == 1
    bad = t.copy()
    bad[1, 2] = V
    db = cuda.to_device(bad)
    waits.clear()
    loss, g = fx.cross_entropy_with_grad(dx, db, inplace=True)
    assert waits == [] and np.isnan(loss.copy_to_host())
    np.testing.assert_array_equal(dx.copy_to_host(), x)  # no gradient written over the logits
    with pytest.raises(IndexError, match=r"targets\[1, 2\] = 45 is out of range"):
        fx.cross_entropy(dx, dt)  # the next call raises the earlier call's error
    rows = fx.cross_entropy(dx, db, reduction="none", z_loss=1e-3, return_z_loss=True)
    losses = rows[0].copy_to_host()
    assert np.isnan(losses[1, 2]) and np.isfinite(np.delete(losses.ravel(), 5)).all()
    with pytest.raises(IndexError, match=r"targets\[1, 2\]"):
        fx.check_gpu_targets()
    fx.check_gpu_targets()  # read once: nothing is pending any more
    assert np.isfinite(fx.cross_entropy(dx, dt).copy_to_host())


def test_bad_options_are_refused_before_any_launch(rng):
    x = cuda.to_device(random_logits(rng, (2, V), F32))
    t = cuda.to_device(np.array([0, 1]))
    with pytest.raises(ValueError, match="reduction"):
        fx.cross_entropy(x, t, reduction="avg")
    with pytest.raises(ValueError, match="expected \\(2,\\)"):
        fx.cross_entropy(x, cuda.to_device(np.array([0, 1, 2])))
    with pytest.raises(TypeError, match="dtype"):
        fx.cross_entropy(cuda.to_device(np.zeros((2, 3), np.int32)), t)
    with pytest.raises(ValueError, match="weight has shape"):
        fx.cross_entropy(x, t, weight=np.ones(V + 1))


def test_nonfinite_logits_as_cpu(rng):
    x = random_logits(rng, (4, V), F32)
    x[0, 3] = -np.inf  # a masked class
    x[1, :] = -np.inf  # a row of masked classes: NaN, as PyTorch
    x[2, 7] = np.nan
    x[3, 9] = np.inf
    t = np.array([0, 1, 2, 3])
    lc, gc = fx.cross_entropy_with_grad(x, t, backend="cpu", reduction="none")
    lg, gg = fx.cross_entropy_with_grad(x, t, backend="cuda", reduction="none")
    np.testing.assert_allclose(lg, lc, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(gg, gc, atol=1e-6, equal_nan=True)


def test_no_rows_and_all_ignored(rng):
    x = np.zeros((0, V), F32)
    t = np.zeros(0, np.int64)
    assert np.isnan(fx.cross_entropy(x, t, backend="cuda"))
    assert fx.cross_entropy(x, t, backend="cuda", reduction="sum") == 0.0
    x = random_logits(rng, (3, V), F32)
    t = np.full(3, -100)
    loss, grad = fx.cross_entropy_with_grad(x, t, backend="cuda")
    assert np.isnan(loss)
    assert not grad.any()


def test_deterministic(rng, layout):
    x = random_logits(rng, (N, V), F32)
    t = random_targets(rng, (N,), V)
    a = fx.cross_entropy_with_grad(x, t, backend="cuda", label_smoothing=0.1)
    b = fx.cross_entropy_with_grad(x, t, backend="cuda", label_smoothing=0.1)
    assert bits(a[0]) == bits(b[0]) and bits(a[1]) == bits(b[1])


def test_grad_output_on_device(rng):
    x = random_logits(rng, (N, V), F32)
    t = random_targets(rng, (N,), V)
    go = rng.uniform(0.5, 2.0, N)
    want_loss, want_grad = oracle(x, t, reduction="none", grad_output=go)
    _, grad = fx.cross_entropy_with_grad(cuda.to_device(x), cuda.to_device(t), reduction="none",
                                         grad_output=cuda.to_device(go.astype(np.float32)))
    assert_grad_close(grad.copy_to_host(), want_grad, F32)
    _, grad = fx.cross_entropy_with_grad(cuda.to_device(x), cuda.to_device(t),
                                         grad_output=cuda.to_device(np.array([2.5])))
    assert_grad_close(grad.copy_to_host(), 2.5 * oracle(x, t)[1], F32)


def test_bfloat16_gradient_within_one_rounding_of_float32(rng):
    xb = random_logits(rng, (N, V), BF16)
    t = random_targets(rng, (N,), V)
    _, g32 = fx.cross_entropy_with_grad(xb.astype(F32), t, backend="cuda")
    _, g16 = fx.cross_entropy_with_grad(xb, t, backend="cuda")
    np.testing.assert_allclose(to64(g16), to64(g32), rtol=ROUNDING[BF16], atol=1e-7)


# --- PyTorch and CuPy arrays on a real GPU -------------------------------------------------------


def _torch_cuda():
    if SIMULATED or cuda is None:
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


torch = _torch_cuda()
needs_torch = pytest.mark.skipif(torch is None, reason="needs PyTorch with a CUDA GPU")


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_torch_tensors_match_cpu_and_stay_on_the_gpu(rng, dtype):
    x = random_logits(rng, (6, 1000), F32)
    t = random_targets(rng, (6,), 1000, ignore_index=-100)
    xt = torch.tensor(x, device="cuda").to(getattr(torch, dtype))
    tt = torch.tensor(t, device="cuda")
    loss, grad = fx.cross_entropy_with_grad(xt, tt)
    assert isinstance(loss, torch.Tensor) and loss.device.type == "cuda" and loss.shape == ()
    assert isinstance(grad, torch.Tensor) and grad.dtype == xt.dtype and grad.shape == xt.shape
    xd = xt.double().requires_grad_()
    ref = torch.nn.functional.cross_entropy(xd, tt)
    ref.backward()
    np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-6)
    tol = 1e-6 if dtype == "float32" else 2 ** -8
    torch.testing.assert_close(grad.double(), xd.grad, atol=1e-6, rtol=tol)


@needs_torch
def test_torch_current_stream_is_used(rng):
    x = torch.tensor(random_logits(rng, (64, 4096), F32), device="cuda")
    t = torch.randint(0, 4096, (64,), device="cuda")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        loss = fx.cross_entropy(x, t, reduction="none")
        want = torch.nn.functional.cross_entropy(x, t, reduction="none")
    side.synchronize()
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)


@needs_torch
def test_torch_inplace_and_bad_target(rng):
    x = torch.tensor(random_logits(rng, (4, 777), F32), device="cuda", dtype=torch.bfloat16)
    t = torch.tensor([1, 2, 3, 777], device="cuda")
    before = x.clone()
    with pytest.raises(IndexError, match=r"targets\[3\] = 777"):
        fx.cross_entropy_with_grad(x, t, inplace=True, check_targets=True)
    assert torch.equal(x, before)
    loss, _ = fx.cross_entropy_with_grad(x, t, inplace=True)  # queued: NaN, raised by the next
    assert torch.isnan(loss) and torch.equal(x, before)
    with pytest.raises(IndexError, match=r"targets\[3\] = 777"):
        fx.check_gpu_targets()
    t[3] = 5
    _, g = fx.cross_entropy_with_grad(x, t, inplace=True)
    assert g is x


@pytest.mark.skipif(SIMULATED or cuda is None, reason="needs a CUDA GPU")
def test_cupy_arrays(rng):
    cupy = pytest.importorskip("cupy")
    x = random_logits(rng, (5, 300), F32)
    t = random_targets(rng, (5,), 300)
    loss, grad = fx.cross_entropy_with_grad(cupy.asarray(x), cupy.asarray(t))
    assert isinstance(grad, cupy.ndarray)
    want_loss, want_grad = oracle(x, t)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-6)
    assert_grad_close(cupy.asnumpy(grad), want_grad, F32)


# --- token statistics ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_token_stats_match_cpu(rng, dtype):
    from test_tokens import assert_stats_close, oracle
    x = random_logits(rng, (5, V), dtype)
    x[0, :5] = -np.inf  # masked classes
    x[1, [3, 40]] = 40.0  # a tie: the first column wins
    x[2, 11] = np.nan
    x[3, :] = -np.inf
    t = random_targets(rng, (5,), V, ignore_index=-100)
    t[:4] = [6, 2, 0, 1]
    got = fx.token_stats(x, t, backend="cuda")
    assert got.argmax[1] == 3 and got.argmax[2] == 11 and got.lse[3] == -np.inf
    assert_stats_close(got, oracle(x, t), dtype)
    np.testing.assert_array_equal(fx.token_stats(x, t, backend="cuda").nll, got.nll)  # deterministic


def test_token_stats_of_device_arrays(rng):
    from test_tokens import assert_stats_close, oracle
    x = random_logits(rng, (2, 3, V), F32)
    x[0, 1, 5] = np.inf
    t = random_targets(rng, (2, 3), V, ignore_index=-100)
    got = fx.token_stats(cuda.to_device(x), cuda.to_device(t))
    assert isinstance(got.nll, np.ndarray) and got.nll.shape == (2, 3)
    assert_stats_close(got, oracle(x, t), F32)
    with pytest.raises(IndexError, match="is out of range"):
        fx.token_stats(cuda.to_device(x), cuda.to_device(np.full((2, 3), V)))


def test_token_partials_of_a_chunk(rng):
    """The GPU's part of fastxent.torch.linear_token_stats: one chunk's partials, from device
    logits and host class codes (-1: ignored)."""
    from fastxent.core.partials import finish
    from fastxent.dispatch import device

    x = random_logits(rng, (4, V), F32)
    codes = np.array([3, -1, 0, V - 1])
    stats, ints = device.token_partials(cuda.to_device(x), codes)
    got = finish(stats, ints, codes < 0)
    want = fx.token_stats(x, np.where(codes < 0, -100, codes), backend="cpu")
    for name, g, w in zip(want._fields, got, want):
        np.testing.assert_allclose(g, w, rtol=2e-6, atol=2e-6, err_msg=name)


# --- binary cross-entropy ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_bce_with_logits_matches_cpu(rng, dtype, reduction):
    from test_family import extreme_logits, soft_targets
    x = extreme_logits(rng, (5, V), dtype)
    y = soft_targets(rng, (5, V))
    opts = dict(weight=rng.uniform(0.5, 2, (5, 1)), pos_weight=rng.uniform(0.5, 3, V),
                reduction=reduction)
    go = rng.uniform(0.5, 2, (5, V)) if reduction == "none" else 2.0
    lc, gc = fx.binary_cross_entropy_with_logits_with_grad(x, y, backend="cpu", grad_output=go,
                                                           **opts)
    lg, gg = fx.binary_cross_entropy_with_logits_with_grad(x, y, backend="cuda", grad_output=go,
                                                           **opts)
    np.testing.assert_allclose(lg, lc, rtol=1e-6, atol=1e-6)
    assert gg.dtype == dtype
    np.testing.assert_allclose(to64(gg), to64(gc), rtol=ROUNDING[dtype], atol=1e-6)
    pc = fx.binary_cross_entropy_with_logits(x, y, backend="cpu", weight=rng.uniform(0.5, 2, V))
    assert np.isfinite(pc)


def test_bce_of_device_arrays_and_probabilities(rng):
    x = random_logits(rng, (4, V), F32)
    y = (rng.random((4, V)) < 0.3).astype(F32)
    loss, grad = fx.binary_cross_entropy_with_logits_with_grad(cuda.to_device(x),
                                                               cuda.to_device(y))
    want, want_grad = fx.binary_cross_entropy_with_logits_with_grad(x, y)
    assert float(loss.copy_to_host()) == pytest.approx(want, rel=1e-6)
    np.testing.assert_allclose(grad.copy_to_host(), want_grad, atol=1e-6)
    p = rng.random((4, V)).astype(F32)
    p[0, :3] = [0.0, 1.0, 1 - 1e-7]
    for eps in (None, 1e-7):
        np.testing.assert_allclose(fx.binary_cross_entropy(p, y, backend="cuda", eps=eps),
                                   fx.binary_cross_entropy(p, y, eps=eps), rtol=1e-6)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        fx.binary_cross_entropy(p * 2, y, backend="cuda")


def test_linear_cross_entropy_chunks_through_the_device_kernels(rng, monkeypatch):
    """The fused linear cross-entropy's loop (``fastxent.losses.linear.run``) with each chunk's
    logits in a device array: the CUDA kernel's per-row losses, per-row upstream gradients and
    in-place gradient, as ``fastxent.torch`` uses them for CUDA tensors, against the CPU loop."""
    from fastxent.dispatch import device as _device
    from fastxent.losses import linear as _linear

    class DeviceOps(_linear._NumpyOps):
        """NumPy's products on the host; each chunk's logits and gradient on the device."""

        @staticmethod
        def empty(shape, dtype):
            return cuda.device_array(shape, dtype)

        @staticmethod
        def logits(hc, w, b, out):
            out.copy_to_device(np.ascontiguousarray(hc @ w.T + (0 if b is None else b),
                                                    dtype=out.dtype))

        def gradients(self, grads, g, w, hc, idx, **how):
            super().gradients(grads, g.copy_to_host(), w, hc, idx, **how)

        @staticmethod
        def put(losses, idx, loss):
            losses[idx] = loss.copy_to_host() if hasattr(loss, "copy_to_host") else loss

        @staticmethod
        def fused(x, t, scale, options, lse=False):  # as fastxent.torch calls it for CUDA
            return _device.chunk_losses(x, t, scale=scale, lse=lse, **options)

        @staticmethod
        def loss(x, t, options, lse=False):
            return _device.chunk_losses(x, t, lse=lse, **options)

    n, h, v = 21, 6, 37
    hidden = rng.standard_normal((n, h)).astype(F32)
    weight = rng.standard_normal((v, h)).astype(F32)
    bias = rng.standard_normal(v).astype(F32)
    t = rng.integers(0, v, n)
    t[[2, 9]] = -100
    # the options as fastxent.torch builds them, with and without class weights; negative
    # weights rescale the z-loss coefficient below 0, which the chunks must take as it is
    torch = pytest.importorskip("torch")
    from fastxent.torch.linear import _prepare
    prepared = []
    for cw in (rng.uniform(0.5, 2.0, v), -rng.uniform(0.5, 2.0, v), None):
        _, _, _, _, th, cw_host, options = _prepare(
            torch.tensor(hidden), torch.tensor(weight), torch.tensor(t), torch.tensor(bias),
            None if cw is None else torch.tensor(cw), -100, 0.1, 1e-3, 2.5, 5, None).args
        prepared.append((th, cw_host, options))
    # the targets were checked on the host: no chunk leaves (or waits for) an out-of-range flag
    monkeypatch.setattr(_device, "_flag", lambda *a: pytest.fail("a flag was left"))
    for (th, cw, options), (reduction, go) in itertools.product(
            prepared, (("mean", 1.0), ("none", rng.uniform(0.5, 2.0, n)))):
        args = (hidden, weight, bias, th, cw, options, reduction, (5, None))
        got = _linear.run(DeviceOps(), *args, grad=True, grad_output=go, lse=True)
        want = _linear.run(_linear._NumpyOps(), *args, grad=True, grad_output=go, lse=True)
        np.testing.assert_allclose(got.losses, want.losses, rtol=2e-6)
        np.testing.assert_allclose(got.lse, want.lse, rtol=2e-6)
        assert got.finish == want.finish
        for a, b in zip(got.grads, want.grads):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
        walk = _linear.run(DeviceOps(), *args, grad=False, lse=True)
        np.testing.assert_allclose(walk.losses, want.losses, rtol=2e-6)
        np.testing.assert_allclose(walk.lse, want.lse, rtol=2e-6)


@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_categorical_terms_and_gradient_match_the_reference(rng, eps):
    """The CUDA binary kernel's categorical kind (``-q·log p`` and ``-q/p``) with its gradient,
    against ``reference.binary``."""
    from fastxent.kernels import cuda as kc
    from fastxent.kernels import reference
    n, v = 5, 23
    p = rng.dirichlet(np.ones(v) * 0.5, n)
    p[0, :2] = 0.0
    q = rng.dirichlet(np.ones(v), n)
    rs = rng.uniform(0.5, 2.0, n)
    want_grad = np.empty((n, v))
    want, _ = reference.binary(2, p, q, eps=eps, grad=want_grad, scale=(rs, None))
    be = kc.on(cuda.default_stream(), lambda shape, dtype: cuda.device_array(shape, dtype))
    grad = cuda.device_array((n, v), np.float64)
    total = cuda.device_array(1, np.float64)
    rows, bad = be.binary(2, cuda.to_device(p), cuda.to_device(q), (None, None, None), None, eps,
                          None, grad, (cuda.to_device(rs), None))
    np.testing.assert_allclose(rows.copy_to_host(), want, rtol=1e-12)
    flag = be.binary_total(rows, bad, 1.0, total)
    assert int(flag.copy_to_host()[0]) == 0
    np.testing.assert_allclose(total.copy_to_host()[0], want.sum(), rtol=1e-12)
    np.testing.assert_allclose(grad.copy_to_host(), want_grad, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_z_loss_part_of_an_infinite_row_as_on_the_cpu(rng, reduction, z_loss):
    """The reported z-loss term is ``formulas.z_term`` on both sides: not finite for a row
    holding ``+inf`` (``inf`` with a z-loss, NaN without one: the GPU once reported 0)."""
    x = random_logits(rng, (3, V), F32)
    x[1, 5] = np.inf
    t = np.array([0, 1, 2])
    opts = dict(reduction=reduction, z_loss=z_loss, return_z_loss=True)
    _, want = fx.cross_entropy(x, t, **opts)
    _, got = fx.cross_entropy(x, t, backend="cuda", **opts)
    assert not np.isfinite(np.asarray(want)).all()
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)  # (NaN == NaN)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_parts_and_shift_match_the_cpu(rng, reduction):
    """``return_z_loss``, ``return_lse`` and ``shift`` on device arrays (the z-loss term and the
    log-sum-exps from the call's own row statistics, the targets shifted on the host), against
    the CPU backend."""
    x = random_logits(rng, (2, 6, V), F32)
    t = rng.integers(0, V, (2, 6))
    t[1, 3] = -100
    opts = dict(reduction=reduction, z_loss=1e-2, softcap=5.0, shift=2, return_z_loss=True,
                return_lse=True)
    want, want_grad = fx.cross_entropy_with_grad(x, t, **opts)
    got, grad = fx.cross_entropy_with_grad(cuda.to_device(x), t, **opts)
    for a, b in zip(got, want):
        a = a.copy_to_host() if hasattr(a, "copy_to_host") else a
        np.testing.assert_allclose(np.asarray(a).reshape(np.shape(b)), b, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(grad.copy_to_host(), want_grad, rtol=1e-5, atol=1e-7)
    host = fx.cross_entropy(x, t, backend="cuda", **opts)  # host arrays through the device
    for a, b in zip(host, want):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=dtype_id)
def test_half_precision_class_weights_on_the_device(rng, dtype):
    """Class weights in half precision, on the GPU or the host (PyTorch takes them): widened on
    the device, the results of float32 weights of the same values."""
    x = random_logits(rng, (N, V), F32)
    t = random_targets(rng, (N,), V, ignore_index=-100)
    w = random_weight(rng, V).astype(dtype)
    want, want_grad = fx.cross_entropy_with_grad(x, t, weight=w.astype(F32))
    # (Numba has no bfloat16 device arrays of its own: PyTorch's are tested with the GPU)
    for weight in (w, cuda.to_device(w)) if dtype == F16 else (w,):
        loss, grad = fx.cross_entropy_with_grad(cuda.to_device(x), t, weight=weight)
        np.testing.assert_allclose(np.asarray(loss.copy_to_host()).reshape(()), want, rtol=2e-6)
        np.testing.assert_allclose(grad.copy_to_host(), want_grad, rtol=1e-5, atol=1e-7)
