"""Backend registry and the ``backend="auto"`` choice.

Backends are modules implementing the interface of ``fastxent/kernels/interface.py``.
They are imported on first use, so a missing optional dependency only matters to the backend that
needs it.
"""

import importlib
import warnings

from . import arrays as _arrays

# name -> (module, what to install when it cannot be imported)
_REGISTRY = {
    "cpu": ("fastxent.kernels.cpu", "pip install numba"),
    "numpy": ("fastxent.kernels.reference", "pip install numpy"),
    "cuda": ("fastxent.kernels.cuda", 'pip install "fastxent[cuda]"'),
}
_loaded = {}


def names():
    return ("auto", *_REGISTRY)


def load(name):
    if name not in _loaded:
        module, hint = _REGISTRY[name]
        try:
            backend = importlib.import_module(module)
            if hasattr(backend, "ensure_usable"):  # importable, but needs hardware to run
                backend.ensure_usable()
            _loaded[name] = backend
        except ImportError as exc:
            raise RuntimeError(f"backend={name!r} is not usable here ({exc}); "
                               f"install it with `{hint}`") from exc
    return _loaded[name]


def checked(name):
    """``name`` if it names a backend, else a ValueError listing them."""
    if not isinstance(name, str) or name not in names():
        raise ValueError(f"backend={name!r} is not one of {', '.join(map(repr, names()))}")
    return name


def uses_cuda(name, array):
    """Whether a call goes to the CUDA backend: ``backend="cuda"``, or ``"auto"`` with an array
    that lives on a GPU. Such calls take the device path (``fastxent.dispatch.device``); every other
    call takes :func:`choose`."""
    checked(name)
    return name == "cuda" or (name == "auto" and _arrays.is_device(array))


def choose(name, array):
    """The host backend module for ``name`` ("auto": the Numba CPU kernels, else the NumPy
    reference), for calls that :func:`uses_cuda` leaves on the host."""
    checked(name)
    if name != "auto":
        return load(name)
    try:
        return load("cpu")
    except RuntimeError as exc:  # Numba broken on this platform: stay correct, if slower
        warnings.warn(f"fastxent falls back to the NumPy backend: {exc}", RuntimeWarning,
                      stacklevel=3)
        return load("numpy")


def available():
    """{name: True or the reason it cannot be used} for every registered backend."""
    status = {}
    for name in _REGISTRY:
        try:
            load(name)
            status[name] = True
        except RuntimeError as exc:
            status[name] = str(exc)
    return status
