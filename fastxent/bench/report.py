"""A run's report as Markdown tables, a JSON file and PNG plots.

The report is the dict :func:`fastxent.bench.run_bench` returns (JSON-ready); everything here is
drawn from it, so that a saved ``results.json`` can be turned into tables and plots again.
"""

import json
import os

from .timing import MAX_CALLS

SCHEMA = "fastxent-bench/2"

#: Versions named in the Markdown header (the JSON has them all).
VERSIONS_SHOWN = ("python", "numpy", "numba", "scipy", "torch", "jax")

LEGEND = """\
- **time**: median wall time of one call (see the timing line above).
- **GB/s**: bytes that must move / time: the logits read once (forward, logsumexp), plus the
  gradient written once (fwd+bwd).
- **× vs fastxent**: time / fastxent's time for the same workload, shape and dtype (out of place);
  above 1 means fastxent is faster.
- **% of floor**: the time those bytes take at the measured bandwidth (read; copy for fwd+bwd) /
  time. **% of exp floor**: one exponential per logit at the measured exp rate / time.
- **peak RSS +**: growth of the peak resident memory over the inputs during one call, measured in
  a fresh process."""


def _fmt(value, spec, empty="–"):
    return empty if value is None else format(value, spec)


def ms(seconds):
    """Seconds as milliseconds with three or four significant figures.

    >>> ms(1.5043), ms(0.0616), ms(0.00231), ms(0.0000298), ms(None)
    ('1504.3', '61.6', '2.31', '0.030', '–')
    """
    if seconds is None:
        return "–"
    ms = seconds * 1e3
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}" if ms >= 1 else f"{ms:.3f}"


def _pct(fraction):
    return _fmt(None if fraction is None else 100 * fraction, ".0f")


def _size(nbytes):
    """Bytes in binary units, three significant figures.

    >>> _size(2048 * 131072 * 4), _size(4 * 1000 * 4), _size(100)
    ('1.00 GiB', '15.6 KiB', '100 B')
    """
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        value = nbytes / scale
        if value >= 1:
            return f"{value:.0f} {unit}" if value >= 100 else f"{value:#.3g} {unit}"
    return f"{nbytes} B"


def _label(r):
    return f"{r['contender']} ({r['variant']})" if r["variant"] else r["contender"]


def markdown_table(header, rows, right=()):
    """A Markdown table whose columns are padded so it also reads as plain text.

    >>> print(markdown_table(["a", "n"], [["x", 1], ["yy", 22]], right={1}))
    | a  |  n |
    |----|---:|
    | x  |  1 |
    | yy | 22 |
    """
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def line(cells):
        padded = [str(c).rjust(w) if i in right else str(c).ljust(w)
                  for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2)
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule] + [line(r) for r in rows])


def shapes(results):
    """The (rows, vocab, dtype) of the results, in order of first appearance."""
    return list(dict.fromkeys((r["rows"], r["vocab"], r["dtype"]) for r in results))


def _itemsize(dtype):
    return 4 if dtype == "float32" else 2


def _table(results, memory):
    header = ["contender", "workload", "time (ms)", "GB/s", "× vs fastxent", "% of floor",
              "% of exp floor"]
    if memory:
        header.append("peak RSS + (MiB)")
    header.append("notes")
    rows = []
    for r in results:
        cells = [_label(r), r["workload"], ms(r["time_s"]), _fmt(r["gbps"], ".1f"),
                 _fmt(r["ratio"], ".2f"), _pct(r["floor_fraction"]),
                 _pct(r["exp_floor_fraction"])]
        if memory:
            growth = r["peak_rss_growth_bytes"]
            cells.append(_fmt(None if growth is None else growth / 2**20, ".0f"))
        notes = [n for n in (r["notes"], r["error"] and f"failed: {r['error']}") if n]
        rows.append(cells + ["; ".join(notes)])
    return markdown_table(header, rows, right=set(range(2, len(header) - 1)))


def _header_lines(report):
    c, m, v = report["config"], report["machine"], report["versions"]
    cpu, nb = m["cpu"], m["numba"]
    simd = " ".join(k for k, on in cpu["simd"].items() if on) or "unknown"
    mem = m.get("memory_bytes")
    lines = [
        f"- machine: {cpu['model']}, {cpu['usable_cpus']} CPUs ({simd})"
        + (f", {mem / 2**30:.1f} GiB" if mem else "") + f"; numba {v['numba']} with "
        f"{nb.get('threads', '?')} threads ({nb.get('threading_layer', '?')})"
        + (f"; torch {v['torch']} with {m['torch_threads']} threads" if "torch_threads" in m
           else ""),
    ]
    ce = report["ceilings"]
    if ce:
        lines.append(f"- ceilings ({ce['threads']} threads): read {ce['read_GBps']:.1f} GB/s, "
                     f"copy {ce['copy_GBps']:.1f} GB/s (read + write) on "
                     f"{ce['bytes'] / 2**20:.0f} MiB arrays; fastxent's exp "
                     f"{ce['exp_Gps']:.2f} G exp/s")
    lines.append("- versions: " + ", ".join(f"{k} {v[k]}" for k in VERSIONS_SHOWN if k in v))
    lines.append(f"- timing: median of {c['repeat']} timed calls after warm-up, more for fast "
                 f"calls (up to {MAX_CALLS}), fewer for slow ones (those that add up to "
                 f"{c['time_budget_s']:g} s)")
    for name, why in report["skipped"].items():
        lines.append(f"- skipped {name}: {why}")
    for d in report["dropped"]:
        lines.append(f"- dropped {d['id']}: {d['reason']}")
    return lines


def format_report(report):
    """The report as Markdown: the machine and its ceilings, then one table per shape."""
    c = report["config"]
    lines = ["# fastxent bench", ""]
    if report.get("command"):
        lines += [f"command: `{report['command']}`", ""]
    lines += _header_lines(report)
    results = report["results"]
    for shape in shapes(results):
        rows, vocab, dtype = shape
        size = _size(rows * vocab * _itemsize(dtype))
        group = [r for r in results if (r["rows"], r["vocab"], r["dtype"]) == shape]
        lines += ["", f"## N={rows}, V={vocab}, {dtype} ({size} of logits)", "",
                  _table(group, c["memory"])]
    lines += ["", LEGEND]
    return "\n".join(lines)


# --- plots ----------------------------------------------------------------------------------------


def _figure():
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in threads

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    return fig, fig.subplots()


def plot_time_vs_vocab(report, out_dir):
    """One ``time_vs_vocab_<workload>_<dtype>.png`` per workload and dtype: time against the
    vocabulary size per contender, at the largest batch of the run, log-log. Returns the paths."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    timed = [r for r in report["results"] if r["time_s"]]
    paths = []
    for workload, dtype in dict.fromkeys((r["workload"], r["dtype"]) for r in timed):
        group = [r for r in timed if r["workload"] == workload and r["dtype"] == dtype]
        rows = max(r["rows"] for r in group)
        fig, ax = _figure()
        for label in dict.fromkeys(_label(r) for r in group):
            pts = sorted((r["vocab"], r["time_s"] * 1e3) for r in group
                         if r["rows"] == rows and _label(r) == label)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label)
        vocabs = sorted({r["vocab"] for r in group if r["rows"] == rows})
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(vocabs))
        ax.xaxis.set_major_formatter(FixedFormatter([str(v) for v in vocabs]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("vocabulary size V")
        ax.set_ylabel("time per call (ms)")
        ax.set_title(f"{workload}, {dtype}, N={rows} rows")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize="small")
        path = os.path.join(out_dir, f"time_vs_vocab_{workload}_{dtype}.png")
        fig.savefig(path, dpi=120)
        paths.append(path)
    return paths


def plot_memory(report, out_dir):
    """``memory.png``: peak extra memory per contender and workload, at the largest shape with
    measurements (float32 first). Returns the path, or None when no memory was measured."""
    measured = [r for r in report["results"] if r["peak_rss_growth_bytes"] is not None]
    if not measured:
        return None
    shape = max(shapes(measured), key=lambda s: (s[2] == "float32", s[0] * s[1]))
    group = [r for r in measured if (r["rows"], r["vocab"], r["dtype"]) == shape]
    labels = list(dict.fromkeys(_label(r) for r in group))
    workloads = list(dict.fromkeys(r["workload"] for r in group))
    width = 0.8 / len(workloads)
    fig, ax = _figure()
    for k, workload in enumerate(workloads):
        mib = {_label(r): max(r["peak_rss_growth_bytes"], 0) / 2**20 for r in group
               if r["workload"] == workload}
        xs = [i + (k - (len(workloads) - 1) / 2) * width for i, lab in enumerate(labels)
              if lab in mib]
        ax.bar(xs, [mib[lab] for lab in labels if lab in mib], width, label=workload)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    rows, vocab, dtype = shape
    ax.axhline(rows * vocab * _itemsize(dtype) / 2**20, color="gray", linestyle="--",
               linewidth=1, label="size of the logits")
    ax.set_ylabel("peak RSS growth (MiB)")
    ax.set_title(f"peak extra memory of one call, N={rows}, V={vocab}, {dtype}")
    ax.legend(fontsize="small")
    path = os.path.join(out_dir, "memory.png")
    fig.savefig(path, dpi=120)
    return path


def write_plots(report, out_dir):
    """Every plot of the report into ``out_dir``; (paths written, message when none could be)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return [], "matplotlib is not installed (pip install matplotlib): no plots written"
    paths = plot_time_vs_vocab(report, out_dir)
    mem = plot_memory(report, out_dir)
    return paths + ([mem] if mem else []), None


def write_json(report, path):
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")


def write_outputs(report, out_dir):
    """``results.json``, the PNG plots and ``results.md`` (the tables, with the plots) in
    ``out_dir``, created if missing. Returns (paths written, message about missing plots)."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "results.json")
    write_json(report, json_path)
    plots, message = write_plots(report, out_dir)
    text = format_report(report)
    if plots:
        text += "\n\n## Plots\n\n" + "\n\n".join(
            f"![{os.path.splitext(os.path.basename(p))[0]}]({os.path.basename(p)})"
            for p in plots)
    md_path = os.path.join(out_dir, "results.md")
    with open(md_path, "w") as f:
        f.write(text + "\n")
    return [json_path, md_path] + plots, message
