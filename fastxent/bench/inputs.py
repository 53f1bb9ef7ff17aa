"""The inputs of a benchmark case: random logits in the dtype under test and integer targets."""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

#: Dtypes of the logits the benchmark knows, with the bytes of one element.
ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}
DTYPES = tuple(ITEMSIZE)

#: Elements drawn by one task of :func:`make_inputs` (16 MiB of float32).
_CHUNK = 1 << 22


def numpy_dtype(name):
    """The NumPy dtype of a benchmark dtype name (bfloat16 is ``ml_dtypes.bfloat16``).

    >>> numpy_dtype("float16")
    dtype('float16')
    """
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if name not in ITEMSIZE:
        raise ValueError(f"dtype={name!r} is not one of {DTYPES}")
    return np.dtype(name)


def make_inputs(rows, vocab, dtype="float32", seed=0, threads=None):
    """Random logits (standard normal × 2) of shape ``(rows, vocab)`` and int64 targets.

    The values are drawn in float32 and rounded to ``dtype``, in blocks of rows that each have
    their own stream spawned from ``seed``: the result depends on the seed and the shape only,
    while the blocks are filled by ``threads`` threads (NumPy's generators release the GIL; one
    thread takes about 3 s for the 268 M values of the default batch).

    Examples
    --------
    >>> x, t = make_inputs(3, 5, "bfloat16")
    >>> x.shape, x.dtype.name, t.dtype.name, bool(((0 <= t) & (t < 5)).all())
    ((3, 5), 'bfloat16', 'int64', True)
    """
    dt = numpy_dtype(dtype)
    x = np.empty((rows, vocab), dtype=dt)
    step = max(1, _CHUNK // max(vocab, 1))
    starts = list(range(0, rows, step))
    streams = np.random.SeedSequence(seed).spawn(len(starts) + 1)

    def fill(i):
        lo, hi = starts[i], min(starts[i] + step, rows)
        rng = np.random.default_rng(streams[i])
        if dt == np.float32:
            rng.standard_normal(dtype=np.float32, out=x[lo:hi])
            x[lo:hi] *= 2.0
        else:
            block = rng.standard_normal((hi - lo, vocab), dtype=np.float32)
            block *= 2.0
            x[lo:hi] = block.astype(dt)

    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    with ThreadPoolExecutor(max(1, min(threads, len(starts)))) as pool:
        list(pool.map(fill, range(len(starts))))
    t = np.random.default_rng(streams[-1]).integers(0, vocab, size=rows, dtype=np.int64)
    return x, t
