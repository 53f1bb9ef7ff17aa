"""Numba CPU kernel of the KL divergence between the softmax distributions of two logit arrays
(``kl_logits`` in ``kernels/interface.py``), one streaming pass over both.

Per row, with ``P = softmax(x)`` and ``Q = softmax(y)``::

    KL(P || Q) = Σ P·(x - y) - lse(x) + lse(y)

The pass keeps the pair (max, Σ exp) of each array and ``a = Σ exp(x - m_x)·(x - y)``, which
scales with ``Σ exp(x - m_x)`` when the maximum moves (it has no shift of its own).

``softmax_grads`` writes the gradients of the entropy of ``softmax(x)`` and of this divergence,
given each row's log-sum-exps and the value itself (see ``reference.softmax_grads``).
"""

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ... import config
from ...core.formulas import merge
from ...core.threads import parallel_guard
from .common import REDUCE, row_sliced, serial
from .numeric import as_compute, block_max, exp_term, fexp, floored, load, store

PARALLEL = dict(REDUCE, parallel=True)
_BLOCK = config.BLOCK


@njit(**REDUCE)
def _block(xs, ys, mx, my, d0):
    """(Σ exp(x - mx), Σ exp(x - mx)·(x - y - d0), Σ exp(y - my)) of a block, compute type.
    ``d0`` is the row's offset between the two arrays (see ``_kl_rows``)."""
    zero = as_compute(0.0, xs)  # (not mx - mx: NaN for a +inf maximum)
    sx = zero
    a = zero
    sy = zero
    for j in range(xs.size):
        x = load(xs[j])
        y = load(ys[j])
        e = exp_term(x - mx)  # at least about 1.2e-38: clamped, not flushed to 0 (one operation)
        sx += e
        # a masked class of P (x = -inf) weighs nothing: about -1e-36
        a += e * floored((x - y) - d0)
        sy += exp_term(y - my)
    return sx, a, sy


@njit(**REDUCE)
def _max(xs):
    return block_max(xs)  # (a function of its own: block_max is inlined once per function)


@njit(**REDUCE)
def _shift(m, xs):
    """The block's maximum as the shift of its exponentials, 0 for a block of -inf (whose terms
    are 0 whatever the shift)."""
    return m if not m == -np.inf else as_compute(0.0, xs)


@njit(**PARALLEL)
def _kl_rows(x, y, out):
    """``a`` sums ``exp(x - m)·(x - y - d0)``, where ``d0`` is the difference of the first
    block's maxima: for logits far from 0 (two models' logits offset by thousands, say) the
    terms stay small and keep float32's precision, and ``d0`` is added back in float64."""
    n, v = x.shape
    for r in prange(n):
        mx = -np.inf
        sx = 0.0
        a = 0.0
        my = -np.inf
        sy = 0.0
        d0 = 0.0
        for b in range(0, v, _BLOCK):
            e = min(b + _BLOCK, v)
            xs = x[r, b:e]
            ys = y[r, b:e]
            bx = _max(xs)
            by = _max(ys)
            if b == 0:
                d0 = np.float64(bx) - np.float64(by)
                # compared, not math.isfinite: Numba computes that as d0 - d0, which the
                # kernels' fast-math flags fold to 0 (every offset, -inf too, was finite)
                d0 = d0 if d0 > -np.inf and d0 < np.inf else 0.0
                d0 = np.float64(as_compute(d0, xs))  # exact in the compute type
            sbx, ab, sby = _block(xs, ys, _shift(bx, xs), _shift(by, ys), as_compute(d0, xs))
            if bx > -np.inf:
                # ``a`` rescales as ``sx`` does: merged in the sum's place, with the same maxima
                _, a, _ = merge(mx, a, 0.0, np.float64(bx), np.float64(ab), 0.0)
                mx, sx, _ = merge(mx, sx, 0.0, np.float64(bx), np.float64(sbx), 0.0)
            elif bx != bx:
                sx = np.nan
            if by > -np.inf:
                my, sy, _ = merge(my, sy, 0.0, np.float64(by), np.float64(sby), 0.0)
            elif by != by:
                sy = np.nan
        lx = mx + math.log(sx) if sx > 0 else (-np.inf if sx == 0 else np.nan)
        ly = my + math.log(sy) if sy > 0 else (-np.inf if sy == 0 else np.nan)
        out[r, 1] = lx
        out[r, 2] = ly
        if sx > 0 and sy > 0:
            # >= 0 in exact arithmetic; rounding may leave -1e-7 for equal distributions
            out[r, 0] = max(a / sx + d0 - lx + ly, 0.0)
        elif sx == 0 or sy == 0:  # no mass in P (or in Q): undefined, as 0/0 (or P's mass lost)
            out[r, 0] = np.nan if sx == 0 else np.inf
        else:
            out[r, 0] = np.nan


def kl_logits(x, y):
    """See ``reference.kl_logits``: [KL(softmax(x) || softmax(y)), lse(x), lse(y)] per row,
    float64."""
    n = x.shape[0]
    out = np.empty((n, 3))
    if n:
        with parallel_guard() as parallel:
            kernel = _kl_rows if parallel else serial(_kl_rows)
            kernel(x, y, out)
    return out


def _grad_terms(x, sx, ax, ys, j, sy, ay, c, zero):
    """(d/dx, d/dy) of one element: the entropy's when ``ys`` is None, else the divergence's.

    Each row's log-sum-exp is split into a shift exact in the compute type and a small rest
    (``lse = s + a``), so that ``x - s`` is exact for the x that matter (Sterbenz) and large
    logits lose nothing to the rounding of lse. ``c`` is the row's other constant, folded in
    float64: ``a - H`` for the entropy (``log p + H = (x - s) - (a - H)``) and
    ``a_x - a_y + KL`` for the divergence."""


@overload(_grad_terms, inline="always")
def _grad_terms_impl(x, sx, ax, ys, j, sy, ay, c, zero):
    if isinstance(ys, types.NoneType):
        def entropy(x, sx, ax, ys, j, sy, ay, c, zero):
            t = x - sx
            p = fexp(t - ax)
            # dH/dx = -p·(log p + H); a class of probability 0 has none
            return (zero if p == zero else -(p * (t - c))), zero
        return entropy

    def divergence(x, sx, ax, ys, j, sy, ay, c, zero):
        t = x - sx
        u = load(ys[j]) - sy
        p = fexp(t - ax)
        # dKL/dx = p·(log p - log q - KL) = p·((t - u) - (a_x - a_y + KL)), dKL/dy = q - p
        return (zero if p == zero else p * ((t - u) - c)), fexp(u - ay) - p
    return divergence


def _put(out, j, value):
    """out[j] = value in out's storage type; nothing when ``out`` is None."""


@overload(_put, inline="always")
def _put_impl(out, j, value):
    if isinstance(out, types.NoneType):
        return lambda out, j, value: None

    def put(out, j, value):
        out[j] = store(value, out)
    return put


@njit(**PARALLEL)
def _grad_rows(x, y, rows, go, gx, gy):
    """``rows`` (N, 5) float64: [shift of lse(x), its rest, shift of lse(y), its rest, the
    constant of ``_grad_terms``]."""
    n, v = x.shape
    zero = as_compute(0.0, x)
    for r in prange(n):
        sx = as_compute(rows[r, 0], x)
        ax = as_compute(rows[r, 1], x)
        sy = as_compute(rows[r, 2], x)
        ay = as_compute(rows[r, 3], x)
        cr = as_compute(rows[r, 4], x)
        s = as_compute(go[r], x)
        for b in range(0, v, _BLOCK):
            e = min(b + _BLOCK, v)
            xs = x[r, b:e]  # 1-D slices walked from 0, as in the other kernels
            ys = row_sliced(y, r, b, e)
            gxs = gx[r, b:e]
            gys = row_sliced(gy, r, b, e)
            for j in range(e - b):
                dx, dy = _grad_terms(load(xs[j]), sx, ax, ys, j, sy, ay, cr, zero)
                gxs[j] = store(s * dx, gxs)
                _put(gys, j, s * dy)


def _split(lse, compute):
    """(shift, rest): the log-sum-exps rounded to the compute type, and what that leaves."""
    with np.errstate(invalid="ignore"):
        shift = lse.astype(compute).astype(np.float64)
        rest = np.where(np.isfinite(shift), lse - shift, 0.0)
    return shift, rest


def softmax_grads(x, y, lse_x, lse_y, value, go, gx, gy):
    """See ``reference.softmax_grads``: the same gradients from a Numba kernel."""
    if not (x.shape[0] and x.shape[1]):
        return
    compute = np.float64 if x.dtype == np.float64 else np.float32
    rows = np.empty((x.shape[0], 5))
    rows[:, 0], rows[:, 1] = _split(lse_x, compute)
    if y is None:
        rows[:, 2:4] = 0.0
        rows[:, 4] = rows[:, 1] - value
    else:
        rows[:, 2], rows[:, 3] = _split(lse_y, compute)
        rows[:, 4] = rows[:, 1] - rows[:, 3] + value
    with parallel_guard() as parallel:
        kernel = _grad_rows if parallel else serial(_grad_rows)
        kernel(x, y, rows, go, gx, gy)
