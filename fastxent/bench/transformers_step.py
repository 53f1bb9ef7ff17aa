"""Time and peak memory of one training step and one evaluation of a Hugging Face causal LM,
its own against patched by :func:`fastxent.transformers.patch` (docs/transformers.md).

``python -m fastxent.bench.transformers_step [--vocab V ...] [--batch B] [--seq T]`` builds a
small random Llama (``--hidden`` wide, two layers) for each vocabulary, and in a fresh process per
case runs a warm-up, then measures the growth of the peak RSS over one call (the logits and their
gradient show there) and the median time of ``--repeat`` more. Prints a Markdown table.

- ``train``: ``model(input_ids, labels).loss.backward()`` (gradients set to None before each).
- ``eval``: the same under ``torch.no_grad()`` (the loss alone, as an evaluation loop takes it).
- ``stats``: the token statistics of an evaluation (NLL, entropy, argmax, rank) under
  ``torch.no_grad()``: :func:`fastxent.token_stats` of the model's logits against
  :func:`fastxent.transformers.evaluate`.
- ``rl``: each next token's log-probability and entropy, and the backward pass of their sum
  (what a PPO or GRPO trainer asks of its policy): ``log_softmax`` of the model's logits
  against :func:`fastxent.transformers.logprobs`.
"""

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time

from ..evaluation.peak_memory import peak_rss_bytes, reset_peak_rss

MODES = ("train", "eval", "stats", "rl")


def _model(vocab, hidden, seed):
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden,
                                      intermediate_size=2 * hidden, num_hidden_layers=2,
                                      num_attention_heads=8, num_key_value_heads=8)
    return transformers.LlamaForCausalLM(config).eval()


def child(spec):
    """In a fresh process: one case of ``spec`` → {"peak_rss_growth_bytes", "seconds"}."""
    import torch

    import fastxent as fx
    import fastxent.transformers as fxh

    model = _model(spec["vocab"], spec["hidden"], spec["seed"])
    if spec["patched"] and spec["mode"] in ("train", "eval"):
        fxh.patch(model)
    g = torch.Generator().manual_seed(spec["seed"] + 1)
    ids = torch.randint(0, spec["vocab"], (spec["batch"], spec["seq"]), generator=g)

    def rl_objective():
        if spec["patched"]:
            logp, entropy = fxh.logprobs(model, ids, return_entropy=True)
        else:  # as PPO trainers do it from the logits
            logits = model(input_ids=ids).logits[:, :-1].float()
            logits = torch.log_softmax(logits, -1)
            logp = logits.gather(-1, ids[:, 1:, None])[..., 0]
            entropy = -(logits.exp() * logits).sum(-1)
        return logp.sum() + 0.01 * entropy.sum()

    def stats():
        with torch.no_grad():
            if spec["patched"]:
                return fxh.evaluate(model, [ids])
            logits = model(input_ids=ids).logits[:, :-1]
            return fx.token_stats(logits.float().numpy(), ids[:, 1:].numpy())

    def step():
        if spec["mode"] == "stats":
            return stats()
        if spec["mode"] == "eval":
            with torch.no_grad():
                return model(input_ids=ids, labels=ids).loss
        model.zero_grad(set_to_none=True)
        loss = rl_objective() if spec["mode"] == "rl" else model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss

    step()  # warm-up: Numba's cache, PyTorch's first calls
    model.zero_grad(set_to_none=True)
    gc.collect()
    reset_peak_rss()
    before = peak_rss_bytes()
    step()
    growth = peak_rss_bytes() - before
    times = []
    for _ in range(spec["repeat"]):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"peak_rss_growth_bytes": growth, "seconds": statistics.median(times)}


def measure(spec, timeout=1200):
    """One case in a fresh process (nothing else counted in its peak)."""
    run = subprocess.run([sys.executable, "-m", "fastxent.bench.transformers_step",
                          "--_child", json.dumps(spec)], capture_output=True, text=True,
                         timeout=timeout, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def table(rows):
    lines = ["| V | tokens | call | model's own: ms | MiB | patched: ms | MiB | time | memory |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for (vocab, tokens, mode), own, fused in rows:
        mib = [r["peak_rss_growth_bytes"] / 2**20 for r in (own, fused)]
        ms = [r["seconds"] * 1e3 for r in (own, fused)]
        lines.append(f"| {vocab} | {tokens} | {mode} | {ms[0]:.0f} | {mib[0]:.0f} | "
                     f"{ms[1]:.0f} | {mib[1]:.0f} | {ms[1] / ms[0]:.2f}× | "
                     f"{mib[1] / max(mib[0], 1e-9):.2f}× |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastxent.bench.transformers_step",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 128256])
    parser.add_argument("--modes", choices=MODES, nargs="+", default=list(MODES))
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--_child", dest="child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    rows = []
    for vocab in args.vocab:
        for mode in args.modes:
            found = [measure(dict(vocab=vocab, hidden=args.hidden, batch=args.batch,
                                  seq=args.seq, repeat=args.repeat, seed=args.seed,
                                  mode=mode, patched=patched)) for patched in (False, True)]
            rows.append(((vocab, args.batch * args.seq, mode), *found))
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(f"Llama, hidden {args.hidden}, 2 layers, float32, batch {args.batch} × {args.seq} "
          "tokens; peak-RSS growth over one call after a warm-up, median of "
          f"{args.repeat} calls\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
