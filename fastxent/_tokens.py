"""Per-token statistics of a language model's logits, from one streaming pass over each row.

The backends return partial statistics per row (``token_partials`` in ``kernels/__init__.py``):
the maximum ``m``, ``s = Σ exp(y - m)``, ``w = Σ exp(y - m)·(y - m)``, the target's logit, the
first column of the maximum and the count of logits above the target's. Partials of column
chunks and vocabulary shards merge here (:func:`merge_partials`), and :func:`finish` turns them
into the statistics users read::

    lse     = m + log s
    nll     = lse - y_t
    entropy = lse - Σ p·y = log s - w / s
    rank    = #{j : y_j > y_t}        (0 when the target is the top prediction)
"""

from typing import NamedTuple

import numpy as np

from . import _checks, _device, _dispatch
from ._dtypes import storage_view
from .kernels._numeric import merge_rows
from .kernels.codes import IGNORED



class TokenStats(NamedTuple):
    """Statistics of each token (arrays of the targets' shape).

    Ignored tokens have ``nll`` 0 (as PyTorch's ``reduction="none"``), ``lse`` and ``entropy``
    NaN, and ``argmax`` and ``rank`` -1.
    """

    #: negative log-likelihood of the target, ``lse - logit[target]`` (float64)
    nll: np.ndarray
    #: log-sum-exp of the logits (float64)
    lse: np.ndarray
    #: entropy of the predicted distribution, in nats (float64)
    entropy: np.ndarray
    #: the predicted class: first index of the largest logit (int64)
    argmax: np.ndarray
    #: how many classes score strictly higher than the target (int64): the target is in the top
    #: k exactly when ``rank < k`` (ties count in the target's favour)
    rank: np.ndarray


def merge_partials(stats, ints, offsets=None):
    """Merge the partials of ``K`` column parts of the same rows: ``stats`` (N, K, 4) and
    ``ints`` (N, K, 2), part ``k`` starting at column ``offsets[k]`` (its argmax is shifted by
    it; None: the argmax columns are already the row's). Part order is column order, so the
    first maximum wins, as ``np.argmax``. Counts add up; -1 (not counted) in any part makes -1.
    """
    n, k = stats.shape[:2]
    off = np.zeros(k, np.int64) if offsets is None else np.asarray(offsets, np.int64)
    m, s, w = (stats[:, 0, c].copy() for c in range(3))
    arg = ints[:, 0, 0] + off[0]
    for j in range(1, k):
        m2, s2, w2 = (stats[:, j, c] for c in range(3))
        with np.errstate(invalid="ignore"):
            take = (m2 > m) | (np.isnan(m2) & ~np.isnan(m))  # the first NaN, as np.argmax
        arg = np.where(take, ints[:, j, 0] + off[j], arg)
        m, s, w = merge_rows(m, s, w, *(np.ascontiguousarray(a) for a in (m2, s2, w2)))
    yt = stats[:, :, 3]
    present = ~np.isnan(yt)
    first = np.argmax(present, axis=1)
    yt = np.where(present.any(axis=1), yt[np.arange(n), first], np.nan)
    counts = ints[:, :, 1]
    above = np.where((counts < 0).any(axis=1), -1, counts.sum(axis=1))
    ignored = ints[:, 0, 0] < 0
    arg = np.where(ignored, -1, arg)
    return np.stack([m, s, w, yt], axis=-1), np.stack([arg, above], axis=-1)


def finish(stats, ints, ignored):
    """:class:`TokenStats` fields (flat) from merged partials; ``ignored`` marks ignored rows."""
    m, s, w, yt = stats.T
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_s = np.log(s)
        lse = m + log_s
        entropy = log_s - w / s
    lse = np.where(m == np.inf, np.inf, lse)
    lse = np.where(np.isnan(m), np.nan, lse)
    # H >= 0; rounding may leave -1e-16 for a one-hot distribution (NaN stays NaN)
    entropy = np.where(np.isfinite(lse), np.maximum(entropy, 0.0), np.nan)
    with np.errstate(invalid="ignore"):
        nll = lse - yt
    nll = np.where(ignored, 0.0, nll)
    argmax = np.where(ignored, -1, ints[:, 0])
    rank = np.where(ignored, -1, ints[:, 1])
    return nll, lse, entropy, argmax, rank


def prepare(logits, targets, ignore_index):
    """(storage view (N, V), int64 target codes (N,), ignored mask (N,), lead shape) of a host
    call."""
    a = _checks.logits_array(logits)
    ignore = _checks.ignore_index(ignore_index)
    _checks.classes(a.shape)
    kind, t = _checks.targets(targets, a.shape, ignore)
    if kind != "index":
        raise TypeError("token_stats needs integer class indices as targets, got "
                        f"dtype {np.asarray(targets).dtype}")
    x = storage_view(np.ascontiguousarray(a)).reshape(-1, a.shape[-1])
    ignored = t < 0
    codes = np.where(ignored, IGNORED, t)
    return x, codes, ignored, a.shape[:-1]


def token_stats(logits, targets, *, ignore_index=-100, backend="auto"):
    """Per-token negative log-likelihood, log-sum-exp, entropy, argmax and target rank, from one
    pass over the logits.

    Each row of logits is read once; no array of the logits' size is created. From the result,
    perplexity is ``exp(mean nll)``, top-k accuracy for every k is the share of ``rank < k``, and
    the reciprocal rank is ``1 / (rank + 1)``: no sorting.

    Parameters
    ----------
    logits : ndarray, shape (..., V)
        float32, float64, float16 or bfloat16 (``ml_dtypes.bfloat16``); arithmetic in float32
        (float64 for float64 inputs). On a GPU: a PyTorch tensor, CuPy or Numba device array.
    targets : ndarray of int, shape (...)
        The class of each token, ``logits.shape[:-1]``.
    ignore_index : int
        Targets equal to it are ignored (padding): see :class:`TokenStats` for their values.
    backend : {"auto", "cpu", "cuda", "numpy"}
        As in :func:`cross_entropy`.

    Returns
    -------
    TokenStats
        ``(nll, lse, entropy, argmax, rank)``, NumPy arrays of the targets' shape (on the host,
        also for GPU inputs: O(N) values), float64 and int64.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> logits = np.log(np.array([[0.1, 0.2, 0.7], [0.4, 0.4, 0.2]], dtype=np.float32))
    >>> st = fx.token_stats(logits, np.array([2, 0]))
    >>> st.nll.round(4)            # -log 0.7, -log 0.4
    array([0.3567, 0.9163])
    >>> st.argmax, st.rank         # a tie with the top class counts for the target
    (array([2, 0]), array([0, 0]))
    >>> st.entropy.round(4)
    array([0.8018, 1.0549])
    """
    if _dispatch.uses_cuda(backend, logits):
        return TokenStats(*_device.token_stats(logits, targets, ignore_index=ignore_index))
    x, codes, ignored, lead = prepare(logits, targets, ignore_index)
    be = _dispatch.choose(backend, logits)
    stats, ints = be.token_partials(x, codes)
    return TokenStats(*(f.reshape(lead) for f in finish(stats, ints, ignored)))
