"""``logprobs(model, input_ids)``: each next token's log-probability (and the entropy of its
distribution) under a Hugging Face causal language model, differentiable, without the logits:
the model's own pass up to its last hidden states (:func:`.patch.without_logits`), then
:func:`fastxent.torch.linear_logprobs` through its head (soft-cap and scales included)."""

from ..torch.logprobs import linear_logprobs
from . import head as _head
from . import patch as _patch


def logprobs(model, input_ids, *, attention_mask=None, labels=None, temperature=1.0,
             return_entropy=False, chunk_size=None, **inputs):
    """``log p(token[i + 1] | tokens[:i + 1])`` for every position ``i`` of ``input_ids``, as a
    PPO or GRPO trainer takes them from its policy, with gradients for every parameter.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal language model (``*ForCausalLM``), patched or not.
    input_ids : Tensor, shape (B, T)
        The sequences (prompt and response).
    attention_mask : Tensor, shape (B, T), optional
        Passed to the model; positions it hides are not scored (log-probability and entropy
        0, no gradient).
    labels : Tensor, shape (B, T), optional
        The tokens to score instead of ``input_ids`` (-100: not scored, e.g. the prompt), before
        the shift.
    temperature, return_entropy, chunk_size
        As :func:`fastxent.torch.linear_logprobs`.
    **inputs
        Further inputs of the model's ``forward`` (``position_ids``, ...).

    Returns
    -------
    Tensor or (Tensor, Tensor)
        ``(B, T - 1)`` log-probabilities of tokens ``1..T-1``, and their entropies with
        ``return_entropy``: float32 (float64 for a float64 model).

    Examples
    --------
    >>> import torch, transformers, fastxent.transformers as fxh
    >>> config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
    ...                                   num_hidden_layers=1, num_attention_heads=2)
    >>> model = transformers.LlamaForCausalLM(config)
    >>> ids = torch.randint(0, 64, (2, 8))
    >>> lp = fxh.logprobs(model, ids)
    >>> want = torch.log_softmax(model(input_ids=ids).logits[:, :-1], -1)
    >>> torch.allclose(lp, want.gather(-1, ids[:, 1:, None])[..., 0], atol=1e-5)
    True
    """
    _patch._check_model(model)
    transforms = _head.read_transforms(model)
    scored = input_ids if labels is None else labels
    if attention_mask is not None:
        scored = scored.masked_fill(attention_mask == 0, _patch.IGNORE_INDEX)
        inputs["attention_mask"] = attention_mask
    head = transforms.head(model)
    _, hidden = _patch.without_logits(model, model, check=head, input_ids=input_ids, **inputs)
    h, bias = head.inputs(hidden[:, :-1])
    return linear_logprobs(h, head.weight, scored[:, 1:].to(h.device), bias,
                           temperature=temperature, softcap=head.softcap,
                           return_entropy=return_entropy, chunk_size=chunk_size)
