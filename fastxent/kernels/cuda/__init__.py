"""Numba CUDA kernels: streaming log-sum-exp statistics, the fused gradient and the reductions.

One group of threads owns a row: a warp when the row is small (``config.CUDA_WARP_ROW_BYTES``), the
whole block otherwise. Each thread walks its share of the row as 8-byte words, four loads in
flight (``lanes``), keeping a running ``(max, sum of exp)`` pair; the group merges the pairs
(``groups``), and the same group then writes the gradient of the row it has just read, so that the
second read comes from L2. Blocks stay resident and loop over rows, and for the fused kernel their
number is chosen so that the rows in flight fit in L2. Row starts that are not 8-byte aligned
(odd vocabularies) are handled element by element up to the first full word, and so are the tails.

The backend is an object bound to the caller's stream (:func:`on`), with the functions of
``fastxent.kernels.interface.Backend``. Three kernels per cross-entropy call (``softmax``,
launched as ``plan`` lays out), all on that stream and none waiting for the host:

``targets_kernel``
    one block: the number of counted rows and the sum of their weights (what "mean" divides by),
    and the first row whose class index is out of range (a flag the caller reads back when it
    can; the loss is then NaN and the gradient kernel writes nothing, so that ``inplace`` leaves
    the logits untouched);
``rows_kernel``
    per row: the statistics ``[lse, Σwqy, Σwq, Σwy]`` (``fastxent.kernels``), the
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

from ... import config
from . import elementwise as _elementwise
from . import plan as _plan
from . import softmax as _kernels
from . import tokens as _tokens

name = "cuda"


def ensure_usable():
    """Raises ImportError when no GPU can run the kernels (``dispatch.backends`` asks before first
    use)."""
    if not cuda.is_available():
        raise ImportError("numba.cuda finds no usable GPU (no NVIDIA driver or device is visible)")


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


def _resident_blocks(n, per_sm):
    """Blocks of a kernel whose blocks loop over ``n`` rows: enough to fill the GPU."""
    return min(n, _device_facts()[0] * per_sm, config.CUDA_MAX_BLOCKS or n)


def on(stream, scratch):
    """The CUDA backend bound to ``stream``: ``fastxent.kernels.interface.Backend`` on Numba
    device arrays, every call queued on that stream and none waited for; ``scratch(shape,
    dtype)`` allocates the calls' temporary device arrays."""
    return OnStream(stream, scratch)


class OnStream:
    """``interface.Backend`` on one CUDA stream (see :func:`on`)."""

    name = name

    def __init__(self, stream, scratch):
        self.stream, self.scratch = stream, scratch

    def _launch(self, launches):
        for kernel, blocks, threads, args in launches:
            _kernels.KERNELS[kernel][blocks, threads, self.stream](*args)

    def cross_entropy(self, call, out):
        """Queues the kernels of ``call`` (``plan.call``) and returns the device flag (1,)."""
        launches, bad = _plan.call(call, out, self.scratch, _dummy, _device_facts())
        self._launch(launches)
        return bad

    def logsumexp(self, x, softcap, out):
        self._launch(_plan.lse_call(x, softcap, out, self.scratch, _dummy, _device_facts()))
        return out

    def token_partials(self, x, codes, thresholds=None):
        """Device arrays ``(stats (N, 4), ints (N, 2))``, as ``reference.token_partials``."""
        n, v = x.shape
        stats = cuda.device_array((n, 4), np.float64, stream=self.stream)
        ints = cuda.device_array((n, 2), np.int64, stream=self.stream)
        if n:
            threads = min(config.CUDA_TOKEN_THREADS, _tokens.THREADS)
            thr = _dummy(np.float64) if thresholds is None else thresholds
            _tokens.token_kernel[_resident_blocks(n, _tokens.BLOCKS_PER_SM), threads,
                                 self.stream](x.reshape(-1), n, v, codes, thr,
                                              thresholds is not None, stats, ints)
        return stats, ints

    def binary(self, kind, x, targets, weights, pos_weight, eps, losses, grad, scale):
        """As ``reference.binary`` on device arrays (``weights = (cw, rw, ew)`` and ``scale =
        (rs, ge)`` device arrays or None; ``losses`` (N·V compute type) and ``grad`` (a storage
        view) device arrays or None): ``(row_sums (N,) float64, bad (N,) int64)``, on the
        device; :meth:`binary_total` reduces them."""
        n, v = x.shape
        row_sums = cuda.to_device(np.zeros(n), stream=self.stream)
        bad = cuda.to_device(np.zeros(n, np.int64), stream=self.stream)
        if n and v:
            compute = np.float64 if x.dtype == np.float64 else np.float32

            def arg(a, dtype=compute):
                return (_dummy(dtype), False) if a is None else (a, True)

            (cw, rw, ew), (rs, ge) = weights, scale
            threads = min(config.CUDA_TOKEN_THREADS, _elementwise.THREADS)
            _elementwise.binary_kernel[_resident_blocks(n, _elementwise.BLOCKS_PER_SM), threads,
                                       self.stream](
                kind, x.reshape(-1), targets.reshape(-1), n, v, *arg(cw), *arg(rw), *arg(ew),
                *arg(pos_weight), float(eps), losses if losses is not None else _dummy(compute),
                losses is not None, grad.reshape(-1) if grad is not None else _dummy(x.dtype),
                grad is not None, rs if rs is not None else _dummy(np.float64), *arg(ge),
                row_sums, bad)
        return row_sums, bad

    def binary_total(self, row_sums, bad, scale, total):
        """Queues ``total[0] = scale·Σ row_sums`` (in a fixed order) and returns the device count
        (1,) of the elements out of range."""
        flag = cuda.device_array(1, np.int64, stream=self.stream)
        threads = min(config.CUDA_TOKEN_THREADS, _elementwise.THREADS)
        _elementwise.sum_kernel[1, threads, self.stream](row_sums, bad, row_sums.shape[0],
                                                         float(scale), total, flag)
        return flag
