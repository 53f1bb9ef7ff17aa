"""The contenders: fastxent and the peers it is compared with, as timed :class:`Case` objects.

Every builder takes the logits ``x`` (a float32, float16 or ``ml_dtypes.bfloat16`` NumPy array of
shape (N, V)), int64 targets ``t`` and the workloads wanted; it converts the inputs to its own
types before returning, so that no conversion is timed, and returns one :class:`Case` per
(workload, variant). Workloads:

``forward``
    the mean cross-entropy of integer targets;
``fwd+bwd``
    the mean loss and its gradient with respect to the logits (fused in fastxent, autograd in
    PyTorch, ``jax.value_and_grad`` in JAX, written out in NumPy);
``logsumexp``
    the log-sum-exp of every row.

Contenders (peers run only where their package is installed):

``fastxent``
    ``cross_entropy``, ``cross_entropy_with_grad`` (out of place, and ``inplace=True`` on a fresh
    copy of the logits made before each call, outside the timing), ``logsumexp``; and, where
    PyTorch is installed, the variant ``torch``: ``fastxent.torch.cross_entropy`` on tensors,
    with ``.backward()`` for fwd+bwd.
``numpy``
    a naive log-softmax with N×V temporaries, as one writes it in NumPy.
``scipy``
    NumPy with ``scipy.special.logsumexp``.
``torch``, ``torch.compile``
    ``torch.nn.functional.cross_entropy`` eager and compiled; ``.backward()`` on the loss for
    fwd+bwd; ``torch.logsumexp`` (eager only).
``jax``
    ``jax.jit`` of the integer-label softmax cross-entropy written as optax writes it (log-sum-exp
    minus the target's logit), its ``jax.value_and_grad``, and ``jax.scipy.special.logsumexp``.

NumPy and SciPy have no bfloat16 arithmetic: for half-precision logits they compute on a float32
copy of the same values, made outside the timing (the case's notes say so). PyTorch and JAX get
the logits in their own half type.
"""

import importlib.util
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

CONTENDERS = ("fastxent", "numpy", "scipy", "torch", "torch.compile", "jax")
PEERS = CONTENDERS[1:]
WORKLOADS = ("forward", "fwd+bwd", "logsumexp")

#: The module each contender needs, to skip those that are not installed.
REQUIRES = {"fastxent": "numba", "numpy": "numpy", "scipy": "scipy", "torch": "torch",
            "torch.compile": "torch", "jax": "jax"}

#: Workloads each contender has; the variants of each (``""`` is the plain call).
HAS = {name: WORKLOADS for name in CONTENDERS}
HAS["torch.compile"] = ("forward", "fwd+bwd")
VARIANTS = {("fastxent", "forward"): ("", "torch"),
            ("fastxent", "fwd+bwd"): ("", "in place", "torch")}


def variants(contender, workload):
    """The variants of one contender's workload, ``("",)`` for most. ``"torch"`` is fastxent
    through ``fastxent.torch`` on tensors (autograd for fwd+bwd), where PyTorch is installed: the
    cost of the integration layer next to the raw kernels."""
    found = VARIANTS.get((contender, workload), ("",))
    if "torch" in found and missing_reason("torch"):
        found = tuple(v for v in found if v != "torch")
    return found


def missing_reason(contender):
    """Why a contender cannot run here (its module is not installed), or None if it can."""
    module = REQUIRES[contender]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or shadowed installation counts as none
        found = False
    return None if found else f"{module} is not installed"


@dataclass
class Case:
    """One timed call: ``run()`` is timed, ``setup()`` (if any) runs untimed before each call.

    ``unpack(result)`` turns what ``run()`` returned into NumPy values ``(value, grad)``: the loss
    (a float) or the row log-sum-exps, and the gradient or None. ``compiles`` names what the first
    call does beyond the others (reported with its time); ``notes`` say anything else a reader of
    the numbers should know.

    ``warmup`` calls precede the timed ones, also for contenders that compile nothing. Without
    one, NumPy's first forward call at N=2048, V=131072 took 3.4 s on the development machine (a
    virtual machine), seven times its time after a warm-up call, and SciPy's forward took longer
    than its forward+backward, which does more: the first call most likely faults in the pages of
    its N×V temporaries.
    """

    contender: str
    workload: str
    run: Callable[[], object]
    unpack: Callable[[object], tuple]
    setup: Optional[Callable[[], None]] = None
    variant: str = ""
    warmup: int = 1
    compiles: str = ""
    notes: str = ""

    @property
    def label(self):
        return f"{self.contender} ({self.variant})" if self.variant else self.contender


def _value(result):
    return float(result), None


def _value_and_grad(result):
    loss, grad = result
    return float(loss), np.asarray(grad)


def _lse_result(result):
    return np.asarray(result, dtype=np.float64), None


# --- fastxent -------------------------------------------------------------------------------------


def _fastxent(x, t, workloads):
    import fastxent

    buf = {}

    def fresh_copy():
        # in place overwrites its input: every call gets fresh logits, copied outside the timing
        if "x" not in buf:
            buf["x"] = np.empty_like(x)
        np.copyto(buf["x"], x)

    cases = []
    if "forward" in workloads:
        cases.append(Case("fastxent", "forward", lambda: fastxent.cross_entropy(x, t), _value))
    if "fwd+bwd" in workloads:
        cases += [
            Case("fastxent", "fwd+bwd", lambda: fastxent.cross_entropy_with_grad(x, t),
                 _value_and_grad),
            Case("fastxent", "fwd+bwd",
                 lambda: fastxent.cross_entropy_with_grad(buf["x"], t, inplace=True),
                 _value_and_grad, setup=fresh_copy, variant="in place",
                 notes="gradient over a copy of the logits made before each call, untimed"),
        ]
    if "logsumexp" in workloads:
        cases.append(Case("fastxent", "logsumexp", lambda: fastxent.logsumexp(x), _lse_result))
    if "torch" in variants("fastxent", "forward"):
        cases += _fastxent_torch(x, t, workloads)
    return cases


def _fastxent_torch(x, t, workloads):
    """fastxent through ``fastxent.torch`` on zero-copy tensors of the same inputs, timed as the
    PyTorch peers are (a fresh leaf for each fwd+bwd call, whose ``.grad`` backward allocates)."""
    import fastxent.torch as fxt

    xt, tt = as_torch(x, t)
    leaf = {}

    def new_leaf():
        leaf["x"] = xt.detach().requires_grad_()

    def forward_backward():
        x_ = leaf["x"]
        out = fxt.cross_entropy(x_, tt)
        out.backward()
        return out.detach(), x_.grad

    note = "fastxent.torch.cross_entropy on tensors"
    made = {"forward": (lambda: fxt.cross_entropy(xt, tt), _value, None, note),
            "fwd+bwd": (forward_backward, _torch_value_and_grad, new_leaf,
                        note + ", through autograd")}
    return [Case("fastxent", w, run, unpack, setup=setup, variant="torch", notes=notes)
            for w, (run, unpack, setup, notes) in made.items() if w in workloads]


# --- NumPy and SciPy ------------------------------------------------------------------------------


def numpy_loss(x, t):
    """Mean cross-entropy the way one writes it in NumPy: a log-softmax with N×V temporaries."""
    m = x.max(axis=-1)
    lse = m + np.log(np.exp(x - m[:, None]).sum(axis=-1))
    return float(np.mean(lse - x[np.arange(x.shape[0]), t]))


def numpy_loss_and_grad(x, t):
    """Mean cross-entropy and its gradient ``(softmax - onehot) / N`` in plain NumPy."""
    n = x.shape[0]
    rows = np.arange(n)
    m = x.max(axis=-1, keepdims=True)
    p = np.exp(x - m)
    s = p.sum(axis=-1, keepdims=True)
    loss = float(np.mean(m[:, 0] + np.log(s[:, 0]) - x[rows, t]))
    p /= s
    p[rows, t] -= 1.0
    p /= n
    return loss, p


def numpy_logsumexp(x):
    """Row log-sum-exps in plain NumPy: ``m + log(sum(exp(x - m)))``."""
    m = x.max(axis=-1)
    return m + np.log(np.exp(x - m[:, None]).sum(axis=-1))


def scipy_loss(x, t):
    """Mean cross-entropy from ``scipy.special.logsumexp``."""
    from scipy.special import logsumexp

    return float(np.mean(logsumexp(x, axis=-1) - x[np.arange(x.shape[0]), t]))


def scipy_loss_and_grad(x, t):
    """Mean cross-entropy and its gradient ``(exp(x - lse) - onehot) / N`` with SciPy's lse."""
    from scipy.special import logsumexp

    n = x.shape[0]
    rows = np.arange(n)
    lse = logsumexp(x, axis=-1, keepdims=True)
    loss = float(np.mean(lse[:, 0] - x[rows, t]))
    g = np.exp(x - lse)
    g[rows, t] -= 1.0
    g /= n
    return loss, g


def scipy_logsumexp(x):
    """``scipy.special.logsumexp`` over the class axis."""
    from scipy.special import logsumexp

    return logsumexp(x, axis=-1)


def _as_float32(x):
    """``x`` itself when float32, else a float32 copy and a note saying so."""
    if x.dtype == np.float32:
        return x, ""
    return (x.astype(np.float32),
            f"computed on a float32 copy of the {x.dtype.name} logits, made untimed")


def _numpy_like(name, fns, x, t, workloads):
    xf, note = _as_float32(x)
    loss, loss_and_grad, lse = fns
    made = {"forward": (lambda: loss(xf, t), _value),
            "fwd+bwd": (lambda: loss_and_grad(xf, t), _value_and_grad),
            "logsumexp": (lambda: lse(xf), _lse_result)}
    return [Case(name, w, *made[w], notes=note) for w in WORKLOADS if w in workloads]


def _numpy(x, t, workloads):
    return _numpy_like("numpy", (numpy_loss, numpy_loss_and_grad, numpy_logsumexp), x, t,
                       workloads)


def _scipy(x, t, workloads):
    return _numpy_like("scipy", (scipy_loss, scipy_loss_and_grad, scipy_logsumexp), x, t,
                       workloads)


# --- PyTorch --------------------------------------------------------------------------------------


def as_torch(x, t):
    """Zero-copy torch views of the inputs (bfloat16 goes through its bits: torch cannot read
    ml_dtypes arrays)."""
    import torch

    if x.dtype.name == "bfloat16":
        xt = torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    else:
        xt = torch.from_numpy(x)
    return xt, torch.from_numpy(t)


def _torch_value_and_grad(result):
    loss, grad = result
    return float(loss), grad.float().numpy()


def _torch_rows(result):
    return result.double().numpy(), None


def _torch_cases(name, x, t, workloads, compile_):
    import torch
    import torch.nn.functional as F

    xt, tt = as_torch(x, t)

    def loss(a, b):
        return F.cross_entropy(a, b)

    # one compiled object per workload, so that each one's first call holds its own compilation
    fwd = torch.compile(loss) if compile_ else loss
    fwdbwd = torch.compile(loss) if compile_ else loss
    leaf = {}

    def new_leaf():
        # a fresh leaf each call, so that backward allocates its .grad as fastxent allocates its
        # gradient (accumulating into an old .grad would add a read of N×V)
        leaf["x"] = xt.detach().requires_grad_()

    def forward_backward():
        x_ = leaf["x"]
        out = fwdbwd(x_, tt)
        out.backward()
        return out.detach(), x_.grad

    kw = dict(compiles="compilation") if compile_ else {}
    made = {"forward": (lambda: fwd(xt, tt), _value, None),
            "fwd+bwd": (forward_backward, _torch_value_and_grad, new_leaf),
            "logsumexp": (lambda: torch.logsumexp(xt, dim=-1), _torch_rows, None)}
    return [Case(name, w, run, unpack, setup=setup, **kw)
            for w, (run, unpack, setup) in made.items() if w in workloads and w in HAS[name]]


def _torch(x, t, workloads):
    return _torch_cases("torch", x, t, workloads, compile_=False)


def _torch_compile(x, t, workloads):
    return _torch_cases("torch.compile", x, t, workloads, compile_=True)


# --- JAX ------------------------------------------------------------------------------------------


def jax_losses(x, t):
    """Per-row integer-label softmax cross-entropy, as ``optax`` computes it:
    ``logsumexp(x) - x[t]`` in the logits' dtype."""
    import jax.numpy as jnp
    from jax.scipy.special import logsumexp

    picked = jnp.take_along_axis(x, t[:, None], axis=-1)[:, 0]
    return logsumexp(x, axis=-1) - picked


def jax_loss(x, t):
    """The mean of :func:`jax_losses`, taken in float32."""
    import jax.numpy as jnp

    return jnp.mean(jax_losses(x, t).astype(jnp.float32))


def _jax_value_and_grad(result):
    loss, grad = result
    return float(loss), np.asarray(grad, dtype=np.float32)


def _jax(x, t, workloads):
    import jax
    from jax.scipy.special import logsumexp

    cpu = jax.devices("cpu")[0]  # a CPU benchmark, also where JAX has an accelerator
    xj = jax.block_until_ready(jax.device_put(x, cpu))
    tj = jax.block_until_ready(jax.device_put(t, cpu))
    fwd = jax.jit(jax_loss)
    fwdbwd = jax.jit(jax.value_and_grad(jax_loss))
    lse = jax.jit(lambda a: logsumexp(a, axis=-1))
    made = {"forward": (lambda: jax.block_until_ready(fwd(xj, tj)), _value),
            "fwd+bwd": (lambda: jax.block_until_ready(fwdbwd(xj, tj)), _jax_value_and_grad),
            "logsumexp": (lambda: jax.block_until_ready(lse(xj)), _lse_result)}
    return [Case("jax", w, *made[w], compiles="compilation") for w in WORKLOADS
            if w in workloads]


BUILDERS = {"fastxent": _fastxent, "numpy": _numpy, "scipy": _scipy, "torch": _torch,
            "torch.compile": _torch_compile, "jax": _jax}


def build_cases(contender, x, t, workloads=WORKLOADS):
    """The cases of one contender for the given workloads, inputs converted (see the module doc).

    Raises
    ------
    ImportError
        The contender's package is not installed.
    """
    return BUILDERS[contender](x, t, tuple(workloads))
