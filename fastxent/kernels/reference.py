"""Float64 NumPy twin of every kernel: the test oracle and the portable fallback backend.

It implements the backend interface (``fastxent.kernels.interface``) with plain NumPy in
float64, one block of rows at a time so that its temporaries stay bounded. It favours clarity over
speed: each statistic is written the way the math reads.
"""

import numpy as np

from ..core.codes import BINARY_LOGITS, BINARY_PROBS, CATEGORICAL
from ..core.dtypes import decode, encode_into
from . import host as _host

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


def logsumexp(x, softcap=None, out=None):
    """The log-sum-exp of each row of ``x`` (soft-capped), float64, into ``out`` when given."""
    n, v = x.shape
    out = np.empty(n) if out is None else out
    for rows in _row_blocks(n, v):
        out[rows] = _lse(_capped(x[rows], softcap))
    return out


def cross_entropy(call, out):
    """``interface.Backend.cross_entropy``: the whole call from :func:`rows`."""
    return _host.cross_entropy(rows, call, out)


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


def class_partials(x, weight, softcap, want_sy):
    """Partial statistics ``[m, s, Σ w·y]`` (N, 3) float64 of each row of ``x``, a block of
    classes (``weight`` its class weights, or None): ``m`` the largest (soft-capped) logit,
    ``s = Σ exp(y − m)`` and, when ``want_sy``, ``Σ w·y`` (else 0). Blocks of the same rows merge
    as (max, sum-exp) pairs, and their ``Σ w·y`` add up."""
    n, v = x.shape
    out = np.zeros((n, 3))
    w = np.ones(v) if weight is None else np.asarray(weight, dtype=np.float64)
    for rws in _row_blocks(n, v):
        y = _capped(x[rws], softcap)
        m = np.max(y, axis=-1) if v else np.full(y.shape[0], -np.inf)
        shift = np.where(np.isfinite(m), m, 0.0)
        with np.errstate(invalid="ignore", over="ignore"):
            out[rws, 1] = np.sum(np.exp(y - shift[:, None]), axis=-1)
            if want_sy:
                out[rws, 2] = np.sum(w * y, axis=-1)
        # a +inf maximum: as the kernels, the sum of its terms exp(y - m) is NaN
        out[rws, 1] = np.where(np.isfinite(m) | np.isnan(m), out[rws, 1],
                               np.where(m > 0, np.nan, 0.0))
        out[rws, 0] = m
    return out


def class_grad(x, targets, weight, softcap, partials, coef, w_sum, target_terms):
    """Write over ``x``, a block of classes of some rows, their gradient from the whole rows'
    statistics: ``partials`` (N, 2+) ``[m, s]`` merged over every block (``lse = m + log s``),
    ``coef`` (N, 3) as in ``rows``, ``w_sum`` the class weights' sum over all classes,
    ``target_terms`` (N, 2) ``[x_t, w_t]`` of each row's (one-hot) target (its logit before the
    soft-cap, and its weight) and ``targets`` its column in this block (-1: in another block)::

        grad = (softmax(y)·(c0·w_t + c1·Σw + c2·lse) − c0·w·onehot − c1·w) · dy/dx
    """
    n, v = x.shape
    w = np.ones(v) if weight is None else np.asarray(weight, dtype=np.float64)
    y = _capped(x, softcap)
    m, s = partials[:, 0:1], partials[:, 1:2]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lse = m + np.log(s)
        a = coef[:, 0:1] * target_terms[:, 1:2] + coef[:, 1:2] * w_sum + coef[:, 2:3] * lse
        g = np.exp(y - m) / s * a - coef[:, 1:2] * w
        hit = np.flatnonzero(targets >= 0)
        g[hit, targets[hit]] -= coef[hit, 0] * w[targets[hit]]
        if softcap is not None:
            g = g * (1.0 - (y / softcap) ** 2)
    encode_into(x, g)


def token_partials(x, targets, thresholds=None):
    """Per-row partial statistics for the token statistics, over the columns of ``x``.

    ``targets`` is an int64 vector: a column of ``x`` holding the row's target, ``-1`` when the
    target is not among these columns (a vocabulary shard), ``-2`` for an ignored row. Returns
    ``stats`` (N, 4) float64 ``[m, s, w, y_t]`` and ``ints`` (N, 2) int64 ``[argmax, above]``:
    ``m`` the row's maximum (NaN when the row holds a NaN), ``s = Σ exp(y - m)``,
    ``w = Σ exp(y - m)·(y - m)``, ``y_t`` the target's logit (NaN when absent), ``argmax`` the
    first column of the maximum (of the first NaN), ``above`` how many logits exceed ``y_t`` (or,
    for an absent target, ``thresholds[i]`` when given and not NaN; else -1). Ignored rows: NaN
    statistics, -1 integers.
    """
    n, v = x.shape
    stats = np.full((n, 4), np.nan)
    ints = np.full((n, 2), -1, dtype=np.int64)
    for rws in _row_blocks(n, v):
        y = decode(x[rws])
        t = targets[rws]
        idx = np.arange(y.shape[0])
        with np.errstate(invalid="ignore", over="ignore"):
            m = np.max(y, axis=-1) if v else np.full(y.shape[0], -np.inf)
            d = y - np.where(np.isfinite(m), m, 0.0)[:, None]
            d = np.where(np.isposinf(m)[:, None], y - m[:, None], d)  # inf - inf: NaN, as exp
            e = np.exp(d)
            s = np.sum(e, axis=-1)
            w = np.sum(np.where(e > 0, e * d, 0.0), axis=-1)
            w = np.where(np.isnan(s), np.nan, w)
        yt = np.where(t >= 0, y[idx, np.clip(t, 0, max(v - 1, 0))] if v else np.nan, np.nan)
        thr, counting = yt, t >= 0
        if thresholds is not None:
            given = (t == -1) & ~np.isnan(thresholds[rws])
            thr, counting = np.where(given, thresholds[rws], thr), counting | given
        with np.errstate(invalid="ignore"):
            above = np.where(counting, np.sum(y > thr[:, None], axis=-1), -1)
        arg = np.argmax(y, axis=-1) if v else np.zeros(y.shape[0], dtype=np.int64)
        keep = t != -2
        stats[rws] = np.where(keep[:, None], np.stack([m, s, w, yt], axis=-1), np.nan)
        ints[rws] = np.where(keep[:, None], np.stack([arg, above], axis=-1), -1)
    return stats, ints


def binary(kind, x, targets, weights=(None, None, None), pos_weight=None, eps=0.0, losses=None,
           grad=None, scale=(None, None)):
    """Element-wise binary cross-entropy of the (N, V) storage view ``x``: logits (``kind`` 0)
    or probabilities (``kind`` 1), against the targets (a storage view of ``x``'s shape); or
    (``kind`` 2) the categorical terms ``-q·log p`` of probabilities ``x`` and target shares
    ``q`` (0·log 0 = 0; out of range: p outside [0, 1] or q < 0).

    ``weights = (cw, rw, ew)``: the weight of element (i, j) is ``cw[j]·rw[i]·ew[i, j]``, each
    factor 1 where None (class weights (V,), row weights (N,), element weights (N, V)).
    ``pos_weight`` is None or (V,) (logits only); ``eps`` > 0 clips probabilities to
    [eps, 1 - eps] instead of clamping their logs at -100. Returns ``(row sums (N,) float64,
    count of probabilities or targets out of range)``. Given ``losses`` (N, V) the weighted
    element losses are written there; given ``grad`` (a storage view) and ``scale = (rs, ge)``
    (rows (N,), elements (N, V) or None), ``rs[i]·ge[i, j]·weight·dloss/dx``.
    """
    n, v = x.shape
    sums = np.zeros(n)
    bad = 0
    for rws in _row_blocks(n, v):
        a = decode(x[rws])
        # booleans and bytes as they are; 16-bit integers are the storage of halves
        y = (np.asarray(targets[rws], dtype=np.float64) if targets.dtype.itemsize == 1
             else decode(targets[rws]))
        cw, rw, ew = weights
        w = np.ones(y.shape)
        if cw is not None:
            w = w * np.asarray(cw, dtype=np.float64)
        if rw is not None:
            w = w * np.asarray(rw[rws], dtype=np.float64)[:, None]
        if ew is not None:
            w = w * np.asarray(ew[rws], dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            if kind == BINARY_LOGITS:
                bad += int(np.count_nonzero(~((y >= 0) & (y <= 1))))
                pw = 1.0 if pos_weight is None else np.asarray(pos_weight, dtype=np.float64)
                lw = 1.0 + (pw - 1.0) * y
                loss = (1.0 - y) * a + lw * np.logaddexp(0.0, -a)
                e = np.exp(-np.abs(a))
                sig = np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
                d = lw * sig - pw * y
            elif kind == CATEGORICAL:
                bad += int(np.count_nonzero(~((a >= 0) & (a <= 1) & (y >= 0))))
                p = np.clip(a, eps, 1.0 - eps) if eps > 0 else a
                log_p = np.log(p) if eps > 0 else np.maximum(np.log(p), -100.0)
                loss = np.where(y == 0, 0.0, -y * log_p)
                # -q/p where the log moves with p (not clipped, not clamped)
                moves = (a > eps) & (a < 1.0 - eps) if eps > 0 else np.log(a) > -100.0
                d = np.where((y == 0) | ~moves, 0.0, -y / a)
            else:
                bad += int(np.count_nonzero(~((a >= 0) & (a <= 1) & (y >= 0) & (y <= 1))))
                p = np.clip(a, eps, 1.0 - eps) if eps > 0 else a
                log_p, log_q = np.log(p), np.log1p(-p)
                if eps > 0:  # 1 - p at the upper clip is eps itself
                    log_q = np.where(a >= 1.0 - eps, np.log(eps), log_q)
                if eps <= 0:
                    log_p, log_q = np.maximum(log_p, -100.0), np.maximum(log_q, -100.0)
                loss = -(y * log_p + (1.0 - y) * log_q)
                # PyTorch's floor is the float32 1e-12, also for float64 inputs
                d = (a - y) / np.maximum(a * (1.0 - a), float(np.float32(1e-12)))
                if eps > 0:  # the clipped loss does not move with p outside [eps, 1 - eps]
                    d = np.where((a > eps) & (a < 1.0 - eps), d, 0.0)
            loss = w * loss
        sums[rws] = loss.sum(axis=-1)
        if losses is not None:
            losses[rws] = loss
        if grad is not None:
            rs, ge = scale
            gsc = np.ones(y.shape) if ge is None else np.asarray(ge[rws], dtype=np.float64)
            if rs is not None:
                gsc = gsc * np.asarray(rs[rws], dtype=np.float64)[:, None]
            encode_into(grad[rws], w * gsc * d)
    return sums, bad


def binary_outside(kind, x, targets):
    """How many elements of the binary losses' inputs ``binary`` would count out of range
    (targets outside [0, 1], and for probabilities, ``kind`` 1, probabilities too), read alone:
    what a call checks before it writes into the caller's memory."""
    n, v = x.shape
    bad = 0
    for rws in _row_blocks(n, v):
        y = (np.asarray(targets[rws], dtype=np.float64) if targets.dtype.itemsize == 1
             else decode(targets[rws]))
        out = ~((y >= 0) & (y <= 1))
        if kind == BINARY_PROBS:
            a = decode(x[rws])
            out |= ~((a >= 0) & (a <= 1))
        bad += int(np.count_nonzero(out))
    return bad


def kl_logits(x, y):
    """KL(softmax(x) || softmax(y)) of each row of two (N, V) storage views, float64:
    ``Σ P·(x - y) - lse(x) + lse(y)`` with ``P = softmax(x)`` (classes where P is 0 weigh
    nothing; where Q is 0 and P is not, the divergence is inf). Returns (N, 3):
    ``[KL, lse(x), lse(y)]``, the log-sum-exps being what the gradients need next."""
    n, v = x.shape
    out = np.empty((n, 3))
    for rws in _row_blocks(n, v):
        a, b = decode(x[rws]), decode(y[rws])
        la, lb = _lse(a), _lse(b)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            p = np.exp(a - la[:, None])
            kl = np.sum(np.where(p > 0, p * (a - b), 0.0), axis=-1) - la + lb
        out[rws, 0] = np.where(np.isnan(kl), kl, np.maximum(kl, 0.0))
        out[rws, 1] = la
        out[rws, 2] = lb
    return out


def softmax_grads(x, y, lse_x, lse_y, value, go, gx, gy):
    """Gradients, written into the storage views ``gx`` (and ``gy``), of ``go[i]·value_i`` where
    ``value_i`` is the entropy of ``softmax(x_i)`` (``y`` None) or KL(softmax(x_i) ||
    softmax(y_i)), given each row's log-sum-exps ``lse_x``, ``lse_y`` and ``value`` (float64):

        entropy:  d/dx = -p·(log p + H)
        KL:       d/dx = p·(log p - log q - KL),   d/dy = q - p

    with ``p = softmax(x)``, ``q = softmax(y)``; classes where p is 0 have no d/dx."""
    n, v = x.shape
    for rws in _row_blocks(n, v):
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            lx = decode(x[rws]) - lse_x[rws, None]
            p = np.exp(lx)
            s = go[rws, None]
            c = value[rws, None]
            if y is None:
                dx = np.where(p > 0, -p * (lx + c), 0.0)
            else:
                ly = decode(y[rws]) - lse_y[rws, None]
                dx = np.where(p > 0, p * (lx - ly - c), 0.0)
                encode_into(gy[rws], s * (np.exp(ly) - p))
            encode_into(gx[rws], s * dx)
