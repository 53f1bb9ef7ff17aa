"""fastxent: softmax cross-entropy and its gradient over very large vocabularies, fast and lean.

Numba-compiled kernels stream over the class axis with an online log-sum-exp, so the loss and the
gradient come out of one or two passes over the logits with no temporaries of their size.
"""

from .core.threads import ensure_threading_layer as _ensure_threading_layer
from .evaluation.evaluator import EvalResult, Evaluator, SequenceResult
from .losses.cross_entropy import (check_gpu_targets, cross_entropy, cross_entropy_with_grad,
                                   logsumexp)
from .losses.family import (binary_cross_entropy, binary_cross_entropy_with_grad,
                            binary_cross_entropy_with_logits,
                            binary_cross_entropy_with_logits_with_grad, cross_entropy_from_probs,
                            cross_entropy_from_probs_with_grad, entropy, entropy_with_grad,
                            kl_divergence, kl_divergence_with_grad)
from .losses.linear import linear_cross_entropy, linear_cross_entropy_with_grad
from .losses.linear_tokens import linear_token_stats
from .losses.tokens import TokenStats, token_stats

# Before anything else starts Numba's threads (see docs/threading.md): a later call of, say,
# numba.get_num_threads() would otherwise start them on GNU OpenMP, which forked children
# cannot use.
_ensure_threading_layer()

__version__ = "0.1.0"

__all__ = ["cross_entropy", "cross_entropy_with_grad", "logsumexp", "check_gpu_targets",
           "token_stats", "TokenStats", "linear_token_stats",
           "Evaluator", "EvalResult", "SequenceResult", "binary_cross_entropy",
           "binary_cross_entropy_with_grad",
           "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_with_grad",
           "cross_entropy_from_probs", "cross_entropy_from_probs_with_grad", "entropy",
           "entropy_with_grad", "kl_divergence", "kl_divergence_with_grad", "linear_cross_entropy",
           "linear_cross_entropy_with_grad", "__version__"]
