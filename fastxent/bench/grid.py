"""Which cases a run holds: the quick set, the full grid, and the memory budget that trims it.

A case is one contender's workload (and variant) on one shape and dtype: a :class:`Spec`. The
grid is the product of its axes, in an order that keeps each shape's cases together so that the
runner makes each input once. Peers whose temporaries would not fit the memory budget are dropped
from the grid, with the reason kept for the report.
"""

from dataclasses import asdict, dataclass

from .inputs import DTYPES, ITEMSIZE
from .peers import CONTENDERS, HAS, WORKLOADS, variants

#: Vocabulary sizes of real tokenizers: Llama 2, GPT-2, Llama 3, Gemma.
FULL_VOCAB = (32000, 50257, 128256, 256000)
#: Rows: batch-1 scoring, a few sequences, a microbatch, and a large batch (2048 rows of a 256K
#: vocabulary are 2 GiB of float32 logits: with the peers' temporaries, about what 24 GiB hold).
FULL_ROWS = (1, 16, 512, 2048)

#: The grid sizes: shapes and dtypes (the workloads are the caller's choice).
SIZES = {
    "smoke": dict(rows=(4,), vocab=(1000,), dtypes=("float32", "bfloat16")),
    "quick": dict(rows=(2048,), vocab=(131072,), dtypes=("float32",)),
    "full": dict(rows=FULL_ROWS, vocab=FULL_VOCAB, dtypes=DTYPES),
}
#: Workloads of the quick default of ``fastxent bench``; ``--full`` runs them all.
QUICK_WORKLOADS = ("forward", "fwd+bwd")
#: Peers of the quick default: all but SciPy, whose calls alone would take 15 s of the minute
#: (``--full`` and ``--peers scipy`` include it).
QUICK_PEERS = ("numpy", "torch", "torch.compile", "jax")

#: Extra memory of each case beyond its inputs, in N×V arrays of 4 bytes: the peak RSS growth
#: measured at N=2048, V=131072 float32, rounded up to whole arrays (SciPy's and JAX's are taken
#: as NumPy's and PyTorch eager's). The in-place variant counts its fresh copy of the logits.
TEMPORARIES = {
    ("fastxent", "forward"): 0, ("fastxent", "fwd+bwd"): 1, ("fastxent", "logsumexp"): 0,
    ("numpy", "forward"): 2, ("numpy", "fwd+bwd"): 2, ("numpy", "logsumexp"): 2,
    ("scipy", "forward"): 2, ("scipy", "fwd+bwd"): 2, ("scipy", "logsumexp"): 2,
    ("torch", "forward"): 1, ("torch", "fwd+bwd"): 3, ("torch", "logsumexp"): 1,
    ("torch.compile", "forward"): 1, ("torch.compile", "fwd+bwd"): 1,
    ("jax", "forward"): 1, ("jax", "fwd+bwd"): 3, ("jax", "logsumexp"): 1,
}


class Labelled:
    """What a case and its result are called: the contender (and variant), and the shape."""

    @property
    def label(self):
        return f"{self.contender} ({self.variant})" if self.variant else self.contender

    @property
    def shape(self):
        return (self.rows, self.vocab, self.dtype)


@dataclass(frozen=True)
class Spec(Labelled):
    """One case of the grid."""

    contender: str
    workload: str
    variant: str
    rows: int
    vocab: int
    dtype: str

    @property
    def id(self):
        """A short name, e.g. ``fastxent-inplace-fwd+bwd-N2048-V131072-float32``."""
        who = self.contender + ("-" + self.variant.replace(" ", "") if self.variant else "")
        return f"{who}-{self.workload}-N{self.rows}-V{self.vocab}-{self.dtype}"

    def as_dict(self):
        return asdict(self)


def estimated_bytes(spec):
    """Memory a case needs: its logits and targets, a float32 copy for NumPy and SciPy on half
    inputs, and its temporaries (:data:`TEMPORARIES`).

    >>> estimated_bytes(Spec("torch", "fwd+bwd", "", 2, 10, "float32"))
    336
    """
    n = spec.rows * spec.vocab
    total = n * ITEMSIZE[spec.dtype] + 8 * spec.rows
    if spec.contender in ("numpy", "scipy") and spec.dtype != "float32":
        total += 4 * n
    temps = TEMPORARIES.get((spec.contender, spec.workload), 3)
    if spec.variant == "in place":
        temps = 1
    return total + 4 * n * temps


def cases(rows, vocab, dtypes, workloads, contenders=CONTENDERS, memory_budget=None):
    """The grid's cases, shape by shape, and those dropped for the memory budget.

    Parameters
    ----------
    rows, vocab, dtypes, workloads, contenders : sequences
        The axes; a contender's workloads it does not have (``peers.HAS``) are left out.
    memory_budget : int, optional
        Bytes a case may need (:func:`estimated_bytes`); None: no limit.

    Returns
    -------
    (list of Spec, list of (Spec, str))
        The cases to run, and the dropped cases with the reason.

    Examples
    --------
    >>> kept, dropped = cases([1, 2], [100], ["float32"], ["logsumexp"], ["fastxent", "numpy"])
    >>> [s.id for s in kept]  # doctest: +NORMALIZE_WHITESPACE
    ['fastxent-logsumexp-N1-V100-float32', 'numpy-logsumexp-N1-V100-float32',
     'fastxent-logsumexp-N2-V100-float32', 'numpy-logsumexp-N2-V100-float32']
    """
    kept, dropped = [], []
    for dtype in dtypes:
        for n in rows:
            for v in vocab:
                for contender in contenders:
                    for workload in WORKLOADS:
                        if workload not in workloads or workload not in HAS[contender]:
                            continue
                        for variant in variants(contender, workload):
                            spec = Spec(contender, workload, variant, n, v, dtype)
                            need = estimated_bytes(spec)
                            if memory_budget is not None and need > memory_budget:
                                dropped.append((spec, f"needs about {need / 2**30:.1f} GiB, "
                                                      f"over the budget of "
                                                      f"{memory_budget / 2**30:.1f} GiB"))
                            else:
                                kept.append(spec)
    return kept, dropped


def sized(size, workloads=WORKLOADS, contenders=CONTENDERS, memory_budget=None):
    """:func:`cases` for one of the named sizes of :data:`SIZES`."""
    axes = SIZES[size]
    return cases(axes["rows"], axes["vocab"], axes["dtypes"], workloads, contenders,
                 memory_budget)


def default_memory_budget(physical=None):
    """60% of the machine's memory (14 GiB of 24): room for the runner's own copy of the inputs
    and for estimates that are off. 16 GiB where the machine's memory is unknown."""
    if physical is None:
        from .machine import memory_bytes

        physical = memory_bytes()
    return int(0.6 * physical) if physical else 16 << 30
