"""The host backends' whole cross-entropy call (``interface.LossCall``) from their per-row
statistics: ``rows`` gives ``[lse, Σwqy, Σwq, Σwy]`` and writes the gradient, and what is left,
O(N) work, is done here once for both host backends, in float64, with the row formulas of
``fastxent.core.formulas``: as loops over rows for a call (:func:`cross_entropy`), and on arrays
of rows for the fused linear loss's blocks and the PyTorch composite (:func:`row_terms`,
:func:`row_coefficients`, :func:`z_part`).
"""

from typing import Callable, NamedTuple

import numpy as np
from numba import njit

from ..core import formulas
from ..core.codes import INDEX, MEAN, NONE, REDUCTIONS, SUM


def row_terms(stats, smoothing, n_classes, weight_sum, z_loss):
    """Per-row (cross-entropy, z-loss) from the statistics ``[lse, Σwqy, Σwq, Σwy]``
    (``formulas.row_loss`` on the arrays of rows; without a z-loss its term is the scalar 0)."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return formulas.row_loss(*stats.T, smoothing, z_loss, n_classes, weight_sum)


def row_coefficients(scale, scale_z, valid, smoothing, n_classes, z_loss):
    """(N, 3) float64 ``[c0, c1, c2]`` of the backends' gradient formula
    (``formulas.coefficients``), for rows whose upstream gradient is ``scale`` (``scale_z`` for
    the z-loss); zeros where not ``valid``."""
    coef = np.empty((valid.shape[0], 3))
    with np.errstate(invalid="ignore", over="ignore"):
        for k, c in enumerate(formulas.coefficients(scale, scale_z, smoothing, z_loss,
                                                    n_classes)):
            coef[:, k] = c
    if not valid.all():
        coef[~valid] = 0.0
    return coef


def z_part(lse, z_loss, reduction, n_valid):
    """The z-loss term of rows whose log-sum-exps are ``lse`` (0 for rows that do not count),
    reduced as the loss is: per row for "none", their sum, or their mean over the ``n_valid``
    counted rows (NumPy arrays or tensors)."""
    rows = formulas.z_term(lse, z_loss)
    if reduction == "none":
        return rows
    total = rows.sum()
    return total if reduction == "sum" else total / n_valid


# The O(N) steps of a call, written once as loops over rows on the formulas' scalars and compiled
# (``STEPS``) for both host backends: a call on a few rows spends microseconds, not tens of NumPy
# calls, around its kernel, and a call on many rows no Python loop.

def index_counts(targets, ignore, weight, valid):
    """Fill ``valid`` (the rows whose class index is not ``ignore``); return ``(denom,
    n_valid)``: what "mean" divides the cross-entropy by (the summed weights of their targets)
    and the z-loss by (their number)."""
    denom = np.float64(0.0)
    n_valid = 0
    for r in range(targets.shape[0]):
        valid[r] = targets[r] != ignore
        if valid[r]:
            n_valid += 1
            denom += 1.0 if weight is None else weight[targets[r]]
    return denom, n_valid


def coefficient_rows(valid, go, go_rows, mean, denom, n_valid, smoothing, z_loss, v, coef):
    """``coef[r] = [c0, c1, c2]`` of each row (``formulas.coefficients``; zeros where not
    ``valid``), its upstream gradient ``go`` or ``go_rows[r]`` (one value: ``go_rows[0]``),
    shared by ``denom`` (``n_valid`` for the z-loss) under a mean."""
    for r in range(valid.shape[0]):
        if not valid[r]:
            coef[r, 0] = coef[r, 1] = coef[r, 2] = 0.0
            continue
        s = go if go_rows is None else go_rows[r if go_rows.shape[0] > 1 else 0]
        s_z = s
        if mean:
            s, s_z = s / denom, s / n_valid
        coef[r, 0], coef[r, 1], coef[r, 2] = formulas.coefficients(s, s_z, smoothing, z_loss, v)


def finish_rows(stats, valid, smoothing, z_loss, v, w_sum, reduction, denom, n_valid, loss, z,
                lse):
    """The call's results from the rows' statistics ``[lse, Σwqy, Σwq, Σwy]``
    (``interface.LossOut``: ``loss``, and ``z``, ``lse`` or None), ``reduction`` a
    ``codes.REDUCTIONS`` code; rows not ``valid`` count as 0."""
    ce_sum = z_sum = zp_sum = np.float64(0.0)
    for r in range(valid.shape[0]):
        ce = zt = zp = lr = np.float64(0.0)
        if valid[r]:
            lr = stats[r, 0]
            ce, zt = formulas.row_loss(lr, stats[r, 1], stats[r, 2], stats[r, 3], smoothing,
                                       z_loss, v, w_sum)
            zp = formulas.z_term(lr, z_loss)
        if reduction == NONE:
            loss[r] = ce + zt
            if z is not None:
                z[r] = zp
        ce_sum += ce
        z_sum += zt
        zp_sum += zp
        if lse is not None:
            lse[r] = lr
    if reduction == SUM:
        loss[0] = ce_sum + z_sum
    elif reduction == MEAN:
        loss[0] = ce_sum / denom + z_sum / n_valid
    if z is not None and reduction != NONE:
        z[0] = zp_sum if reduction == SUM else zp_sum / n_valid


class Steps(NamedTuple):
    """The O(N) steps of a host call (Python functions, or their compilations)."""

    index_counts: Callable
    coefficient_rows: Callable
    finish_rows: Callable


#: the steps compiled (on first use, and cached on disk)
STEPS = Steps(*(njit(cache=True, error_model="numpy")(f)
                for f in (index_counts, coefficient_rows, finish_rows)))


def cross_entropy(rows, call, out, steps=STEPS):
    """``Backend.cross_entropy`` of a host backend whose per-row statistics are ``rows``, its
    O(N) work done by ``steps``: the call's class indices were checked, so it returns no flag
    (None)."""
    n, v = call.x.shape
    valid = np.ones(n, dtype=np.bool_)
    targets = call.targets
    if call.kind == INDEX:
        denom, n_valid = steps.index_counts(targets, call.ignore, call.weight, valid)
        if call.ignore != -1 and n_valid < n:  # ``rows`` marks an ignored row with -1
            targets = np.where(valid, targets, -1)
    else:  # probability targets: every row counts, and a mean is over rows (as PyTorch)
        denom, n_valid = np.float64(n), n
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        coef = None
        if call.grad is not None:
            coef = np.empty((n, 3))
            steps.coefficient_rows(valid, np.float64(call.grad_output), call.grad_rows,
                                   call.reduction == "mean", np.float64(denom),
                                   np.float64(n_valid), call.smoothing, call.z_loss,
                                   np.float64(v), coef)
        stats = rows(call.x, targets, call.weight, call.softcap, call.smoothing > 0, coef,
                     call.grad)
        w_sum = np.float64(v) if call.weight is None else np.float64(call.weight.sum())
        steps.finish_rows(stats, valid, call.smoothing, call.z_loss, np.float64(v), w_sum,
                          REDUCTIONS[call.reduction], np.float64(denom), np.float64(n_valid),
                          out.loss, out.z, out.lse)
