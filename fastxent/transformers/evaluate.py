"""``evaluate(model, batches)``: perplexity, accuracy, top-k, entropy and MRR of a Hugging Face
causal language model over batches of tokens, from its last hidden states (the logits are never
built: :func:`fastxent.torch.linear_token_stats`, chunk by chunk), accumulated by an
:class:`fastxent.Evaluator`.

:func:`windows` cuts one long sequence of tokens into the sliding windows of the
``transformers`` perplexity guide (each token scored once, with up to ``max_length - stride``
tokens of context before it).
"""

import numbers
from collections.abc import Mapping

import torch

from ..dispatch import checks as _checks
from ..evaluation.evaluator import Evaluator
from . import head as _head
from . import patch as _patch


def _inputs(batch):
    """(the model's inputs, labels): a batch is a mapping of the model's inputs (``labels``
    and ``shift_labels`` optional) or a tensor of input ids. Without labels, the input ids are
    the labels, with the positions the attention mask hides ignored."""
    inputs = dict(batch) if isinstance(batch, Mapping) else {"input_ids": batch}
    labels = inputs.pop("labels", None)
    shift_labels = inputs.pop("shift_labels", None)
    if labels is None and shift_labels is None:
        ids = inputs.get("input_ids")
        if ids is None:
            raise ValueError("a batch without labels needs input_ids (its labels then)")
        mask = inputs.get("attention_mask")
        labels = ids if mask is None else ids.masked_fill(mask == 0, _patch.IGNORE_INDEX)
    return inputs, labels, shift_labels


def evaluate(model, batches, *, topk=(1, 5, 10), temperature=1.0, chunk_size=None,
             progress=False, total=None, evaluator=None):
    """Perplexity and the other figures of ``fastxent eval`` for a causal language model over
    batches of tokens, without its logits.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal language model (``*ForCausalLM``, patched or not); run under
        ``torch.no_grad()``, in the mode it is in (call ``model.eval()`` first for dropout).
    batches : iterable
        Each a mapping of the model's inputs (``input_ids``, ``attention_mask``, ...) with
        optional ``labels`` (or ``shift_labels``), or a tensor of input ids. Without labels the
        input ids are scored, each token from the ones before it, positions hidden by the
        attention mask ignored. Labels are shifted as the model's loss shifts them, -100
        ignored.
    topk : sequence of int
        The k of the top-k accuracies.
    temperature : float
        Score ``logits / temperature`` (the distribution a sampler draws from).
    chunk_size : int, optional
        Rows of logits per chunk (:func:`fastxent.torch.linear_token_stats`).
    progress : bool
        A progress bar (``tqdm``) on stderr; ``total`` is the number of batches when
        ``batches`` has no length.
    evaluator : fastxent.Evaluator, optional
        Accumulate into this one (its ``ignore_index`` must be -100); a new one by default.

    Returns
    -------
    fastxent.EvalResult
        Tokens, mean NLL, perplexity, accuracy, top-k accuracies, entropy and MRR.

    Examples
    --------
    >>> import torch, transformers, fastxent.transformers as fxh
    >>> config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
    ...                                   num_hidden_layers=1, num_attention_heads=2)
    >>> model = transformers.LlamaForCausalLM(config).eval()
    >>> ids = torch.randint(0, 64, (2, 8))
    >>> r = fxh.evaluate(model, [ids], topk=(1, 5))
    >>> r.tokens                                    # 7 scored tokens per sequence
    14
    >>> with torch.no_grad():
    ...     own = model(input_ids=ids, labels=ids).loss.item()
    >>> abs(r.nll - own) < 1e-5
    True
    """
    _patch._check_model(model)
    transforms = _head.read_transforms(model)
    ev = Evaluator(topk) if evaluator is None else evaluator
    if ev.ignore_index != _patch.IGNORE_INDEX:
        raise ValueError(f"the evaluator ignores {ev.ignore_index}: a model's labels ignore "
                         f"{_patch.IGNORE_INDEX}")
    temperature = _checks.real(temperature, "temperature", low=0.0, low_open=True)
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(batches, total=total, desc="eval", unit="batch")
    for i, batch in enumerate(batches):
        inputs, labels, shift_labels = _inputs(batch)
        with torch.no_grad():
            head = transforms.head(model)
            # the first batch checks the model's logits of one position against the head's
            _, hidden = _patch.without_logits(model, model, check=head if i == 0 else None,
                                              **inputs)
            target = _patch.shifted(labels, shift_labels, _patch.IGNORE_INDEX)
            h, bias = head.inputs(hidden)
            ev.update_hidden(h, head.weight, target.to(h.device), bias,
                             temperature=temperature, softcap=head.softcap,
                             chunk_size=chunk_size)
    return ev.result()


def windows(input_ids, max_length, stride):
    """Sliding windows over one sequence of token ids, as the ``transformers`` perplexity
    guide takes them: windows of at most ``max_length`` tokens, starting every ``stride``
    tokens (``stride < max_length``), whose labels score only the tokens no earlier window
    scored (the others -100): every token but the first, once.

    Returns
    -------
    iterator of dict
        ``{"input_ids": (1, L), "labels": (1, L)}`` tensors, for :func:`evaluate`.

    Examples
    --------
    >>> import torch, fastxent.transformers as fxh
    >>> [w["labels"].tolist() for w in fxh.windows(torch.arange(6), 4, 2)]
    [[[0, 1, 2, 3]], [[-100, -100, 4, 5]]]
    """
    ids = torch.as_tensor(input_ids).reshape(-1)
    for name, value, low in (("max_length", max_length, 2), ("stride", stride, 1)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    if stride >= max_length:
        raise ValueError(f"stride={stride} must be less than max_length={max_length}: each "
                         "window starts with a token of the one before, the context of its "
                         "first scored token (otherwise that token is never scored)")
    n = ids.numel()
    if n < 2:
        raise ValueError(f"{n} token(s): scoring needs at least two (the first has no context)")
    return _windows(ids, n, max_length, stride)  # (checked now, not at the first window)


def _windows(ids, n, max_length, stride):
    done = 0  # tokens scored so far
    for begin in range(0, max(n, 1), stride):
        end = min(begin + max_length, n)
        window = ids[begin:end].reshape(1, -1)
        labels = window.clone()
        labels[:, :done - begin] = _patch.IGNORE_INDEX
        yield {"input_ids": window, "labels": labels}
        done = end
        if end == n:
            break
