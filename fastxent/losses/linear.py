"""Fused linear cross-entropy: the loss of ``hidden @ weight.T + bias`` and the gradients of
``hidden``, ``weight`` and ``bias``, without ever holding the N×V logits.

The rows are walked in chunks. Each chunk's logits come from the platform's matrix product into
one reused buffer; the fused kernel of :func:`fastxent.cross_entropy_with_grad` turns them into
per-row losses and, in place, into their gradient ``G``; then ``g_hidden[rows] = G·W``,
``g_weight += Gᵀ·hidden[rows]`` and ``g_bias += Σ G``. With whole rows in a chunk the
log-sum-exp of a row needs no merge across chunks, and the gradient comes from the same pass as
the loss (no second matrix product of the logits). Ignored rows are left out of the chunks, so
they cost no matrix product.

With blocks of classes (``_class_blocks``, CPU only), a chunk of rows takes two passes over the
vocabulary: the blocks' partial statistics, merged as (max, sum-exp) pairs, give the losses;
then each block's logits are computed again and turned into their gradient in place, from the
whole rows' statistics. Extra memory rows × classes, for a fourth product.

The chunks call the fused kernel with ``reduction="none"`` and a per-row upstream gradient; a
mean over the whole batch is obtained by scaling that gradient by ``1 / denominator`` and the
z-loss coefficient by ``denominator / n_valid`` (the z-loss of a mean is averaged over the
non-ignored rows, the cross-entropy over their summed class weights: see ``_scales``).

``_NumpyOps`` does the products with scipy's BLAS (NumPy's without scipy); ``fastxent.torch``
passes its own, with PyTorch's.
"""

from typing import NamedTuple

import numpy as np

from ..core import dtypes as _dtypes
from ..core.formulas import capped_values, merge_rows
from ..dispatch import backends as _dispatch
from ..dispatch import checks as _checks
from ..kernels import host as _host
from . import cross_entropy as _api

#: bytes of logits per chunk when ``chunk_size`` is not given. Each chunk of whole rows streams
#: the weight through three products, and BLAS loses efficiency with few rows: on a 2-core CPU,
#: N=512, H=1024, V=131072 float32 took 1.37–1.44× the unfused time in chunks of 64 rows
#: (32 MiB) and 1.08–1.11× in chunks of 128 (64 MiB); chunks of 256 (128 MiB) were 9–11% faster
#: than 128, and put ``fastxent.torch`` ahead of PyTorch's own ``F.linear_cross_entropy`` at
#: N=1024 (docs/performance-notes.md). On a GPU, 64 MiB is 256 rows of a 131072-class bfloat16
#: vocabulary (the chunk Liger-Kernel takes there).
BUDGET = {"cpu": 128 << 20, "cuda": 64 << 20}
#: fewer whole rows than this per chunk, and the CPU takes ``BLOCK_ROWS`` rows in blocks of
#: classes instead (at N=512, H=1024, V=131072 float32 the two ways took about the same time
#: with 64 rows, and whole rows lose more below)
MIN_ROWS = 64
BLOCK_ROWS = 256


def chunk_shape(chunk_size, n_rows, n_classes, itemsize, where, whole_rows=False):
    """(rows, classes) per chunk, ``classes`` None for whole rows: ``chunk_size`` when given (an
    int of rows, or a pair ``(rows, classes)``), else chosen from ``BUDGET[where]``: as many
    whole rows as fit, or on the CPU, when fewer than ``MIN_ROWS`` (or than ``n_rows``) fit,
    ``BLOCK_ROWS`` rows in blocks of classes that fit. ``whole_rows``: probability targets,
    which blocks of classes do not take."""
    if chunk_size is None:
        fit = BUDGET[where] // (n_classes * itemsize)
        if where != "cpu" or whole_rows or fit >= min(MIN_ROWS, n_rows):
            return max(1, fit), None
        rows = max(1, min(BLOCK_ROWS, n_rows))
        return rows, max(1, BUDGET[where] // (rows * itemsize))
    rows, classes = _checks.chunk_size(chunk_size, n_classes, whole_rows)
    return rows, (None if classes >= n_classes else classes)


def checked_options(label_smoothing, z_loss, softcap):
    """The options checked before any work (a call whose rows are all ignored runs no kernel)."""
    return dict(zip(("label_smoothing", "z_loss", "softcap"),
                    _checks.row_options(label_smoothing, z_loss, softcap)))


def targets(value, lead, n_classes, ignore, shift=0):
    """Class indices shaped like ``hidden.shape[:-1]`` → (N,) int64 with -1 for ignored rows
    (moved ``shift`` positions back: ``checks.shifted``); or probabilities shaped
    ``hidden.shape[:-1] + (V,)`` → (N, V), as they are (a floating array of that size is what
    the caller holds; the chunks read its rows)."""
    t = _checks.host_array(value, "targets")
    logits_shape = tuple(lead) + (n_classes,)
    kind = _checks.target_kind(_dtypes.name(t.dtype), t.shape, logits_shape, shown=t.dtype)
    if kind == "prob":
        _checks.no_shift_of_probabilities(shift)
        return t.reshape(-1, n_classes)
    if shift:
        t = _checks.shifted(t, lead, shift, ignore, n_classes)
    return _checks.targets(t, logits_shape, ignore)[1]


def valid(t):
    """The rows that count: those whose class index is not ignored (every row of probability
    targets, (N, V))."""
    return t >= 0 if t.ndim == 1 else np.ones(t.shape[0], bool)


def denominators(t, w):
    """What a mean divides by: (the cross-entropy's, the z-loss term's). The summed class
    weights of the counted rows (their count without weights, or for probability targets, as
    PyTorch), and the count of counted rows."""
    counted = valid(t)
    n_valid = int(np.count_nonzero(counted))
    denom = float(n_valid) if w is None or t.ndim == 2 else float(w[t[counted]].sum())
    return denom, n_valid


def _scales(t, w, reduction, z_loss, grad_output):
    """(scale, z_loss) for the chunks' ``reduction="none"`` calls, and how to finish the loss.

    With ``s`` the sum of the per-row results, the loss is ``s * finish``; the upstream
    gradient of row ``i`` is ``scale[i]`` (an array for reduction="none", else a number)."""
    if reduction != "mean":
        return grad_output, z_loss, 1.0
    denom, n_valid = denominators(t, w)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = z_loss * denom / n_valid if z_loss > 0 and n_valid else z_loss
        return np.float64(grad_output) / denom, z, np.float64(1.0) / denom


def _chunks(t, rows):
    """(slice or index array) per chunk of the non-ignored rows: slices when no row is ignored,
    so that the chunks are views of ``hidden``."""
    n = t.shape[0]
    keep = np.flatnonzero(valid(t))
    if keep.size == n:
        return [slice(s, min(s + rows, n)) for s in range(0, n, rows)]
    return [keep[s:s + rows] for s in range(0, keep.size, rows)]


class Walk(NamedTuple):
    """What :func:`run` returns."""

    #: per-row losses as ``ops`` keeps them (zeros for ignored rows), scaled for a mean
    losses: object
    #: the factor of their sum that is the loss (``1 / denominator`` for a mean)
    finish: float
    #: ``(g_hidden, g_weight, g_bias)``, None for those not computed; or None
    grads: object
    #: per-row log-sum-exps (zeros for ignored rows) when asked for, else None
    lse: object


def run(ops, h, w, b, t, cw, options, reduction, chunk, grad, grad_output=1.0, lse=False):
    """The chunked loop on 2-D ``h`` (N, H), ``w`` (V, H), ``b`` (V,) or None and ``t``: host
    (N,) int64 class indices (-1: ignored), or (N, V) probabilities; ``cw`` the class weights
    as float64 NumPy (or None) and ``options`` what the fused kernel takes besides them;
    ``chunk`` (rows, classes) from :func:`chunk_shape`. ``grad``: False, True, or which of the
    three gradients to compute (a frozen weight needs no product for its gradient). ``lse``:
    also keep each row's log-sum-exp. Returns a :class:`Walk`.
    """
    rows, classes = chunk
    n = h.shape[0]
    v = w.shape[0]
    scale, z, finish = _scales(t, cw, reduction, options["z_loss"], grad_output)
    opts = dict(options, z_loss=z)
    losses = ops.zeros((n,), ops.loss_dtype(h))
    lses = ops.zeros((n,), ops.loss_dtype(h)) if lse else None
    grads = None
    if grad:
        want = (True, True, True) if grad is True else grad
        grads = tuple(None if a is None or not wanted else ops.zeros(a.shape, dtype)
                      for a, wanted, dtype in zip((h, w, b), want, ops.grad_dtypes(h, w, b)))
    chunks = _chunks(t, rows)
    # one buffer for every chunk's logits: (rows, V), or (rows, classes) for blocks of classes
    most = max((_size(i) for i in chunks), default=0)
    buf = ops.empty((most * (classes or v),), h.dtype)
    # the targets and the chunks' row indices go to the device once, before the first product
    td = ops.targets(t)
    for k, idx in enumerate([i if isinstance(i, slice) else ops.index(i) for i in chunks]):
        m = _size(idx)
        hc = h[idx] if isinstance(idx, slice) else ops.take(h, idx)
        s = (ops.rows(scale, idx) if getattr(scale, "ndim", 0) else scale) if grad else None
        if classes is None:
            x = buf[:m * v].reshape(m, v)
            ops.logits(hc, w, b, x)
            if grad:
                loss, row_lse = ops.fused(x, td[idx], s, opts, lse)
                ops.gradients(grads, x, w, hc, idx, first=k == 0)
            else:
                loss, row_lse = ops.loss(x, td[idx], opts, lse)
        else:
            loss, row_lse = _class_blocks(ops, buf, hc, w, b, td[idx], cw, opts, classes, s,
                                          grads, idx, first=k == 0)
        ops.put(losses, idx, loss)
        if lse:
            ops.put(lses, idx, row_lse)
    return Walk(losses, finish, grads, lses)


def _size(idx):
    return idx.stop - idx.start if isinstance(idx, slice) else len(idx)


def _blocks(v, classes):
    return [slice(c0, min(c0 + classes, v)) for c0 in range(0, v, classes)]


def _class_blocks(ops, buf, hc, w, b, t, cw, options, classes, scale, grads, idx, first):
    """One chunk of rows in blocks of classes, on the CPU backends: a pass for the rows'
    statistics (block partials merged as (max, sum-exp) pairs), then, for the gradient, a second
    pass that recomputes each block's logits and turns them into their gradient in place.
    Returns the rows' losses and log-sum-exps (float64)."""
    backend = options.get("backend", "auto")
    if _dispatch.uses_cuda(backend, buf):
        raise NotImplementedError("chunk_size=(rows, classes): blocks of classes run on the CPU "
                                  "backends only; on the GPU, chunk by rows (chunk_size=rows)")
    be = _dispatch.choose(backend, None)
    m_rows, v = t.shape[0], w.shape[0]
    eps, cap = options["label_smoothing"], options["softcap"]
    top = np.full(m_rows, -np.inf)
    sums = np.zeros(m_rows)
    swy = np.zeros(m_rows)
    xt = np.zeros(m_rows)  # the targets' logits
    zeros = np.zeros(m_rows)

    def logits(cls):
        x = buf[:m_rows * (cls.stop - cls.start)].reshape(m_rows, cls.stop - cls.start)
        ops.logits(hc, w[cls], None if b is None else b[cls], x)
        return x

    def local(cls):  # each row's target column in the block, -1 when in another block
        return np.where((t >= cls.start) & (t < cls.stop), t - cls.start, -1)

    for cls in _blocks(v, classes):
        x = logits(cls)
        xs = _dtypes.storage_view(ops.host(x))
        part = be.class_partials(xs, None if cw is None else cw[cls], cap, eps > 0)
        top, sums, _ = merge_rows(top, sums, zeros, np.ascontiguousarray(part[:, 0]),
                                  np.ascontiguousarray(part[:, 1]), zeros)
        swy += part[:, 2]
        hit = np.flatnonzero(local(cls) >= 0)
        y = _dtypes.decode(xs[hit, t[hit] - cls.start])
        xt[hit] = y
    wt = np.ones(m_rows) if cw is None else cw[t]
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = np.where(top == np.inf, np.inf, top + np.log(sums))
    w_sum = float(v) if cw is None else float(cw.sum())
    yt = xt if cap is None else capped_values(xt, float(cap))
    ce, zt = _host.row_terms(np.stack([lse, wt * yt, wt, swy], axis=-1), eps, v, w_sum,
                            options["z_loss"])
    if grads is None:
        return ce + zt, lse
    s = np.broadcast_to(np.asarray(scale, np.float64), (m_rows,))
    coef = _host.row_coefficients(s, s, np.ones(m_rows, bool), eps, v, options["z_loss"])
    partials = np.stack([top, sums], axis=-1)
    targets_ = np.stack([xt, wt], axis=-1)
    # the blocks backwards: the last one's logits are still in the buffer
    for j, cls in enumerate(reversed(_blocks(v, classes))):
        g = x if j == 0 else logits(cls)
        be.class_grad(_dtypes.storage_view(ops.host(g)), local(cls),
                      None if cw is None else cw[cls], cap, partials, coef, w_sum, targets_)
        ops.gradients(grads, g, w, hc, idx, cls, add_hidden=j > 0, first=first)
    return ce + zt, lse


def _blas():
    """scipy's BLAS module, or None."""
    try:
        from scipy.linalg import blas
    except ImportError:
        return None
    return blas


def _operand(m):
    """(array, transposed) such that ``array`` is Fortran-ordered and ``array`` (transposed
    when the flag says so) is ``m``: a view whenever ``m`` or ``mᵀ`` is Fortran-ordered."""
    if m.flags.f_contiguous:
        return m, False
    if m.flags.c_contiguous:
        return m.T, True
    return np.asfortranarray(m), False


def _gemm_scipy(c, a, b, beta):
    """``c = a·b + beta·c`` with scipy's BLAS, ``c`` C-ordered, or None without scipy. Every
    product of a call goes through this one BLAS: alternating NumPy's and scipy's (two
    OpenBLAS thread pools on the same cores) cost up to 50% of a product's time (see
    docs/performance-notes.md)."""
    blas = _blas()
    if blas is None:
        return None
    gemm = blas.dgemm if c.dtype == np.float64 else blas.sgemm
    # in Fortran order: cᵀ = bᵀ·aᵀ (+ beta·cᵀ), every operand a view when it can be
    x, tx = _operand(b.T)
    y, ty = _operand(a.T)
    r = gemm(1.0, x, y, beta=float(beta), c=c.T, trans_a=tx, trans_b=ty, overwrite_c=True)
    if not np.shares_memory(r, c):
        c[...] = r.T
    return c


class _NumpyOps:
    """The matrix products with BLAS: scipy's when installed (it has ``beta``, so ``g_weight``
    accumulates in place), NumPy's otherwise."""

    #: classes per block of the weight gradient's accumulation without scipy
    BLOCK = 4096

    @staticmethod
    def zeros(shape, dtype):
        return np.zeros(shape, dtype)

    @staticmethod
    def empty(shape, dtype):
        return np.empty(shape, dtype)

    @staticmethod
    def loss_dtype(h):
        return np.float64

    @staticmethod
    def grad_dtypes(h, w, b):
        """The dtypes the three gradients are accumulated in: the arrays' own."""
        return (h.dtype, w.dtype, None if b is None else b.dtype)

    @staticmethod
    def take(h, idx):
        """Rows ``idx`` of ``h`` (the hidden states of a chunk, or its upstream gradients)."""
        return h[idx]

    rows = take

    @staticmethod
    def targets(t):
        """The targets, and the row indices of a chunk, where the kernels and products take
        them."""
        return t

    index = targets

    @staticmethod
    def fused(x, t, scale, options, lse=False):
        """(per-row losses, log-sum-exps or None) of logits ``x`` (scaled by ``scale``), whose
        gradient replaces them."""
        return _api.chunk_losses(x, t, scale=scale, lse=lse, **options)

    @staticmethod
    def loss(x, t, options, lse=False):
        """(per-row losses, log-sum-exps or None) of logits ``x``."""
        return _api.chunk_losses(x, t, lse=lse, **options)

    @staticmethod
    def put(losses, idx, loss):
        losses[idx] = loss

    def gemm(self, c, a, b, beta=0):
        """``c = a·b + beta·c`` (``beta`` 0 or 1) into C-ordered ``c``, without a temporary of
        ``c``'s size."""
        if c.size == 0 or _gemm_scipy(c, a, b, beta) is not None:
            return
        if not beta:
            np.matmul(a, b, out=c)
            return
        tmp = np.empty((min(self.BLOCK, c.shape[0]), c.shape[1]), c.dtype)
        for s in range(0, c.shape[0], self.BLOCK):
            e = min(s + self.BLOCK, c.shape[0])
            np.matmul(a[s:e], b, out=tmp[:e - s])
            c[s:e] += tmp[:e - s]

    def logits(self, hc, w, b, out):
        self.gemm(out, hc, w.T)
        if b is not None:
            out += b

    @staticmethod
    def host(x):
        """``x`` as a NumPy array (itself)."""
        return x

    def gradients(self, grads, g, w, hc, idx, cls=slice(None), add_hidden=False, first=False):
        """The gradients' products from ``g``, the gradient of the logits of rows ``idx`` and
        classes ``cls``: ``g_hidden[idx]`` is set (or added to, ``add_hidden``), ``g_weight`` and
        ``g_bias`` are added to (``g_weight`` is set when this is its ``first`` product)."""
        gh, gw, gb = grads
        if gh is not None and isinstance(idx, slice):
            self.gemm(gh[idx], g, w[cls], beta=add_hidden)
        elif gh is not None:
            part = gh[idx] if add_hidden else np.empty((len(idx), gh.shape[1]), gh.dtype)
            self.gemm(part, g, w[cls], beta=add_hidden)
            gh[idx] = part
        if gw is not None:
            self.gemm(gw[cls], g.T, hc, beta=not first)
        if gb is not None:
            gb[cls] += g.sum(axis=0)



class _Call(NamedTuple):
    """A NumPy call's arguments, checked."""

    lead: tuple  # hidden.shape[:-1]
    h: np.ndarray  # (N, H) C-contiguous
    w: np.ndarray  # (V, H) C-contiguous
    b: object  # (V,) or None
    t: np.ndarray  # (N,) int64 class indices (-1: ignored), or (N, V) probabilities
    cw: object  # (V,) float64 class weights or None
    options: dict  # what the chunks' kernel takes
    reduction: str
    chunk: tuple  # (rows, classes or None)
    shift: int

    def walk(self, grad=False, grad_output=1.0, lse=False):
        return run(_NumpyOps(), self.h, self.w, self.b, self.t, self.cw, self.options,
                   self.reduction, self.chunk, grad=grad, grad_output=grad_output, lse=lse)

    def per_row(self, values):
        """Per-row float64 values as the user sees them: the compute type, the loss's shape
        (without the last ``shift`` positions)."""
        rows = values.astype(_dtypes.compute_dtype(self.h.dtype)).reshape(self.lead)
        return _checks.unshifted(rows, self.shift)

    def result(self, walk, want_z, want_lse):
        """The loss of a :class:`Walk`, or ``(loss, z_loss, lse)`` with the parts asked for
        (as :func:`fastxent.cross_entropy`)."""
        if self.reduction == "none":
            loss = self.per_row(walk.losses)
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                loss = float(np.sum(walk.losses) * walk.finish)
        if not (want_z or want_lse):
            return loss
        parts = (loss,)
        if want_z:
            n_valid = int(np.count_nonzero(valid(self.t)))
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                z = _host.z_part(walk.lse, self.options["z_loss"], self.reduction, n_valid)
            parts += (self.per_row(z) if self.reduction == "none" else float(z),)
        if want_lse:
            parts += (self.per_row(walk.lse),)
        return parts


def _prepare(hidden, weight, targets_, bias, reduction, ignore_index, ce_weight, label_smoothing,
             z_loss, softcap, chunk_size, backend, shift):
    h, w, b = _checks.linear_host_arrays(hidden, weight, bias)
    lead, hdim, v = _checks.linear_shapes(
        h.shape, w.shape, None if b is None else b.shape,
        (h.dtype.name, w.dtype.name, None if b is None else b.dtype.name))
    red = _checks.reduction(reduction)
    ignore = _checks.ignore_index(ignore_index)
    s = _checks.shift(shift, h.shape, "hidden")
    t = targets(targets_, lead, v, ignore, s)
    cw = _checks.weight(ce_weight, v, "ce_weight")
    _dispatch.checked(backend)
    options = dict(weight=cw, backend=backend, **checked_options(label_smoothing, z_loss,
                                                                 softcap))
    chunk = chunk_shape(chunk_size, int(np.count_nonzero(valid(t))), v, h.dtype.itemsize, "cpu",
                        whole_rows=t.ndim == 2)
    h2 = np.ascontiguousarray(h.reshape(int(np.prod(lead)), hdim))
    return _Call(lead, h2, np.ascontiguousarray(w), b, t, cw, options, red, chunk, s)


def linear_cross_entropy(hidden, weight, targets, bias=None, *, reduction="mean",
                         ignore_index=-100, ce_weight=None, label_smoothing=0.0, z_loss=0.0,
                         softcap=None, shift=0, chunk_size=None, backend="auto",
                         return_z_loss=False, return_lse=False):
    """Cross-entropy of the logits ``hidden @ weight.T + bias`` without holding them.

    Equal to ``cross_entropy(hidden @ weight.T + bias, targets, ...)``, with extra memory bounded
    by one chunk of rows of logits instead of N×V.

    Parameters
    ----------
    hidden : ndarray, shape (..., H)
        The last layer's input (hidden states), float32 or float64.
    weight : ndarray, shape (V, H)
        The output layer's weight, in the layout of ``torch.nn.Linear(H, V).weight``; the dtype
        of ``hidden``.
    targets : ndarray
        Class indices of shape ``hidden.shape[:-1]``, or probabilities of shape
        ``hidden.shape[:-1] + (V,)`` (as ``torch.nn.functional.linear_cross_entropy``; then
        the chunks are whole rows).
    bias : ndarray, shape (V,), optional
        The output layer's bias.
    reduction, ignore_index, label_smoothing, z_loss, softcap, return_z_loss, return_lse
        As in :func:`cross_entropy`.
    shift : int or bool
        As in :func:`cross_entropy`, along the time axis of ``hidden`` ``(..., T, H)``: the
        hidden state of position ``i`` against the target of position ``i + shift``, without
        copying ``hidden``; the last ``shift`` positions cost no product.
    ce_weight : array_like, shape (V,), optional
        Per-class weights: the ``weight`` of :func:`cross_entropy` (renamed here, where
        ``weight`` is the layer's).
    chunk_size : int or (int, int), optional
        Rows of logits per chunk, or ``(rows, classes)``. By default as many whole rows as fit
        in 128 MiB (256 rows of 131072 float32 classes). Whole rows give the loss and the
        gradient from one product of the logits. Blocks of classes hold less (``rows ×
        classes``) but compute the logits twice, once for the rows' statistics and once for
        the gradient. See docs/linear.md for the trade-offs.
    backend : {"auto", "cpu", "numpy"}
        The backend of the cross-entropy kernel (see :func:`cross_entropy`).

    Returns
    -------
    loss : float or ndarray, or tuple
        As :func:`cross_entropy`.

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> hidden = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    >>> weight = np.array([[2.0, 0.0], [1.0, 1.0], [0.1, 0.0]], dtype=np.float32)
    >>> round(fx.linear_cross_entropy(hidden, weight, np.array([0, 1])), 4)
    0.4842
    >>> round(fx.cross_entropy(hidden @ weight.T, np.array([0, 1])), 4)
    0.4842
    """
    call = _prepare(hidden, weight, targets, bias, reduction, ignore_index, ce_weight,
                    label_smoothing, z_loss, softcap, chunk_size, backend, shift)
    walk = call.walk(lse=return_z_loss or return_lse)
    return call.result(walk, return_z_loss, return_lse)


def linear_cross_entropy_with_grad(hidden, weight, targets, bias=None, *, reduction="mean",
                                   ignore_index=-100, ce_weight=None, label_smoothing=0.0,
                                   z_loss=0.0, softcap=None, shift=0, chunk_size=None,
                                   backend="auto", grad_output=1.0, return_z_loss=False,
                                   return_lse=False):
    """:func:`linear_cross_entropy` and the gradients of ``hidden``, ``weight`` and ``bias``,
    in one pass over the chunks.

    Takes every argument of :func:`linear_cross_entropy`, plus ``grad_output`` (as in
    :func:`cross_entropy_with_grad`). The extra memory is one chunk of logits, which the kernel
    turns into their gradient in place; the gradients themselves are the results.

    Returns
    -------
    loss : float or ndarray, or tuple
        As :func:`linear_cross_entropy`.
    grads : tuple
        ``(g_hidden, g_weight, g_bias)``, the gradients of the loss, shaped and typed like
        ``hidden``, ``weight`` and ``bias`` (``g_bias`` is None without a bias).

    Examples
    --------
    >>> import numpy as np, fastxent as fx
    >>> hidden = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    >>> weight = np.array([[2.0, 0.0], [1.0, 1.0], [0.1, 0.0]], dtype=np.float32)
    >>> loss, (gh, gw, gb) = fx.linear_cross_entropy_with_grad(hidden, weight, np.array([0, 1]))
    >>> gh.shape, gw.shape, gb
    ((2, 2), (3, 2), None)
    >>> _, g = fx.cross_entropy_with_grad(hidden @ weight.T, np.array([0, 1]))
    >>> bool(np.allclose(gw, g.T @ hidden))
    True
    """
    call = _prepare(hidden, weight, targets, bias, reduction, ignore_index, ce_weight,
                    label_smoothing, z_loss, softcap, chunk_size, backend, shift)
    go = _checks.grad_output(grad_output, call.reduction,
                             _checks.shifted_shape(call.lead, call.shift))
    if call.reduction == "none":
        go = np.ascontiguousarray(_checks.padded(go, call.lead, call.shift)).reshape(-1)
    walk = call.walk(grad=True, grad_output=go, lse=return_z_loss or return_lse)
    gh, gw, gb = walk.grads
    return (call.result(walk, return_z_loss, return_lse),
            (gh.reshape(tuple(call.lead) + (call.h.shape[1],)), gw, gb))
