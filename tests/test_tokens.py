"""fastxent.token_stats: per-token NLL, log-sum-exp, entropy, argmax and target rank, against an
oracle written from the definitions with full float64 arrays (and against PyTorch), on fresh
random inputs, every dtype, both host backends, the few-rows path that cuts rows into chunks,
vocabulary shards merged by ``merge_partials``, and non-finite logits."""

import numpy as np
import pytest
from conftest import (BACKENDS, BF16, DTYPES, F16, F32, F64, dtype_id, log_softmax64,
                      random_logits, random_targets, to64)
from hypothesis import given, settings
from hypothesis import strategies as st

import fastxent as fx
from fastxent.core.codes import ABSENT, IGNORED
from fastxent.core import partials

RTOL = {F32: 1e-6, F16: 1e-6, BF16: 1e-6, F64: 1e-12}


def oracle(logits, targets, ignore_index=-100):
    """The statistics from ``log_softmax`` in float64, as the definitions read."""
    v = logits.shape[-1]
    y = to64(logits).reshape(-1, v)
    t = np.asarray(targets).reshape(-1)
    valid = t != ignore_index
    ts = np.where(valid, t, 0)
    rows = np.arange(y.shape[0])
    logp = log_softmax64(y)
    with np.errstate(invalid="ignore", over="ignore"):
        lse = (y - logp)[rows, np.argmax(y, axis=-1)]
        lse = np.where(np.isnan(lse), np.max(y, axis=-1), lse)  # (±inf rows: y - logp is NaN)
        lse = np.where(np.isnan(y).any(axis=-1), np.nan, lse)
        p = np.exp(logp)
        entropy = -np.sum(np.where(p > 0, p * logp, 0.0), axis=-1)
        entropy = np.where(np.isfinite(lse), entropy, np.nan)
        nll = lse - y[rows, ts]
        rank = np.sum(y > y[rows, ts][:, None], axis=-1)
    lead = np.shape(targets)
    pick = lambda a, other: np.where(valid, a, other).reshape(lead)  # noqa: E731
    return (pick(nll, 0.0), pick(lse, np.nan), pick(entropy, np.nan),
            pick(np.argmax(y, axis=-1), -1), pick(rank, -1))


def assert_stats_close(got, want, dtype):
    assert isinstance(got, fx.TokenStats)
    rtol = RTOL[np.dtype(dtype)]
    for name, a, b in zip(fx.TokenStats._fields, got, want):
        assert a.shape == b.shape, name
        if name in ("argmax", "rank"):
            assert a.dtype == np.int64
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            assert a.dtype == np.float64
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol, equal_nan=True, err_msg=name)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 9), v=st.integers(1, 5000),
       scale=st.sampled_from([0.1, 3.0, 30.0, 1e4]), dtype=st.sampled_from(DTYPES),
       backend=st.sampled_from(BACKENDS), masked=st.booleans())
def test_random_against_oracle(seed, n, v, scale, dtype, backend, masked):
    rng = np.random.default_rng(seed)
    x = random_logits(rng, (n, v), dtype, scale)
    if masked and v > 1:
        x[:, rng.integers(0, v, v // 3)] = -np.inf
    t = random_targets(rng, (n,), v, ignore_index=-100)
    before = x.copy()
    got = fx.token_stats(x, t, backend=backend)
    np.testing.assert_array_equal(x, before)  # the input is not modified
    assert_stats_close(got, oracle(x, t), dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_shape_and_ignore_index(rng, dtype, backend):
    x = random_logits(rng, (3, 5, 700), dtype)
    t = random_targets(rng, (3, 5), 700, ignore_index=7)
    got = fx.token_stats(x, t, ignore_index=7, backend=backend)
    assert got.nll.shape == (3, 5)
    assert_stats_close(got, oracle(x, t, ignore_index=7), dtype)
    ignored = t == 7
    assert (got.nll[ignored] == 0).all() and (got.rank[ignored] == -1).all()
    assert np.isnan(got.entropy[ignored]).all() and (got.argmax[ignored] == -1).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_few_rows_cut_into_chunks_keep_the_first_maximum(backend):
    # one row of many classes is cut into chunks on several threads: the maximum appears in
    # several chunks, and the first one must win, as np.argmax
    rng = np.random.default_rng(0)
    v = 150_001
    x = random_logits(rng, (2, v), F32)
    x[0, [90_000, 20_000, 140_000]] = 50.0
    x[1, 149_000] = 60.0
    t = np.array([5, 149_000])
    got = fx.token_stats(x, t, backend=backend)
    assert list(got.argmax) == [20_000, 149_000] and got.rank[1] == 0
    assert_stats_close(got, oracle(x, t), F32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_logits(backend):
    x = np.zeros((5, 6), np.float32)
    x[0, 2] = np.nan  # NaN propagates to its row; argmax is the first NaN, as np.argmax
    x[1, :] = -np.inf  # nothing possible: lse -inf, NLL NaN (as PyTorch)
    x[2, 3] = np.inf  # lse +inf
    x[3, :4] = -np.inf  # masked classes
    t = np.array([1, 1, 0, 5, 0])
    got = fx.token_stats(x, t, backend=backend)
    assert_stats_close(got, oracle(x, t), F32)
    assert np.isnan(got.nll[0]) and got.argmax[0] == 2
    assert got.lse[1] == -np.inf and got.lse[2] == np.inf and got.nll[2] == np.inf
    np.testing.assert_allclose(got.entropy[3], np.log(2))
    assert np.isfinite(got.nll[4])


def test_vocabulary_shards_merge_to_the_whole(rng):
    """What ``fastxent.dask`` does with vocabulary-split chunks: partials of each shard (target
    logit and count where the target lives), then a second pass counting above the target's
    logit in the other shards."""
    from fastxent.kernels import cpu
    x = random_logits(rng, (40, 1000), F32)
    x[3, [10, 500]] = 30.0  # a tie across shards
    t = random_targets(rng, (40,), 1000, ignore_index=-100)
    codes = np.where(t < 0, IGNORED, t)
    edges = [0, 300, 301, 777, 1000]
    parts, counts = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        local = np.where((codes >= lo) & (codes < hi), codes - lo,
                         np.where(codes == IGNORED, IGNORED, ABSENT))
        parts.append(cpu.token_partials(np.ascontiguousarray(x[:, lo:hi]), local))
    stats, ints = partials.merge_partials(np.stack([p[0] for p in parts], 1),
                                         np.stack([p[1] for p in parts], 1), edges[:-1])
    for lo, hi in zip(edges[:-1], edges[1:]):
        local = np.where(codes == IGNORED, IGNORED, ABSENT)
        counts.append(cpu.token_partials(np.ascontiguousarray(x[:, lo:hi]), local, stats[:, 3])[1])
    ints[:, 1] = np.sum([c[:, 1] for c in counts], axis=0)
    got = fx.TokenStats(*partials.finish(stats, ints, t < 0))
    assert got.argmax[3] == 10
    assert_stats_close(got, oracle(x, t), F32)


def test_matches_pytorch():
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3000, generator=gen, dtype=torch.float64) * 4
    t = torch.randint(0, 3000, (64,), generator=gen)
    got = fx.token_stats(x.numpy(), t.numpy())
    np.testing.assert_allclose(got.nll, torch.nn.functional.cross_entropy(
        x, t, reduction="none").numpy(), rtol=1e-12)
    np.testing.assert_allclose(got.entropy, torch.distributions.Categorical(
        logits=x).entropy().numpy(), rtol=1e-12)
    np.testing.assert_array_equal(got.argmax, x.argmax(-1).numpy())
    top5 = (x.topk(5, dim=-1).indices == t[:, None]).any(-1).numpy()
    np.testing.assert_array_equal(got.rank < 5, top5)


def test_deterministic(rng):
    x = random_logits(rng, (3, 100_000), F32)
    t = random_targets(rng, (3,), 100_000)
    a, b = fx.token_stats(x, t), fx.token_stats(x, t)
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p, q)


def test_bad_input():
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(IndexError, match=r"targets\[1\] = 4 is out of range"):
        fx.token_stats(x, np.array([0, 4]))
    with pytest.raises(TypeError, match="integer class indices"):
        fx.token_stats(x, np.full((2, 4), 0.25, np.float32))
    with pytest.raises(ValueError, match="must not be empty"):
        fx.token_stats(np.zeros((2, 0), np.float32), np.array([-100, -100]))
    with pytest.raises(ValueError, match="backend='gpu' is not one of"):
        fx.token_stats(x, np.array([0, 1]), backend="gpu")


def test_torch_cpu_tensors_bfloat16_included():
    torch = pytest.importorskip("torch")
    x = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    t = torch.randint(0, 50, (6,), generator=torch.Generator().manual_seed(1))
    for dtype in (torch.float32, torch.bfloat16):
        got = fx.token_stats(x.to(dtype), t)
        want = oracle(x.to(dtype).float().numpy(), t.numpy())
        assert_stats_close(got, want, F32)
    ev = fx.Evaluator()
    ev.update(x.bfloat16(), t)
    assert ev.result().tokens == 6
