"""Token statistics of the logits ``hidden @ weight.T + bias`` without holding them: chunks of
whole rows of logits, each from one matrix product into a reused buffer, turned into
:class:`~fastxent.losses.tokens.TokenStats` by the token-statistics kernel.

:func:`run` is the loop for every caller (NumPy here; ``fastxent.torch`` with PyTorch's products,
on the CPU or a GPU): the products come from an ``ops`` of :mod:`fastxent.losses.linear`, the
chunk's partial statistics from a ``partials(x, codes)`` of the caller's backend. Ignored rows
cost no product.
"""

import numbers

import numpy as np

from ..core.codes import IGNORED
from ..core.dtypes import storage_view
from ..core.partials import finish
from ..dispatch import backends as _dispatch
from ..dispatch import checks as _checks
from . import linear as _linear
from .tokens import TokenStats


def checked(temperature, softcap, chunk_size):
    """``(temperature, softcap or None)``, checked, and ``chunk_size`` (rows, or None)."""
    t = _checks.real(temperature, "temperature", low=0.0, low_open=True)
    cap = _checks.row_options(0.0, 0.0, softcap)[2]
    if chunk_size is not None and (isinstance(chunk_size, (bool, np.bool_)) or not isinstance(
            chunk_size, numbers.Integral) or chunk_size < 1):
        raise ValueError(f"chunk_size={chunk_size!r} must be rows of logits per chunk (a "
                         "positive integer) or None (chosen from a memory budget)")
    return t, cap


def rows_per_chunk(chunk_size, n_valid, v, itemsize, where):
    """Whole rows per chunk: ``chunk_size``, or as many as fit in ``linear.BUDGET[where]``."""
    return _linear.chunk_shape(chunk_size, n_valid, v, itemsize, where, whole_rows=True)[0]


def temper(x, softcap, temperature):
    """``softcap·tanh(x/softcap) / temperature`` in place (a NumPy array or a tensor): the
    logits' soft-cap first, as the model applies it, then the sampling temperature."""
    if softcap is not None:
        x /= softcap
        if hasattr(x, "tanh_"):
            x.tanh_()
        else:
            np.tanh(x, out=x)
        x *= softcap / temperature
    elif temperature != 1.0:
        x /= temperature


def run(ops, h, w, b, t, rows, softcap, temperature, partials):
    """The statistics (flat :class:`TokenStats` fields) of the rows of ``h`` (N, H) against
    class codes ``t`` (N,) on the host (-1: ignored): chunks of ``rows`` non-ignored rows."""
    n = h.shape[0]
    stats = np.full((n, 4), np.nan)  # ignored rows: NaN statistics, as the kernels leave them
    ints = np.full((n, 2), -1, np.int64)
    for idx, _, _, x in chunk_logits(ops, h, w, b, t, rows):
        temper(x, softcap, temperature)
        stats[idx], ints[idx] = partials(x, t[idx])
    return TokenStats(*finish(stats, ints, t < 0))


def chunk_logits(ops, h, w, b, t, rows):
    """The walk over chunks of ``rows`` non-ignored rows (class codes ``t`` on the host, -1:
    ignored), each chunk's logits computed into one reused buffer: yields ``(rows' host index,
    their index where ``ops`` works, their hidden states, their logits)``, the logits valid
    until the next step."""
    v = w.shape[0]
    chunks = _linear._chunks(t, rows)
    most = max((_linear._size(i) for i in chunks), default=0)
    buf = ops.empty((most * v,), h.dtype)
    for idx in chunks:
        m = _linear._size(idx)
        ix = idx if isinstance(idx, slice) else ops.index(idx)
        hc = h[idx] if isinstance(idx, slice) else ops.take(h, ix)
        x = buf[:m * v].reshape(m, v)
        ops.logits(hc, w, b, x)
        yield idx, ix, hc, x


def host_partials(backend):
    """``partials(x, codes)`` of a host backend (a chunk's logits, its class codes)."""

    def partials(x, codes):
        be = _dispatch.choose(backend, x)
        return be.token_partials(storage_view(x), np.where(codes < 0, IGNORED, codes))

    return partials


def linear_token_stats(hidden, weight, targets, bias=None, *, temperature=1.0, softcap=None,
                       ignore_index=-100, chunk_size=None, backend="auto"):
    """:func:`token_stats` of the logits ``hidden @ weight.T + bias``, without holding them.

    Per token: negative log-likelihood, log-sum-exp, entropy, argmax and the target's rank, so
    perplexity, accuracy, top-k accuracy for every k, entropy and MRR of a language model come
    from its last hidden states with extra memory of one chunk of rows of logits.

    Parameters
    ----------
    hidden : ndarray, shape (..., H)
        Hidden states, float32 or float64 (``fastxent.torch.linear_token_stats`` takes tensors
        of every floating dtype, on the CPU or a GPU).
    weight : ndarray, shape (V, H)
        The output layer's weight (``torch.nn.Linear(H, V).weight``), hidden's dtype.
    targets : ndarray of int, shape (...)
        The class of each token, ``hidden.shape[:-1]``.
    bias : ndarray, shape (V,), optional
        The output layer's bias.
    temperature : float
        The statistics are those of ``logits / temperature`` (> 0), the distribution a sampler
        with that temperature draws from.
    softcap : float, optional
        The model's final logit soft-cap ``c·tanh(x/c)``, applied before the temperature.
    ignore_index : int
        Targets equal to it are ignored (see :class:`TokenStats` for their values).
    chunk_size : int, optional
        Rows of logits per chunk; by default as many whole rows as fit in 128 MiB.
    backend : {"auto", "cpu", "numpy"}
        The backend of the token-statistics kernel (see :func:`cross_entropy`).

    Returns
    -------
    TokenStats
        As :func:`token_stats`: NumPy arrays of the targets' shape.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> hidden = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    >>> weight = np.array([[2.0, 0.0], [1.0, 1.0], [0.1, 0.0]], dtype=np.float32)
    >>> st = fx.linear_token_stats(hidden, weight, np.array([0, 0]))
    >>> st.argmax, st.rank
    (array([0, 1]), array([0, 1]))
    >>> bool(np.allclose(st.nll, fx.token_stats(hidden @ weight.T, np.array([0, 0])).nll))
    True
    """
    h, w, b = _checks.linear_host_arrays(hidden, weight, bias)
    lead, hdim, v = _checks.linear_shapes(
        h.shape, w.shape, None if b is None else b.shape,
        (h.dtype.name, w.dtype.name, None if b is None else b.dtype.name))
    temperature, softcap = checked(temperature, softcap, chunk_size)
    ignore = _checks.ignore_index(ignore_index)
    t = _checks.host_array(targets, "targets")
    kind, t = _checks.targets(t, tuple(lead) + (v,), ignore)
    _checks.index_targets(kind, t.dtype, "linear_token_stats")
    _dispatch.checked(backend)
    rows = rows_per_chunk(chunk_size, int(np.count_nonzero(t >= 0)), v, h.dtype.itemsize, "cpu")
    h2 = np.ascontiguousarray(h.reshape(int(np.prod(lead)), hdim))
    stats = run(_linear._NumpyOps(), h2, np.ascontiguousarray(w), b, t, rows, softcap,
                temperature, host_partials(backend))
    return TokenStats(*(f.reshape(lead) for f in stats))
