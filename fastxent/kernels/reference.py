"""Float64 NumPy twin of every kernel: the test oracle and the portable fallback backend.

It implements the backend interface (see ``fastxent/kernels/__init__.py``) with plain NumPy in
float64, one block of rows at a time so that its temporaries stay bounded. It favours clarity over
speed: each statistic is written the way the math reads.
"""

import numpy as np

from .._dtypes import decode, encode_into

name = "numpy"

# Rows per block are chosen so that one block's float64 temporaries stay near 32 MiB.
_BLOCK_ELEMENTS = 1 << 22


def _row_blocks(n, v):
    step = max(1, _BLOCK_ELEMENTS // max(v, 1))
    for lo in range(0, n, step):
        yield slice(lo, min(n, lo + step))


def _capped(x, softcap):
    y = decode(x)
    return y if softcap is None else softcap * np.tanh(y / softcap)


def _lse(y):
    m = np.max(y, axis=-1, keepdims=True) if y.shape[-1] else np.full(y.shape[:-1] + (1,), -np.inf)
    finite = np.isfinite(m)
    shift = np.where(finite, m, 0.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = np.log(np.sum(np.exp(y - shift), axis=-1)) + shift[..., 0]
    # rows whose max is ±inf: the log-sum-exp is that infinity (NaN rows stay NaN)
    return np.where(finite[..., 0] | np.isnan(m[..., 0]), out, m[..., 0])


def logsumexp(x, softcap=None):
    n, v = x.shape
    out = np.empty(n)
    for rows in _row_blocks(n, v):
        out[rows] = _lse(_capped(x[rows], softcap))
    return out


def rows(x, targets, weight, softcap, want_sy, coef=None, grad=None):
    """Per-row statistics ``[lse, Σ w·q·y, Σ w·q, Σ w·y]`` and, given ``coef``, the gradient.

    ``y`` are the (soft-capped) logits, ``w`` the class weights (ones when None), and ``q`` the
    target distribution: one-hot at ``targets[i]`` for integer targets (rows with -1 are ignored:
    statistics and gradient zero), or the given probabilities. The gradient row is
    ``(softmax(y)·(c0·Σwq + c1·Σw + c2·lse) − c0·w·q − c1·w) · dy/dx``.
    """
    n, v = x.shape
    stats = np.zeros((n, 4))
    w = np.ones(v) if weight is None else np.asarray(weight, dtype=np.float64)
    integer = targets.ndim == 1
    for rws in _row_blocks(n, v):
        y = _capped(x[rws], softcap)
        lse = _lse(y)
        if integer:
            t = targets[rws]
            valid = t >= 0
            hit = np.nonzero(valid)[0], t[valid]
            q = np.zeros_like(y)
            q[hit] = 1.0
            wq = w * q
            # the one-hot sums taken at the target alone: 0 * -inf elsewhere would be NaN
            swqy = np.zeros_like(lse)
            swqy[hit[0]] = w[hit[1]] * y[hit]
            swq = np.zeros_like(lse)
            swq[hit[0]] = w[hit[1]]
        else:
            valid = np.ones(y.shape[0], dtype=bool)
            wq = w * decode(targets[rws])
            with np.errstate(invalid="ignore"):
                swqy = np.sum(wq * y, axis=-1)
            swq = np.sum(wq, axis=-1)
        with np.errstate(invalid="ignore"):
            swy = np.sum(w * y, axis=-1) if want_sy else np.zeros_like(lse)
        block = np.stack([lse, swqy, swq, swy], axis=-1)
        stats[rws] = np.where(valid[:, None], block, 0.0)
        if coef is None:
            continue
        c0, c1, c2 = (coef[rws, k:k + 1] for k in range(3))
        with np.errstate(invalid="ignore", over="ignore"):
            p = np.exp(y - lse[:, None])
            g = p * (c0 * block[:, 2:3] + c1 * w.sum() + c2 * lse[:, None]) - c0 * wq - c1 * w
            if softcap is not None:
                g = g * (1.0 - (y / softcap) ** 2)
        g[~valid] = 0.0
        encode_into(grad[rws], g)
    return stats
