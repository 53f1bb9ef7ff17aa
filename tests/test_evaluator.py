"""fastxent.Evaluator: corpus figures accumulated over batches, against the same figures computed
at once from the per-token statistics; independent of batch order and split; mergeable;
per-sequence figures; exact sums."""

import math
import pickle

import numpy as np
import pytest
from conftest import F32, random_logits, random_targets

import fastxent as fx
from fastxent.evaluation.evaluator import ExactSum


def corpus(rng, n=600, v=300, dtype=F32):
    x = random_logits(rng, (n, v), dtype)
    t = random_targets(rng, (n,), v, ignore_index=-100)
    return x, t


def expected(x, t, topk):
    st = fx.token_stats(x, t, backend="numpy")
    valid = t != -100
    rank = st.rank[valid]
    return dict(tokens=int(valid.sum()), nll=st.nll[valid].mean(),
                accuracy=np.mean(st.argmax[valid] == t[valid]),
                topk={k: np.mean(rank < k) for k in topk}, entropy=st.entropy[valid].mean(),
                mrr=np.mean(1.0 / (rank + 1)))


def test_figures_match_a_direct_computation(rng):
    x, t = corpus(rng)
    ev = fx.Evaluator(topk=(5, 1, 10))
    for lo in range(0, len(t), 128):
        stats = ev.update(x[lo:lo + 128], t[lo:lo + 128])
        assert isinstance(stats, fx.TokenStats)
    r = ev.result()
    want = expected(x, t, (1, 5, 10))
    assert r.tokens == want["tokens"]
    assert list(r.topk) == [1, 5, 10]
    for name in ("nll", "accuracy", "entropy", "mrr"):
        np.testing.assert_allclose(getattr(r, name), want[name], rtol=1e-6, err_msg=name)
    for k in r.topk:
        assert r.topk[k] == pytest.approx(want["topk"][k])
    assert r.perplexity == pytest.approx(math.exp(want["nll"]))
    assert r.bits_per_token == pytest.approx(want["nll"] / math.log(2))
    text = str(r)
    assert "perplexity" in text and "top-5 accuracy" in text
    assert r.as_dict()["topk"]["10"] == r.topk[10]


def test_batch_order_and_split_do_not_change_the_result(rng):
    x, t = corpus(rng)
    results = []
    for step, order in [(100, None), (100, "reversed"), (37, "shuffled")]:
        starts = list(range(0, len(t), step))
        if order == "reversed":
            starts.reverse()
        elif order == "shuffled":
            rng.shuffle(starts)
        ev = fx.Evaluator()
        for lo in starts:
            ev.update(x[lo:lo + step], t[lo:lo + step])
        results.append(ev.result())
    # sums are exact: equal to the last bit, whatever the order and the batch size
    assert results[0] == results[1] == results[2]


def test_merged_evaluators_equal_one(rng):
    x, t = corpus(rng)
    whole = fx.Evaluator(topk=(1, 3))
    whole.update(x, t, sequence_ids=np.arange(len(t)) // 50)
    parts = [fx.Evaluator(topk=(1, 3)) for _ in range(3)]
    for i, lo in enumerate(range(0, len(t), 200)):
        parts[i].update(x[lo:lo + 200], t[lo:lo + 200],
                        sequence_ids=np.arange(lo, lo + 200) // 50)
    merged = pickle.loads(pickle.dumps(parts[2])).merge(parts[0]).merge(parts[1])
    a, b = merged.result(), whole.result()
    assert a == b
    np.testing.assert_array_equal(a.sequences.nll, b.sequences.nll)
    with pytest.raises(ValueError, match="differ in topk"):
        whole.merge(fx.Evaluator(topk=(1,)))


def test_per_sequence_figures(rng):
    x = random_logits(rng, (4, 30, 200), F32)
    t = random_targets(rng, (4, 30), 200, ignore_index=-100)
    t[3] = -100  # a sequence of padding only
    ev = fx.Evaluator()
    ev.update(x[:, :20], t[:, :20], sequence_ids=np.array([7, 8, 9, 10]))  # one id per row
    ev.update(x[:, 20:], t[:, 20:], sequence_ids=np.array([7, 8, 9, 10]))  # sequences go on
    seq = ev.result().sequences
    nll = fx.token_stats(x, t).nll
    valid = t != -100
    np.testing.assert_array_equal(seq.ids, [7, 8, 9, 10])
    np.testing.assert_array_equal(seq.tokens, valid.sum(axis=1))
    np.testing.assert_allclose(seq.nll[:3], nll[:3].sum(axis=1) / valid[:3].sum(axis=1),
                               rtol=1e-12)
    assert np.isnan(seq.nll[3])
    np.testing.assert_allclose(seq.perplexity[:3], np.exp(seq.nll[:3]))
    per_token = fx.Evaluator()
    per_token.update(x, t, sequence_ids=np.repeat(np.array([[7], [8], [9], [10]]), 30, axis=1))
    np.testing.assert_allclose(per_token.result().sequences.nll, seq.nll, rtol=1e-12)
    with pytest.raises(ValueError, match="sequence_ids has shape"):
        ev.update(x, t, sequence_ids=np.arange(3))


def test_empty_and_bad_arguments():
    r = fx.Evaluator().result()
    assert r.tokens == 0 and math.isnan(r.nll) and r.sequences is None
    with pytest.raises(ValueError, match="topk must hold positive integers"):
        fx.Evaluator(topk=(0, 5))


@pytest.mark.parametrize("ids", [np.array([0.5, 1.0]), np.arange(3)], ids=["float", "shape"])
def test_a_failed_update_leaves_nothing_counted(rng, ids):
    """Bug: ev.update(x, t, sequence_ids=np.array([0.5, 1.])) raised TypeError, yet the batch
    was counted (result().tokens == 2). Everything is checked before anything is added."""
    ev = fx.Evaluator(topk=(1, 2))
    x = rng.standard_normal((2, 5)).astype(np.float32)
    ev.update(x, np.array([1, 2]), sequence_ids=np.array([0, 1]))
    before = ev.result()
    with pytest.raises((TypeError, ValueError), match="sequence_ids"):
        ev.update(x, np.array([3, 4]), sequence_ids=ids)
    with pytest.raises(ValueError, match="stats.nll has shape"):
        ev.add(fx.token_stats(x, np.array([3, 4])), np.array([3, 4, 0]))
    after = ev.result()
    assert (after.tokens, after.nll, after.topk, after.mrr) == (
        before.tokens, before.nll, before.topk, before.mrr)
    np.testing.assert_array_equal(after.sequences.ids, before.sequences.ids)


def test_topk_as_one_integer_and_bad_values():
    """Bug: Evaluator(topk=5) raised "'int' object is not iterable"; one k is taken as such,
    and everything else gets a message that names topk."""
    assert fx.Evaluator(topk=5).topk == (5,)
    assert fx.Evaluator(topk=np.int64(3)).topk == (3,)
    for bad, exc in ((1.5, TypeError), ((2.0,), ValueError), ((True,), ValueError),
                     ((), ValueError), ("5", ValueError)):
        with pytest.raises(exc, match="topk must hold positive integers"):
            fx.Evaluator(topk=bad)
    with pytest.raises(ValueError, match="backend="):
        fx.Evaluator(backend="gpu")
    with pytest.raises(TypeError, match="ignore_index must be an integer"):
        fx.Evaluator(ignore_index=None)


def test_exact_sum_is_order_independent():
    rng = np.random.default_rng(1)
    values = (rng.standard_normal(2000) * 10.0 ** rng.integers(-20, 20, 2000)).tolist()
    want = math.fsum(values)
    for _ in range(3):
        rng.shuffle(values)
        s = ExactSum()
        for v in values:
            s.add(v)
        assert s.value == want
    assert ExactSum().add(1e308).add(1e308).value == math.inf
    assert math.isnan(ExactSum().add(math.inf).add(-math.inf).add(1.0).value)
    half = ExactSum().add(0.1)
    assert half.merge(ExactSum().add(0.2)).value == math.fsum([0.1, 0.2])
