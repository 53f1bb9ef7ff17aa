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


class Head(NamedTuple):
    """The output layer as the fused loss takes it: ``logits = softcap(scale·(h·Wᵀ + b))``."""

    weight: torch.Tensor  # (V, H), the head's (a tied one included)
    bias: Optional[torch.Tensor]  # (V,) or None
    scale: float  # 1.0 where the family does not scale its logits
    softcap: Optional[float]  # None where it does not cap them

    def inputs(self, hidden):
        """``(hidden, bias)`` with the scale folded in: ``s·(h·Wᵀ + b) = (s·h)·Wᵀ + s·b``, in
        the weight's dtype (an O(N·H) product, not one of the logits' size)."""
        if self.weight.device.type == "meta":
            raise NotImplementedError("the output layer's weight is on the meta device (offloaded "
                                      "or sharded): fastxent.transformers needs it in memory")
        hidden = hidden.to(self.weight.device)
        if self.scale == 1.0:
            return hidden.to(self.weight.dtype), self.bias
        bias = None if self.bias is None else self.bias * self.scale
        return (hidden * self.scale).to(self.weight.dtype), bias

    def logits(self, hidden):
        """The logits of a few hidden states, float32 (what :func:`check_logits` compares)."""
        h, bias = self.inputs(hidden)
        x = torch.nn.functional.linear(h.float(), self.weight.float(),
                                       None if bias is None else bias.float())
        return x if self.softcap is None else self.softcap * torch.tanh(x / self.softcap)


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


def forward_source(model):
    """The source of ``type(model).forward``, or None where it cannot be read."""
    try:
        return inspect.getsource(type(model).forward)
    except (OSError, TypeError):
        return None


def _head_call(lines, start, call):
    """(the text after the head's call on the line where the call closes, the index of the next
    line): the call may span lines."""
    line = lines[start]
    pos, depth, i = line.index(call) + len(call), 1, start
    while True:
        while pos < len(line) and depth:
            depth += {"(": 1, ")": -1}.get(line[pos], 0)
            pos += 1
        if not depth or i + 1 >= len(lines):
            return line[pos:].split("#")[0].strip(), i + 1
        i, line, pos = i + 1, lines[i + 1], 0


def _head_lines(source, model, layer):
    """(the name the logits get, what follows the head's call on its line, the lines after it
    up to the loss) in ``source``; None where the head's call is not found."""
    names = [n for n, m in model.named_children() if m is layer]
    lines = source.splitlines()
    for start, line in enumerate(lines):
        call = next((f"self.{n}(" for n in names if f"self.{n}(" in line), None)
        if call is not None:
            break
    else:
        return None
    target = re.match(r"\s*(\w+)\s*=", line)
    rest, nxt = _head_call(lines, start, call)
    after = []
    for text in lines[nxt:]:
        if re.search(r"\bloss\b", text):
            break
        after.append(text.split("#")[0].strip())
    return (target.group(1) if target else None), rest, after


def _changes(var, line):
    """Whether ``line`` changes ``var``: assigns it (or a slice of it), or calls an in-place
    method on it."""
    return bool(re.match(rf"{var}\b\s*(\[.*\])?\s*([-+*/]?=)(?!=)", line)
                or re.search(rf"\b{var}\.\w+_\(", line))


def _positive(value, name, model):
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{_name(model)}'s {name} is {value}: fastxent.transformers takes a "
                         "finite positive one")
    return value


def _refuse(model, line):
    raise NotImplementedError(
        f"{_name(model)}.forward changes its logits after the head with {line!r}, which "
        "fastxent.transformers does not know how to fuse; known are a final soft-cap "
        "(final_logit_softcapping), logit_scale and logits_scaling")


def read_transforms(model):
    """The :class:`Transforms` of ``model``'s ``forward``, checked: a change of the logits after
    the head that this module does not know raises ``NotImplementedError``, quoting the line.
    Where the source cannot be read, the configuration says (and :func:`check_logits` checks
    the first call)."""
    layer = check_head(model)
    config = text_config(model)
    scale = 1.0
    source = forward_source(model)
    found = None if source is None else _head_lines(source, model, layer)
    if found is None:  # no source: what the configuration says
        scale *= float(getattr(model, "logit_scale", None) or 1.0)
        scale /= float(getattr(config, "logits_scaling", None) or 1.0)
        capped = True
    else:
        var, rest, lines = found
        if rest and not re.fullmatch(r"(\.(float|contiguous)\(\))*", rest):
            _refuse(model, rest)
        capped = False
        for line in lines:
            if var is None or not _changes(var, line):
                continue
            if _SOFTCAP.search(line):
                capped = True  # the soft-cap's lines: its value from the configuration
            elif _CAST.search(line):
                continue
            elif _SCALE.search(line):
                scale *= _positive(getattr(model, "logit_scale", None) or 1.0, "logit_scale",
                                   model)
            elif _DIVIDE.search(line):
                scale /= _positive(config.logits_scaling, "config.logits_scaling", model)
            else:
                _refuse(model, line)
    cap = None
    if capped:
        cap = getattr(config, "final_logit_softcapping", None)
        if cap is None:
            cap = getattr(config, "logits_soft_cap", None)
    return Transforms(scale, None if cap is None else _positive(cap, "final logit soft-cap",
                                                                  model))


def check_logits(model, head, hidden, logits):
    """Raise ``NotImplementedError`` unless the model's own ``logits`` of the hidden states
    ``hidden`` (a few positions) are those of ``head``, to the rounding of the model's dtype:
    what catches a change of the logits that the source did not show."""
    kind = head.weight.device.type
    half = head.weight.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled(kind)
    with torch.no_grad(), torch.autocast(kind, enabled=False):
        _check_logits(model, head, hidden, logits, half)


def _check_logits(model, head, hidden, logits, half):
    want = head.logits(hidden)
    got = logits.to(want.device, torch.float32)
    largest = float(want.abs().nan_to_num(0.0, posinf=0.0).amax()) if want.numel() else 0.0
    tol = (2e-2 if half else 1e-4) * (1.0 + largest)
    if got.shape != want.shape or not torch.isclose(got, want, rtol=0.0, atol=tol,
                                                    equal_nan=True).all():
        raise NotImplementedError(
            f"{_name(model)}'s logits are not those of its output layer as "
            "fastxent.transformers computes them (hidden @ weight.T + bias, then the family's "
            "soft-cap and scale): its forward changes them in a way this module cannot fuse")
