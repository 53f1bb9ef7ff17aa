"""The ``fastxent`` command: ``fastxent info`` describes the installation, ``fastxent bench``
runs the benchmark (its logic lives in :mod:`fastxent.bench`), ``fastxent eval`` evaluates saved
logits (:mod:`fastxent.evaluation.command`), ``fastxent eval-model`` a Hugging Face model on a
text file (:mod:`fastxent.evaluation.model_command`).

Heavy imports (torch, the benchmark's peers) happen inside the subcommands, so ``fastxent --help``
stays instant.
"""

import argparse
import json
import os
import shlex
import sys

from . import bench


def collect_info():
    """What ``fastxent info`` reports, as a JSON-ready dict.

    Returns
    -------
    dict
        ``versions`` ({package: version}, optional packages only where installed), ``backends``
        ({name: True or why it cannot be used}), ``cpu`` (model, counts, SIMD flags) and
        ``numba`` (threads, threading layer once started, SVML).
    """
    from .dispatch import backends as _dispatch

    return {
        "versions": bench.versions(),
        "backends": _dispatch.available(),
        "cpu": bench.cpu_info(),
        # after available(): the cpu backend is imported, which chooses the threading layer
        "numba": bench.numba_facts(),
    }


def _text_value(section, key, value):
    if section == "backends":
        return "available" if value is True else f"unavailable: {value}"
    if key == "simd":  # empty where /proc/cpuinfo is missing
        return " ".join(k for k, on in value.items() if on) or "none" if value else "unknown"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def format_info(info):
    """``collect_info()`` as aligned plain text: one section per key, one line per fact."""
    width = max(len(key) for section in info.values() for key in section)
    lines = []
    for section, facts in info.items():
        lines.append(section)
        for key, value in facts.items():
            # package names keep their underscores (ml_dtypes); other keys read better without
            name = key if section == "versions" else key.replace("_", " ")
            lines.append(f"  {name:<{width}}  {_text_value(section, key, value)}")
    return "\n".join(lines)


def _info(args, parser):
    info = collect_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def build_parser():
    """The argument parser of the ``fastxent`` command."""
    parser = argparse.ArgumentParser(
        prog="fastxent", description="Fast softmax cross-entropy for very large vocabularies.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    info = sub.add_parser("info", help="versions, backends, threads and CPU features",
                          description="Describe the installation: versions, backends, Numba "
                                      "threads and threading layer, SVML, CPU model and SIMD.")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(handler=_info)
    timing = sub.add_parser("bench", help="benchmark against NumPy, SciPy, PyTorch and JAX",
                            description=bench.__doc__.split("\n\n")[0] + " Progress goes to "
                            "stderr, the Markdown tables to stdout.")
    bench.add_arguments(timing)
    timing.set_defaults(handler=lambda args, _top, p=timing: bench.run_from_args(args, p))
    from .evaluation import command as _eval_cli
    evaluate = sub.add_parser("eval", help="perplexity, accuracy and entropy of saved logits",
                              description=_eval_cli.__doc__.split("\n\n")[0])
    _eval_cli.add_arguments(evaluate)
    evaluate.set_defaults(handler=lambda args, _top, p=evaluate: _eval_cli.run(args, p))
    from .evaluation import model_command as _model_cli
    model = sub.add_parser("eval-model", help="perplexity of a Hugging Face model on a text file",
                           description=_model_cli.__doc__.split("\n\n")[0])
    _model_cli.add_arguments(model)
    model.set_defaults(handler=lambda args, _top, p=model: _model_cli.run(args, p))
    return parser


def main(argv=None):
    """Entry point of the ``fastxent`` console script.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name; ``sys.argv[1:]`` when None.

    Returns
    -------
    int
        The exit status (argparse exits with status 2 on bad arguments).
    """
    parser = build_parser()
    if argv is None:
        argv = sys.argv[1:]
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["fastxent", *argv])
    try:
        return args.handler(args, parser)
    except BrokenPipeError:  # `fastxent info | head`: the reader left, which is not an error
        sys.stdout = open(os.devnull, "w")  # so that the interpreter's final flush stays quiet
        return 0
    except OSError as exc:  # a file named on the command line that cannot be read or written
        parser.exit(2, f"{parser.prog} {args.command}: error: {exc}\n")


if __name__ == "__main__":
    sys.exit(main())
