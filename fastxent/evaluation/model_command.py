"""``fastxent eval-model MODEL_DIR TEXT_FILE``: perplexity of a local Hugging Face causal language
model on a text file, without its logits.

The text is tokenized by the model's own tokenizer and cut into sliding windows (``--max-length``
tokens, one every ``--stride``), as the ``transformers`` perplexity guide does; each token is
scored once (:func:`fastxent.transformers.windows`, :func:`fastxent.transformers.evaluate`). The
report is that of ``fastxent eval``: summary on stdout, progress on stderr.
"""

import sys
import time

from .command import _topk, report
from .peak_memory import peak_rss_bytes


def add_arguments(p):
    p.add_argument("model", metavar="MODEL_DIR",
                   help="a directory saved by save_pretrained: the model and its tokenizer")
    p.add_argument("text", metavar="TEXT_FILE", help="UTF-8 text to score")
    p.add_argument("--max-length", type=int, metavar="L",
                   help="tokens per window (default: the model's max_position_embeddings, at "
                        "most 1024)")
    p.add_argument("--stride", type=int, metavar="S",
                   help="tokens between the starts of two windows (default: L / 2)")
    p.add_argument("--topk", default="1,5,10", metavar="K,K,...",
                   help="top-k accuracies to report (default: 1,5,10)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="load the model in this dtype (default: the one it was saved in)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the model runs (auto: a GPU if PyTorch sees one)")
    p.add_argument("--chunk-size", type=int, metavar="ROWS",
                   help="rows of logits per chunk (default: as many as fit in 128 MiB on the "
                        "CPU, 64 MiB on a GPU)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--progress", choices=["auto", "always", "never"], default="auto",
                   help="progress bar on stderr (auto: when stderr is a terminal)")


def _load(args):
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise RuntimeError(f"eval-model needs transformers ({exc}): pip install "
                           "'fastxent[transformers]'") from None
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    dtype = getattr(torch, args.dtype) if args.dtype else "auto"
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype,
                                                              local_files_only=True)
    return model.to(device).eval(), tokenizer, device


def evaluate(args):
    """(EvalResult, facts) of the parsed ``args``."""
    import fastxent.transformers as fxh

    topk = _topk(args.topk)
    model, tokenizer, device = _load(args)
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    ids = tokenizer(text, return_tensors="pt").input_ids.reshape(-1).to(device)
    limit = getattr(fxh.head.text_config(model), "max_position_embeddings", None) or 1024
    max_length = min(int(limit), 1024) if args.max_length is None else args.max_length
    stride = max(1, max_length // 2) if args.stride is None else args.stride
    windows = list(fxh.windows(ids, max_length, stride))
    show = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    start = time.perf_counter()
    result = fxh.evaluate(model, windows, topk=topk, chunk_size=args.chunk_size, progress=show)
    seconds = time.perf_counter() - start
    facts = dict(model=type(model).__name__, text_tokens=int(ids.numel()),
                 vocab=int(model.get_output_embeddings().weight.shape[0]),
                 dtype=str(model.get_output_embeddings().weight.dtype).replace("torch.", ""),
                 device=device, max_length=max_length, stride=stride, windows=len(windows),
                 seconds=seconds, tokens_per_s=result.tokens / max(seconds, 1e-9),
                 peak_rss_mib=peak_rss_bytes() / 2**20)
    return result, facts


def run(args, parser):
    try:
        result, facts = evaluate(args)
    except (OSError, ValueError, TypeError, IndexError, NotImplementedError,
            RuntimeError) as exc:
        parser.error(str(exc))
    report(result, facts, args.json,
           f"{facts['model']}, {facts['vocab']:,} classes ({facts['dtype']}, {facts['device']}): "
           f"{facts['text_tokens']:,} tokens in {facts['windows']} windows of "
           f"{facts['max_length']} (stride {facts['stride']}), {facts['seconds']:.2f} s "
           f"({facts['tokens_per_s']:,.0f} tokens/s), peak memory "
           f"{facts['peak_rss_mib']:.0f} MiB")
    return 0
