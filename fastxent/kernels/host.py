"""The host backends' whole cross-entropy call (``interface.LossCall``) from their per-row
statistics: ``rows`` gives ``[lse, Σwqy, Σwq, Σwy]`` and writes the gradient, and what is left,
O(N) work, is done here once for both host backends, in float64, with the row formulas of
``fastxent.core.formulas`` applied to arrays of rows.
"""

import numpy as np

from ..core import formulas
from ..core.codes import INDEX


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
    rows = z_loss * lse * lse if z_loss else lse * 0.0
    if reduction == "none":
        return rows
    total = rows.sum()
    return total if reduction == "sum" else total / n_valid


def counts(call):
    """``(valid, denom, n_valid)``: which rows count, what "mean" divides the cross-entropy by
    (the summed weights of their targets; the row count for probability targets, as PyTorch),
    and what it divides the z-loss by (their number)."""
    n = call.x.shape[0]
    if call.kind != INDEX:
        return np.ones(n, dtype=bool), float(n), n
    valid = call.targets != call.ignore
    n_valid = int(np.count_nonzero(valid))
    w = call.weight
    return valid, (float(n_valid) if w is None else float(w[call.targets[valid]].sum())), n_valid


def _coefficients(call, valid, denom, n_valid):
    """(N, 3) float64 ``[c0, c1, c2]`` of each row from the call's upstream gradient."""
    n = valid.shape[0]
    mean = call.reduction == "mean"
    with np.errstate(invalid="ignore", divide="ignore"):
        if call.grad_rows is None:  # one value for every row (a few rows: no broadcasts)
            go = np.float64(call.grad_output)
            s = np.full(n, go / np.float64(denom) if mean else go)
            s_z = np.full(n, go / np.float64(n_valid)) if mean else s
        else:
            s = np.broadcast_to(np.asarray(call.grad_rows, np.float64).reshape(-1), (n,))
            s, s_z = (s / np.float64(denom), s / np.float64(n_valid)) if mean else (s, s)
    return row_coefficients(s, s_z, valid, call.smoothing, call.x.shape[1], call.z_loss)


def cross_entropy(rows, call, out):
    """``Backend.cross_entropy`` of a host backend whose per-row statistics are ``rows``: the
    call's class indices were checked, so it returns no flag (None)."""
    valid, denom, n_valid = counts(call)
    every = n_valid == valid.shape[0]  # (then no row needs masking)
    targets = call.targets
    if not every and call.kind == INDEX and call.ignore != -1:  # ``rows`` marks ignored rows -1
        targets = np.where(valid, targets, -1)
    coef = None if call.grad is None else _coefficients(call, valid, denom, n_valid)
    stats = rows(call.x, targets, call.weight, call.softcap, call.smoothing > 0, coef, call.grad)
    v = call.x.shape[1]
    w_sum = float(v) if call.weight is None else float(call.weight.sum())
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        ce, zt = formulas.row_loss(*stats.T, call.smoothing, call.z_loss, v, w_sum)
        if not every:
            ce = np.where(valid, ce, 0.0)
            zt = np.where(valid, zt, 0.0) if call.z_loss else zt
        if call.reduction == "none":
            out.loss[...] = ce + zt
        else:
            total, z_total = np.float64(ce.sum()), np.float64(np.sum(zt))
            out.loss[0] = (total + z_total if call.reduction == "sum" else
                           total / np.float64(denom) + z_total / np.float64(n_valid))
        if out.z is not None or out.lse is not None:
            lse = stats[:, 0] if every else np.where(valid, stats[:, 0], 0.0)
            if out.z is not None:
                out.z[...] = z_part(lse, call.z_loss, call.reduction, np.float64(n_valid))
            if out.lse is not None:
                out.lse[...] = lse
