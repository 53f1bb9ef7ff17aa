"""``fastxent.torch.linear_token_stats``: the token statistics of ``hidden @ weight.T + bias``
from tensors, on the CPU or a GPU, chunk by chunk with PyTorch's products
(:mod:`fastxent.losses.linear_tokens`); not differentiable (statistics for evaluation)."""

import numpy as np
import torch

from ..dispatch import checks as _checks
from ..dispatch import device as _device
from ..losses import linear_tokens as _linear_tokens
from ..losses.tokens import TokenStats
from .linear import _check, _TorchOps
from .support import _as_autocast, _host


def _partials(cuda):
    if cuda:
        return _device.token_partials
    on_host = _linear_tokens.host_partials("cpu")
    return lambda x, codes: on_host(_host(x), codes)


def linear_token_stats(hidden, weight, targets, bias=None, *, temperature=1.0, softcap=None,
                       ignore_index=-100, chunk_size=None):
    """:func:`fastxent.linear_token_stats` of tensors: per-token NLL, log-sum-exp, entropy,
    argmax and target rank of the logits ``hidden @ weight.T + bias``, never holding them.

    Parameters
    ----------
    hidden : Tensor, shape (..., H)
        Hidden states (float32, float64, bfloat16 or float16), on the CPU or a CUDA device.
    weight : Tensor, shape (V, H)
        The output layer's weight, hidden's dtype and device.
    targets : Tensor of int, shape (...)
        The class of each token, ``hidden.shape[:-1]``.
    bias, temperature, softcap, ignore_index
        As :func:`fastxent.linear_token_stats`.
    chunk_size : int, optional
        Rows of logits per chunk; by default as many whole rows as fit in 128 MiB on the CPU,
        64 MiB on a GPU.

    Returns
    -------
    TokenStats
        NumPy arrays of the targets' shape, on the host (O(N) values), as
        :func:`fastxent.token_stats` returns them; computed without autograd.

    Examples
    --------
    >>> import torch, fastxent.torch as fxt
    >>> hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> weight = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.1, 0.0]])
    >>> st = fxt.linear_token_stats(hidden, weight, torch.tensor([0, 0]))
    >>> st.argmax, st.rank
    (array([0, 1]), array([0, 1]))
    """
    _check(hidden, weight, bias, targets)
    temperature, softcap = _linear_tokens.checked(temperature, softcap, chunk_size)
    hidden, weight, bias = _as_autocast(hidden, weight, bias)  # as F.linear under autocast
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
        lead, h, w, b, t, rows, ops = prepared(hidden, weight, targets, bias, ignore_index,
                                               chunk_size, "linear_token_stats")
        stats = _linear_tokens.run(ops, h, w, b, t, rows, softcap, temperature,
                                   _partials(hidden.is_cuda))
    return TokenStats(*(f.reshape(lead) for f in stats))


def prepared(hidden, weight, targets, bias, ignore_index, chunk_size, what):
    """The chunk walk's arguments from checked tensors: ``(lead shape, h (N, H), w, b, host
    class codes (N,) with -1 for ignored, rows per chunk, ops)``; ``what`` names the caller in
    the error for targets that are not class indices."""
    lead, hdim, v = _check(hidden, weight, bias, targets)
    host_t = targets.detach().cpu().numpy()
    kind, t = _checks.targets(host_t, tuple(lead) + (v,), _checks.ignore_index(ignore_index))
    _checks.index_targets(kind, host_t.dtype, what)
    rows = _linear_tokens.rows_per_chunk(chunk_size, int(np.count_nonzero(t >= 0)), v,
                                         hidden.element_size(),
                                         "cuda" if hidden.is_cuda else "cpu")
    h = hidden.detach().reshape(-1, hdim).contiguous()
    b = None if bias is None else bias.detach().contiguous()
    return lead, h, weight.detach().contiguous(), b, t, rows, _TorchOps(hidden.device)
