"""Training-step throughput of fnn against raw JAX, Flax (Linen and NNX), Equinox, Haiku and
PyTorch, on five models, in one process.

Every framework trains the same architecture (the parameter counts are checked against
each other and against the count from the architecture before anything is timed) with
adam, on the same batch (``benchmarks.models`` describes the models). Rounds are
interleaved -- each round times every framework once, in turn -- so that drift of the
machine's speed hits all alike. Per model and framework the table gives:

- ``steps/s``: the median over rounds, and its ratio to raw JAX;
- ``first s``: the first call's time (tracing, compilation and one call's steps: ten for
  ``fnn K=10``), and its ratio to raw JAX's: for the JAX frameworks the median of
  ``--first-rounds`` interleaved first calls, each after ``jax.clear_caches()``, after one
  throwaway step that pays the process's one-time costs (one sample varies by 10-20%);
- ``MiB``: the compiled step's memory plan from XLA's ``memory_analysis()``: arguments +
  outputs + temporaries - the donated buffers the outputs reuse (JAX frameworks only);
- ``GFLOP``: the floating-point work of one step from XLA's ``cost_analysis()`` of the
  compiled step (XLA counts a loop's body once, so a step with a loop is left out: the
  LSTM's, the ``fnn K=10`` row's, fnn's LeNet step with its weight gradient's loop over
  kernel offsets);
- ``GFLOP/s`` and ``% peak`` for the compute-bound models (``mlp-large``, ``transformer``):
  raw JAX's FLOPs per step times each framework's steps/s, against the peak measured by
  timing a 2048x2048 float32 matrix product in JAX (8192x8192 on an accelerator).

``fnn K=10`` is fnn with ``make_train_step(..., steps_per_call=10)``: ten steps per
compiled call (a ``lax.scan`` over ten batches already on the device), counted as ten
steps. PyTorch runs eagerly with as many threads as the process may use cores (as XLA's
CPU client does); ``--torch-compile`` adds a ``torch.compile`` row. ``fnn (jax rules)``
runs only when ``--frameworks`` names it: fnn's step with JAX's own gradient rules
instead of ``fnn.autodiff``'s, to measure what those rules gain in the same run. Run as a
program, the suite first re-executes itself with ``malloc`` backing large blocks with huge
pages, as the ``fnn`` command does before it trains (``fnn.hostmem``;
``FNN_SYSTEM_MALLOC=1`` to keep the system settings); every framework shares the process,
so every framework runs under the same setting.

    .venv/bin/python -m benchmarks.suite                       # everything, 7 rounds
    .venv/bin/python -m benchmarks.suite --models mlp-small lstm --rounds 9
    .venv/bin/python -m benchmarks.suite --markdown table.md   # also write a markdown table
    .venv/bin/python -m benchmarks.suite --quick               # one tiny round: does it all run?
    .venv/bin/python -m benchmarks.suite --frameworks fnn "fnn (jax rules)" --rounds 9
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.frameworks import (
    JAX_FRAMEWORKS,
    KNOWN,
    MISSING,
    TORCH_AVAILABLE,
    VARIANTS,
    installed,
    torch_frameworks,
)
from benchmarks.models import SPECS, Bench, batch_for, expected_params
from fnn import hostmem
from fnn.summary import has_loop

REFERENCE = "raw jax"
MiB = 2.0**20


@dataclasses.dataclass
class Row:
    model: str
    framework: str
    params: int
    rate: float  # steps per second, median over rounds
    first: float  # seconds: trace + compile + one call
    mib: float | None = None
    gflop: float | None = None  # per step, from XLA's cost analysis
    vs_raw: float = float("nan")
    first_vs_raw: float = float("nan")
    gflops: float | None = None  # achieved, for compute-bound models
    peak_fraction: float | None = None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_size() -> int:
    """The side of the square product that measures the peak: 2048 on a CPU, 8192 on an
    accelerator (a 2048 product leaves a GPU mostly idle)."""
    return 2048 if jax.default_backend() == "cpu" else 8192


def peak_gflops(size: int | None = None, repeats: int = 7, dtype: Any = np.float32) -> float:
    """The machine's matmul rate in JAX for square ``dtype`` products of side ``size``
    (default ``peak_size()``): the best of ``repeats`` timed products."""
    size = size or peak_size()
    a = jax.device_put(np.random.default_rng(0).normal(size=(size, size)).astype(dtype))
    matmul = jax.jit(jnp.matmul)
    matmul(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def analyse(bench: Bench) -> tuple[float, float]:
    """(MiB, GFLOP per call) of the compiled step, from XLA's memory and cost analyses."""
    return plan_and_work(bench.lower(bench.state, bench.batch).compile())


def plan_and_work(compiled: Any) -> tuple[float, float]:
    """(MiB, GFLOP) of a compiled program: XLA's memory plan (arguments + outputs +
    temporaries - the donated buffers the outputs reuse) and its cost analysis's FLOPs, NaN
    for a program with a loop (XLA counts a loop's body once: the LSTM's scan, the ``K=10``
    steps, fnn's LeNet weight gradient over kernel offsets)."""
    m = compiled.memory_analysis()
    mib = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes) / MiB
    if has_loop(compiled):
        return mib, float("nan")
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return mib, float(cost.get("flops", float("nan"))) / 1e9


def build(name: str, frameworks: dict[str, Callable]) -> dict[str, Bench]:
    """Every framework's bench for ``name``, after checking that all have the parameter
    count of the architecture (and so of raw JAX's)."""
    batch = batch_for(name)
    benches = {framework: make(name, batch) for framework, make in frameworks.items()}
    expected = expected_params(name)
    wrong = {f: b.params for f, b in benches.items() if b.params != expected}
    if wrong:
        raise AssertionError(f"{name}: parameter counts differ from the architecture's {expected}: {wrong}")
    return benches


def time_calls(bench: Bench, calls: int) -> float:
    """Steps per second over ``calls`` calls of ``bench.step`` (updating ``bench.state``)."""
    start = time.perf_counter()
    state, loss = bench.state, None
    for _ in range(calls):
        state, loss = bench.step(state, bench.batch)
    bench.sync(loss)
    bench.state = state
    return calls * bench.steps_per_call / (time.perf_counter() - start)


@dataclasses.dataclass
class Variant:
    """One variant's bench and what ``time_variants`` measured of it."""

    bench: Bench
    first_call: float  # seconds: building, tracing, compiling and one step
    first_loss: float
    rate: float  # steps per second, the median of the rounds


def time_variants(
    makers: dict[str, Callable[[Any], Bench]], batch: Any, rounds: int, steps: int
) -> dict[str, Variant]:
    """Build each variant (``make(batch)``) and take its first step, then time ``rounds``
    interleaved rounds of ``steps`` calls each, so that drift of the machine hits all alike."""
    variants = {}
    for name, make in makers.items():
        start = time.perf_counter()
        bench = make(batch)
        bench.state, loss = bench.step(bench.state, bench.batch)
        loss = float(bench.sync(loss))
        variants[name] = Variant(bench, time.perf_counter() - start, loss, 0.0)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, variant in variants.items():
            rates[name].append(time_calls(variant.bench, steps))
    for name, variant in variants.items():
        variant.rate = statistics.median(rates[name])
    return variants


def first_calls(benches: dict[str, Bench], rounds: int) -> dict[str, float]:
    """Seconds of each bench's first call (trace, compile, one step): the median of ``rounds``
    interleaved rounds, JAX's caches cleared before every JAX bench's call, the first round's
    too, so that no framework reuses what one before it traced (other benches are called
    once). Every bench is compiled and warm afterwards."""
    times: dict[str, list[float]] = {f: [] for f in benches}
    for r in range(rounds):
        for framework, bench in benches.items():
            if r and bench.lower is None:
                continue
            if bench.lower is not None:
                jax.clear_caches()
            start = time.perf_counter()
            bench.state, loss = bench.step(bench.state, bench.batch)
            bench.sync(loss)
            times[framework].append(time.perf_counter() - start)
    if any(b.lower is not None for b in benches.values()):  # the clears dropped their programs
        for bench in benches.values():
            bench.state, loss = bench.step(bench.state, bench.batch)
            bench.sync(loss)
    return {f: statistics.median(t) for f, t in times.items()}


def bench_model(name: str, frameworks: dict[str, Callable], rounds: int, steps: int | None = None,
                analysis: bool = True, peak: float | None = None, first_rounds: int = 1,
                log: Callable[[str], None] = lambda _: None) -> list[Row]:
    """Rows for every framework on ``name``: ``rounds`` interleaved rounds of ``steps`` steps
    (default: the model's), with XLA's analyses when ``analysis``; the first call's time is
    the median of ``first_rounds`` (see :func:`first_calls`)."""
    spec = SPECS[name]
    steps = spec.steps if steps is None else steps
    benches = build(name, frameworks)
    log(f"{name}: {expected_params(name):,} parameters in every framework")
    rows = {}
    firsts = first_calls(benches, first_rounds)
    for framework, bench in benches.items():
        rows[framework] = Row(name, framework, bench.params, float("nan"), firsts[framework])
        if analysis and bench.lower is not None:
            mib, gflop = analyse(bench)
            rows[framework].mib = mib
            rows[framework].gflop = None if gflop != gflop else gflop  # NaN: a loop, left out
    rates: dict[str, list[float]] = {f: [] for f in benches}
    for _ in range(rounds):
        for framework, bench in benches.items():
            rates[framework].append(time_calls(bench, max(1, steps // bench.steps_per_call)))
    reference = rows.get(REFERENCE)
    for framework, row in rows.items():
        row.rate = statistics.median(rates[framework])
    for row in rows.values():
        if reference is not None:
            row.vs_raw, row.first_vs_raw = row.rate / reference.rate, row.first / reference.first
            if spec.compute_bound and reference.gflop is not None:
                row.gflops = reference.gflop * row.rate
                row.peak_fraction = row.gflops / peak if peak else None
    return list(rows.values())


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or value != value else format(value, spec)


COLUMNS = ("model", "framework", "params", "steps/s", "vs raw", "first s", "first vs raw", "MiB", "GFLOP",
           "GFLOP/s", "% peak")


def cells(row: Row) -> list[str]:
    return [row.model, row.framework, f"{row.params:,}", _fmt(row.rate, ".1f"), _fmt(row.vs_raw, ".3f"),
            _fmt(row.first, ".2f"), _fmt(row.first_vs_raw, ".2f"), _fmt(row.mib, ".1f"), _fmt(row.gflop, ".2f"),
            _fmt(row.gflops, ".1f"), _fmt(None if row.peak_fraction is None else 100 * row.peak_fraction, ".0f")]


def text_table(rows: Iterable[Row]) -> str:
    widths = (11, 23, 10, 9, 7, 8, 12, 7, 6, 8, 6)
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(COLUMNS, widths)))]
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(cells(row), widths))))
    return "\n".join(lines)


def markdown_table(rows: Iterable[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(COLUMNS) - 2)) + "|"]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def versions() -> str:
    import importlib

    parts = [f"python {platform.python_version()}", f"jax {jax.__version__}"]
    for package in ("flax", "equinox", "haiku", "optax"):
        if installed(package):
            parts.append(f"{package} {importlib.import_module(package).__version__}")
    if TORCH_AVAILABLE:
        import torch

        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SPECS), choices=list(SPECS))
    every = [*KNOWN, *VARIANTS, "pytorch (eager)", "pytorch (torch.compile)"]
    parser.add_argument("--frameworks", nargs="+", choices=every, help="default: all available")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true",
                        help="one round of one call per framework, no XLA analyses: checks that everything runs")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out even when installed")
    parser.add_argument("--torch-compile", action="store_true", help="add a torch.compile row")
    parser.add_argument("--markdown", help="also write the table, as markdown, to this file")
    parser.add_argument("--first-rounds", type=int, default=3,
                        help="first calls (each after jax.clear_caches) whose median is 'first s' (default 3)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.first_rounds < 1:
        parser.error("--first-rounds must be at least 1")

    frameworks: dict[str, Callable] = dict(JAX_FRAMEWORKS)
    if not args.no_torch:
        frameworks |= torch_frameworks(compiled=args.torch_compile)
    if args.frameworks:
        frameworks |= {f: VARIANTS[f] for f in args.frameworks if f in VARIANTS}
        missing = [f for f in args.frameworks if f not in frameworks]
        if missing:
            parser.error(f"not available here: {', '.join(missing)}")
        frameworks = {f: frameworks[f] for f in args.frameworks}
        if REFERENCE not in frameworks:  # every ratio is to raw JAX
            frameworks = {REFERENCE: JAX_FRAMEWORKS[REFERENCE], **frameworks}

    def say(line: str) -> None:
        print(line, flush=True)

    device = jax.devices()[0]
    say(f"{cpu_model()}, {os.cpu_count()} cores; jax on {device.platform} ({device.device_kind})")
    say(versions())
    if not TORCH_AVAILABLE and not args.no_torch:
        say("PyTorch is not installed: its rows are skipped (pip install torch to add them)")
    if MISSING:
        say(f"not installed, so their rows are skipped: {', '.join(MISSING)}")
    huge = hostmem.huge_pages_set()
    say(f"malloc: {'huge pages, GLIBC_TUNABLES=' + os.environ['GLIBC_TUNABLES'] if huge else 'system settings'}")
    say(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    peak = None if args.quick else peak_gflops()
    if peak:
        say(f"measured peak: {peak:.1f} GFLOP/s ({peak_size()}x{peak_size()} float32 matmul in JAX)")
    rounds = 1 if args.quick else args.rounds
    first_rounds = 1 if args.quick else args.first_rounds
    say(f"medians of {rounds} interleaved rounds (first calls: of {first_rounds})")
    if not args.quick:  # the process's one-time tracing costs, so that no first call pays them
        warm = JAX_FRAMEWORKS[REFERENCE]("mlp-small", batch_for("mlp-small"))
        warm.sync(warm.step(warm.state, warm.batch)[1])
    rows: list[Row] = []
    for name in args.models:
        model_rows = bench_model(name, frameworks, rounds, steps=1 if args.quick else None,
                                 analysis=not args.quick, peak=peak, first_rounds=first_rounds, log=say)
        say(text_table(model_rows))
        rows += model_rows
        if args.markdown:  # after each model, so a run cut short keeps the models it finished
            with open(args.markdown, "w") as f:
                f.write(markdown_table(rows) + "\n")
    say(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return rows


if __name__ == "__main__":
    # as the fnn command does before it trains (fnn.hostmem; FNN_SYSTEM_MALLOC=1 to not):
    # one process, so every framework runs under the same malloc
    hostmem.exec_with_huge_pages()
    main(sys.argv[1:])
