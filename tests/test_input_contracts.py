"""Every public NumPy function against the classes of input that an audit of bad inputs found
mishandled at the seams: read-only arrays, arrays in the other byte order, option arrays in half
precision, destinations (``out=``, ``inplace=True``) that overlap an input, and calls that raise
after they would have written (a call that raises has modified nothing).

Each function is listed once in ``CALLS`` with the arrays it takes, so that a new public
function gets every check by being added there.
"""

import numpy as np
import pytest
from conftest import BF16, F16, F32, F64

import fastxent as fx

N, V = 6, 40


def _arrays(rng, dtype):
    """The arrays the calls below take, by name (the logits' kind in ``dtype``)."""
    x = (rng.standard_normal((N, V)) * 2).astype(dtype)
    t = rng.integers(0, V, N)
    t[2] = -100
    q = rng.dirichlet(np.ones(V), N).astype(dtype)
    p = rng.uniform(0.02, 0.98, (N, V)).astype(dtype)
    y = (rng.random((N, V)) > 0.5).astype(dtype)
    return dict(x=x, t=t, q=q, p=p, y=y, w=rng.uniform(0.5, 2.0, V).astype(F32),
                rows=rng.uniform(0.5, 2.0, N).astype(F32),
                h=rng.standard_normal((N, 8)).astype(F32 if dtype != F64 else F64),
                W=rng.standard_normal((V, 8)).astype(F32 if dtype != F64 else F64),
                b=rng.standard_normal(V).astype(F32 if dtype != F64 else F64))


# name -> (function of the arrays, the arrays it takes; linear ones take float32/float64 only)
CALLS = {
    "cross_entropy": (lambda a: fx.cross_entropy(a["x"], a["t"], weight=a["w"]), "x t w"),
    "cross_entropy probs": (lambda a: fx.cross_entropy(a["x"], a["q"], label_smoothing=0.1),
                            "x q"),
    "cross_entropy_with_grad": (lambda a: fx.cross_entropy_with_grad(
        a["x"], a["t"], weight=a["w"], reduction="none", grad_output=a["rows"], z_loss=1e-3),
        "x t w rows"),
    "cross_entropy_with_grad softcap": (lambda a: fx.cross_entropy_with_grad(
        a["x"], a["t"], softcap=5.0), "x t"),
    "cross_entropy_with_grad probs": (lambda a: fx.cross_entropy_with_grad(a["x"], a["q"]),
                                      "x q"),
    "logsumexp": (lambda a: fx.logsumexp(a["x"]), "x"),
    "token_stats": (lambda a: fx.token_stats(a["x"], a["t"]), "x t"),
    "Evaluator.update": (lambda a: fx.Evaluator().update(a["x"], a["t"], sequence_ids=a["t"] % 3),
                         "x t"),
    "binary_cross_entropy_with_logits_with_grad": (
        lambda a: fx.binary_cross_entropy_with_logits_with_grad(
            a["x"], a["y"], weight=a["w"], pos_weight=a["w"]), "x y w"),
    "binary_cross_entropy_with_grad": (
        lambda a: fx.binary_cross_entropy_with_grad(a["p"], a["y"], weight=a["w"]), "p y w"),
    "cross_entropy_from_probs_with_grad": (
        lambda a: fx.cross_entropy_from_probs_with_grad(a["p"], a["t"], weight=a["w"],
                                                        sample_weight=a["rows"]), "p t w rows"),
    "cross_entropy_from_probs_with_grad probs": (
        lambda a: fx.cross_entropy_from_probs_with_grad(a["p"], a["q"]), "p q"),
    "entropy_with_grad": (lambda a: fx.entropy_with_grad(a["x"], grad_output=a["rows"]),
                          "x rows"),
    "entropy probs": (lambda a: fx.entropy(a["p"], kind="probs"), "p"),
    "kl_divergence_with_grad": (lambda a: fx.kl_divergence_with_grad(a["x"], a["q"]), "x q"),
    "kl_divergence probs": (lambda a: fx.kl_divergence(a["p"], a["q"], kind="probs"), "p q"),
    "linear_cross_entropy_with_grad": (lambda a: fx.linear_cross_entropy_with_grad(
        a["h"], a["W"], a["t"], a["b"], ce_weight=a["w"], chunk_size=4), "h W t b w"),
    "linear_cross_entropy_with_grad blocks": (lambda a: fx.linear_cross_entropy_with_grad(
        a["h"], a["W"], a["t"], a["b"], chunk_size=(4, 16)), "h W t b"),
}


def _values(result):
    """The arrays and numbers of a result, flattened, as float64 (ints as they are)."""
    if isinstance(result, (tuple, list)):
        return [v for r in result for v in _values(r)]
    if result is None:
        return []
    if hasattr(result, "nll"):  # TokenStats
        return [np.asarray(f) for f in result]
    a = np.asarray(result)
    return [a if a.dtype.kind in "iub" else a.astype(np.float64)]


def _same(got, want):
    got, want = _values(got), _values(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _other_byte_order(a):
    if a.dtype == BF16:  # ml_dtypes' bfloat16 has one byte order
        return a
    return a.astype(a.dtype.newbyteorder("S"))


@pytest.mark.parametrize("name", list(CALLS))
@pytest.mark.parametrize("dtype", [F32, F16], ids=["float32", "float16"])
def test_read_only_inputs_work_everywhere_they_are_only_read(rng, name, dtype):
    """Bug: the fused CPU kernel compiled its in-place branch for every call, so read-only
    logits (np.load(mmap_mode="r"), another library's arrays) failed to type."""
    fn, names = CALLS[name]
    arrays = _arrays(rng, dtype)
    want = fn(arrays)
    got = fn({k: _read_only(a) if k in names.split() else a for k, a in arrays.items()})
    _same(got, want)


@pytest.mark.parametrize("name", list(CALLS))
@pytest.mark.parametrize("dtype", [F32, F16, F64], ids=["float32", "float16", "float64"])
def test_other_byte_order_gives_the_same_results(rng, name, dtype):
    """Bug: '>f2' logits were read as native int16 bits (cross_entropy of [[2, 1, 0.1]] gave
    1582.0), '>f4' / '>f8' failed to type. Arrays in the other byte order are converted once."""
    fn, names = CALLS[name]
    arrays = _arrays(rng, dtype)
    want = fn(arrays)
    got = fn({k: _other_byte_order(a) if k in names.split() else a for k, a in arrays.items()})
    _same(got, want)


def test_cross_entropy_of_big_endian_half_precision(rng):
    """The issue's case."""
    x = np.array([[2, 1, 0.1]], ">f2")
    assert round(fx.cross_entropy(x, np.array([0])), 3) == 0.417


# --- destinations: in place, out= ---------------------------------------------------------------

# name -> (function(arrays, **destination), the name of the array it writes over in place)
WRITERS = {
    "cross_entropy_with_grad": (lambda a, **d: fx.cross_entropy_with_grad(
        a["x"], a["t"], weight=a["w"], **d), "x"),
    "cross_entropy_with_grad probs": (lambda a, **d: fx.cross_entropy_with_grad(
        a["x"], a["q"], **d), "x"),
    "binary_cross_entropy_with_logits_with_grad": (
        lambda a, **d: fx.binary_cross_entropy_with_logits_with_grad(
            a["x"], a["y"], weight=a["w"], **d), "x"),
    "binary_cross_entropy_with_grad": (
        lambda a, **d: fx.binary_cross_entropy_with_grad(a["p"], a["y"], **d), "p"),
}


def _bad_targets(name, arrays):
    """The arrays of ``name`` with targets out of range (found only by the kernel, for the binary
    losses: a target of 3 is not in [0, 1])."""
    bad = dict(arrays)
    if name.startswith("binary"):
        bad["y"] = np.full((N, V), 3.0, arrays["y"].dtype)
    elif name.endswith("probs"):
        pytest.skip("probability targets are not range-checked (as PyTorch)")
    else:
        bad["t"] = np.where(arrays["t"] >= 0, arrays["t"] + V, arrays["t"])
    return bad


@pytest.mark.parametrize("name", list(WRITERS))
@pytest.mark.parametrize("where", ["inplace", "out"])
def test_a_call_that_raises_has_written_nothing(rng, name, where):
    """Bug: binary_cross_entropy_with_grad(p, y, inplace=True) with targets out of range wrote
    the gradient over p, then blamed probs (p[0, 0] = -1.67) instead of targets."""
    fn, target = WRITERS[name]
    arrays = _bad_targets(name, _arrays(rng, F32))
    before = {k: a.copy() for k, a in arrays.items()}
    out = np.full_like(arrays[target], 7.0)
    dest = dict(inplace=True) if where == "inplace" else dict(out=out)
    with pytest.raises((ValueError, IndexError), match="targets"):
        fn(arrays, **dest)
    for k, a in arrays.items():
        np.testing.assert_array_equal(a, before[k])
    assert np.all(out == 7.0)


def _inside(out, values):
    """``values`` copied into the memory of ``out``: an input that overlaps the destination."""
    raw = out.reshape(-1).view(np.uint8)[:values.nbytes].view(values.dtype)
    raw[...] = values.reshape(-1)
    return raw.reshape(values.shape)


@pytest.mark.parametrize("name, other", [
    ("cross_entropy_with_grad", "t"), ("cross_entropy_with_grad", "w"),
    ("cross_entropy_with_grad probs", "q"), ("binary_cross_entropy_with_logits_with_grad", "y"),
    ("binary_cross_entropy_with_logits_with_grad", "w"), ("binary_cross_entropy_with_grad", "y"),
])
def test_out_overlapping_any_input_is_refused(rng, name, other):
    """Bug: out= was checked against the logits only, so an out over the targets or weights had
    the gradient written over an input while the kernel read it."""
    fn, target = WRITERS[name]
    arrays = _arrays(rng, F32)
    out = np.zeros_like(arrays[target])
    arrays[other] = _inside(out, arrays[other])
    named = "targets" if other in "tqy" else "weight"
    with pytest.raises(ValueError, match=f"out overlaps {named}"):
        fn(arrays, out=out)


def test_out_over_the_probability_targets_is_refused(rng):
    """The issue's case, named."""
    x = (rng.standard_normal((3, 4))).astype(F32)
    q = np.full((3, 4), 0.25, F32)
    with pytest.raises(ValueError, match="out overlaps targets"):
        fx.cross_entropy_with_grad(x, q, out=q)
    np.testing.assert_array_equal(q, 0.25)


def test_in_place_over_logits_that_are_also_the_targets_is_refused(rng):
    x = rng.dirichlet(np.ones(5), 3).astype(F32)
    with pytest.raises(ValueError, match="overlaps targets"):
        fx.cross_entropy_with_grad(x, x, inplace=True)
    with pytest.raises(ValueError, match="overlaps targets"):
        fx.binary_cross_entropy_with_grad(x, x, inplace=True)


@pytest.mark.parametrize("name", ["cross_entropy_with_grad", "binary_cross_entropy_with_grad",
                                  "binary_cross_entropy_with_logits_with_grad"])
def test_in_place_on_read_only_logits_is_a_clear_error(rng, name):
    fn, target = WRITERS[name]
    arrays = _arrays(rng, F32)
    arrays[target] = _read_only(arrays[target])
    with pytest.raises(ValueError, match="read-only"):
        fn(arrays, inplace=True)


@pytest.mark.parametrize("dtype", [F32, F16], ids=["float32", "float16"])
def test_gradient_into_an_out_in_the_other_byte_order(rng, dtype):
    arrays = _arrays(rng, dtype)
    _, want = fx.cross_entropy_with_grad(arrays["x"], arrays["t"])
    out = np.zeros((N, V), dtype.newbyteorder("S"))
    _, got = fx.cross_entropy_with_grad(arrays["x"], arrays["t"], out=out)
    assert got is out
    np.testing.assert_array_equal(out, want)
    x = _other_byte_order(arrays["x"])
    _, got = fx.cross_entropy_with_grad(x, arrays["t"], inplace=True)
    assert got is x and x.dtype.byteorder != "="
    np.testing.assert_array_equal(x, want)


# --- option arrays in half precision ------------------------------------------------------------

OPTION_ARRAYS = {
    "weight": lambda a, w: fx.cross_entropy_with_grad(a["x"], a["t"], weight=w),
    "weight probs": lambda a, w: fx.cross_entropy(a["x"], a["q"], weight=w),
    "grad_output": lambda a, w: fx.cross_entropy_with_grad(a["x"], a["t"], reduction="none",
                                                           grad_output=w[:N]),
    "pos_weight": lambda a, w: fx.binary_cross_entropy_with_logits(a["x"], a["y"], pos_weight=w),
    "binary weight": lambda a, w: fx.binary_cross_entropy(a["p"], a["y"], weight=w),
    "from_probs weight": lambda a, w: fx.cross_entropy_from_probs(a["p"], a["t"], weight=w),
    "sample_weight": lambda a, w: fx.cross_entropy_from_probs(a["p"], a["t"],
                                                              sample_weight=w[:N]),
    "ce_weight": lambda a, w: fx.linear_cross_entropy(a["h"], a["W"], a["t"], ce_weight=w),
}


@pytest.mark.parametrize("name", list(OPTION_ARRAYS))
@pytest.mark.parametrize("half", [BF16, F16], ids=["bfloat16", "float16"])
def test_option_arrays_in_half_precision(rng, name, half):
    """Bug: class weights in bfloat16 were refused ('expected a real (floating) dtype'), where
    PyTorch takes them. Every option array takes half precision: the same values in float32
    give the same results."""
    arrays = _arrays(rng, F32)
    w = rng.uniform(0.5, 2.0, V).astype(half)
    _same(OPTION_ARRAYS[name](arrays, w), OPTION_ARRAYS[name](arrays, w.astype(F32)))


@pytest.mark.parametrize("value, match", [
    (np.array(["a"] * V), "must be an array of real numbers"),
    (np.ones(V, bool), "must be an array of real numbers"),
    (np.ones(V, np.complex64), "must be an array of real numbers"),
    (np.ones(3), "does not broadcast"),
])
def test_option_arrays_that_are_not_real_numbers_name_the_argument(rng, value, match):
    """Bug: a string or wrong-length pos_weight / sample_weight got NumPy's broadcast or
    float-conversion message, which names no argument."""
    arrays = _arrays(rng, F32)
    exc = ValueError if "broadcast" in match else TypeError
    with pytest.raises(exc, match=f"pos_weight .*{match}|pos_weight has"):
        fx.binary_cross_entropy_with_logits(arrays["x"], arrays["y"], pos_weight=value)
    with pytest.raises((TypeError, ValueError), match="sample_weight"):
        fx.cross_entropy_from_probs(arrays["p"], arrays["t"], sample_weight=value[:N])
