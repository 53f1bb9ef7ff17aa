"""The CPU backend: Numba kernels, rows spread over threads (see ``fastxent/kernels/interface.py``
for the interface, docs/design.md#layers for the layout). The softmax kernels are in
:mod:`.softmax`, the binary and categorical losses in :mod:`.binary`, the divergence in
:mod:`.divergence`, the token statistics in :mod:`.tokens`."""

import numpy as np

from ...core.threads import parallel_guard
from .. import host as _host
from .elementwise import binary
from .elementwise import outside as binary_outside
from .common import serial
from .divergence import kl_logits, softmax_grads
from .softmax import _class_grad_rows, _compute_dtype, _public_stats, _run
from .tokens import token_partials

__all__ = ["name", "logsumexp", "cross_entropy", "rows", "class_partials", "class_grad",
           "token_partials", "binary", "binary_outside", "kl_logits", "softmax_grads"]

name = "cpu"


def logsumexp(x, softcap=None, out=None):
    """See ``reference.logsumexp``."""
    lse = _public_stats(_run(x, None, None, softcap, False, None, None))[:, 0]
    if out is None:
        return np.ascontiguousarray(lse)
    out[...] = lse
    return out


def cross_entropy(call, out):
    """``interface.Backend.cross_entropy``: the whole call from :func:`rows`."""
    return _host.cross_entropy(rows, call, out)


def rows(x, targets, weight, softcap, want_sy, coef=None, grad=None):
    """See ``reference.rows``: the same statistics, and the same gradient, from Numba kernels."""
    if coef is None:
        grad = None
    return _public_stats(_run(x, targets, weight, softcap, want_sy, coef, grad))


def class_partials(x, weight, softcap, want_sy):
    """See ``reference.class_partials``: ``[m, s, Σ w·y]`` of each row of a block of classes."""
    return np.ascontiguousarray(_run(x, None, weight, softcap, want_sy, None, None)[:, [0, 1, 4]])


def class_grad(x, targets, weight, softcap, partials, coef, w_sum, target_terms):
    """See ``reference.class_grad``: the gradient of a block of classes, over ``x``."""
    n = x.shape[0]
    st = np.zeros((n, 5))
    st[:, :2] = partials[:, :2]
    st[:, 3] = target_terms[:, 1]  # Σ w·q of a one-hot target
    w = None if weight is None else np.ascontiguousarray(weight, dtype=_compute_dtype(x))
    c = None if softcap is None else float(softcap)
    xt = np.ascontiguousarray(target_terms[:, 0])
    wt = np.ascontiguousarray(target_terms[:, 1])
    with parallel_guard() as parallel:
        kernel = _class_grad_rows if parallel else serial(_class_grad_rows)
        kernel(x, targets, w, c, st, np.ascontiguousarray(coef), float(w_sum), xt, wt)
