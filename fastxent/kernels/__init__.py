"""Backends: each implements the interface of :mod:`.interface` on its own hardware.

:mod:`.reference` (``backend="numpy"``) is the float64 NumPy twin of every kernel, the oracle of
the tests; :mod:`.cpu` runs Numba kernels over the CPU's threads; :mod:`.cuda` queues Numba CUDA
kernels on a stream (``cuda.on(stream, scratch)``). The host backends compute a cross-entropy
call from their per-row statistics ``rows(x, targets, weight, softcap, want_sy, coef, grad)``
(``[lse, Σ w·q·y, Σ w·q, Σ w·y]`` per row, and the gradient ``(softmax(y)·(c0·Σwq + c1·Σw +
c2·lse) − c0·w·q − c1·w)·dy/dx`` written row by row) through :mod:`.host`; the CUDA backend
does all of it on the device, so that nothing comes back to the host.

What the kernels compute alike (the merge, the row formulas, the soft-cap) is
``fastxent.core.formulas``; the codes they pass each other ``fastxent.core.codes``. Kernels never
see user arguments: ``fastxent.dispatch`` checks them and builds the calls.
"""
