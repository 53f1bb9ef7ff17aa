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
import inspect
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
    #: [whether a call has checked the model's logits against the head's]
    checked: list


def _name(model):
    return type(model).__name__


def _check_model(model):
    """A causal LM this module can fuse: a ``torch.nn.Module`` whose ``forward`` takes
    ``labels`` and computes its loss with ``self.loss_function``, which is ``ForCausalLMLoss``
    (the shifted cross-entropy); not an encoder-decoder."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"fastxent.transformers.patch takes a transformers model (a "
                        f"torch.nn.Module), not {type(model).__name__}")
    if "labels" not in inspect.signature(type(model).forward).parameters:
        raise TypeError(f"{_name(model)}.forward takes no labels: fastxent.transformers fuses "
                        "the loss of a causal language model (a *ForCausalLM)")
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise NotImplementedError(f"{_name(model)} is an encoder-decoder model: "
                                  "fastxent.transformers fuses causal language models only")
    loss = getattr(model, "loss_function", None)
    source = _head.forward_source(model)
    if source is not None and "self.loss_function(" not in source:
        what = "its forward's own"
    elif getattr(loss, "__name__", None) != "ForCausalLMLoss":
        what = repr(getattr(loss, "__name__", loss))
    else:
        return
    raise NotImplementedError(
        f"{_name(model)} computes its loss with {what}, not with transformers' ForCausalLMLoss "
        "(self.loss_function): fastxent.transformers fuses the shifted cross-entropy of causal "
        "language models only")


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
    model._fastxent_patch = _Patch(transforms, chunk_size, accum_dtype, previous, [False])
    model.forward = _FusedForward(model)
    return model


class _FusedForward:
    """The patched ``forward`` of one model: an object (not a bound function) so that
    ``copy.deepcopy`` and pickling carry it with the model, with the class's ``forward``
    signature (which ``transformers.Trainer`` reads to know the columns to keep)."""

    def __init__(self, model):
        self.model = model

    @property
    def __signature__(self):
        return inspect.signature(type(self.model).forward.__get__(self.model))

    def __call__(self, *args, **kwargs):
        return _fused_forward(self.model, *args, **kwargs)


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
    # the arguments named by the class's forward (an instance's own, such as accelerate's
    # hooks, may take *args and **kwargs)
    cls_forward = type(model).forward
    call = inspect.signature(cls_forward).bind(model, *args, **kwargs)
    labels = call.arguments.get("labels")
    if labels is None:
        return own(*args, **kwargs)
    extra = {k: v for k, v in list(call.arguments.items())[1:] if k != "labels"}
    loss_kwargs = dict(extra.pop(_var_keyword(cls_forward), None) or {})
    as_tuple = extra.pop("return_dict", loss_kwargs.pop("return_dict", None))
    as_tuple = (not getattr(model.config, "return_dict", True)) if as_tuple is None \
        else not as_tuple
    head = state.transforms.head(model)
    out, hidden = without_logits(model, own, check=None if state.checked[0] else head,
                                 **extra, **loss_kwargs)
    state.checked[0] = True
    loss = causal_lm_loss(head, hidden, labels, state, **loss_kwargs)
    if getattr(out, "aux_loss", None) is not None:  # a mixture of experts', as the model adds it
        loss = loss + _aux_coefficient(model) * out.aux_loss.to(loss.device)
    fields = {k: v for k, v in out.items() if k not in ("loss", "logits")}
    out = type(out)(loss=loss, **fields)  # (the loss first, as the model's own)
    return out.to_tuple() if as_tuple else out


def _aux_coefficient(model):
    for where in (model, _head.text_config(model), model.config):
        coef = getattr(where, "router_aux_loss_coef", None)
        if coef is not None:
            return coef
    raise NotImplementedError(f"{_name(model)} returns an auxiliary loss but has no "
                              "router_aux_loss_coef: fastxent.transformers cannot tell how the "
                              "model adds it to its loss")


def without_logits(model, forward, check=None, **inputs):
    """``(forward(**inputs, return_dict=True), the head's input)``: the model's own pass
    (without labels) up to its last hidden states, the head given none of their positions, so
    that the logits have none. With ``check`` (the model's :class:`~.head.Head`), the head gets
    the last position instead, and the model's logits of it are compared with the head's
    (:func:`.head.check_logits`)."""
    kept = []

    def keep(layer, args):
        kept.append(args[0])
        part = args[0][..., -1:, :] if check is not None else args[0][..., :0, :]
        return (part,) + tuple(args[1:])

    hook = model.get_output_embeddings().register_forward_pre_hook(keep)
    try:
        out = forward(**dict(inputs, return_dict=True))
    finally:
        hook.remove()
    if len(kept) != 1:
        raise NotImplementedError(f"{_name(model)}.forward called its head {len(kept)} times: "
                                  "fastxent.transformers fuses one call of the head")
    if check is not None:
        _head.check_logits(model, check, kept[0][..., -1:, :], out["logits"])
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
