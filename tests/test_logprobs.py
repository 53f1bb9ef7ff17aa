"""fastxent.torch.linear_logprobs: per-token log-probabilities and entropy with their gradients,
against float64 autograd through the materialised logits."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import fastxent.torch as fxt  # noqa: E402

pytestmark = pytest.mark.torch


def _problem(seed, lead, h, v, dtype=torch.float64, bias=True, ignored=0.2):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*lead, h, generator=g, dtype=torch.float64)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64)
    b = torch.randn(v, generator=g, dtype=torch.float64) if bias else None
    t = torch.randint(0, v, lead, generator=g)
    t[torch.rand(lead, generator=g) < ignored] = -100
    leaves = [a.to(dtype).requires_grad_() if a is not None else None
              for a in (hidden, weight, b)]
    ups = torch.randn(2, *lead, generator=g, dtype=torch.float64)
    return leaves, t, ups


def _reference(hidden, weight, b, t, softcap, temperature):
    """float64 autograd: (log p[t] and entropy, 0 where ignored)."""
    x = hidden.double() @ weight.double().T
    if b is not None:
        x = x + b.double()
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    logp = torch.log_softmax(x / temperature, -1)
    counted = t != -100
    lp = torch.where(counted, logp.gather(-1, t.clamp(min=0)[..., None])[..., 0], 0.0)
    ent = torch.where(counted, -(logp.exp() * logp).sum(-1), 0.0)
    return lp, ent


def _grads(outputs, ups, leaves):
    total = sum((o.double() * u).sum() for o, u in zip(outputs, ups))
    present = [a for a in leaves if a is not None]
    return torch.autograd.grad(total, present)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 30), v=st.integers(2, 200),
       chunk=st.one_of(st.none(), st.integers(1, 8)), bias=st.booleans(),
       softcap=st.one_of(st.none(), st.floats(0.5, 20.0)),
       temperature=st.sampled_from([1.0, 0.7, 1.6]), entropy=st.booleans())
def test_values_and_gradients_equal_float64_autograd(seed, n, v, chunk, bias, softcap,
                                                     temperature, entropy):
    leaves, t, ups = _problem(seed, (n,), 8, v, bias=bias)
    out = fxt.linear_logprobs(*leaves[:2], t, leaves[2], temperature=temperature,
                              softcap=softcap, return_entropy=entropy, chunk_size=chunk)
    out = out if entropy else (out,)
    ref = _reference(*leaves, t, softcap, temperature)[:len(out)]
    for o, r in zip(out, ref):
        assert o.dtype == torch.float64
        torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)
    for g, r in zip(_grads(out, ups, leaves), _grads(ref, ups, leaves)):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lower_precision(dtype):
    leaves, t, ups = _problem(1, (3, 7), 16, 300, dtype=dtype)
    out = fxt.linear_logprobs(*leaves[:2], t, leaves[2], return_entropy=True, softcap=5.0,
                              chunk_size=4)
    assert all(o.dtype == torch.float32 and o.shape == (3, 7) for o in out)
    ref = _reference(*leaves, t, 5.0, 1.0)
    # float32: the products' rounding; bfloat16: logits rounded to bfloat16 in the products
    tol = 2e-5 if dtype == torch.float32 else 0.1
    for o, r in zip(out, ref):
        torch.testing.assert_close(o.double(), r, rtol=0, atol=tol)
    for g, r in zip(_grads(out, ups, leaves), _grads(ref, ups, leaves)):
        assert g.dtype == dtype
        scale = r.abs().max().item()
        torch.testing.assert_close(g.double(), r.double(), rtol=0, atol=tol * scale)


def test_ignored_tokens_and_partial_gradients():
    leaves, t, ups = _problem(2, (12,), 8, 50, ignored=0.5)
    hidden, weight, b = leaves
    weight.requires_grad_(False)  # a frozen head: no gradient of it
    lp, ent = fxt.linear_logprobs(hidden, weight, t, b, return_entropy=True)
    ignored = t == -100
    assert ignored.any()
    assert (lp[ignored] == 0).all() and (ent[ignored] == 0).all()
    gh, gb = torch.autograd.grad(lp.sum(), (hidden, b))  # the entropy's gradient not asked
    ref = _reference(hidden, weight, b, t, None, 1.0)
    rh, rb = torch.autograd.grad(ref[0].sum(), (hidden, b))
    torch.testing.assert_close(gh, rh, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gb, rb, rtol=1e-10, atol=1e-12)
    assert (gh[ignored] == 0).all()
    all_ignored = fxt.linear_logprobs(hidden, weight, torch.full((12,), -100), b)
    assert (all_ignored == 0).all()


def test_arguments_are_checked():
    (hidden, weight, b), t, _ = _problem(3, (4,), 8, 10)
    with pytest.raises(ValueError, match="temperature"):
        fxt.linear_logprobs(hidden, weight, t, temperature=-1.0)
    with pytest.raises(ValueError, match="softcap"):
        fxt.linear_logprobs(hidden, weight, t, softcap=0.0)
    with pytest.raises(TypeError, match="class indices"):
        fxt.linear_logprobs(hidden, weight, torch.zeros(4, 10))
    with pytest.raises(IndexError):
        fxt.linear_logprobs(hidden, weight, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="chunk_size"):
        fxt.linear_logprobs(hidden, weight, t, chunk_size=0)


def test_torch_compile_traces_through():
    leaves, t, ups = _problem(4, (3, 5), 8, 40)

    def step(h, w, bias, target):
        lp, ent = fxt.linear_logprobs(torch.tanh(h), w, target, bias, return_entropy=True,
                                      temperature=0.9, chunk_size=4)
        return (lp * 2.0).sum() + ent.sum() * 0.01

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    refs = [a.detach().clone().requires_grad_() for a in leaves]
    out = compiled(*leaves, t)
    ref = step(*refs, t)
    out.backward()
    ref.backward()
    torch.testing.assert_close(out, ref)
    for a, r in zip(leaves, refs):
        torch.testing.assert_close(a.grad, r.grad)
