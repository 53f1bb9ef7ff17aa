"""The arithmetic every backend shares, written once as plain Python on scalars.

Each function is registered with Numba's ``register_jitable``: the CPU kernels (``njit``) and the
CUDA kernels (``cuda.jit``) call it as they call their own device functions and compile it for
their target, Numba's CUDA simulator runs it as Python, the host's compiled loops over rows
(``kernels/host.py``) call it per row, and the functions without branches on values also run on
NumPy arrays of rows (the fused linear loss's class blocks, the PyTorch composite).
The float64 reference (``kernels/reference.py``) stays an independent twin: it is the oracle
these are tested against. See docs/design.md#the-shared-mechanisms.

``merge`` is the one reduction of the package: the (max, sum-exp) pair of two parts of a row,
extended by one optional sum for the entropy. A part holds ``m = max y``, ``s = Σ exp(y - m)``
and ``w = Σ exp(y - m)·(y - m)`` (0 where not needed). Moving a part to a maximum ``M >= m``
scales ``s`` by ``a = exp(m - M)`` and turns ``w`` into ``(w + s·(m - M))·a`` (Milakov &
Gimelshein, "Online normalizer calculation for softmax", 2018). A single element ``y`` is the
part ``(y, 1, 0)``.
"""

import math

import numpy as np
from numba import njit
from numba.extending import register_jitable

# Explicit flags: a registered function left to defaults would inherit the fast-math flags of
# whichever kernel compiled it first in the process, and keep them for every later caller, so
# that the same inputs could round differently from one process to the next.
_shared = register_jitable(fastmath=False)


@_shared
def _moved(m, s, w, big):
    """``(s, w)`` of a part moved from its maximum ``m`` to ``big >= m`` (NaN: NaN)."""
    if m == -math.inf:
        # no mass: 0, or NaN from a part that held a NaN. (The zero is exp(-inf) in the
        # compute type; ``s - s`` would not do: fast-math reassociation cancels it against a sum
        # that follows, dropping the NaN.)
        zero = math.exp(m)
        return s * zero, w * zero
    if m == big:
        return s, w
    a = math.exp(m - big)
    return s * a, ((w + s * (m - big)) * a if a > 0 else a)


@_shared
def merge(m1, s1, w1, m2, s2, w2):
    """``(M, s, w)`` of two parts merged, ``M = max(m1, m2)``.

    The rules for infinities and NaN, written once for every backend:

    * a part whose maximum is ``-inf`` has no mass (its terms are ``exp(-inf) = 0``);
    * two parts with the same maximum add without a rescale (two ``+inf`` maxima give the sum
      of their counts, not ``exp(inf - inf) = NaN``);
    * a NaN maximum, or a NaN sum, makes the merged sums NaN.

    Arguments and results are in one floating type (the caller's compute type).
    """
    big = m2 if m2 > m1 else m1
    s1, w1 = _moved(m1, s1, w1, big)
    s2, w2 = _moved(m2, s2, w2, big)
    return big, s1 + s2, w1 + w2


@_shared
def row_loss(lse, swqy, swq, swy, eps, z, v, wsum):
    """``(cross-entropy, z-loss term)`` of a counted row from its statistics: its log-sum-exp,
    ``Σ w·q·y``, ``Σ w·q`` and ``Σ w·y`` (``w`` the class weights, ``q`` the target
    distribution, ``y`` the soft-capped logits), with label smoothing ``eps`` over ``v``
    classes whose weights sum to ``wsum``, and the z-loss coefficient ``z``::

        ce = (1 − ε)·(lse·Σwq − Σwqy) + ε/V·(lse·Σw − Σwy),    z-loss = z·lse²

    A row holding ``+inf`` has a NaN cross-entropy, as PyTorch's ``log_softmax`` gives:
    ``lse - lse`` is 0, or NaN for an infinite ``lse``. Branch-free in the row's values, so it
    also runs on arrays of rows (``z == 0`` then gives the scalar 0 for the z-loss).
    """
    ce = (1.0 - eps) * (lse * swq - swqy)
    if eps > 0:
        ce = ce + eps / v * (lse * wsum - swy)
    # (z < 0: a coefficient rescaled by negative class weights, in the fused linear loss)
    zt = z * lse * lse if z != 0 else 0.0
    return ce + (lse - lse), zt


@_shared
def z_term(lse, z):
    """The z-loss term a row reports (``return_z_loss``): ``z·lse²``, or ``lse·0`` without a
    z-loss, so that a row holding ``+inf`` reports ``inf`` or NaN rather than a finite term.
    Branch-free in the row's values: runs on arrays and tensors of rows too."""
    return z * lse * lse if z != 0 else lse * 0.0


@_shared
def coefficients(scale, scale_z, eps, z, v):
    """``(c0, c1, c2)`` of the gradient of a row whose loss has the upstream gradient ``scale``
    (``scale_z`` for its z-loss term)::

        d loss / d y = softmax(y)·(c0·Σwq + c1·Σw + c2·lse) − c0·w·q − c1·w

    Branch-free: runs on arrays of rows too."""
    return scale * (1.0 - eps), scale * (eps / v), scale_z * (2.0 * z)


@_shared
def softmax_factor(c0, c1, c2, swq, wsum, lse):
    """The factor ``c0·Σwq + c1·Σw + c2·lse`` of ``softmax(y)`` in the row's gradient. An
    infinite ``lse`` makes it NaN (``0·inf`` without a z-loss), and with it the whole row's
    gradient, as PyTorch's."""
    return c0 * swq + c1 * wsum + c2 * lse


@_shared
def cap(x, c):
    """The logit soft-cap ``c·tanh(x/c)``, in ``x``'s type."""
    return capped(x, c, c / c)[0]


@_shared
def capped(x, c, one):
    """``(c·tanh(x/c), d/dx)`` of the logit soft-cap from one exponential, in ``x``'s type
    (``one`` is 1 in that type: a literal would widen float32 arithmetic in compiled code).

    With ``e = exp(-2|x/c|)``: ``tanh|x/c| = (1 − e)/(1 + e)`` and the slope
    ``sech²(x/c) = 4e/(1 + e)²``, which keeps its relative precision where the cap saturates
    (``1 − tanh²`` from a rounded ``tanh`` does not: 5e-6 at ``x/c`` ≈ 2.5 in float32). Near 0
    the value is exact to the type's rounding in absolute terms, which is what ``exp(y − m)``
    and the sums of ``y`` need.
    """
    u = x / c
    e = math.exp(-(abs(u) + abs(u)))
    two = one + one
    return math.copysign(c * ((one - e) / (one + e)), u), two * two * e / ((one + e) * (one + e))


_HALF_ULP = np.uint32(0x7FFF)
_SIXTEEN = np.uint32(16)
_LOW_BIT = np.uint32(1)


@_shared
def bf16_bits(bits):
    """The bits of the bfloat16 nearest a float32 (ties to even), from the float32's bits (an
    unsigned integer wider than 16 bits, or an array of them; the result is in that type): the
    high half after adding ``0x7FFF`` plus the lowest bit kept. Not for NaN, which could round to
    an infinity: callers keep a NaN a NaN."""
    return (bits + _HALF_ULP + ((bits >> _SIXTEEN) & _LOW_BIT)) >> _SIXTEEN


# --- the same formulas over host arrays (compiled loops) -----------------------------------------


@njit(cache=True)
def capped_values(x, c):
    """``c·tanh(x/c)`` of a 1-D float64 array (host arithmetic on the rows' target logits)."""
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = cap(x[i], c)
    return out


@njit(cache=True)
def merge_rows(m, s, w, m2, s2, w2):
    """:func:`merge` of float64 arrays of parts, element by element (host merges: the
    token statistics' vocabulary parts, the fused linear loss's class blocks; 1-D)."""
    big = np.empty_like(m)
    s_out = np.empty_like(s)
    w_out = np.empty_like(w)
    for i in range(m.shape[0]):
        big[i], s_out[i], w_out[i] = merge(m[i], s[i], w[i], m2[i], s2[i], w2[i])
    return big, s_out, w_out
