"""What a Hugging Face causal language model does between its last hidden state and its logits.

A ``*ForCausalLM`` ends in a linear head (``get_output_embeddings()``, tied to the input
embeddings or not, with a bias or not), and some families change the logits after it: a final
soft-cap (Gemma 2 and 3: ``final_logit_softcapping``), a scale (Cohere: ``logit_scale``), a
divisor (Granite: ``logits_scaling``). :func:`read_head` finds which, from the lines of the
class's ``forward`` that assign to ``logits`` after the head, and refuses a model with any other
change, naming the line, rather than compute a loss the model would not.
"""

import inspect
import math
import re
from typing import NamedTuple, Optional

import torch

#: the lines of a ``forward`` that change the logits after the head, and what each does:
#: ``softcap`` (the three lines of ``c·tanh(x/c)``), or a factor from an attribute
_SOFTCAP = re.compile(r"tanh\(logits\b|final_logit_softcapping|logits_soft_cap")
_CAST = re.compile(r"logits\s*=\s*logits\.(float\(\)|contiguous\(\))\s*$")
_SCALE = re.compile(r"logits\s*=\s*logits\s*\*\s*self\.logit_scale\b")
_DIVIDE = re.compile(r"logits\s*=\s*logits\s*/\s*self\.config\.logits_scaling\b")
_ASSIGN = re.compile(r"^\s*logits\s*(=|\*=|/=|\+=|-=)")


class Head(NamedTuple):
    """The output layer as the fused loss takes it: ``logits = softcap(scale·(h·Wᵀ + b))``."""

    weight: torch.Tensor  # (V, H), the head's (a tied one included)
    bias: Optional[torch.Tensor]  # (V,) or None
    scale: float  # 1.0 where the family does not scale its logits
    softcap: Optional[float]  # None where it does not cap them

    def inputs(self, hidden):
        """``(hidden, bias)`` with the scale folded in: ``s·(h·Wᵀ + b) = (s·h)·Wᵀ + s·b``, in
        the weight's dtype (an O(N·H) product, not one of the logits' size)."""
        if self.scale == 1.0:
            return hidden.to(self.weight.dtype), self.bias
        bias = None if self.bias is None else self.bias * self.scale
        return (hidden * self.scale).to(self.weight.dtype), bias


class Transforms(NamedTuple):
    """How a model's ``forward`` changes its logits after the head (read once, at patch time)."""

    scale: float
    softcap: Optional[float]

    def head(self, model):
        """The :class:`Head` of ``model`` now (its weight may have been replaced or re-tied)."""
        layer = model.get_output_embeddings()
        return Head(layer.weight, getattr(layer, "bias", None), self.scale, self.softcap)


def _name(model):
    return type(model).__name__


def text_config(model):
    """The configuration of the text model (the model's own, or its ``get_text_config()``)."""
    config = model.config
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def check_head(model):
    """The model's head, checked: a ``torch.nn.Linear`` from ``get_output_embeddings()``."""
    get = getattr(model, "get_output_embeddings", None)
    layer = get() if callable(get) else None
    if layer is None:
        raise TypeError(f"{_name(model)} has no output embeddings (get_output_embeddings() gave "
                        "None): fastxent.transformers takes a causal language model whose logits "
                        "come from a linear head (a *ForCausalLM)")
    if not isinstance(layer, torch.nn.Linear):
        raise TypeError(f"{_name(model)}'s output embeddings are a {type(layer).__name__}, not a "
                        "torch.nn.Linear: fastxent.transformers computes the logits as "
                        "hidden @ weight.T + bias and cannot tell what this layer computes")
    return layer


def _head_lines(model, layer):
    """The lines of ``type(model).forward`` after the head's call, up to the loss; None where the
    source cannot be read."""
    try:
        source = inspect.getsource(type(model).forward)
    except (OSError, TypeError):
        return None
    names = [n for n, m in model.named_children() if m is layer]
    calls = [f"self.{n}(" for n in names]
    lines = source.splitlines()
    start = next((i for i, line in enumerate(lines) if any(c in line for c in calls)), None)
    if start is None:
        return None
    after = []
    for line in lines[start + 1:]:
        if re.search(r"\bloss\b", line):
            break
        after.append(line.strip())
    return after


def _positive(value, name, model):
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{_name(model)}'s {name} is {value}: fastxent.transformers takes a "
                         "finite positive one")
    return value


def read_transforms(model):
    """The :class:`Transforms` of ``model``'s ``forward``, checked: a line that changes the
    logits after the head in a way this module does not know raises ``NotImplementedError``."""
    layer = check_head(model)
    config = text_config(model)
    scale, softcap = 1.0, None
    lines = _head_lines(model, layer)
    known = lines is not None
    for line in lines or ():
        if not _ASSIGN.match(line):
            continue
        if _SOFTCAP.search(line) or _CAST.search(line):
            continue  # the soft-cap's lines: the value comes from the configuration below
        if _SCALE.search(line):
            scale *= _positive(getattr(model, "logit_scale"), "logit_scale", model)
        elif _DIVIDE.search(line):
            scale /= _positive(config.logits_scaling, "config.logits_scaling", model)
        else:
            raise NotImplementedError(
                f"{_name(model)}.forward changes its logits after the head with {line!r}, which "
                "fastxent.transformers does not know how to fuse; known are a final soft-cap "
                "(final_logit_softcapping), logit_scale and logits_scaling")
    if not known:  # no source: what the configuration says
        scale *= float(getattr(model, "logit_scale", 1.0) or 1.0)
        scale /= float(getattr(config, "logits_scaling", 1.0) or 1.0)
    cap = getattr(config, "final_logit_softcapping", None)
    if cap is None:
        cap = getattr(config, "logits_soft_cap", None)
    if cap is not None:
        softcap = _positive(cap, "final logit soft-cap", model)
    return Transforms(scale, softcap)
