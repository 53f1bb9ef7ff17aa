"""The benchmark behind ``fastxent bench``: fastxent against NumPy, SciPy, PyTorch and JAX.

The quick default times one large-vocabulary batch (N=2048 rows of V=131072 float32 logits,
normal values × 2, uniform integer targets), forward and forward+backward, against every peer that
is installed; ``--full`` runs the grid of real vocabulary sizes, batch sizes and dtypes with peak
memory. Every time is set against the machine's ceilings measured in the same run: the floor that
the case's bytes imply at the measured bandwidth, and one exponential per logit at the measured
exp rate.

One job per module:

:mod:`.machine`
    versions, CPU, memory, Numba's threads and threading layer;
:mod:`.ceilings`
    read and copy bandwidth, the exp rate, the bytes a workload must move;
:mod:`.inputs`
    the random logits and targets;
:mod:`.peers`
    the contenders, as timed cases (the pytest-benchmark suites in ``benchmarks/`` use them too);
:mod:`.grid`
    the quick set, the full grid, the memory budget;
:mod:`.timing`
    timing a case, and the ratios and floor fractions;
:mod:`.memory`
    peak memory of one case in a fresh process;
:mod:`.report`
    Markdown, JSON and PNG plots;
:mod:`.runner`
    a whole run, with progress;
:mod:`.command`
    the command-line options.
"""

from .ceilings import bytes_moved, measure_bandwidth, measure_ceilings, measure_exp_rate
from .command import add_arguments, main, run_from_args
from .grid import SIZES, Spec
from .inputs import DTYPES, make_inputs
from .machine import cpu_info, machine_description, numba_facts, versions
from .peers import CONTENDERS, PEERS, WORKLOADS, Case, build_cases, numpy_loss, numpy_loss_and_grad
from .report import format_report, markdown_table, write_outputs
from .runner import run_bench
from .timing import Result, add_ratios, time_case

__all__ = [
    "CONTENDERS", "DTYPES", "PEERS", "SIZES", "WORKLOADS", "Case", "Result", "Spec",
    "add_arguments", "add_ratios", "build_cases", "bytes_moved", "cpu_info", "format_report",
    "machine_description", "main", "make_inputs", "markdown_table", "measure_bandwidth",
    "measure_ceilings", "measure_exp_rate", "numba_facts", "numpy_loss", "numpy_loss_and_grad",
    "run_bench", "run_from_args", "time_case", "versions", "write_outputs",
]
