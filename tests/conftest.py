"""Shared helpers: input generators, an independent float64 oracle, and comparisons at the
tolerances of docs/design.md#exactness.

The oracle is written from the definitions (PyTorch's ``F.cross_entropy`` plus the z-loss and
soft-cap conventions), with a full ``log_softmax`` array, and shares no code with
``fastxent.kernels.reference``, so that the reference backend is tested too.
"""

import os
import subprocess
import sys
import tempfile

import ml_dtypes
import numpy as np
import pytest

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)

#: Every logits dtype the package accepts.
DTYPES = (F32, F64, F16, BF16)
HALVES = (F16, BF16)
BACKENDS = ("cpu", "numpy")

#: Relative size of one rounding in each format: the gradient is stored in the input's dtype.
ROUNDING = {F32: 0.0, F64: 0.0, F16: 2.0**-11, BF16: 2.0**-8}

#: Loss tolerance (relative, and absolute for per-row losses): arithmetic is float32 for every
#: format but float64, whose kernels are held to a much tighter bound.
LOSS_RTOL = {F32: 1e-6, F16: 1e-6, BF16: 1e-6, F64: 1e-12}
GRAD_ATOL = {F32: 1e-6, F16: 1e-6, BF16: 1e-6, F64: 1e-12}


def dtype_id(dtype):
    return np.dtype(dtype).name


# --- inputs --------------------------------------------------------------------------------------


def random_logits(rng, shape, dtype=F32, scale=3.0):
    """Normal logits with standard deviation ``scale``, rounded to ``dtype`` (bfloat16 included)."""
    return (rng.standard_normal(shape) * scale).astype(np.dtype(dtype))


def random_targets(rng, lead, n_classes, ignore_index=None, ignore_fraction=0.25):
    """int64 class indices of shape ``lead``; about ``ignore_fraction`` set to ``ignore_index``."""
    t = rng.integers(0, n_classes, size=lead, dtype=np.int64)
    if ignore_index is not None:
        t = np.where(rng.random(lead) < ignore_fraction, ignore_index, t)
    return np.asarray(t, dtype=np.int64)


def random_probs(rng, shape, dtype=F32):
    """A target distribution per row (rows sum to 1 before rounding to ``dtype``)."""
    e = np.exp(rng.standard_normal(shape) * 2.0)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.dtype(dtype))


def random_weight(rng, n_classes):
    """Class weights in [0.25, 2) as float64."""
    return rng.uniform(0.25, 2.0, n_classes)


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name: reproducible, different for every test."""
    seed = sum(map(ord, request.node.nodeid)) * 7919 % (2**32)
    return np.random.default_rng(seed)


# --- the oracle ----------------------------------------------------------------------------------


def to64(a):
    return np.asarray(a).astype(np.float64)


def log_softmax64(y):
    """log_softmax over the last axis of a float64 2-D array, computed the way PyTorch does."""
    m = np.max(y, axis=-1, keepdims=True) if y.shape[-1] else np.zeros(y.shape[:-1] + (1,))
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        z = y - m
        return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def lse64(y):
    """Log-sum-exp of a float64 2-D array per row (NaN where log_softmax is NaN, as PyTorch)."""
    m = np.max(y, axis=-1)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return m + np.log(np.sum(np.exp(y - m[:, None]), axis=-1))


def oracle(logits, targets, *, reduction="mean", ignore_index=-100, weight=None,
           label_smoothing=0.0, z_loss=0.0, softcap=None, grad_output=1.0):
    """Loss and gradient (float64) of fastxent's definition, straight from ``log_softmax``.

    Index targets (PyTorch)::

        loss_i = (1-ε)·w_t·(-logp_it) + ε/V·Σ_j w_j·(-logp_ij)       (0 for ignored rows)
        mean   = Σ_i loss_i / Σ_{i not ignored} w_{t_i}

    Probability targets: ``loss_i = -Σ_j w_j·((1-ε)·q_ij + ε/V)·logp_ij``, mean over rows.
    z-loss adds ``z·lse_i²`` per non-ignored row; its mean is over non-ignored rows, unweighted.
    Soft-cap replaces the logits by ``c·tanh(x/c)`` first. Returns ``(loss, grad)``: a float for
    "mean"/"sum" or an array of shape ``logits.shape[:-1]``, and the gradient of
    ``Σ grad_output·loss`` with respect to the logits, shaped like the logits.
    """
    shape = np.shape(logits)
    v = shape[-1]
    lead = shape[:-1]
    x = to64(logits).reshape(-1, v)
    n = x.shape[0]
    y = x if softcap is None else softcap * np.tanh(x / softcap)
    logp = log_softmax64(y)
    lse = lse64(y) if n else np.zeros(0)
    w = np.ones(v) if weight is None else to64(weight)
    eps = float(label_smoothing)
    t = np.asarray(targets)
    if np.issubdtype(t.dtype, np.integer):
        t = t.reshape(-1)
        valid = t != ignore_index
        ts = np.where(valid, t, 0)
        rows = np.arange(n)
        a = eps / v * np.broadcast_to(w, (n, v)).copy()  # the target distribution times w
        a[rows, ts] += (1.0 - eps) * w[ts]
        with np.errstate(invalid="ignore"):
            ce = w[ts] * -logp[rows, ts]
            if eps > 0:  # PyTorch adds the smoothing term only then (it is inf for masked classes)
                ce = (1.0 - eps) * ce + eps / v * -np.sum(w * logp, axis=-1)
        denom = float(np.sum(w[ts][valid]))
    else:
        q = to64(t).reshape(-1, v)
        valid = np.ones(n, dtype=bool)
        a = w * ((1.0 - eps) * q + eps / v)
        with np.errstate(invalid="ignore"):
            ce = -np.sum(a * logp, axis=-1)
        denom = float(n)
    n_valid = int(np.count_nonzero(valid))
    ce = np.where(valid, ce, 0.0)
    zt = np.where(valid, z_loss * lse * lse, 0.0) if z_loss else np.zeros(n)

    with np.errstate(invalid="ignore", divide="ignore"):
        if reduction == "none":
            loss = (ce + zt).reshape(lead)
            s = np.broadcast_to(to64(grad_output), lead).reshape(-1)
            s_z = s
        elif reduction == "sum":
            loss = float(np.sum(ce) + np.sum(zt))
            s = s_z = np.full(n, float(grad_output))
        else:
            denom = np.float64(denom)  # 0 / 0 is NaN here, as in PyTorch
            loss = float(np.sum(ce) / denom + (np.sum(zt) / n_valid if z_loss else 0.0))
            s = np.full(n, np.float64(grad_output) / denom)
            s_z = np.full(n, np.float64(grad_output) / n_valid) if n_valid else np.zeros(n)
        p = np.exp(logp)
        g = s[:, None] * (p * a.sum(axis=-1, keepdims=True) - a)
        if z_loss:
            g = g + s_z[:, None] * 2.0 * z_loss * lse[:, None] * p
        g = np.where(valid[:, None], g, 0.0)
        if softcap is not None:
            g = g * (1.0 - np.tanh(x / softcap) ** 2)
    return loss, g.reshape(shape)


# --- comparisons ---------------------------------------------------------------------------------


def assert_loss_close(actual, expected, dtype, rtol=None, atol=None):
    """Scalar losses within ``rtol`` relative; per-row losses within ``atol + rtol·|expected|``.

    NaN must match NaN and infinities must match exactly.
    """
    dtype = np.dtype(dtype)
    rtol = LOSS_RTOL[dtype] if rtol is None else rtol
    if np.ndim(expected) == 0 and not isinstance(expected, np.ndarray):
        assert isinstance(actual, float), f"expected a Python float, got {type(actual)}"
        atol = 0.0 if atol is None else atol
    else:
        assert isinstance(actual, np.ndarray), f"expected an ndarray, got {type(actual)}"
        assert actual.shape == np.shape(expected)
        want = F64 if dtype == F64 else F32
        assert actual.dtype == want, f"loss dtype {actual.dtype}, expected {want}"
        atol = rtol if atol is None else atol
    np.testing.assert_allclose(to64(actual), to64(expected), rtol=rtol, atol=atol,
                               equal_nan=True)


def assert_grad_close(actual, expected, dtype, atol=None, rtol=0.0):
    """Gradient in the logits' dtype and shape, within ``atol`` plus one rounding of the format
    (plus ``rtol``, for gradients far from unit scale)."""
    dtype = np.dtype(dtype)
    assert actual.dtype == dtype, f"gradient dtype {actual.dtype}, expected {dtype}"
    assert actual.shape == np.shape(expected)
    atol = GRAD_ATOL[dtype] if atol is None else atol
    np.testing.assert_allclose(to64(actual), to64(expected), rtol=ROUNDING[dtype] + rtol,
                               atol=atol, equal_nan=True)


def assert_fused_matches_oracle(logits, targets, dtype, backend="cpu", **options):
    """``cross_entropy_with_grad`` with ``options`` against the oracle: loss and gradient."""
    import fastxent as fx

    want_loss, want_grad = oracle(logits, targets, **options)
    loss, grad = fx.cross_entropy_with_grad(logits, targets, backend=backend, **options)
    assert_loss_close(loss, want_loss, dtype)
    assert_grad_close(grad, want_grad, dtype)


def bits(a):
    """The raw bytes of an array (or a float) for bit-identity checks."""
    return np.ascontiguousarray(np.asarray(a)).tobytes()


# --- the CUDA simulator run ----------------------------------------------------------------------

SIMULATED_SUITE = "tests/test_cuda_backend.py"


def pytest_collection_modifyitems(config, items):
    """Start the simulated CUDA suite (``tests/test_cuda_simulated.py``) in a separate process as
    soon as it is selected, so that it runs while the rest of the session does."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return  # this is that process
    waiting = [item for item in items if item.nodeid.startswith("tests/test_cuda_simulated.py")]
    if waiting:
        config.stash[SIMULATOR_RUN] = start_simulated_suite(config.rootpath)
        for item in waiting:  # waited for last
            items.remove(item)
            items.append(item)


def start_simulated_suite(root):
    """(process, its output, its JUnit XML report's path): ``tests/test_cuda_simulated.py`` reads
    each simulated test's outcome from the report."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONWARNINGS="ignore::RuntimeWarning")
    out = tempfile.TemporaryFile(mode="w+")
    fd, report = tempfile.mkstemp(prefix="fastxent-simulated-", suffix=".xml")
    os.close(fd)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "-W", "ignore::RuntimeWarning", f"--junitxml={report}",
                             SIMULATED_SUITE],
                            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, out, report


SIMULATOR_RUN = pytest.StashKey()
