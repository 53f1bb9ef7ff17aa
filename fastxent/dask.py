"""Evaluation of Dask arrays of logits, chunked along the rows and along the vocabulary.

Each chunk's kernel returns partial statistics (maximum, sum of exponentials, the sum the
entropy needs, the target's logit when the target falls in the chunk's columns, the argmax);
the partials of a row's vocabulary chunks merge with the package's one log-sum-exp reduction
(:func:`fastxent.core.partials.merge_partials`), which is how logits sharded over the vocabulary by
tensor parallelism come together. The target's rank needs the target's logit before it can
count the logits above it, so chunks that split the vocabulary are read twice (once for the
partials, once to count); chunks that hold whole rows are read once.

Examples
--------
>>> import dask.array as da, numpy as np, fastxent as fx, fastxent.dask as fxd
>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((1000, 512)).astype(np.float32)
>>> t = rng.integers(0, 512, 1000)
>>> logits = da.from_array(x, chunks=(250, 128))       # 4 row chunks x 4 vocabulary shards
>>> result = fxd.evaluate(logits, da.from_array(t, chunks=250), topk=(1, 5))
>>> whole = fx.Evaluator(topk=(1, 5)); _ = whole.update(x, t)
>>> result.tokens, result.topk == whole.result().topk, abs(result.nll - whole.result().nll) < 1e-6
(1000, True, True)
"""

import dask
import dask.array as da
import numpy as np

from .core import dtypes as _dtypes
from .core.codes import ABSENT, IGNORED
from .core.partials import finish, merge_partials
from .dispatch import backends as _dispatch
from .dispatch import checks as _checks
from .evaluation.evaluator import Evaluator
from .losses.tokens import TokenStats

__all__ = ["evaluate", "from_npy", "token_stats"]

_PARTS = 6  # [m, s, w, y_t, argmax, above] per row, float64 (integers exact below 2**53)


def _codes(t, col0, width, n_classes, ignore_index, *, absent=False):
    """Target codes of the backends for the columns ``col0:col0 + width`` (see
    ``fastxent.losses.tokens``), after checking the range of the global targets."""
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= n_classes))
    if bad.any():
        i = int(np.argmax(bad))
        raise IndexError(_checks.out_of_range((), int(t[i]), n_classes, ignore_index))
    local = t - col0
    inside = valid & (local >= 0) & (local < width) & (not absent)
    return np.where(valid, np.where(inside, local, ABSENT), IGNORED).astype(np.int64)


def _partials(x, t, *, ignore_index, backend, block_info=None):
    """Block function: partials of a logits chunk, (lead..., 6)."""
    loc = block_info[0]["array-location"][-1]
    n_classes = block_info[0]["shape"][-1]
    codes = _codes(t.reshape(-1), loc[0], x.shape[-1], n_classes, ignore_index)
    rows = _dtypes.row_view(_checks.native(x))
    stats, ints = _dispatch.choose(backend, x).token_partials(rows, codes)
    ints = ints.copy()
    ints[:, 0] = np.where(ints[:, 0] >= 0, ints[:, 0] + loc[0], -1)
    return np.concatenate([stats, ints], axis=1).reshape(x.shape[:-1] + (_PARTS,))


def _merge(p):
    """Block function: (lead..., 6·K) partials of K vocabulary chunks → (lead..., 6)."""
    lead = p.shape[:-1]
    parts = p.reshape(-1, p.shape[-1] // _PARTS, _PARTS)
    stats, ints = merge_partials(parts[..., :4], parts[..., 4:].astype(np.int64))
    return np.concatenate([stats, ints], axis=1).reshape(lead + (_PARTS,))


def _count(x, yt, t, *, ignore_index, backend, block_info=None):
    """Block function: how many logits of the chunk exceed each row's target logit."""
    n_classes = block_info[0]["shape"][-1]
    codes = _codes(t.reshape(-1), 0, 0, n_classes, ignore_index, absent=True)
    rows = _dtypes.row_view(_checks.native(x))
    _, ints = _dispatch.choose(backend, x).token_partials(rows, codes, yt.reshape(-1))
    return ints[:, 1].reshape(x.shape[:-1] + (1,)).astype(np.float64)


def _finish(p, rank, t, *, ignore_index):
    """Block function: merged partials → (lead..., 5) [nll, lse, entropy, argmax, rank]."""
    lead = p.shape[:-1]
    p = p.reshape(-1, _PARTS)
    ints = np.stack([p[:, 4], rank.reshape(-1)], axis=1).astype(np.int64)
    fields = finish(p[:, :4], ints, t.reshape(-1) == ignore_index)
    return np.stack(fields, axis=1).astype(np.float64).reshape(lead + (5,))


def _inputs(logits, targets):
    _checks.instances((("logits", logits),), da.Array,
                      "a dask array (for NumPy arrays use fastxent.token_stats)", none_ok=False)
    _checks.logits_format(_dtypes.name(logits.dtype), logits.shape, shown=logits.dtype)
    _checks.classes(logits.shape)
    t = da.asarray(targets)
    _checks.integers(t.dtype, "targets", "integer class indices")
    _checks.shape_of(t.shape, logits.shape[:-1], "targets", "the logits' shape without the "
                     "classes,")
    return t.rechunk(logits.chunks[:-1])


def token_stats(logits, targets, *, ignore_index=-100, backend="auto"):
    """:func:`fastxent.token_stats` of a Dask array, lazily.

    Parameters
    ----------
    logits : dask.array.Array, shape (..., V)
        Chunked in any way, the vocabulary included.
    targets : dask.array.Array or ndarray of int, shape (...)
        Rechunked to the logits' row chunks.
    ignore_index : int
    backend : {"auto", "cpu", "numpy"}
        The host backend each chunk runs on.

    Returns
    -------
    TokenStats
        Of Dask arrays chunked like the targets; nothing is computed until asked.
    """
    t = _inputs(logits, targets)
    _dispatch.checked(backend)
    te = t[..., None]
    opts = dict(ignore_index=ignore_index, backend=backend)
    kinds = dict(dtype=np.float64, meta=np.empty((0,) * logits.ndim, np.float64))
    parts = da.map_blocks(_partials, logits, te,
                          chunks=t.chunks + ((_PARTS,) * logits.numblocks[-1],), **opts, **kinds)
    if logits.numblocks[-1] == 1:
        merged = parts
        rank = parts[..., 5:6]
    else:
        merged = parts.rechunk({logits.ndim - 1: -1}).map_blocks(
            _merge, chunks=t.chunks + ((_PARTS,),), **kinds)
        counts = da.map_blocks(_count, logits, merged[..., 3:4], te,
                               chunks=t.chunks + ((1,) * logits.numblocks[-1],), **opts, **kinds)
        # -1 where a row was not counted (its target logit is NaN)
        rank = da.where(counts.min(axis=-1, keepdims=True) < 0, -1.0,
                        counts.sum(axis=-1, keepdims=True))
    out = da.map_blocks(_finish, merged, rank, te, ignore_index=ignore_index,
                        chunks=t.chunks + ((5,),), **kinds)
    fields = [out[..., k] for k in range(5)]
    return TokenStats(*fields[:3], *(f.astype(np.int64) for f in fields[3:]))


def _read(path, lo, hi, c0, c1):
    """Rows ``lo:hi`` (and columns ``c0:c1`` of the last axis) of a memory-mapped ``.npy`` file:
    only they are read."""
    return np.load(path, mmap_mode="r")[lo:hi, ..., c0:c1]


def from_npy(paths, *, rows=None, columns=None, dtype=None):
    """A Dask array of the ``.npy`` files ``paths`` stacked along their first axis, each chunk
    read from its memory-mapped file by the worker that needs it (nothing is loaded up front).

    Parameters
    ----------
    paths : str or sequence of str
        Files of arrays of two or more dimensions, with the same shape after the first axis and
        the same dtype.
    rows : int, optional
        Rows (first-axis entries) per chunk; by default about 128 MiB of data per chunk.
    columns : int, optional
        Elements of the last axis per chunk (a vocabulary shard); by default the whole axis.
    dtype : str or dtype, optional
        Read the files as this dtype of the same size (``"bfloat16"``: NumPy saves bfloat16 as
        raw 2-byte values).
    """
    import dask

    paths = [paths] if isinstance(paths, str) else list(paths)
    if not paths:
        raise ValueError("from_npy needs at least one file")
    read = dask.delayed(_read, pure=True)
    arrays = []
    for path in paths:
        head = np.load(path, mmap_mode="r")
        want = head.dtype if dtype is None else _dtypes.resolve(str(dtype))
        if want.itemsize != head.dtype.itemsize:
            raise ValueError(f"{path} holds {head.dtype} values, which cannot be read as {want}")
        if head.ndim < 2:
            raise ValueError(f"{path} has shape {head.shape}: expected rows of logits, (..., V)")
        if arrays and (head.shape[1:] != arrays[0].shape[1:] or want != arrays[0].dtype):
            raise ValueError(f"{path} has shape {head.shape} and dtype {want}, unlike "
                             f"{paths[0]}: {arrays[0].shape}, {arrays[0].dtype}")
        v = head.shape[-1]
        step = rows or max(1, (128 << 20) // max(head[:1].nbytes, 1))
        cstep = columns or v
        stripes = []
        for lo in range(0, head.shape[0], step):
            hi = min(lo + step, head.shape[0])
            parts = [da.from_delayed(read(path, lo, hi, c0, min(c0 + cstep, v)),
                                     (hi - lo,) + head.shape[1:-1] + (min(c0 + cstep, v) - c0,),
                                     dtype=head.dtype) for c0 in range(0, v, cstep)]
            stripes.append(da.concatenate(parts, axis=-1))
        whole = da.concatenate(stripes, axis=0)
        arrays.append(whole if dtype is None else whole.view(want))
    return da.concatenate(arrays, axis=0)


def _block_evaluator(nll, lse, entropy, argmax, rank, t, ids, *, topk, ignore_index):
    ev = Evaluator(topk, ignore_index=ignore_index)
    return ev.add(TokenStats(nll, lse, entropy, argmax, rank), t, sequence_ids=ids)


def _merged(a, b):
    return a.merge(b)


def evaluate(logits, targets, *, topk=(1, 5, 10), ignore_index=-100, sequence_ids=None,
             backend="auto", compute=True):
    """Evaluate Dask arrays of logits: an :class:`fastxent.Evaluator` per row chunk, merged in a
    tree.

    Parameters
    ----------
    logits, targets, ignore_index, backend
        As :func:`token_stats`.
    topk : sequence of int
    sequence_ids : dask.array.Array or ndarray of int, optional
        The sequence of each token (the targets' shape), for per-sequence figures.
    compute : bool
        Compute now and return the :class:`fastxent.EvalResult`; False returns a
        ``dask.delayed`` object of the merged :class:`fastxent.Evaluator` instead.

    Returns
    -------
    EvalResult or Delayed
    """
    stats = token_stats(logits, targets, ignore_index=ignore_index, backend=backend)
    t = _inputs(logits, targets)
    ids = None if sequence_ids is None else da.asarray(sequence_ids).rechunk(t.chunks)
    blocks = [a.to_delayed().ravel() for a in (*stats, t)]
    id_blocks = ids.to_delayed().ravel() if ids is not None else [None] * len(blocks[0])
    make = dask.delayed(_block_evaluator, pure=True)
    evs = [make(*bs, i, topk=tuple(topk), ignore_index=ignore_index)
           for *bs, i in zip(*blocks, id_blocks)]
    merge = dask.delayed(_merged, pure=True)
    while len(evs) > 1:  # a tree: pairs, then pairs of pairs
        evs = [merge(evs[k], evs[k + 1]) if k + 1 < len(evs) else evs[k]
               for k in range(0, len(evs), 2)]
    if not evs:
        evs = [dask.delayed(Evaluator(topk, ignore_index=ignore_index))]
    return evs[0].compute().result() if compute else evs[0]
