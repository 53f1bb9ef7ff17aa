"""fastxent.dispatch.checks: every bad input gets a clear error that names the argument, raised
before any work is done (so the logits are never half-overwritten by a failing in-place call)."""

import numpy as np
import pytest
from conftest import BACKENDS, BF16, F32

import fastxent as fx

LOGITS = np.zeros((4, 5), F32)
TARGETS = np.array([0, 1, 2, 3])


def grad_call(logits=LOGITS, targets=TARGETS, **kwargs):
    return fx.cross_entropy_with_grad(logits, targets, **kwargs)


ENTRY_POINTS = {
    "cross_entropy": fx.cross_entropy,
    "cross_entropy_with_grad": fx.cross_entropy_with_grad,
}


@pytest.fixture(params=list(ENTRY_POINTS))
def entry(request):
    return ENTRY_POINTS[request.param]


# --- logits --------------------------------------------------------------------------------------


@pytest.mark.parametrize("logits", [
    np.zeros((4, 5), np.int32),
    np.zeros((4, 5), np.int64),
    np.zeros((4, 5), bool),
    np.zeros((4, 5), np.complex64),
    np.array([["a", "b", "c", "d", "e"]] * 4),
    np.zeros((4, 5), object),
    [["a"] * 5] * 4,
    [[1, 2, 3, 4, 5]] * 4,  # a list of ints: integer dtype
], ids=["int32", "int64", "bool", "complex", "str", "object", "list_of_str", "list_of_int"])
def test_logits_wrong_dtype(entry, logits):
    with pytest.raises(TypeError, match=r"logits has dtype .*expected one of float32, float64"):
        entry(logits, TARGETS)


def test_logits_wrong_dtype_logsumexp():
    with pytest.raises(TypeError, match="logits has dtype int64"):
        fx.logsumexp(np.zeros((2, 3), np.int64))


def test_logits_not_an_array(entry):
    class NotAnArray:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("no")

    with pytest.raises(TypeError, match="logits must be an array of floats, got NotAnArray"):
        entry(NotAnArray(), TARGETS)


def test_logits_on_gpu(entry):
    class DeviceArray:
        __cuda_array_interface__ = {"shape": (4, 5), "typestr": "<f4", "data": (0, False),
                                    "version": 3}

    with pytest.raises(TypeError, match="logits lives on a GPU"):
        entry(DeviceArray(), TARGETS, backend="cpu")


def test_torch_tensor_that_requires_grad():
    torch = pytest.importorskip("torch")
    t = torch.zeros(4, 5, requires_grad=True)
    with pytest.raises(TypeError, match="logits must be an array of floats, got Tensor"):
        fx.cross_entropy(t, TARGETS)


@pytest.mark.parametrize("logits", [np.float32(1.0), np.array(2.0), 3.0],
                         ids=["numpy_scalar", "0d", "float"])
def test_scalar_logits(entry, logits):
    with pytest.raises(ValueError, match="logits must have at least one dimension"):
        entry(logits, 0)


def test_scalar_logits_logsumexp():
    with pytest.raises(ValueError, match="logits must have at least one dimension"):
        fx.logsumexp(np.float64(1.0))


@pytest.mark.parametrize("shape", [(4, 0), (0,), (2, 3, 0)], ids=str)
def test_empty_class_axis(entry, shape):
    with pytest.raises(ValueError, match=r"logits has shape .*the last axis holds the classes"):
        entry(np.zeros(shape, F32), np.zeros(shape[:-1], np.int64))


# --- targets -------------------------------------------------------------------------------------


@pytest.mark.parametrize("targets", [np.array([0, 1, 2]), np.array([[0, 1, 2, 3]]),
                                     np.array(1), np.zeros((4, 1), np.int64)],
                         ids=["short", "extra_axis", "scalar", "column"])
def test_targets_wrong_shape(entry, targets):
    with pytest.raises(ValueError, match=r"targets has shape .* expected \(4,\) to match "
                                         r"logits.shape\[:-1\]"):
        entry(LOGITS, targets)


def test_probability_targets_wrong_shape(entry):
    with pytest.raises(ValueError, match=r"targets has shape \(4,\) and a floating dtype, so it "
                                         r"is read as probabilities"):
        entry(LOGITS, np.zeros(4, F32))
    with pytest.raises(ValueError, match=r"targets has shape \(4, 6\)"):
        entry(LOGITS, np.zeros((4, 6), F32))


@pytest.mark.parametrize("targets", [np.zeros(4, bool), np.array(["a", "b", "c", "d"]),
                                     np.zeros(4, np.complex128), np.zeros(4, object)],
                         ids=["bool", "str", "complex", "object"])
def test_targets_wrong_dtype(entry, targets):
    with pytest.raises(TypeError, match="targets has dtype .*expected integer class indices or "
                                        "floating probabilities"):
        entry(LOGITS, targets)


@pytest.mark.parametrize("backend", BACKENDS)
def test_target_out_of_range(entry, backend):
    with pytest.raises(IndexError, match=r"targets\[2\] = 5 is out of range: class indices "
                                         r"must be in \[0, 5\) or equal ignore_index=-100"):
        entry(LOGITS, np.array([0, 1, 5, 7]), backend=backend)
    with pytest.raises(IndexError, match=r"targets\[1\] = -1 is out of range"):
        entry(LOGITS, np.array([0, -1, 2, -100]), backend=backend)
    with pytest.raises(IndexError, match=r"targets\[0\] = -100 is out of range.*"
                                         r"ignore_index=-1"):
        entry(LOGITS, np.array([-100, -1, 2, 3]), ignore_index=-1, backend=backend)


def test_target_out_of_range_position_in_several_axes(entry):
    targets = np.zeros((2, 3), np.int64)
    targets[1, 2] = 9
    targets[1, 1] = -100
    with pytest.raises(IndexError, match=r"targets\[1, 2\] = 9"):
        entry(np.zeros((2, 3, 5), F32), targets)
    with pytest.raises(IndexError, match=r"^targets = 9 is out of range"):
        entry(np.zeros(5, F32), 9)


def test_huge_unsigned_target(entry):
    with pytest.raises(IndexError, match=r"targets\[0\] = 18446744073709551615"):
        entry(LOGITS, np.array([2**64 - 1, 0, 0, 0], np.uint64))


# --- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["avg", "MEAN", None, "", 1])
def test_bad_reduction(entry, reduction):
    with pytest.raises(ValueError, match=r"reduction=.* is not one of 'mean', 'sum', 'none'"):
        entry(LOGITS, TARGETS, reduction=reduction)


@pytest.mark.parametrize("value", [-0.1, 1.01, 2, float("nan"), float("inf")])
def test_label_smoothing_out_of_range(entry, value):
    with pytest.raises(ValueError, match="label_smoothing="):
        entry(LOGITS, TARGETS, label_smoothing=value)


@pytest.mark.parametrize("value", ["0.1", None, True, [0.1], np.array([0.1])],
                         ids=["str", "None", "bool", "list", "array"])
def test_label_smoothing_not_a_number(entry, value):
    with pytest.raises(TypeError, match="label_smoothing must be a real number"):
        entry(LOGITS, TARGETS, label_smoothing=value)


@pytest.mark.parametrize("value", [0, 0.0, -1.0, float("inf"), float("-inf"), float("nan")])
def test_bad_softcap(entry, value):
    with pytest.raises(ValueError, match="softcap="):
        entry(LOGITS, TARGETS, softcap=value)


@pytest.mark.parametrize("value", ["30", True, [30.0]], ids=["str", "bool", "list"])
def test_softcap_not_a_number(entry, value):
    with pytest.raises(TypeError, match="softcap must be a real number"):
        entry(LOGITS, TARGETS, softcap=value)


@pytest.mark.parametrize("value", [-1e-4, float("nan"), float("inf")])
def test_bad_z_loss(entry, value):
    with pytest.raises(ValueError, match="z_loss="):
        entry(LOGITS, TARGETS, z_loss=value)


def test_z_loss_not_a_number(entry):
    with pytest.raises(TypeError, match="z_loss must be a real number"):
        entry(LOGITS, TARGETS, z_loss="1e-4")


def test_numpy_scalars_are_accepted_as_options(entry):
    want = entry(LOGITS, TARGETS, label_smoothing=0.25, z_loss=0.5, softcap=3.0, ignore_index=1)
    got = entry(LOGITS, TARGETS, label_smoothing=np.float32(0.25), z_loss=np.float64(0.5),
                softcap=np.int64(3), ignore_index=np.int32(1))
    np.testing.assert_array_equal(np.asarray(got[0] if isinstance(got, tuple) else got),
                                  np.asarray(want[0] if isinstance(want, tuple) else want))


@pytest.mark.parametrize("value", [1.5, "0", None, True], ids=["float", "str", "None", "bool"])
def test_bad_ignore_index(entry, value):
    with pytest.raises(TypeError, match="ignore_index must be an integer"):
        entry(LOGITS, TARGETS, ignore_index=value)


@pytest.mark.parametrize("weight", [np.ones(4), np.ones(6), np.ones((1, 5)), np.ones(()),
                                    [1.0, 2.0]], ids=["short", "long", "2d", "scalar", "list"])
def test_weight_wrong_shape(entry, weight):
    with pytest.raises(ValueError, match=r"weight has shape .* expected \(5,\) to match "
                                         r"logits.shape\[-1\]"):
        entry(LOGITS, TARGETS, weight=weight)


@pytest.mark.parametrize("weight", [np.array(["a"] * 5), np.ones(5, bool),
                                    np.ones(5, np.complex64), np.ones(5, object)],
                         ids=["str", "bool", "complex", "object"])
def test_weight_non_numeric(entry, weight):
    with pytest.raises(TypeError, match="weight has dtype"):
        entry(LOGITS, TARGETS, weight=weight)


@pytest.mark.parametrize("backend", ["gpu", "CUDA", "", None, "CPU", 1])
def test_unknown_backend(entry, backend):
    with pytest.raises(ValueError, match=r"backend=.* is not one of 'auto', 'cpu', 'numpy', "
                                         r"'cuda'"):
        entry(LOGITS, TARGETS, backend=backend)


def test_unknown_backend_logsumexp():
    with pytest.raises(ValueError, match="backend='gpu' is not one of"):
        fx.logsumexp(LOGITS, backend="gpu")


# --- grad_output ---------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_grad_output_array_with_scalar_loss(reduction):
    with pytest.raises(ValueError, match=r"grad_output has shape \(4,\); with reduction="):
        grad_call(reduction=reduction, grad_output=np.ones(4))


def test_grad_output_does_not_broadcast():
    with pytest.raises(ValueError, match=r"grad_output has shape \(3,\), which does not "
                                         r"broadcast to the loss shape \(4,\)"):
        grad_call(reduction="none", grad_output=np.ones(3))


@pytest.mark.parametrize("value", ["1", np.array([True] * 4), None], ids=["str", "bool", "None"])
def test_grad_output_not_numeric(value):
    with pytest.raises(TypeError, match="grad_output must be a real number or array"):
        grad_call(reduction="none", grad_output=value)


# --- out and inplace -----------------------------------------------------------------------------


@pytest.mark.parametrize("out", [np.empty((4, 6), F32), np.empty((5, 4), F32),
                                 np.empty(20, F32), np.empty((4, 5), np.float64),
                                 np.empty((4, 5), BF16)],
                         ids=["shape", "transposed_shape", "flat", "float64", "bfloat16"])
def test_out_wrong_shape_or_dtype(out):
    with pytest.raises(ValueError, match=r"out has shape .* expected shape \(4, 5\) and dtype "
                                         r"float32 \(those of logits\)"):
        grad_call(out=out)


def test_out_not_an_array():
    with pytest.raises(TypeError, match="out must be a NumPy array, got list"):
        grad_call(out=[[0.0] * 5] * 4)


def test_out_read_only():
    out = np.empty((4, 5), F32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        grad_call(out=out)


@pytest.mark.parametrize("how", ["same", "view", "partial"])
def test_out_overlapping_logits(how):
    base = np.zeros((4, 10), F32)
    logits = base[:, :5]
    out = {"same": logits, "view": logits[:], "partial": base[:, 3:8]}[how]
    with pytest.raises(ValueError, match="out overlaps logits; .*inplace=True"):
        grad_call(logits=logits, out=out)
    assert not np.any(base)


def test_out_and_inplace_together():
    logits = LOGITS.copy()
    with pytest.raises(ValueError, match="pass either out= or inplace=True, not both"):
        grad_call(logits=logits, out=np.empty_like(logits), inplace=True)


def test_inplace_on_read_only_array():
    logits = np.ones((4, 5), F32)
    logits.flags.writeable = False
    with pytest.raises(ValueError, match="inplace=True but logits is read-only"):
        grad_call(logits=logits, inplace=True)


@pytest.mark.parametrize("how", ["sliced", "broadcast"])
def test_inplace_on_read_only_non_contiguous_array(how):
    """Read-only and non-contiguous: the same clear error, raised before any work.

    Bug fixed: ``inplace_target`` checked the contiguous copy of the logits (always writable)
    instead of the caller's array, so the call computed everything and then failed in
    ``np.copyto`` with NumPy's "assignment destination is read-only".
    """
    if how == "sliced":
        logits = np.ones((4, 10), F32)[:, ::2]
        logits.flags.writeable = False
    else:
        logits = np.broadcast_to(np.ones(5, F32), (4, 5))
    with pytest.raises(ValueError, match="inplace=True but logits is read-only"):
        grad_call(logits=logits, inplace=True)


def test_inplace_on_a_list():
    with pytest.raises(TypeError, match="inplace=True needs logits to be a NumPy array"):
        grad_call(logits=[[0.0] * 5] * 4, inplace=True)


def test_failed_inplace_call_leaves_logits_alone():
    logits = np.arange(20, dtype=F32).reshape(4, 5)
    saved = logits.copy()
    with pytest.raises(IndexError):
        grad_call(logits=logits, targets=np.array([0, 1, 2, 5]), inplace=True)
    with pytest.raises(ValueError):
        grad_call(logits=logits, reduction="avg", inplace=True)
    with pytest.raises(ValueError):
        grad_call(logits=logits, reduction="none", grad_output=np.ones(3), inplace=True)
    np.testing.assert_array_equal(logits, saved)
