"""Every CUDA kernel compiles to PTX for sm_80 and sm_90 with exactly the argument types the
backend launches it with (``plan``), and the PTX has what the design relies on: 8-byte
loads and stores of the logits, warp shuffles for the merges, the hardware ``ex2`` for exp, and no
local memory. Needs ``numba-cuda[cu13]`` (NVRTC and NVVM), not a GPU.
"""

import numba
import numpy as np
import pytest

cuda = pytest.importorskip("numba.cuda")
kernels = pytest.importorskip("fastxent.kernels.cuda.softmax")
from fastxent.core.codes import INDEX, PROBS  # noqa: E402
from fastxent.kernels.cuda import plan  # noqa: E402
from fastxent.kernels.interface import LossCall, LossOut  # noqa: E402

N, V = 8, 1001
FACTS = (132, 50 << 20)  # an H100: multiprocessors, L2 bytes
STORAGE = {"float32": np.float32, "float64": np.float64, "float16": np.int16,
           "bfloat16": np.uint16}


class _Device:
    def __init__(self, cc):
        self.compute_capability = cc
        self.id = 0


@pytest.fixture
def target_cc(monkeypatch, request):
    """Without a GPU, numba-cuda asks the (absent) current device which architecture to compile
    the kernels' device functions for: answer with the one under test."""
    cc = request.param
    if not cuda.is_available():
        import numba.cuda.dispatcher as dispatcher
        monkeypatch.setattr(dispatcher, "get_current_device", lambda: _Device(cc))
    return cc


def _dummy(dtype, ndim=1):
    return np.zeros((1,) * ndim, dtype)


def _scratch(shape, dtype):
    return np.zeros(shape, dtype)


def launches(dtype, variant):
    """The launches of one call, with NumPy arrays standing in for device arrays (Numba types
    them alike)."""
    x = np.zeros((N, V), STORAGE[dtype])
    compute = np.float64 if dtype == "float64" else np.float32
    index, none = np.zeros(N, np.int64), np.zeros(N, compute)

    def call(*args, **grad):
        return plan.call(LossCall(*args, **grad), LossOut(*outs), _scratch, _dummy, FACTS)[0]

    outs = (np.zeros(1, compute),)
    if variant == "fused":
        return call(x, INDEX, index, -100, None, 0.0, 0.0, None, "mean", grad=np.zeros_like(x))
    if variant == "options":  # probabilities, weights, smoothing, soft-cap, per-row grad_output
        outs = (none,)
        return call(x, PROBS, np.zeros_like(x), -100, np.ones(V, compute), 0.1, 1e-4, 30.0,
                    "none", grad_output=0.0, grad_rows=np.ones(N), grad=x)
    if variant in ("parts", "parts-none"):  # return_z_loss and return_lse: z-loss and lse
        red = "none" if variant == "parts-none" else "mean"
        rows = N if red == "none" else 1
        outs = (np.zeros(rows, compute), np.zeros(rows, compute), none)
        return call(x, INDEX, index, -100, None, 0.0, 1e-4, None, red)
    if variant == "split":  # batch-1 scoring: one row cut across blocks, fused
        x = np.zeros((1, 256000), STORAGE[dtype])
        return call(x, INDEX, np.zeros(1, np.int64), -100, None, 0.0, 0.0, None, "mean", grad=x)
    return plan.lse_call(x, None, np.zeros(N, compute), _scratch, _dummy, FACTS)


def ptx_of(name, args, cc):
    signature = tuple(numba.typeof(a) for a in args)
    ptx, _ = cuda.compile_ptx(kernels.KERNELS[name].py_func, signature, cc=cc)
    return ptx


def instructions(ptx):
    return [line.split()[0] for line in ptx.splitlines()
            if line.startswith("\t") and line.strip() and line.strip()[0].isalpha()]


@pytest.mark.parametrize("target_cc", [(8, 0), (9, 0)], indirect=True, ids=["sm80", "sm90"])
@pytest.mark.parametrize("dtype", list(STORAGE))
def test_fused_row_kernel_ptx(target_cc, dtype):
    name, _, _, args = next(la for la in launches(dtype, "fused") if la[0] == "rows_kernel")
    ptx = ptx_of(name, args, target_cc)
    ops = instructions(ptx)
    assert f".target sm_{target_cc[0]}{target_cc[1]}" in ptx
    wide = "ld.global.f64" if dtype == "float64" else "ld.global.u64"
    assert ops.count(wide) >= 8, "four 8-byte loads in flight in each pass"
    assert any(op.startswith("st.global.u64" if dtype != "float64" else "st.global.f64")
               for op in ops), "8-byte gradient stores"
    assert any(op.startswith("shfl.sync") for op in ops), "warp merges through shuffles"
    if dtype != "float64":
        assert any(op.startswith("ex2.approx") for op in ops), "exp through the hardware ex2"
    assert not any(op.startswith(("ld.local", "st.local")) for op in ops)
    assert ".local" not in ptx


@pytest.mark.parametrize("target_cc", [(9, 0)], indirect=True, ids=["sm90"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("variant", ["options", "logsumexp", "split", "parts", "parts-none"])
def test_other_launches_ptx(target_cc, dtype, variant):
    names = [launch[0] for launch in launches(dtype, variant)]
    if variant == "split":
        assert names == ["targets_kernel", "partials_kernel", "merge_kernel",
                         "split_gradient_kernel", "reduce_kernel"]
    if variant.startswith("parts"):
        z_kernel = "z_rows_kernel" if variant == "parts-none" else "z_reduce_kernel"
        assert names[-2:] == [z_kernel, "lse_kernel"]
    for name, blocks, threads, args in launches(dtype, variant):
        ptx = ptx_of(name, args, target_cc)
        assert ".entry" in ptx
        assert ".local" not in ptx


@pytest.mark.parametrize("target_cc", [(8, 0), (9, 0)], indirect=True, ids=["sm80", "sm90"])
def test_small_kernels_ptx(target_cc):
    for name, blocks, threads, args in launches("float32", "fused"):
        if name != "rows_kernel":
            ptx = ptx_of(name, args, target_cc)
            assert "bar.sync" in ptx  # the one-block tree reductions


@pytest.mark.parametrize("target_cc", [(8, 0), (9, 0)], indirect=True, ids=["sm80", "sm90"])
@pytest.mark.parametrize("dtype", list(STORAGE))
def test_token_kernel_ptx(target_cc, dtype):
    from fastxent.kernels.cuda import tokens as _cuda_tokens
    x = np.zeros(N * V, STORAGE[dtype])
    args = (x, N, V, np.zeros(N, np.int64), np.zeros(1), False, np.zeros((N, 4)),
            np.zeros((N, 2), np.int64))
    signature = tuple(numba.typeof(a) for a in args)
    ptx, _ = cuda.compile_ptx(_cuda_tokens.token_kernel.py_func, signature, cc=target_cc)
    assert f".target sm_{target_cc[0]}{target_cc[1]}" in ptx
    assert "bar.sync" in ptx  # the block's tree merge
    assert ".local" not in ptx


@pytest.mark.parametrize("target_cc", [(9, 0)], indirect=True, ids=["sm90"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_binary_kernels_ptx(target_cc, dtype):
    from fastxent.kernels.cuda import elementwise as kb
    compute = np.float32
    x = np.zeros(N * V, STORAGE[dtype])
    vec = np.zeros(V, compute)
    args = (0, x, np.zeros(N * V, compute), N, V, vec, True, np.zeros(N, compute), False,
            np.zeros(1, compute), False, vec, True, 0.0, np.zeros(1, compute), False, x, True,
            np.zeros(N), np.zeros(1, compute), False, np.zeros(N), np.zeros(N, np.int64))
    for kernel, kargs in ((kb.binary_kernel, args),
                          (kb.sum_kernel, (np.zeros(N), np.zeros(N, np.int64), N, 1.0,
                                           np.zeros(1), np.zeros(1, np.int64)))):
        signature = tuple(numba.typeof(a) for a in kargs)
        ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=target_cc)
        assert "bar.sync" in ptx and ".local" not in ptx

