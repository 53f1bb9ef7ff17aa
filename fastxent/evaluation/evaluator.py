"""Streaming evaluation: token statistics accumulated batch by batch into corpus figures.

Sums are kept exactly (:class:`ExactSum`), so the result does not depend on the order of the
batches, nor on how the work was split among evaluators that are merged at the end.
"""

import math
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np

from ..dispatch import backends as _dispatch
from ..dispatch import checks as _checks
from ..losses.linear_tokens import linear_token_stats
from ..losses.tokens import TokenStats, token_stats


class ExactSum:
    """A sum of floats without rounding error: the non-overlapping partials of Shewchuk's
    algorithm (as ``math.fsum`` keeps them), rounded once when read. Adding the same numbers in
    any order, or merging sums, gives the same value to the last bit. Infinities and NaN are
    summed apart, in float arithmetic (they absorb everything else)."""

    __slots__ = ("partials", "special")

    def __init__(self):
        self.partials = []
        self.special = 0.0

    def add(self, x):
        x = float(x)
        if not math.isfinite(x):
            self.special += x
            return self
        kept = []
        for y in self.partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            if math.isinf(hi):  # beyond float64: the sum is infinite
                self.special += hi
                return self
            lo = y - (hi - x)
            if lo:
                kept.append(lo)
            x = hi
        kept.append(x)
        self.partials = kept
        return self

    def merge(self, other):
        self.special += other.special
        for p in other.partials:
            self.add(p)
        return self

    @property
    def value(self):
        return self.special if self.special else _fsum(self.partials)


def _fsum(values):
    """``math.fsum`` of finite floats, also where a partial sum passes the float64 range."""
    try:
        return math.fsum(values)
    except OverflowError:
        return math.fsum(v / 2 for v in values) * 2.0


def _exact(values):
    """Floats whose exact sum is the exact sum of a float64 array (so that adding them to an
    :class:`ExactSum` keeps it exact, however the data were cut into batches): the rounded sum,
    then the rounded remainders until nothing remains (two or three ``math.fsum`` passes).
    Infinities and NaN are summed apart, into one value."""
    a = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(a)
    if not finite.all():
        return [float(np.sum(a[~finite]))]
    vals = a.tolist()
    parts = []
    while True:
        rest = _fsum(vals + [-p for p in parts])
        if rest == 0.0:
            return parts
        parts.append(rest)


def _add(total, values):
    for p in _exact(values):
        total.add(p)


@dataclass
class SequenceResult:
    """Per-sequence figures, ordered by sequence id."""

    ids: np.ndarray  #: int64 sequence ids
    tokens: np.ndarray  #: scored (non-ignored) tokens of each sequence
    nll: np.ndarray  #: mean NLL of each sequence, in nats (NaN for a sequence with no token)

    @property
    def perplexity(self):
        return np.exp(self.nll)


@dataclass
class EvalResult:
    """Corpus figures over the scored (non-ignored) tokens."""

    tokens: int  #: scored tokens
    nll: float  #: mean negative log-likelihood, nats per token
    accuracy: float  #: share of tokens whose argmax is the target
    topk: Dict[int, float]  #: share with ``rank < k`` (ties count for the target), per k
    entropy: float  #: mean predictive entropy, nats
    mrr: float  #: mean reciprocal rank of the target, ``1 / (rank + 1)``
    sequences: Optional[SequenceResult] = field(default=None, repr=False, compare=False)

    @property
    def perplexity(self):
        """``exp(nll)``."""
        return math.exp(self.nll) if self.nll < 709.0 or math.isnan(self.nll) else math.inf

    @property
    def bits_per_token(self):
        return self.nll / math.log(2.0)

    def as_dict(self):
        """The figures as plain Python values (what ``fastxent eval --json`` prints)."""
        d = dict(tokens=self.tokens, nll=self.nll, perplexity=self.perplexity,
                 bits_per_token=self.bits_per_token, accuracy=self.accuracy,
                 topk={str(k): v for k, v in self.topk.items()}, entropy=self.entropy,
                 mrr=self.mrr)
        if self.sequences is not None:
            d["sequences"] = len(self.sequences.ids)
        return d

    def __str__(self):
        rows = [("tokens", f"{self.tokens:,}"), ("mean NLL", f"{self.nll:.6f} nats"),
                ("perplexity", f"{self.perplexity:.4f}"),
                ("bits per token", f"{self.bits_per_token:.6f}"),
                ("accuracy", f"{self.accuracy:.4%}")]
        rows += [(f"top-{k} accuracy", f"{v:.4%}") for k, v in self.topk.items()]
        rows += [("mean entropy", f"{self.entropy:.6f} nats"), ("MRR", f"{self.mrr:.6f}")]
        if self.sequences is not None:
            rows.append(("sequences", f"{len(self.sequences.ids):,}"))
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


class Evaluator:
    """Accumulates language-model evaluation figures over batches of logits.

    Parameters
    ----------
    topk : sequence of int
        The k of the top-k accuracies to report.
    ignore_index : int
        Targets equal to it (padding) are not scored.
    backend : {"auto", "cpu", "cuda", "numpy"}
        Where :func:`token_stats` runs (``"auto"``: where the logits live).

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> ev = fx.Evaluator(topk=(1, 2))
    >>> logits = np.log(np.array([[0.1, 0.2, 0.7], [0.4, 0.4, 0.2]], dtype=np.float32))
    >>> _ = ev.update(logits, np.array([2, 1]))
    >>> _ = ev.update(logits[:1], np.array([-100]))        # padding: not scored
    >>> r = ev.result()
    >>> r.tokens, round(r.nll, 4), round(r.perplexity, 4)  # mean of -log 0.7 and -log 0.4
    (2, 0.6365, 1.8898)
    >>> r.accuracy, r.topk                                 # the tie goes to class 0, the argmax
    (0.5, {1: 1.0, 2: 1.0})
    """

    def __init__(self, topk=(1, 5, 10), *, ignore_index=-100, backend="auto"):
        self.topk = _checks.topk(topk)
        self.ignore_index = _checks.ignore_index(ignore_index)
        self.backend = _dispatch.checked(backend)
        self.tokens = 0
        self.correct = 0
        self.in_topk = dict.fromkeys(self.topk, 0)
        self.nll_sum = ExactSum()
        self.entropy_sum = ExactSum()
        self.rr_sum = ExactSum()
        self._seq = {}  # id -> [nll sum, tokens]

    def update(self, logits, targets, *, sequence_ids=None):
        """Score one batch; returns its :class:`TokenStats`.

        Parameters
        ----------
        logits : array, shape (..., V)
            As :func:`token_stats` takes them (NumPy, or a GPU array or tensor).
        targets : array of int, shape (...)
        sequence_ids : array of int, optional
            The sequence each token belongs to: the targets' shape, or one id per row of 2-D
            targets ``(B, T)``. Sequences may continue over several batches; their figures
            are in ``result().sequences``.
        """
        stats = token_stats(logits, targets, ignore_index=self.ignore_index,
                            backend=self.backend)
        self.add(stats, _host(targets), sequence_ids=sequence_ids)
        return stats

    def update_hidden(self, hidden, weight, targets, bias=None, *, temperature=1.0,
                      softcap=None, chunk_size=None, sequence_ids=None):
        """Score one batch from hidden states and the output layer, never holding the logits
        ``hidden @ weight.T + bias`` (memory of one chunk of rows of them); returns its
        :class:`TokenStats`.

        Parameters
        ----------
        hidden, weight, targets, bias, temperature, softcap, chunk_size
            As :func:`linear_token_stats` (NumPy arrays) or
            :func:`fastxent.torch.linear_token_stats` (tensors, on the CPU or a GPU).
        sequence_ids
            As :meth:`update`.

        Examples
        --------
        >>> import numpy as np, fastxent as fx
        >>> hidden = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
        >>> weight = np.array([[2.0, 0.0], [1.0, 1.0], [0.1, 0.0]], dtype=np.float32)
        >>> ev = fx.Evaluator(topk=(1, 2))
        >>> _ = ev.update_hidden(hidden, weight, np.array([0, 0]))
        >>> r = ev.result()
        >>> r.accuracy, r.topk, round(r.nll, 4) == round(fx.linear_cross_entropy(
        ...     hidden, weight, np.array([0, 0])), 4)
        (0.5, {1: 0.5, 2: 1.0}, True)
        """
        options = dict(temperature=temperature, softcap=softcap,
                       ignore_index=self.ignore_index, chunk_size=chunk_size)
        if hasattr(hidden, "detach"):  # a tensor
            from ..torch import linear_token_stats as _torch_linear_token_stats
            stats = _torch_linear_token_stats(hidden, weight, targets, bias, **options)
        else:
            stats = linear_token_stats(hidden, weight, targets, bias, backend=self.backend,
                                       **options)
        self.add(stats, _host(targets), sequence_ids=sequence_ids)
        return stats

    def add(self, stats, targets, *, sequence_ids=None):
        """Accumulate statistics computed elsewhere (:func:`token_stats` of the same targets).

        Everything is checked before anything is added: a call that raises leaves the
        evaluator as it was."""
        t = _checks.host_array(targets, "targets")
        _checks.integers(t.dtype, "targets", "integer class indices")
        for name, values in zip(TokenStats._fields, stats):
            _checks.shape_of(np.shape(values), t.shape, f"stats.{name}", "the targets' shape")
        valid = t != self.ignore_index
        sequences = [] if sequence_ids is None else _sequence_sums(
            stats.nll, valid, t.shape, sequence_ids)
        nll = stats.nll[valid]
        rank = stats.rank[valid]
        self.tokens += int(nll.size)
        self.correct += int(np.count_nonzero(stats.argmax[valid] == t[valid]))
        for k in self.topk:
            self.in_topk[k] += int(np.count_nonzero(rank < k))
        _add(self.nll_sum, nll)
        _add(self.entropy_sum, stats.entropy[valid])
        _add(self.rr_sum, 1.0 / (rank + 1.0))
        for i, total, count in sequences:
            acc = self._seq.setdefault(i, [ExactSum(), 0])
            acc[0].add(total)
            acc[1] += count
        return self

    def merge(self, other):
        """Add another evaluator's state (same ``topk`` and ``ignore_index``) to this one, as
        if its batches had been given here; returns ``self``."""
        if other.topk != self.topk or other.ignore_index != self.ignore_index:
            raise ValueError("evaluators differ in topk or ignore_index: "
                             f"{self.topk, self.ignore_index} and "
                             f"{other.topk, other.ignore_index}")
        self.tokens += other.tokens
        self.correct += other.correct
        for k in self.topk:
            self.in_topk[k] += other.in_topk[k]
        self.nll_sum.merge(other.nll_sum)
        self.entropy_sum.merge(other.entropy_sum)
        self.rr_sum.merge(other.rr_sum)
        for i, (s, c) in other._seq.items():
            acc = self._seq.setdefault(i, [ExactSum(), 0])
            acc[0].merge(s)
            acc[1] += c
        return self

    def result(self):
        """The figures so far, as an :class:`EvalResult` (NaN means with no token scored)."""
        n = self.tokens

        def mean(total):
            return total / n if n else math.nan

        sequences = None
        if self._seq:
            ids = np.array(sorted(self._seq), dtype=np.int64)
            tokens = np.array([self._seq[i][1] for i in ids.tolist()], dtype=np.int64)
            sums = np.array([self._seq[i][0].value for i in ids.tolist()])
            with np.errstate(invalid="ignore", divide="ignore"):
                sequences = SequenceResult(ids, tokens, np.where(tokens > 0, sums / tokens,
                                                                 np.nan))
        return EvalResult(tokens=n, nll=mean(self.nll_sum.value), accuracy=mean(self.correct),
                          topk={k: mean(c) for k, c in self.in_topk.items()},
                          entropy=mean(self.entropy_sum.value), mrr=mean(self.rr_sum.value),
                          sequences=sequences)


def _sequence_sums(nll, valid, shape, sequence_ids):
    """(id, NLL sum, scored tokens) of each sequence in a batch, from the ids of its tokens:
    the targets' ``shape``, or one id per row of 2-D targets."""
    ids = _checks.sequence_ids(sequence_ids, shape)
    uniq, inv = np.unique(ids.ravel(), return_inverse=True)
    sums = np.bincount(inv, weights=np.where(valid, nll, 0.0).ravel(), minlength=uniq.size)
    counts = np.bincount(inv, weights=valid.ravel(), minlength=uniq.size)
    return list(zip(uniq.tolist(), sums.tolist(), (int(c) for c in counts.tolist())))


def _host(a):
    """Targets as a NumPy array (GPU arrays and tensors are copied back: O(N))."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "detach"):  # torch
        return a.detach().cpu().numpy()
    if hasattr(a, "get"):  # CuPy
        return a.get()
    if hasattr(a, "copy_to_host"):  # Numba device array
        return a.copy_to_host()
    return np.asarray(a)



