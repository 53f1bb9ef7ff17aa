"""fastxent.dask: Dask arrays chunked along rows and along the vocabulary, evaluated on a
``dask.distributed.LocalCluster`` of several worker processes, give the in-memory results."""

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

from conftest import BF16, F32, random_logits, random_targets  # noqa: E402
from test_tokens import assert_stats_close  # noqa: E402

import fastxent as fx  # noqa: E402
import fastxent.dask as fxd  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=3, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as c:
        yield c


CHUNKS = {
    "rows": (100, 700),
    "vocabulary": (300, 128),
    "both-uneven": ((50, 130, 120), (1, 300, 99, 300)),
}


@pytest.mark.parametrize("chunks", CHUNKS)
def test_token_stats_match_in_memory(client, rng, chunks):
    x = random_logits(rng, (300, 700), F32)
    x[7, [3, 650]] = 40.0  # a tie across vocabulary shards: the first wins
    x[8, 500] = np.nan
    t = random_targets(rng, (300,), 700, ignore_index=-100)
    t[7:9] = [5, 1]
    got = fxd.token_stats(da.from_array(x, chunks=CHUNKS[chunks]), t)
    assert isinstance(got.nll, da.Array)
    got = fx.TokenStats(*(a.compute() for a in got))
    assert got.argmax[7] == 3 and np.isnan(got.nll[8]) and got.argmax[8] == 500
    assert_stats_close(got, fx.token_stats(x, t, backend="numpy"), F32)


def test_evaluate_three_d_bfloat16_with_sequences(client, rng):
    x = random_logits(rng, (6, 50, 400), BF16)
    t = random_targets(rng, (6, 50), 400, ignore_index=-100)
    ids = np.repeat(np.arange(6)[:, None], 50, axis=1)
    logits = da.from_array(x, chunks=(2, 25, 150))
    got = fxd.evaluate(logits, da.from_array(t, chunks=(3, 50)), topk=(1, 2, 50),
                       sequence_ids=ids)
    ev = fx.Evaluator(topk=(1, 2, 50))
    ev.update(x, t, sequence_ids=np.arange(6))
    want = ev.result()
    assert (got.tokens, got.accuracy, got.topk) == (want.tokens, want.accuracy, want.topk)
    for name in ("nll", "entropy", "mrr"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-6)
    np.testing.assert_array_equal(got.sequences.tokens, want.sequences.tokens)
    np.testing.assert_allclose(got.sequences.nll, want.sequences.nll, rtol=1e-6)


def test_whole_row_chunks_give_the_in_memory_result_exactly(client, rng):
    x = random_logits(rng, (500, 300), F32)
    t = random_targets(rng, (500,), 300, ignore_index=-100)
    lazy = fxd.evaluate(da.from_array(x, chunks=(70, 300)), t, compute=False)
    ev = fx.Evaluator()
    ev.update(x, t)
    assert lazy.compute().result() == ev.result()


def test_errors(client, rng):
    x = random_logits(rng, (10, 20), F32)
    t = random_targets(rng, (10,), 20)
    with pytest.raises(TypeError, match="logits must be a dask array"):
        fxd.evaluate(x, t)
    with pytest.raises(ValueError, match="targets has shape"):
        fxd.token_stats(da.from_array(x), t[:5])
    with pytest.raises(TypeError, match="integer class indices"):
        fxd.token_stats(da.from_array(x), t.astype(np.float32))
    t[4] = 20
    with pytest.raises(IndexError, match="= 20 is out of range"):
        fxd.evaluate(da.from_array(x, chunks=(5, 10)), t)


def test_from_npy_files_with_vocabulary_shards(client, rng, tmp_path):
    xs = [random_logits(rng, (n, 3, 200), F32) for n in (7, 12)]
    t = random_targets(rng, (19, 3), 200, ignore_index=-100)
    for i, x in enumerate(xs):
        np.save(tmp_path / f"part{i}.npy", x)
    files = [str(tmp_path / f"part{i}.npy") for i in range(2)]
    logits = fxd.from_npy(files, rows=5, columns=64)
    assert logits.shape == (19, 3, 200) and logits.chunks[0] == (5, 2, 5, 5, 2)
    assert logits.chunks[-1] == (64, 64, 64, 8)
    whole = np.concatenate(xs)
    np.testing.assert_array_equal(logits.compute(), whole)
    got = fxd.evaluate(logits, t, topk=(1, 10))
    ev = fx.Evaluator(topk=(1, 10))
    ev.update(whole, t)
    want = ev.result()
    assert (got.tokens, got.topk, got.accuracy) == (want.tokens, want.topk, want.accuracy)
    np.testing.assert_allclose(got.nll, want.nll, rtol=1e-6)
    b = random_logits(rng, (4, 50), BF16)
    np.save(tmp_path / "b.npy", b)  # raw 2-byte values
    np.testing.assert_array_equal(fxd.from_npy(str(tmp_path / "b.npy"),
                                               dtype="bfloat16").compute(), b)
    with pytest.raises(ValueError, match="unlike"):
        fxd.from_npy([files[0], str(tmp_path / "b.npy")])
