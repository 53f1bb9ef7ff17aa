"""``patch(model)``: a Hugging Face causal language model whose loss never builds its logits.

One mechanism for every family. The patched ``forward``, when it is given ``labels``, calls the
model's own ``forward`` without them and with a pre-hook on the head: the hook keeps the head's
input (the last hidden states, after whatever the family does to them) and hands the head an
empty slice of it, so the logits come out with no positions and whatever the family does to them
afterwards (a soft-cap, a scale) costs nothing. The loss is then
:func:`fastxent.torch.linear_cross_entropy` of the kept hidden states and the head's weight and
bias, with the family's changes to the logits (:mod:`.head`) and the labels shifted as
``transformers.loss.loss_utils.ForCausalLMLoss`` shifts them. Everything else of the model's own
``forward`` runs as it is (the cache, the hidden states and attentions asked for, a mixture of
experts' auxiliary loss, which is added as the family adds it). Without ``labels`` the model's
own ``forward`` runs unchanged (``generate``).
"""

import contextlib
import functools
import inspect
import types
from typing import NamedTuple, Optional

import torch

from ..dispatch import checks as _checks
from ..torch import linear as _torch_linear
from . import head as _head

#: what ``transformers`` ignores in the labels
IGNORE_INDEX = -100


class _Patch(NamedTuple):
    """What a patched model keeps (``model._fastxent_patch``)."""

    transforms: _head.Transforms
    chunk_size: object
    accum_dtype: Optional[torch.dtype]
    #: the instance's own ``forward`` before the patch (None: the class's)
    previous: object


def _name(model):
    return type(model).__name__


def _check_model(model):
    """A causal LM this module can fuse: a ``torch.nn.Module`` whose ``forward`` takes
    ``labels`` and whose loss is ``ForCausalLMLoss`` (the shifted cross-entropy)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"fastxent.transformers.patch takes a transformers model (a "
                        f"torch.nn.Module), not {type(model).__name__}")
    if "labels" not in inspect.signature(type(model).forward).parameters:
        raise TypeError(f"{_name(model)}.forward takes no labels: fastxent.transformers fuses "
                        "the loss of a causal language model (a *ForCausalLM)")
    loss = getattr(model, "loss_function", None)
    if getattr(loss, "__name__", None) != "ForCausalLMLoss":
        raise NotImplementedError(
            f"{_name(model)} computes its loss with {getattr(loss, '__name__', loss)!r}, not "
            "transformers' ForCausalLMLoss: fastxent.transformers fuses the shifted "
            "cross-entropy of causal language models only")


def patch(model, *, chunk_size=None, accum_dtype=None):
    """Make ``model`` compute its loss from its last hidden states, never building the logits.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal language model (``*ForCausalLM``) with a linear head. Patched in place, and
        returned; patching it again replaces the options.
    chunk_size, accum_dtype
        As :func:`fastxent.torch.linear_cross_entropy`: the rows of logits per chunk, and the
        dtype the head's gradient is summed in over the chunks (``torch.float32`` for a
        bfloat16 model keeps it from being rounded once per chunk).

    Returns
    -------
    model
        The same model. Called with ``labels``, its output has the loss and no logits
        (``logits`` is None); called without, it is the model's own.

    Raises
    ------
    TypeError, NotImplementedError
        For a model this cannot fuse, saying what is missing: no linear head, no ``labels``, a
        loss other than the causal LM's, or a change to the logits after the head other than a
        final soft-cap, ``logit_scale`` or ``logits_scaling``.

    Notes
    -----
    The loss is the model's own: labels shifted by one position (or ``shift_labels`` when
    given), ``ignore_index`` -100, a mean over the counted tokens or, given
    ``num_items_in_batch`` (gradient accumulation, passed by ``transformers.Trainer``), their
    sum divided by it, computed in float32 from logits in the model's dtype. ``logits_to_keep``
    keeps the hidden states of the same positions, whose labels must then be given for them.
    See docs/transformers.md.

    Examples
    --------
    >>> import torch, transformers, fastxent.transformers as fxh
    >>> config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
    ...                                   num_hidden_layers=1, num_attention_heads=2)
    >>> model = transformers.LlamaForCausalLM(config)
    >>> ids = torch.randint(0, 64, (2, 8))
    >>> own = model(input_ids=ids, labels=ids).loss
    >>> out = fxh.patch(model)(input_ids=ids, labels=ids)
    >>> out.logits is None, torch.allclose(out.loss, own, rtol=1e-5)
    (True, True)
    >>> _ = fxh.revert(model)
    """
    _check_model(model)
    transforms = _head.read_transforms(model)
    weight = model.get_output_embeddings().weight
    _torch_linear._chunk_list(chunk_size, weight)  # (checked now, not at the first call)
    _torch_linear._accum_dtype(accum_dtype, weight.dtype)
    state = model.__dict__.get("_fastxent_patch")
    previous = state.previous if state is not None else model.__dict__.get("forward")
    model._fastxent_patch = _Patch(transforms, chunk_size, accum_dtype, previous)
    model.forward = types.MethodType(_forward_of(type(model)), model)
    return model


def _forward_of(cls):
    """The patched ``forward``, with ``cls.forward``'s name and signature (which
    ``transformers.Trainer`` reads to know the columns to keep); bound to a model, and bound
    to its copy by ``copy.deepcopy``."""

    @functools.wraps(cls.forward)
    def forward(model, *args, **kwargs):
        return _fused_forward(model, *args, **kwargs)

    return forward


def revert(model):
    """Undo :func:`patch`: ``model``'s own ``forward`` again. Returns the model; a model that
    is not patched is returned as it is."""
    state = model.__dict__.pop("_fastxent_patch", None)
    if state is not None:
        if state.previous is None:
            del model.forward
        else:
            model.forward = state.previous
    return model


def is_patched(model):
    """Whether :func:`patch` is in effect on ``model``."""
    return "_fastxent_patch" in model.__dict__


@contextlib.contextmanager
def patched(model, **options):
    """:func:`patch` for the ``with`` block, undone after it (an earlier patch is kept).

    Examples
    --------
    >>> import torch, transformers, fastxent.transformers as fxh
    >>> model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
    ...     vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=16, bos_token_id=0,
    ...     eos_token_id=0)).eval()  # (no dropout)
    >>> ids = torch.randint(0, 64, (1, 8))
    >>> with fxh.patched(model):
    ...     loss = model(input_ids=ids, labels=ids).loss
    >>> fxh.is_patched(model), torch.allclose(loss, model(input_ids=ids, labels=ids).loss)
    (False, True)
    """
    was = model.__dict__.get("_fastxent_patch")
    patch(model, **options)
    try:
        yield model
    finally:
        revert(model)
        if was is not None:
            patch(model, chunk_size=was.chunk_size, accum_dtype=was.accum_dtype)


def _own_forward(model, state):
    return state.previous if state.previous is not None else type(model).forward.__get__(model)


def _fused_forward(model, *args, **kwargs):
    state = model._fastxent_patch
    own = _own_forward(model, state)
    call = inspect.signature(own).bind(*args, **kwargs)
    labels = call.arguments.get("labels")
    if labels is None:
        return own(*args, **kwargs)
    extra = {k: v for k, v in call.arguments.items() if k != "labels"}
    loss_kwargs = dict(extra.pop(_var_keyword(own), None) or {})
    out, hidden = without_logits(model, own, **extra, **loss_kwargs)
    loss = causal_lm_loss(state.transforms.head(model), hidden, labels, state, **loss_kwargs)
    aux = getattr(out, "aux_loss", None) if not isinstance(out, tuple) else None
    if aux is not None and hasattr(model, "router_aux_loss_coef"):
        loss = loss + model.router_aux_loss_coef * aux.to(loss.device)
    if isinstance(out, tuple):  # return_dict=False: as transformers' to_tuple without logits
        return (loss,) + tuple(out[1:])
    out["loss"] = loss
    out["logits"] = None
    return out


def without_logits(model, forward, **inputs):
    """``(forward(**inputs), the head's input)``, the head given none of its positions: the
    model's own pass (without labels) up to its last hidden states, and logits with no
    positions."""
    kept = []

    def keep(layer, args):
        kept.append(args[0])
        return (args[0][..., :0, :],) + tuple(args[1:])

    hook = model.get_output_embeddings().register_forward_pre_hook(keep)
    try:
        out = forward(**inputs)
    finally:
        hook.remove()
    if len(kept) != 1:
        raise NotImplementedError(f"{_name(model)}.forward called its head {len(kept)} times: "
                                  "fastxent.transformers fuses one call of the head")
    return out, kept[0]


def _var_keyword(fn):
    return next((p.name for p in inspect.signature(fn).parameters.values()
                 if p.kind is inspect.Parameter.VAR_KEYWORD), None)


def shifted(labels, shift_labels, ignore_index):
    """``ForCausalLMLoss``'s targets: ``shift_labels`` when given, else the labels one position
    on, the last position ignored."""
    if shift_labels is not None:
        return shift_labels
    return torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]


def causal_lm_loss(head, hidden, labels, state=None, *, num_items_in_batch=None,
                   ignore_index=IGNORE_INDEX, shift_labels=None, **_ignored):
    """``ForCausalLMLoss`` of the logits of ``hidden`` through ``head`` (a
    :class:`~fastxent.transformers.head.Head`), without them: the shifted cross-entropy, a mean
    over the counted tokens, or with ``num_items_in_batch`` their sum divided by it; float32."""
    target = shifted(labels, shift_labels, _checks.ignore_index(ignore_index))
    target = target.to(hidden.device)
    if tuple(target.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"labels of shape {tuple(target.shape)} for hidden states of shape "
                         f"{tuple(hidden.shape[:-1])}: with logits_to_keep, labels (or "
                         "shift_labels) must be given for the kept positions only")
    h, bias = head.inputs(hidden)
    reduction = "mean" if num_items_in_batch is None else "sum"
    chunk_size, accum_dtype = (None, None) if state is None else (state.chunk_size,
                                                                  state.accum_dtype)
    loss = _torch_linear.linear_cross_entropy(
        h, head.weight, target, bias, reduction=reduction, ignore_index=ignore_index,
        softcap=head.softcap, chunk_size=chunk_size, accum_dtype=accum_dtype,
        loss_dtype=torch.float32)
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss
