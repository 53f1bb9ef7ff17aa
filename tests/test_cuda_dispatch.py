"""The CUDA backend's host side, without a GPU: which backend a call goes to, the errors when CUDA
is not usable, the NumPy 2.5 shim, launch geometry, word views, and the Python twins of the lane
helpers (what the simulator runs)."""

import numpy as np
import pytest
from conftest import BF16, F16, F32, F64, dtype_id, random_logits

import fastxent as fx
from fastxent import config
from fastxent.dispatch import arrays as _arrays
from fastxent.dispatch import backends as _dispatch
from fastxent.kernels.cuda.compat import numpy_compat


def cuda_usable():
    try:
        from numba import cuda
        return cuda.is_available()
    except Exception:
        return False


class FakeGPUArray:
    """An object that says it lives on a GPU, as CuPy arrays and CUDA tensors do."""

    def __init__(self, shape=(2, 3), typestr="<f4"):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (0, False),
                                         "version": 3, "strides": None}


def test_device_arrays_are_recognised():
    assert _arrays.is_device(FakeGPUArray())
    assert not _arrays.is_device(np.zeros(3))
    assert _arrays.adapter(np.zeros(3)).kind == "host"


def test_cuda_is_a_backend_name():
    assert "cuda" in _dispatch.names()
    with pytest.raises(ValueError, match="'cuda'"):
        fx.cross_entropy(np.zeros((1, 2), np.float32), np.array([0]), backend="gpu")


def test_cpu_backends_refuse_gpu_arrays():
    for backend in ("cpu", "numpy"):
        with pytest.raises(TypeError, match="lives on a GPU.*backend='cuda'"):
            fx.cross_entropy(FakeGPUArray(), np.array([0, 1]), backend=backend)


@pytest.mark.skipif(cuda_usable(), reason="a GPU is usable here")
def test_no_usable_cuda_names_what_to_install():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(RuntimeError, match=r'pip install "fastxent\[cuda\]"'):
        fx.cross_entropy(x, np.array([0, 1]), backend="cuda")
    with pytest.raises(RuntimeError, match="backend='cuda' is not usable"):
        fx.cross_entropy(FakeGPUArray(), np.array([0, 1]))  # "auto" picks CUDA for GPU arrays
    with pytest.raises(RuntimeError, match="not usable"):
        fx.logsumexp(FakeGPUArray())
    status = _dispatch.available()["cuda"]
    assert status is not True and "fastxent[cuda]" in status


def test_numpy_row_stack_shim(monkeypatch):
    """numba-cuda 0.30 compiles through np.row_stack, which NumPy 2.5 removed."""
    if hasattr(np, "row_stack"):
        monkeypatch.delattr(np, "row_stack")
    assert numpy_compat() is True
    assert np.row_stack is np.vstack
    assert numpy_compat() is False  # left alone where it exists


# --- launch geometry and word views --------------------------------------------------------------

plan = pytest.importorskip("fastxent.kernels.cuda.plan")
H100 = (132, 50 << 20)


def test_grid_warp_per_row_for_short_rows():
    blocks, threads, group = plan.grid(1000, 1024, 2, False, H100)
    assert group == 32 and threads == config.CUDA_WARP_BLOCK_THREADS
    assert blocks == -(-1000 // (threads // 32))


def test_grid_block_per_row_and_rows_in_flight_within_l2():
    blocks, threads, group = plan.grid(8192, 131072, 2, True, H100)
    assert group == threads == config.CUDA_BLOCK_THREADS
    # 132 rows of 256 KiB in flight: 34 MB, within L2
    assert blocks == 132
    blocks, _, _ = plan.grid(8192, 131072, 2, False, H100)  # forward only: fill the GPU
    assert blocks == 132 * config.CUDA_BLOCKS_PER_SM
    blocks, _, _ = plan.grid(8192, 32000, 2, True, H100)
    assert blocks == int(0.6 * (50 << 20)) // 64000


def _dummy(dtype, ndim=1):
    return np.zeros((1,) * ndim, dtype)


@pytest.mark.parametrize("offset", range(4))
def test_words_start_at_the_first_8_byte_boundary(offset):
    buf = np.zeros(64, np.uint16)
    base = (-buf.ctypes.data % 8) // 2  # the buffer's own first boundary
    flat = buf[base + offset:base + offset + 37]
    words, k0 = plan.words(flat, _dummy)
    assert k0 == (4 - offset) % 4
    assert words.dtype == np.uint64 and words.ctypes.data % 8 == 0
    assert words.size == (37 - k0) // 4
    assert np.shares_memory(words, flat)
    assert words.ctypes.data == flat[k0:].ctypes.data


def test_float64_rows_are_their_own_words():
    flat = np.zeros(9)
    words, k0 = plan.words(flat, _dummy)
    assert words is flat and k0 == 0


# --- the lane helpers' Python twins --------------------------------------------------------------

lanes = pytest.importorskip("fastxent.kernels.cuda.lanes")
STORE = {F32: np.float32, F64: np.float64, F16: np.int16, BF16: np.uint16}


@pytest.mark.parametrize("dtype", [F32, F64, F16, BF16], ids=dtype_id)
def test_lane_twins_decode_and_encode_words(rng, dtype):
    x = random_logits(rng, 16, dtype)
    like = x.view(STORE[dtype])
    ne = lanes.lanes(like)
    assert ne == 8 // dtype.itemsize
    words = like.view(np.float64 if dtype == F64 else np.uint64)
    compute = np.float64 if dtype == F64 else np.float32  # the lane's value in the compute type
    for k, word in enumerate(words):
        for j in range(ne):
            got = lanes.get(word, j, like)
            assert type(got) is compute and got == compute(x[k * ne + j]), (k, j, got)
        rebuilt = lanes.empty_word(like)
        for j in range(ne):
            rebuilt = lanes.put(rebuilt, j, lanes.get(word, j, like), like)
        assert rebuilt == word


def test_bfloat16_encode_rounds_to_nearest_even():
    from fastxent.core.dtypes import encode_into
    like = np.zeros(1, np.uint16)
    values = np.float32([1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.5e-3, np.inf, np.nan, 3.3e38])
    want = np.zeros(values.size, np.uint16)
    encode_into(want, values.astype(np.float64))
    got = [lanes.encode(v, like) for v in values]
    np.testing.assert_array_equal(got, want)
