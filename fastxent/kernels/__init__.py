"""Backends: each module here implements the same small interface on its own hardware.

A backend module provides

``name``
    the name users pass as ``backend=``;
``logsumexp(x, softcap=None) -> ndarray (N,) float64``
    the log-sum-exp of each row of the 2-D storage view ``x`` (see ``fastxent.core.dtypes``);
``rows(x, targets, weight, softcap, want_sy, coef=None, grad=None) -> ndarray (N, 4) float64``
    per-row statistics ``[lse, Σ w·q·y, Σ w·q, Σ w·y]`` where ``y`` are the (soft-capped) logits,
    ``w`` the class weights (ones when None) and ``q`` the target distribution: ``targets`` is
    either an int64 vector of class indices (-1 marks an ignored row, whose statistics and gradient
    are zero) or a storage view of probabilities shaped like ``x``. ``Σ w·y`` is only computed when
    ``want_sy`` (label smoothing needs it). Given ``coef`` (N, 3) float64 and ``grad`` (a storage
    view shaped like ``x``, possibly ``x`` itself), the same call writes the gradient row by row::

        grad = (softmax(y)·(c0·Σwq + c1·Σw + c2·lse) − c0·w·q − c1·w) · dy/dx

``token_partials(x, targets, thresholds=None) -> (stats (N, 4) float64, ints (N, 2) int64)``
    the per-token statistics' partials over the columns of ``x``: ``[m, s, w, y_t]`` and
    ``[argmax, above]``, with ``targets`` coded as columns of ``x``, -1 (the target is in another
    vocabulary shard) or -2 (ignored); see ``reference.token_partials``. Partials of column
    chunks merge with ``fastxent.core.partials.merge_partials``.

``class_partials(x, weight, softcap, want_sy)``, ``class_grad(x, targets, weight, ...)``
    (CPU and reference backends) a block of classes of the fused linear cross-entropy: the
    rows' partial statistics ``[m, s, Σ w·y]`` over the block (they merge as (max, sum-exp)
    pairs), and, from the whole rows' statistics, the block's gradient written over it.

``binary(kind, x, targets, ...)``, ``binary_outside(kind, x, targets)``, ``kl_logits(x, y)``,
``softmax_grads(x, y, lse_x, ...)``
    (CPU and reference backends) the element-wise binary and categorical losses, the count of
    their inputs out of range (read alone, before a call writes into the caller's memory), the
    KL divergence of two softmaxes, and the gradients of the entropy and of that divergence
    (``reference`` has each one's contract).

Every statistic and option is defined once, in float64 NumPy, by :mod:`.reference`; what the
kernels compute alike (the merge, the row formulas, the soft-cap) is ``fastxent.core.formulas``.
The public functions in ``fastxent.losses`` turn these statistics into losses; kernels never see
user arguments.

The CUDA backend (:mod:`.cuda`) computes the same statistics and gradient, but its results stay
on the GPU, so its interface takes the whole call at once (``run``: statistics, gradient and the
reduction of the losses, queued on a stream; ``logsumexp``), and ``fastxent.dispatch.device``
prepares its calls; its ``token_partials`` takes and returns device arrays, on a stream. Its
device code is in ``cuda/softmax.py``, ``cuda/tokens.py`` and ``cuda/elementwise.py``, how it is
launched in ``cuda/plan.py`` (neither needs a GPU to import), the merge across threads in
``cuda/groups.py`` and the 8-byte words in ``cuda/lanes.py``.
"""
