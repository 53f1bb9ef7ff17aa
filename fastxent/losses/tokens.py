"""Per-token statistics of a language model's logits, from one streaming pass over each row.

The backends return partial statistics per row (``token_partials`` in ``kernels/interface.py``):
the maximum ``m``, ``s = Σ exp(y - m)``, ``w = Σ exp(y - m)·(y - m)``, the target's logit, the
first column of the maximum and the count of logits above the target's; ``core.partials``
merges them and turns them into the statistics users read.
"""

from typing import NamedTuple

import numpy as np

from ..core.codes import IGNORED
from ..core.dtypes import storage_view
from ..core.partials import finish
from ..dispatch import backends as _dispatch
from ..dispatch import checks as _checks
from ..dispatch import device as _device


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


def prepare(logits, targets, ignore_index):
    """(storage view (N, V), int64 target codes (N,), ignored mask (N,), lead shape) of a host
    call."""
    a = _checks.logits_array(logits)
    ignore = _checks.ignore_index(ignore_index)
    _checks.classes(a.shape)
    kind, t = _checks.targets(targets, a.shape, ignore)
    _checks.index_targets(kind, t.dtype, "token_stats")
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
