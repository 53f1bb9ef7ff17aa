"""The per-token statistics from the backends' partials (``token_partials`` in
``fastxent/kernels/interface.py``): how the partials of column chunks and vocabulary shards merge,
and what they finish into::

    lse     = m + log s
    nll     = lse - y_t
    entropy = lse - Σ p·y = log s - w / s
    rank    = #{j : y_j > y_t}        (0 when the target is the top prediction)
"""

import numpy as np

from .formulas import merge_rows


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
