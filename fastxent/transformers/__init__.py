"""fastxent for Hugging Face ``transformers`` models: their loss, token statistics and
log-probabilities from the last hidden states, never building the logits.

- :func:`patch`, :func:`revert`, :func:`patched`: a causal language model whose loss is the
  fused linear cross-entropy (training with ``transformers.Trainer`` or by hand).

Requires ``transformers`` (``pip install "fastxent[transformers]"``); see docs/transformers.md.
"""

from .evaluate import evaluate, windows
from .logprobs import logprobs
from .patch import is_patched, patch, patched, revert

__all__ = ["evaluate", "is_patched", "logprobs", "patch", "patched", "revert", "windows"]
