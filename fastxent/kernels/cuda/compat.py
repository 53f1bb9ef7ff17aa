"""Compatibility of numba-cuda with newer NumPy releases, applied before the CUDA backend compiles.

numba-cuda 0.30 calls ``np.row_stack`` when it compiles a kernel; NumPy 2.5 removed that alias of
``np.vstack`` (deprecated since 2.0), so the first compile fails with ``AttributeError: module
'numpy' has no attribute 'row_stack'``. :func:`numpy_compat` puts the alias back, only where it is
missing.
"""

import numpy as np


def numpy_compat():
    """Restore ``np.row_stack`` as ``np.vstack`` where NumPy no longer has it; returns whether it
    had to."""
    if hasattr(np, "row_stack"):
        return False
    np.row_stack = np.vstack
    return True
