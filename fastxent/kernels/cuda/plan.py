"""How the CUDA kernels are launched for one call: word views, grid sizes and argument lists.

Host code only, and no GPU needed: the backend (``cuda.py``) runs the launches it returns, and the
PTX tests compile every kernel for exactly the argument types these launches pass.
"""

import numpy as np

from ... import config
from ...core.codes import INDEX, NO_TARGETS, NONE, PROBS, REDUCTIONS
from ..interface import LossCall
from .groups import WARP

__all__ = ["call", "grid", "lse_call", "splits", "words"]


def _address(a):
    cai = getattr(a, "__cuda_array_interface__", None)
    return cai["data"][0] if cai is not None else a.ctypes.data  # NumPy, and simulator arrays


def _no_words(dtype, dummy):
    """An empty word array: every element of a row is then read one by one."""
    return dummy(np.float64 if dtype == np.float64 else np.uint64)[:0]


def words(flat, dummy):
    """``(words, k0)``: the 8-byte words of a 1-D contiguous storage view, the first starting at
    element ``k0`` (the first 8-byte boundary); float64 arrays are their own words."""
    if flat.dtype == np.float64:
        return flat, 0
    size = flat.dtype.itemsize
    ne = 8 // size
    k0 = (-_address(flat) % 8) // size
    if flat.size <= k0:
        return _no_words(flat.dtype, dummy), 0
    count = (flat.size - k0) // ne
    return flat[k0:k0 + count * ne].view(np.uint64), k0


def grid(n, v, itemsize, fused, facts):
    """(blocks, threads per block, threads per row) of the row kernel.

    A warp per row for rows up to ``config.CUDA_WARP_ROW_BYTES``, else a block per row. Blocks loop
    over rows; for the fused kernel there are only as many as keep the rows in flight within
    ``config.CUDA_L2_SHARE`` of L2, so that the gradient pass finds its row there.
    """
    sms, l2 = facts
    row_bytes = v * itemsize
    if row_bytes <= config.CUDA_WARP_ROW_BYTES:
        threads, group = config.CUDA_WARP_BLOCK_THREADS, WARP
    else:
        threads = group = config.CUDA_BLOCK_THREADS
    per_block = threads // group
    blocks = max(1, -(-n // per_block))
    if fused:
        rows_in_flight = max(sms, int(config.CUDA_L2_SHARE * l2) // max(row_bytes, 1))
        blocks = min(blocks, max(1, rows_in_flight // per_block))
    most = config.CUDA_MAX_BLOCKS or sms * config.CUDA_BLOCKS_PER_SM
    return min(blocks, most), threads, group


def splits(n, v, itemsize, facts):
    """Segments per row: 1, or for few rows with many classes enough blocks to fill the GPU
    (about two per multiprocessor), each of at least ``config.CUDA_SPLIT_MIN_COLUMNS`` columns."""
    sms, _ = facts
    if n >= sms or v * itemsize <= config.CUDA_WARP_ROW_BYTES:
        return 1
    return max(1, min(-(-2 * sms // n), v // config.CUDA_SPLIT_MIN_COLUMNS))


def _row_launches(n, v, itemsize, fused, facts, row_args, split_args):
    """The row kernel, or the three kernels of the split path for few rows."""
    parts = splits(n, v, itemsize, facts)
    if parts == 1:
        blocks, threads, group = grid(n, v, itemsize, fused, facts)
        return [("rows_kernel", blocks, threads, row_args(group))]
    return split_args(parts, -(-v // parts))


def call(c, out, scratch, dummy, facts):
    """The launches of one cross-entropy call ``c`` (``interface.LossCall`` of device arrays),
    writing into ``out`` (``interface.LossOut`` of device arrays of the compute type), and the
    flag array ``bad``.

    ``scratch(shape, dtype)`` allocates device arrays, ``dummy(dtype)`` gives a one-element
    stand-in for an absent argument; ``facts`` = (multiprocessors, L2 bytes). Returns
    ``(launches, bad)``: launches are ``(kernel name, blocks, threads, args)``; after them
    ``bad[0]`` is -1, or the first row whose class index is out of range (whose loss is then
    NaN, as is a reduced loss, and no gradient is written).
    """
    launches, bad, stats, totals = _launches(c, out.loss, scratch, dummy, facts)
    n = c.x.shape[0]
    red = REDUCTIONS[c.reduction]
    if out.z is not None and red == NONE:
        launches.append(("z_rows_kernel", -(-n // 256), 256, (stats, float(c.z_loss), out.z)))
    elif out.z is not None:
        launches.append(("z_reduce_kernel", 1, config.CUDA_REDUCE_THREADS,
                         (stats, n, float(c.z_loss), red, totals, bad, out.z)))
    if out.lse is not None and n:
        launches.append(("lse_kernel", -(-n // 256), 256, (stats, out.lse)))
    return launches, bad


def _launches(c, out, scratch, dummy, facts):
    """:func:`call`'s launches (the loss into ``out``), flag, row statistics ``[lse, Σwqy, Σwq,
    Σwy]`` (N, 4) and totals (the counted rows, the sum of their weights, the sum of the class
    weights)."""
    x, kind, weight, grad, go_rows = c.x, c.kind, c.weight, c.grad, c.grad_rows
    targets = c.targets if kind == INDEX else None
    probs = c.targets if kind == PROBS else None
    eps, z, go = float(c.smoothing), float(c.z_loss), float(c.grad_output)
    per_row = go_rows is not None
    n, v = x.shape
    compute = np.float64 if x.dtype == np.float64 else np.float32
    xe = x.reshape(n * v)
    xw, k0 = words(xe, dummy)
    tg = targets if targets is not None else dummy(np.int64)
    pe = probs.reshape(n * v) if probs is not None else dummy(x.dtype)
    w = weight if weight is not None else dummy(compute)
    if grad is not None:
        ge = grad.reshape(n * v)
        gw, gk0 = (xw, k0) if grad is x else words(ge, dummy)
        if gk0 != k0:  # the two arrays sit differently against 8-byte words: element by element
            xw = gw = _no_words(x.dtype, dummy)
    else:
        ge, gw = xe, xw
    totals = scratch((3,), np.float64)
    bad = scratch((1,), np.int64)
    stats = scratch((n, 4), np.float64)
    go_arr = go_rows if go_rows is not None else dummy(np.float64)
    weighted = weight is not None
    cap = 0.0 if c.softcap is None else float(c.softcap)
    want_sy, ignore, red = c.smoothing > 0, c.ignore, REDUCTIONS[c.reduction]
    write_loss = red == NONE and kind != NO_TARGETS  # the log-sum-exp alone needs no loss
    # the totals serve the losses and the gradient, which the log-sum-exp alone does not need
    launches = [] if kind == NO_TARGETS else [("targets_kernel", 1, config.CUDA_REDUCE_THREADS,
                                              (tg, ignore, v, n, kind, w, weighted, totals, bad))]

    def row_args(group):
        return (xe, xw, k0, n, v, group, kind, tg, ignore, pe, w, weighted, cap, bool(want_sy),
                eps, z, red, go, go_arr, per_row, totals, bad, stats, out, write_loss, ge, gw,
                grad is not None)

    def split_args(parts, seg):
        blocks, threads = n * parts, config.CUDA_BLOCK_THREADS
        partials = scratch((n, parts, 5), np.float64)
        rowms = scratch((n, 2), np.float64)
        runs = [("partials_kernel", blocks, threads, (
                    xe, xw, k0, v, parts, seg, kind, tg, ignore, pe, w, weighted, cap,
                    bool(want_sy), partials)),
                ("merge_kernel", -(-n // 128), 128, (
                    xe, n, v, parts, kind, tg, ignore, w, weighted, cap, eps, z, totals, partials,
                    rowms, stats, out, write_loss))]
        if grad is not None:
            runs.append(("split_gradient_kernel", blocks, threads, (
                xe, xw, k0, v, parts, seg, kind, tg, ignore, pe, w, weighted, cap, eps, z, red,
                go, go_arr, per_row, totals, bad, stats, rowms, ge, gw)))
        return runs

    if n:
        launches += _row_launches(n, v, x.dtype.itemsize, grad is not None, facts, row_args,
                                  split_args)
    if red != NONE:
        launches.append(("reduce_kernel", 1, config.CUDA_REDUCE_THREADS,
                         (stats, n, v, eps, z, red, totals, bad, out)))
    return launches, bad, stats, totals


def lse_call(x, softcap, out, scratch, dummy, facts):
    """The launches that write the log-sum-exp of each row of ``x`` into ``out`` (N,): the row
    statistics of a call without targets, then their first column."""
    n = x.shape[0]
    if not n:
        return []
    compute = np.float64 if x.dtype == np.float64 else np.float32
    c = LossCall(x, NO_TARGETS, None, -1, None, 0.0, 0.0, softcap, "none")
    launches, _, stats, _ = _launches(c, dummy(compute), scratch, dummy, facts)
    return launches + [("lse_kernel", -(-n // 256), 256, (stats, out))]
