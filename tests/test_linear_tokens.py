"""linear_token_stats (NumPy and fastxent.torch): equal to token_stats on the materialised
logits, exactly in rank and argmax (float64, where the products round too little to reorder
classes), to float32 rounding in the rest."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastxent as fx


def _case(seed, n, h, v, dtype, bias=True, ignored=True):
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((n, h)).astype(dtype)
    weight = rng.standard_normal((v, h)).astype(dtype)
    b = rng.standard_normal(v).astype(dtype) if bias else None
    t = rng.integers(0, v, n)
    if ignored:
        t[rng.random(n) < 0.2] = -100
    return hidden, weight, b, t


def _materialised(hidden, weight, b, t, softcap=None, temperature=1.0):
    x = hidden.astype(np.float64) @ weight.T.astype(np.float64)
    if b is not None:
        x = x + b
    if softcap is not None:
        x = softcap * np.tanh(x / softcap)
    return fx.token_stats(x / temperature, t)


def _assert_equal(got, want, rtol):
    for name in ("argmax", "rank"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    for name in ("nll", "lse", "entropy"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=rtol,
                                   atol=rtol, err_msg=name)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), v=st.integers(2, 300),
       chunk=st.one_of(st.none(), st.integers(1, 9)), bias=st.booleans(),
       softcap=st.one_of(st.none(), st.floats(0.5, 30.0)),
       temperature=st.sampled_from([1.0, 0.6, 1.7]))
def test_equal_to_token_stats_of_the_logits(seed, n, v, chunk, bias, softcap, temperature):
    hidden, weight, b, t = _case(seed, n, 8, v, np.float64, bias)
    got = fx.linear_token_stats(hidden, weight, t, b, chunk_size=chunk, softcap=softcap,
                                temperature=temperature)
    _assert_equal(got, _materialised(hidden, weight, b, t, softcap, temperature), 1e-12)


def test_float32_shapes_and_ignored_tokens():
    hidden, weight, b, t = _case(1, 60, 16, 500, np.float32)
    hidden3, t3 = hidden.reshape(3, 20, 16), t.reshape(3, 20)
    got = fx.linear_token_stats(hidden3, weight, t3, b, chunk_size=7)
    assert all(f.shape == (3, 20) for f in got)
    want = _materialised(hidden, weight, b, t)
    _assert_equal(type(got)(*(f.reshape(-1) for f in got)), want, 2e-6)
    ignored = t3 == -100
    assert ignored.any()
    assert (got.nll[ignored] == 0).all() and np.isnan(got.lse[ignored]).all()
    assert (got.rank[ignored] == -1).all() and (got.argmax[ignored] == -1).all()


def test_every_token_ignored():
    hidden, weight, b, t = _case(2, 5, 4, 10, np.float32)
    got = fx.linear_token_stats(hidden, weight, np.full(5, -100), b)
    assert (got.rank == -1).all() and np.isnan(got.entropy).all()


def test_arguments_are_checked():
    hidden, weight, b, t = _case(3, 4, 4, 10, np.float32)
    with pytest.raises(ValueError, match="temperature"):
        fx.linear_token_stats(hidden, weight, t, temperature=0.0)
    with pytest.raises(ValueError, match="softcap"):
        fx.linear_token_stats(hidden, weight, t, softcap=-1.0)
    with pytest.raises(ValueError, match="chunk_size"):
        fx.linear_token_stats(hidden, weight, t, chunk_size=(2, 5))
    with pytest.raises(TypeError, match="class indices"):
        fx.linear_token_stats(hidden, weight, np.zeros((4, 10), np.float32))
    with pytest.raises(IndexError):
        fx.linear_token_stats(hidden, weight, np.array([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="weight"):
        fx.linear_token_stats(hidden, weight[:, :3], t)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_torch_tensors(dtype):
    torch = pytest.importorskip("torch")
    import fastxent.torch as fxt

    hidden, weight, b, t = _case(4, 50, 16, 400, np.float32)
    th, tw, tb = (torch.from_numpy(a).to(getattr(torch, dtype)) for a in (hidden, weight, b))
    tt = torch.from_numpy(t)
    got = fxt.linear_token_stats(th.reshape(5, 10, 16), tw, tt.reshape(5, 10), tb,
                                 chunk_size=6, softcap=8.0)
    assert got.rank.shape == (5, 10)
    got = type(got)(*(f.reshape(-1) for f in got))
    if dtype == "bfloat16":  # the logits rounded to bfloat16 (ties reorder): the losses only
        want = _materialised(*(a.double().numpy() for a in (th, tw, tb)), t, softcap=8.0)
        np.testing.assert_allclose(got.nll, want.nll, atol=0.1)
        return
    want = _materialised(hidden, weight, b, t, softcap=8.0)
    _assert_equal(got, want, 1e-12 if dtype == "float64" else 3e-6)
