"""Numba CUDA kernels: streaming log-sum-exp statistics, the fused gradient and the reductions.

One group of threads owns a row: a warp when the row is small (``config.CUDA_WARP_ROW_BYTES``), the
whole block otherwise. Each thread walks its share of the row as 8-byte words, four loads in
flight (``lanes``), keeping a running ``(max, sum of exp)`` pair; the group merges the pairs
(``groups``), and the same group then writes the gradient of the row it has just read, so that the
second read comes from L2. Blocks stay resident and loop over rows, and for the fused kernel their
number is chosen so that the rows in flight fit in L2. Row starts that are not 8-byte aligned
(odd vocabularies) are handled element by element up to the first full word, and so are the tails.

Three kernels per call (``softmax``, launched as ``plan`` lays out), all on the
caller's stream and none waiting for the host:

``targets_kernel``
    one block: the number of counted rows and the sum of their weights (what "mean" divides by),
    and the first row whose class index is out of range (the caller reads this flag back once and
    raises; the gradient kernel writes nothing while it is set, so that ``inplace`` leaves the
    logits untouched);
``rows_kernel``
    per row: the statistics ``[lse, Σwqy, Σwq, Σwy]`` of ``fastxent/kernels/__init__.py``, the
    row's loss for ``reduction="none"``, and with a gradient buffer the gradient
    ``(softmax(y)·(c0·Σwq + c1·Σw + c2·lse) − c0·w·q − c1·w)·dy/dx`` whose coefficients it computes
    from ``grad_output`` and ``_totals`` on the device;
``reduce_kernel``
    one block: the mean or sum of the row losses, in a fixed order (deterministic).

Arithmetic is float32 (float64 for float64 logits); the merges across threads and the row
statistics are float64. ``p = exp(y - m)·(A/s)`` uses the row's maximum ``m``, an element of the
row, so the exponent is exact for the terms that matter.
"""

import numpy as np
from numba import cuda

from . import plan as _plan
from . import softmax as _kernels

name = "cuda"



def ensure_usable():
    """Raises ImportError when no GPU can run the kernels (``dispatch.backends`` asks before first
    use)."""
    if not cuda.is_available():
        raise ImportError("numba.cuda finds no usable GPU (no NVIDIA driver or device is visible)")

from ...core.codes import INDEX, PROBS  # noqa: E402, F401  (be.INDEX, be.PROBS for callers)

_dummies = {}
_facts = {}


def _dummy(dtype, ndim=1):
    """A one-element device array standing for an absent argument of that type."""
    key = (np.dtype(dtype), ndim)
    if key not in _dummies:
        _dummies[key] = cuda.to_device(np.zeros((1,) * ndim, dtype=dtype))
    return _dummies[key]


def _device_facts():
    """(multiprocessors, L2 bytes) of the current device."""
    dev = cuda.get_current_device()
    key = getattr(dev, "id", 0)
    if key not in _facts:
        _facts[key] = (int(getattr(dev, "MULTIPROCESSOR_COUNT", 132)),
                       int(getattr(dev, "L2_CACHE_SIZE", 50 << 20)))
    return _facts[key]


def _launch(launches, stream):
    for kernel, blocks, threads, args in launches:
        _kernels.KERNELS[kernel][blocks, threads, stream](*args)


def run(x, kind, targets, ignore, probs, weight, eps, z, softcap, want_sy, reduction, go, go_rows,
        grad, out, stream, scratch, parts=(None, None)):
    """Queues the kernels of one call on ``stream`` and returns the device flag ``bad`` without
    waiting (arguments: ``plan.call``)."""
    launches, bad = _plan.call(x, kind, targets, ignore, probs, weight, eps, z, softcap, want_sy,
                               reduction, go, go_rows, grad, out, scratch, _dummy,
                               _device_facts(), parts)
    _launch(launches, stream)
    return bad


def logsumexp(x, softcap, out, stream, scratch):
    """Queues the log-sum-exp of each row of the (N, V) storage view ``x`` into ``out`` (N,)."""
    _launch(_plan.lse_call(x, softcap, out, scratch, _dummy, _device_facts()), stream)


def token_partials(x, codes, thresholds, stream):
    """Queues the per-token partial statistics of the (N, V) storage view ``x`` (a Numba device
    array) on ``stream``: ``codes`` and ``thresholds`` (or None) as ``reference.token_partials``
    takes them, on the device. Returns the device arrays ``(stats (N, 4), ints (N, 2))``."""
    from ... import config
    from . import tokens as _cuda_tokens
    n, v = x.shape
    stats = cuda.device_array((n, 4), np.float64, stream=stream)
    ints = cuda.device_array((n, 2), np.int64, stream=stream)
    if n:
        sms, _ = _device_facts()
        blocks = min(n, sms * _cuda_tokens.BLOCKS_PER_SM, config.CUDA_MAX_BLOCKS or n)
        threads = min(config.CUDA_TOKEN_THREADS, _cuda_tokens.THREADS)
        thr = _dummy(np.float64) if thresholds is None else thresholds
        _cuda_tokens.token_kernel[blocks, threads, stream](
            x.reshape(-1), n, v, codes, thr, thresholds is not None, stats, ints)
    return stats, ints


def binary(kind, x, targets, weights, pos_weight, eps, losses, grad, scale, loss_scale, total,
           stream):
    """Queues the element-wise binary losses (or the categorical terms) of the (N, V) storage
    view ``x`` against ``targets`` (both Numba device arrays) on ``stream``, as
    ``reference.binary`` defines them: ``weights = (cw, rw, ew)`` and ``scale = (rs, ge)`` are
    device arrays or None, ``losses`` (N·V compute type) and ``grad`` (a storage view) device
    arrays or None; ``total`` (1,) float64 receives ``loss_scale·Σ``. Returns the device flag
    (1,): the count of out-of-range elements, without waiting."""
    from ... import config
    from . import elementwise as kb
    n, v = x.shape
    row_sums = cuda.to_device(np.zeros(n), stream=stream)
    bad = cuda.to_device(np.zeros(n, np.int64), stream=stream)
    flag = cuda.device_array(1, np.int64, stream=stream)
    threads = min(config.CUDA_TOKEN_THREADS, kb.THREADS)
    if n and v:
        sms, _ = _device_facts()
        blocks = min(n, sms * kb.BLOCKS_PER_SM, config.CUDA_MAX_BLOCKS or n)
        cw, rw, ew = weights
        rs, ge = scale
        compute = np.float64 if x.dtype == np.float64 else np.float32

        def arg(a, dtype=compute):
            return (_dummy(dtype), False) if a is None else (a, True)

        kb.binary_kernel[blocks, threads, stream](
            kind, x.reshape(-1), targets.reshape(-1), n, v, *arg(cw), *arg(rw), *arg(ew),
            *arg(pos_weight), float(eps), losses if losses is not None else _dummy(compute),
            losses is not None, grad.reshape(-1) if grad is not None else _dummy(x.dtype),
            grad is not None, rs if rs is not None else _dummy(np.float64), *arg(ge),
            row_sums, bad)
    kb.sum_kernel[1, threads, stream](row_sums, bad, n, float(loss_scale), total, flag)
    return flag

