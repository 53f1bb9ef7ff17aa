"""``fastxent eval``: saved logits (.npy, .npz stored or compressed, bfloat16) scored in batches
give the figures of an in-memory Evaluator; per-token and per-sequence files; clear errors for
missing, mismatched and truncated files; bounded memory on a file many batches long."""

import json
import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from conftest import F32, random_logits, random_targets

import fastxent as fx
from fastxent.cli import main


@pytest.fixture
def saved(tmp_path, rng):
    x = random_logits(rng, (3, 40, 500), F32)
    t = random_targets(rng, (3, 40), 500, ignore_index=-100)
    np.save(tmp_path / "logits.npy", x)
    np.save(tmp_path / "targets.npy", t)
    np.savez(tmp_path / "both.npz", logits=x, targets=t)
    np.savez_compressed(tmp_path / "packed.npz", logits=x, targets=t)
    return tmp_path, x, t


def run_json(capsys, *args):
    assert main(["eval", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def want(x, t, topk=(1, 5, 10)):
    ev = fx.Evaluator(topk)
    ev.update(x, t)
    return ev.result().as_dict()


@pytest.mark.parametrize("layout", ["npy", "npz", "compressed"])
def test_file_layouts_give_the_in_memory_figures(saved, capsys, layout):
    d, x, t = saved
    files = {"npy": (d / "logits.npy", d / "targets.npy"),
             "npz": (d / "both.npz", d / "both.npz"),
             "compressed": (f"{d / 'packed.npz'}:logits", d / "packed.npz")}[layout]
    # 30 KiB batches: 15 rows of 500 float32 each, so 8 batches that end mid-sequence
    got = run_json(capsys, *files, "--batch-mb", 30 / 1024, "--topk", "1,3")
    assert got["batch_rows"] == 15 and got["rows"] == 120 and got["classes"] == 500
    expect = want(x, t, (1, 3))
    assert {k: got[k] for k in expect} == expect  # exact sums: equal whatever the batches
    assert got["sequences"] == 3 and got["peak_rss_mib"] > 0


def test_text_summary_and_progress(saved, capsys):
    d, x, t = saved
    assert main(["eval", str(d / "logits.npy"), str(d / "targets.npy"), "--progress",
                 "always"]) == 0
    out, err = capsys.readouterr()
    assert "perplexity" in out and "top-10 accuracy" in out and "peak memory" in out
    assert "100.0%" in err


def test_per_token_and_per_sequence_files(saved, capsys):
    d, x, t = saved
    run_json(capsys, d / "both.npz", d / "both.npz", "--batch-mb", 0.01, "--per-token",
             d / "tok.npy", "--per-sequence", d / "seq.npy")
    tok = np.load(d / "tok.npy")
    st = fx.token_stats(x, t)
    assert tok.shape == t.shape
    for name in fx.TokenStats._fields:
        np.testing.assert_array_equal(tok[name], getattr(st, name))
    seq = np.load(d / "seq.npy")
    valid = t != -100
    np.testing.assert_array_equal(seq["id"], [0, 1, 2])
    np.testing.assert_array_equal(seq["tokens"], valid.sum(axis=1))
    np.testing.assert_allclose(seq["nll"], np.where(valid, st.nll, 0).sum(1) / valid.sum(1),
                               rtol=1e-12)


def test_bfloat16_saved_by_numpy(tmp_path, rng, capsys):
    x = random_logits(rng, (50, 300), ml_dtypes.bfloat16)
    t = random_targets(rng, (50,), 300)
    np.save(tmp_path / "x.npy", x)  # NumPy writes raw 2-byte values ('<V2')
    np.save(tmp_path / "t.npy", t)
    with pytest.raises(SystemExit):
        main(["eval", str(tmp_path / "x.npy"), str(tmp_path / "t.npy")])
    assert "pass --dtype bfloat16" in capsys.readouterr().err
    got = run_json(capsys, tmp_path / "x.npy", tmp_path / "t.npy", "--dtype", "bfloat16")
    assert got["dtype"] == "bfloat16"
    assert got["nll"] == want(x, t)["nll"]


def _error(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(["eval", *map(str, args)])
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_errors_say_what_is_wrong(saved, capsys):
    d, x, t = saved
    assert "no such file" in _error(capsys, d / "missing.npy", d / "targets.npy")
    np.save(d / "short.npy", t[:, :5])
    assert "shapes do not match" in _error(capsys, d / "logits.npy", d / "short.npy")
    np.save(d / "ft.npy", t.astype(np.float32))
    assert "targets must be integer" in _error(capsys, d / "logits.npy", d / "ft.npy")
    np.save(d / "il.npy", t[..., None].repeat(3, -1))
    assert "logits must be float16" in _error(capsys, d / "il.npy", d / "targets.npy")
    np.savez(d / "many.npz", a=x, b=x)
    assert "name one as" in _error(capsys, d / "many.npz", d / "targets.npy")
    assert "has no array 'c'" in _error(capsys, f"{d / 'many.npz'}:c", d / "targets.npy")
    data = (d / "logits.npy").read_bytes()
    (d / "cut.npy").write_bytes(data[:len(data) // 2])
    assert "is truncated" in _error(capsys, d / "cut.npy", d / "targets.npy")
    (d / "junk.npy").write_bytes(b"not an array")
    assert "is not a valid .npy array" in _error(capsys, d / "junk.npy", d / "targets.npy")
    np.save(d / "flat.npy", x.reshape(120, 500))
    np.save(d / "flat_t.npy", t.reshape(120))
    assert "--per-sequence needs (B, T, V)" in _error(
        capsys, d / "flat.npy", d / "flat_t.npy", "--per-sequence", d / "s.npy")
    t_bad = t.copy()
    t_bad[1, 2] = 500
    np.save(d / "bad_t.npy", t_bad)
    assert "is out of range" in _error(capsys, d / "logits.npy", d / "bad_t.npy")
    try:
        from numba import cuda
        gpu = cuda.is_available()
    except ImportError:
        gpu = False
    if not gpu:
        assert "backend='cuda' is not usable here" in _error(
            capsys, d / "logits.npy", d / "targets.npy", "--backend", "cuda")
    assert "--topk must be integers" in _error(capsys, d / "logits.npy", d / "targets.npy",
                                               "--topk", "1,x")


def test_user_errors_are_one_line_with_status_2(saved, capsys):
    """Bug: a directory given as the logits file printed a traceback (IsADirectoryError, exit
    status 1); --batch-mb 0 and negative values were accepted silently."""
    d, x, t = saved
    assert "is a directory" in _error(capsys, d, d / "targets.npy")
    assert "is a directory" in _error(capsys, d / "logits.npy", d)
    for mb in ("0", "-1", "nan", "inf", "x"):
        assert "--batch-mb: expected a positive number" in _error(
            capsys, d / "logits.npy", d / "targets.npy", "--batch-mb", mb)
    err = _error(capsys, d / "logits.npy", d / "targets.npy", "--per-token", d)
    assert err.strip().splitlines()[-1].startswith("fastxent eval: error:")
    assert "Traceback" not in err
    # a run that fails half-way leaves no partial --per-token file, nor replaces an earlier one
    t_bad = t.copy()
    t_bad[2, 39] = 500
    np.save(d / "late_bad.npy", t_bad)
    (d / "tokens.npy").write_bytes(b"earlier")
    assert "is out of range" in _error(capsys, d / "logits.npy", d / "late_bad.npy",
                                       "--batch-mb", "0.01", "--per-token", d / "tokens.npy")
    assert (d / "tokens.npy").read_bytes() == b"earlier"
    assert not (d / "tokens.npy.partial").exists()


@pytest.mark.parametrize("dtype", ["<f2", ">f2", ">f4", ">f8"])
def test_files_in_either_byte_order(tmp_path, rng, capsys, dtype):
    """Bug: a big-endian float16 file gave a NaN mean NLL, with exit status 0. Files in the
    other byte order are read as what they hold."""
    x = random_logits(rng, (50, 300), F32).astype(np.dtype(dtype).newbyteorder("="))
    t = random_targets(rng, (50,), 300, ignore_index=-100)
    np.save(tmp_path / "x.npy", x.astype(dtype))
    np.save(tmp_path / "t.npy", t.astype(t.dtype.newbyteorder(">")))
    got = run_json(capsys, tmp_path / "x.npy", tmp_path / "t.npy")
    expected = want(x, t)
    for key in ("tokens", "nll", "accuracy", "entropy", "mrr"):
        assert got[key] == pytest.approx(expected[key], rel=1e-12)
    dname = np.dtype(dtype).name
    same = run_json(capsys, tmp_path / "x.npy", tmp_path / "t.npy", "--dtype", dname)
    assert same["nll"] == got["nll"]
    if dtype == ">f2":  # the bytes of a big-endian float16 are no little-endian bfloat16
        assert "the other byte order" in _error(capsys, tmp_path / "x.npy", tmp_path / "t.npy",
                                                "--dtype", "bfloat16")


def test_truncated_compressed_member(saved, capsys):
    d, x, t = saved
    data = (d / "packed.npz").read_bytes()
    (d / "cut.npz").write_bytes(data[:len(data) * 2 // 3])
    err = _error(capsys, d / "cut.npz", d / "targets.npy")
    assert "error:" in err


def _peak_mib(logits, targets, batch_mb):
    out = subprocess.run([sys.executable, "-m", "fastxent", "eval", str(logits), str(targets),
                          "--batch-mb", str(batch_mb), "--json"], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)["peak_rss_mib"]


def test_a_file_many_batches_long_streams_in_bounded_memory(tmp_path):
    """256 MiB of logits in 8 MiB batches: the process grows by about a batch, not the file."""
    n, v = 2048, 32768
    big = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32,
                                    shape=(n, v))
    rng = np.random.default_rng(0)
    for lo in range(0, n, 256):
        big[lo:lo + 256] = rng.standard_normal((256, v), dtype=np.float32)
    big.flush()
    del big
    np.save(tmp_path / "t.npy", rng.integers(0, v, n))
    np.save(tmp_path / "small.npy", np.zeros((8, v), np.float32))
    np.save(tmp_path / "small_t.npy", np.zeros(8, np.int64))
    baseline = _peak_mib(tmp_path / "small.npy", tmp_path / "small_t.npy", 8)
    peak = _peak_mib(tmp_path / "big.npy", tmp_path / "t.npy", 8)
    assert os.path.getsize(tmp_path / "big.npy") > 256 * 2**20
    assert peak - baseline < 64, (peak, baseline)
