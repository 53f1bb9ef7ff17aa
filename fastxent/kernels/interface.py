"""The backend interface, written down once: what ``reference``, ``cpu`` and ``cuda`` implement.

Every backend takes the same normalised arguments (docs/design.md#the-backend-interface): arrays
are 2-D C-contiguous *storage views* (``fastxent.core.dtypes.storage_view``: half precision as
its 16-bit integers), options are checked values, and integer codes come from
``fastxent.core.codes``. ``fastxent.dispatch`` builds them from the user's arguments, once, for
every backend; a backend checks nothing. The host backends (``reference``, ``cpu``) are modules
whose arrays are NumPy arrays; the CUDA backend is an object bound to one stream
(``fastxent.kernels.cuda.on(stream, scratch)``) whose arrays are Numba device arrays and whose
calls are queued on that stream, never waited for.
"""

from typing import NamedTuple, Protocol


class LossCall(NamedTuple):
    """One softmax cross-entropy call, its arguments checked.

    ``kind`` is ``codes.INDEX`` (``targets`` (N,) integers: a class index, or ``ignore`` for a
    row that does not count; every other value is in ``[0, V)`` on the host, where it was
    checked, and flagged by the CUDA kernels otherwise) or ``codes.PROBS`` (``targets`` an (N, V)
    storage view of a distribution per row). ``weight`` is (V,) floats or None (ones). The
    upstream gradient is ``grad_output`` for every row, or ``grad_rows``, (N,) float64 values
    (one per row for ``reduction="none"``) or (1,); ``grad``, an (N, V) storage view (``x``
    itself in place), receives the gradient, or is None for the loss alone.
    """

    x: object
    kind: int
    targets: object
    ignore: int
    weight: object
    smoothing: float
    z_loss: float
    softcap: object  # a float > 0, or None
    reduction: str  # "mean", "sum" or "none"
    grad_output: float = 1.0
    grad_rows: object = None
    grad: object = None


class LossOut(NamedTuple):
    """Where a :class:`LossCall` writes its results: ``loss``, (1,) for "mean" and "sum", else
    (N,), 0 for ignored rows; ``z`` (None: not asked for), the z-loss term reduced as the loss
    is; ``lse`` (None: not asked for), (N,) each row's log-sum-exp, 0 for ignored rows. A
    reduced loss over an out-of-range class index (CUDA) is NaN."""

    loss: object
    z: object = None
    lse: object = None


class Backend(Protocol):
    """The functions every backend has, with these arguments.

    ``logsumexp(x, softcap, out)``
        writes the log-sum-exp of each row of ``x`` (of ``softcap·tanh(x/softcap)`` with a
        soft-cap) into ``out`` (N,).
    ``cross_entropy(call, out)``
        computes a :class:`LossCall` into a :class:`LossOut`, and the gradient when asked;
        returns the out-of-range flag: None on the host (its targets were checked), a device
        array (1,) on the GPU, -1 or the first row whose class index is out of range.
    ``token_partials(x, codes, thresholds=None)``
        the per-token statistics' partials over the columns of ``x``: ``(stats (N, 4) float64
        [m, s, w, y_t], ints (N, 2) int64 [argmax, above])``, ``codes`` the targets as columns
        of ``x``, ``codes.ABSENT`` or ``codes.IGNORED`` (``reference.token_partials``); column
        chunks merge with ``fastxent.core.partials.merge_partials``.
    ``binary(kind, x, targets, weights, pos_weight, eps, losses, grad, scale)``
        the element-wise binary losses (``codes.BINARY_*``) or categorical terms
        (``reference.binary``): ``(row_sums (N,) float64, bad)``, ``bad`` the count of inputs
        out of range (on the GPU, per row, on the device).

    The host backends add the blocks of the fused linear loss (``class_partials``,
    ``class_grad``), the per-row statistics under the cross-entropy (``rows``), the binary
    losses' range check read alone (``binary_outside``) and the divergences (``kl_logits``,
    ``softmax_grads``); ``reference`` has each one's contract.
    """

    name: str

    def logsumexp(self, x, softcap, out): ...

    def cross_entropy(self, call, out): ...

    def token_partials(self, x, codes, thresholds=None): ...

    def binary(self, kind, x, targets, weights, pos_weight, eps, losses, grad, scale): ...
