"""``fastxent.torch.linear_logprobs``: each token's log-probability of its target and the entropy
of its distribution, from hidden states and the output layer, differentiable, never holding the
logits (what PPO and GRPO trainers need of the policy, per token).

Forward: the token-statistics kernel per chunk of whole rows of logits
(:func:`fastxent.losses.linear_tokens.run`), which gives ``lse - y[t]`` and the entropy from
one pass. Backward: a second walk over the chunks. With ``y`` the (capped) logits of a row,
``d = y - lse = log p`` and ``H`` its entropy, the gradient of ``a·log p[t] + b·H`` is
``a·onehot(t) - p·(a + b·(d + H))`` (``∂H/∂y = -p·(log p + H)``), times the soft-cap's slope,
then the products of :class:`fastxent.torch.linear._TorchOps`. A temperature ``T`` is folded
into the inputs: ``cap_c(x)/T = cap_{c/T}(x/T)`` and ``x/T = (h/T)·Wᵀ + b/T``.
"""

from typing import Optional, Tuple

import numpy as np
import torch

from ..dispatch import checks as _checks
from ..losses import linear_tokens as _linear_tokens
from . import composite as _composite
from .linear import _check
from .support import _as_autocast, _without_autocast
from .tokens import _partials, prepared


def _compute(hidden):
    """The dtype of the results and of the backward pass's arithmetic."""
    return torch.float64 if hidden.dtype == torch.float64 else torch.float32


def _prepared(hidden, weight, target, bias, ignore_index, chunk_size):
    """:func:`fastxent.torch.tokens.prepared` without the lead shape."""
    return prepared(hidden, weight, target, bias, ignore_index, chunk_size,
                    "linear_logprobs")[1:]


@torch.library.custom_op("fastxent::linear_logprobs", mutates_args=())
@_without_autocast
def _logprobs_op(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                 bias: Optional[torch.Tensor], softcap: Optional[float], ignore_index: int,
                 chunk_size: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p[t], entropy, lse) per row of ``hidden`` (N, H): the compute type (float64 for
    float64, else float32) and float64; 0, 0 and 0 for ignored rows (no product)."""
    h, w, b, t, rows, ops = _prepared(hidden, weight, target, bias, ignore_index, chunk_size)
    stats = _linear_tokens.run(ops, h, w, b, t, rows, softcap, 1.0, _partials(hidden.is_cuda))
    counted = t >= 0
    values = [np.where(counted, -stats.nll, 0.0), np.where(counted, stats.entropy, 0.0),
              np.where(counted, stats.lse, 0.0)]
    dtypes = (_compute(hidden),) * 2 + (torch.float64,)
    return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(hidden.device, d)
                 for a, d in zip(values, dtypes))


@_logprobs_op.register_fake
def _logprobs_fake(hidden, weight, target, bias, softcap, ignore_index, chunk_size):
    n = hidden.shape[0]
    return (hidden.new_empty(n, dtype=_compute(hidden)),
            hidden.new_empty(n, dtype=_compute(hidden)), hidden.new_empty(n, dtype=torch.float64))


@torch.library.custom_op("fastxent::linear_logprobs_backward", mutates_args=())
@_without_autocast
def _backward_op(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                 bias: Optional[torch.Tensor], softcap: Optional[float], ignore_index: int,
                 chunk_size: Optional[int], lse: torch.Tensor, entropy: torch.Tensor,
                 grad_logprob: Optional[torch.Tensor], grad_entropy: Optional[torch.Tensor],
                 grad_hidden: bool, grad_weight: bool, grad_bias: bool
                 ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of (hidden, weight, bias) asked for by the flags (empty tensors for the
    others), from the upstream gradients of log p[t] and of the entropy (None: zero)."""
    h, w, b, t, rows, ops = _prepared(hidden, weight, target, bias, ignore_index, chunk_size)
    want = (grad_hidden, grad_weight, grad_bias and b is not None)
    grads = tuple(ops.zeros(a.shape, dtype) if a is not None and wanted else None
                  for a, wanted, dtype in zip((h, w, b), want, ops.grad_dtypes(h, w, b)))
    zero = torch.zeros_like(lse, dtype=_compute(hidden))
    up_lp = zero if grad_logprob is None else grad_logprob.to(zero.dtype)
    up_h = zero if grad_entropy is None else grad_entropy.to(zero.dtype)
    td = torch.as_tensor(t, device=hidden.device)
    for idx, ix, hc, x in _linear_tokens.chunk_logits(ops, h, w, b, t, rows):
        y, slope = _composite.capped(x, softcap)
        d = y - lse[ix].to(y.dtype)[:, None]  # log p
        a, c = up_lp[ix].to(y.dtype)[:, None], up_h[ix].to(y.dtype)[:, None]
        g = torch.exp(d).mul_(d.add_(entropy[ix].to(y.dtype)[:, None]).mul_(c).add_(a)).neg_()
        g.scatter_add_(1, td[ix][:, None], a)
        if slope is not None:
            g.mul_(slope)
        x.copy_(g)
        del y, d, g, slope
        ops.gradients(grads, x, w, hc, idx)
    return tuple(torch.empty(0, dtype=hidden.dtype, device=hidden.device) if g is None
                 else g.to(a.dtype) for g, a in zip(grads, (hidden, weight, hidden)))


@_backward_op.register_fake
def _backward_fake(hidden, weight, target, bias, softcap, ignore_index, chunk_size, lse,
                   entropy, grad_logprob, grad_entropy, grad_hidden, grad_weight, grad_bias):
    like = (hidden, weight, bias)
    return tuple(torch.empty_like(a) if wanted and a is not None
                 else hidden.new_empty(0) for a, wanted in
                 zip(like, (grad_hidden, grad_weight, grad_bias)))


def _setup(ctx, inputs, output):
    hidden, weight, target, bias, softcap, ignore_index, chunk_size = inputs
    ctx.options = (softcap, ignore_index, chunk_size)
    ctx.save_for_backward(hidden, weight, target, bias, output[2], output[1])
    ctx.mark_non_differentiable(output[2])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_logprob, grad_entropy, _grad_lse):
    from .support import _no_double_backward
    _no_double_backward("fastxent.torch.linear_logprobs has")
    hidden, weight, target, bias, lse, entropy = ctx.saved_tensors
    needs = ctx.needs_input_grad
    if (grad_logprob is None and grad_entropy is None) or not (needs[0] or needs[1] or needs[3]):
        return (None,) * 7
    gh, gw, gb = _backward_op(hidden, weight, target, bias, *ctx.options, lse, entropy,
                              grad_logprob, grad_entropy, needs[0], needs[1], needs[3])
    return (gh if needs[0] else None, gw if needs[1] else None, None,
            gb if needs[3] and bias is not None else None, None, None, None)


_logprobs_op.register_autograd(_backward, setup_context=_setup)


def linear_logprobs(hidden, weight, targets, bias=None, *, temperature=1.0, softcap=None,
                    ignore_index=-100, return_entropy=False, chunk_size=None):
    """Each token's log-probability of its target, ``log_softmax(logits / T)[target]``, and
    optionally the entropy of ``softmax(logits / T)``, for ``logits = hidden @ weight.T + bias``,
    differentiable with respect to ``hidden``, ``weight`` and ``bias``, never holding the
    logits.

    Parameters
    ----------
    hidden : Tensor, shape (..., H)
        Hidden states (float32, float64, bfloat16 or float16), on the CPU or a CUDA device.
    weight : Tensor, shape (V, H)
        The output layer's weight, hidden's dtype and device.
    targets : Tensor of int, shape (...)
        The token whose log-probability is wanted, ``hidden.shape[:-1]``.
    bias : Tensor, shape (V,), optional
        The output layer's bias.
    temperature : float
        The sampling temperature ``T`` (> 0): the distribution is that of ``logits / T``.
    softcap : float, optional
        The model's final logit soft-cap ``c·tanh(x/c)``, applied before the temperature.
    ignore_index : int
        Tokens whose target equals it get log-probability 0 and entropy 0, with no gradient,
        and cost no matrix product (prompts, padding).
    return_entropy : bool
        Also return the entropy per token.
    chunk_size : int, optional
        Rows of logits per chunk; by default as many as fit in 128 MiB on the CPU, 64 MiB on a
        GPU. The backward pass holds about four chunks of float32.

    Returns
    -------
    Tensor or (Tensor, Tensor)
        ``logprobs``, or ``(logprobs, entropy)``, of the targets' shape: float64 for float64
        inputs, float32 for the others. Under ``torch.autocast`` the products run in its
        dtype, as ``F.linear``'s would.

    Notes
    -----
    The forward pass is one walk over the chunks with fastxent's token-statistics kernel; the
    backward pass a second walk that computes each chunk's logits again (PyTorch's product and
    element-wise operations) and its products with the hidden states and the weight.

    Examples
    --------
    >>> import torch, fastxent.torch as fxt
    >>> hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    >>> weight = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.1, 0.0]], requires_grad=True)
    >>> logp, ent = fxt.linear_logprobs(hidden, weight, torch.tensor([0, 1]),
    ...                                 return_entropy=True)
    >>> want = torch.log_softmax(hidden @ weight.T, -1)[[0, 1], [0, 1]]
    >>> torch.allclose(logp, want)
    True
    >>> (logp.sum() + 0.1 * ent.sum()).backward()
    >>> weight.grad.shape
    torch.Size([3, 2])
    """
    lead, _, v = _check(hidden, weight, bias, targets)
    kind = _checks.target_kind(str(targets.dtype).replace("torch.", ""), tuple(targets.shape),
                               tuple(lead) + (v,))
    _checks.index_targets(kind, targets.dtype, "linear_logprobs")
    temperature, cap = _linear_tokens.checked(temperature, softcap, chunk_size)
    ignore = _checks.ignore_index(ignore_index)
    hidden, weight, bias = _as_autocast(hidden, weight, bias)  # as F.linear under autocast
    if temperature != 1.0:  # cap_c(x)/T = cap_{c/T}(x/T), and x/T = (h/T)·Wᵀ + b/T
        hidden = hidden / temperature
        bias = None if bias is None else bias / temperature
        cap = None if cap is None else cap / temperature
    h = hidden.reshape(-1, hidden.shape[-1])
    logprob, entropy, _ = _logprobs_op(h, weight, targets.reshape(-1), bias, cap, ignore,
                                       chunk_size)
    logprob = logprob.reshape(lead)
    return (logprob, entropy.reshape(lead)) if return_entropy else logprob
