"""Numba CPU kernel of the KL divergence between the softmax distributions of two logit arrays
(``kl_logits`` in ``kernels/__init__.py``), one streaming pass over both.

Per row, with ``P = softmax(x)`` and ``Q = softmax(y)``::

    KL(P || Q) = Σ P·(x - y) - lse(x) + lse(y)

The pass keeps the pair (max, Σ exp) of each array and ``a = Σ exp(x - m_x)·(x - y)``, which
scales with ``Σ exp(x - m_x)`` when the maximum moves (it has no shift of its own).

``softmax_grads`` writes the gradients of the entropy of ``softmax(x)`` and of this divergence,
given each row's log-sum-exps and the value itself (see ``reference.softmax_grads``).
"""

import math

import numpy as np
from numba import njit, prange

from .. import config
from .._threading import parallel_guard
from numba import types
from numba.extending import overload

from ._numeric import as_compute, block_max, fexp, load, store
from .cpu import _REDUCE, _merge, _row_part, _serial

_PARALLEL = dict(_REDUCE, parallel=True)
_BLOCK = config.BLOCK


@njit(**_REDUCE)
def _block(xs, ys, mx, my):
    """(Σ exp(x - mx), Σ exp(x - mx)·(x - y), Σ exp(y - my)) of a block, compute type."""
    zero = as_compute(0.0, xs)  # (not mx - mx: NaN for a +inf maximum)
    sx = zero
    a = zero
    sy = zero
    for j in range(xs.size):
        x = load(xs[j])
        y = load(ys[j])
        e = fexp(x - mx)
        sx += e
        a += zero if e == zero else e * (x - y)  # a masked class of P weighs nothing
        sy += fexp(y - my)
    return sx, a, sy


@njit(**_REDUCE)
def _max(xs):
    return block_max(xs)  # (a function of its own: block_max is inlined once per function)


@njit(**_REDUCE)
def _shift(m, xs):
    """The block's maximum as the shift of its exponentials, 0 for a block of -inf (whose terms
    are 0 whatever the shift)."""
    return m if not m == -np.inf else as_compute(0.0, xs)


@njit(**_PARALLEL)
def _rows(x, y, out):
    n, v = x.shape
    for r in prange(n):
        mx = -np.inf
        sx = 0.0
        a = 0.0
        my = -np.inf
        sy = 0.0
        for b in range(0, v, _BLOCK):
            e = min(b + _BLOCK, v)
            xs = x[r, b:e]
            ys = y[r, b:e]
            bx = _max(xs)
            by = _max(ys)
            sbx, ab, sby = _block(xs, ys, _shift(bx, xs), _shift(by, ys))
            if bx > -np.inf:
                if bx > mx:
                    scale = math.exp(mx - bx) if sx > 0 else 0.0
                    a = a * scale + np.float64(ab)
                    sx = sx * scale + np.float64(sbx)
                    mx = np.float64(bx)
                else:
                    scale = math.exp(np.float64(bx) - mx)
                    a += np.float64(ab) * scale
                    sx += np.float64(sbx) * scale
            elif bx != bx:
                sx = np.nan
            if by > -np.inf:
                my, sy = _merge(my, sy, np.float64(by), np.float64(sby))
            elif by != by:
                sy = np.nan
        if sx > 0 and sy > 0:
            # >= 0 in exact arithmetic; rounding may leave -1e-7 for equal distributions
            out[r] = max(a / sx - (mx + math.log(sx)) + (my + math.log(sy)), 0.0)
        elif sx == 0 or sy == 0:  # no mass in P (or in Q): undefined, as 0/0 (or P's mass lost)
            out[r] = np.nan if sx == 0 else np.inf
        else:
            out[r] = np.nan


def kl_logits(x, y):
    """See ``reference.kl_logits``: KL(softmax(x) || softmax(y)) per row, float64."""
    n = x.shape[0]
    out = np.empty(n)
    if n:
        with parallel_guard() as parallel:
            kernel = _rows if parallel else _serial(_rows)
            kernel(x, y, out)
    return out


def _grad_terms(x, lsx, ys, j, lsy, c, zero):
    """(d/dx, d/dy) of one element: the entropy's when ``ys`` is None, else the divergence's.
    ``c`` is the row's constant, folded in float64: ``lse(x) - H`` for the entropy and
    ``lse(x) - lse(y) + KL`` for the divergence, so that each element adds one rounding."""


@overload(_grad_terms, inline="always")
def _grad_terms_impl(x, lsx, ys, j, lsy, c, zero):
    if isinstance(ys, types.NoneType):
        def entropy(x, lsx, ys, j, lsy, c, zero):
            p = fexp(x - lsx)
            # dH/dx = -p·(log p + H) = -p·(x - (lse - H)); a class of probability 0 has none
            return (zero if p == zero else -(p * (x - c))), zero
        return entropy

    def divergence(x, lsx, ys, j, lsy, c, zero):
        y = load(ys[j])
        p = fexp(x - lsx)
        # dKL/dx = p·(log p - log q - KL) = p·((x - y) - (lse(x) - lse(y) + KL)), dKL/dy = q - p
        return (zero if p == zero else p * ((x - y) - c)), fexp(y - lsy) - p
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


@njit(**_PARALLEL)
def _grad_rows(x, y, lse_x, lse_y, c, go, gx, gy):
    n, v = x.shape
    zero = as_compute(0.0, x)
    for r in prange(n):
        lsx = as_compute(lse_x[r], x)
        lsy = as_compute(lse_y[r], x)
        cr = as_compute(c[r], x)
        s = as_compute(go[r], x)
        for b in range(0, v, _BLOCK):
            e = min(b + _BLOCK, v)
            xs = x[r, b:e]  # 1-D slices walked from 0, as in the other kernels
            ys = _row_part(y, r, b, e)
            gxs = gx[r, b:e]
            gys = _row_part(gy, r, b, e)
            for j in range(e - b):
                dx, dy = _grad_terms(load(xs[j]), lsx, ys, j, lsy, cr, zero)
                gxs[j] = store(s * dx, gxs)
                _put(gys, j, s * dy)


def softmax_grads(x, y, lse_x, lse_y, value, go, gx, gy):
    """See ``reference.softmax_grads``: the same gradients from a Numba kernel."""
    if x.shape[0] and x.shape[1]:
        c = lse_x - value if y is None else lse_x - lse_y + value
        with parallel_guard() as parallel:
            kernel = _grad_rows if parallel else _serial(_grad_rows)
            kernel(x, y, lse_x, lse_x if lse_y is None else lse_y, c, go, gx, gy)
