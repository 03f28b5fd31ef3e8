"""What huge pages for ``malloc`` (``fnn.hostmem``: the ``fnn`` command re-executes itself
with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``) do to a train step on the CPU: steps/s,
page faults and peak memory, with glibc's ``malloc`` as it comes (``system``) and with
the tunable (``huge pages``).

glibc reads its tunables when a process starts, so each measurement is a fresh process,
one per (setting, framework, model), run in interleaved rounds (every combination once
per round, in turn) so that drift of the machine's speed hits all alike. Per combination
the table gives the median over rounds of each process's median step time (``--steps``
steps, and at least 3 s of them, after ``--warmup`` steps), the page faults per step, and
the process's peak resident memory.

    .venv/bin/python -m benchmarks.host_memory                    # transformer and lstm; fnn and raw jax
    .venv/bin/python -m benchmarks.host_memory --models transformer --rounds 5 --steps 30
    .venv/bin/python -m benchmarks.host_memory --quick            # one short round: does it run?
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from benchmarks.models import SPECS
from fnn import hostmem

ENV = {"system": {}, "huge pages": {"GLIBC_TUNABLES": hostmem.TUNABLE}}
FRAMEWORKS = {"fnn": "fnn_models", "raw jax": "raw_jax"}


def child(framework: str, model: str, steps: int, warmup: int, min_seconds: float = 3.0) -> dict:
    """One process's measurement."""
    import jax

    from benchmarks.models import batch_for

    bench = importlib.import_module(f"benchmarks.frameworks.{FRAMEWORKS[framework]}").make(model, batch_for(model))
    state = bench.state
    times, faults = [], []
    while len(times) < steps or sum(times) < min_seconds:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        state, loss = bench.step(state, bench.batch)
        jax.block_until_ready(loss)
        if warmup:
            warmup -= 1
            continue
        times.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {"ms": 1e3 * statistics.median(times), "faults": statistics.mean(faults),
            "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(setting: str, framework: str, model: str, steps: int, warmup: int) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-m", "benchmarks.host_memory", "--child", framework, model,
                          str(steps), str(warmup)], capture_output=True, text=True,
                         env={**environ, **ENV[setting]})
    if out.returncode:
        raise RuntimeError(f"{setting} {framework} {model} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def table(results: dict) -> str:
    lines = ["| model | framework | malloc | ms/step | steps/s vs system | page faults/step | peak RSS MiB |",
             "|---|---|---|---:|---:|---:|---:|"]
    for (model, framework, setting), runs in results.items():
        ms = statistics.median(r["ms"] for r in runs)
        base = statistics.median(r["ms"] for r in results[model, framework, "system"])
        faults = statistics.median(r["faults"] for r in runs)
        rss = statistics.median(r["rss"] for r in runs)
        lines.append(f"| {model} | {framework} | {setting} | {ms:.2f} | {base / ms:.2f} | {faults:,.0f} | {rss:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    if hostmem.glibc_version() is None:
        parser.exit(1, "host_memory: the C library is not glibc: there is nothing to compare\n")
    parser.add_argument("--models", nargs="+", default=["transformer", "lstm"], choices=list(SPECS))
    parser.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=list(FRAMEWORKS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation included)")
    parser.add_argument("--quick", action="store_true", help="one round of 3 steps (a smoke test, not the figures)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup = 1, 3, 1
    results: dict = {(m, f, s): [] for m in args.models for f in args.frameworks for s in ENV}
    for r in range(args.rounds):
        for (model, framework, setting), runs in results.items():
            runs.append(measure(setting, framework, model, args.steps, args.warmup))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    text = table(results)
    print(text)
    return text


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        framework, model, steps, warmup = sys.argv[2:]
        print(json.dumps(child(framework, model, int(steps), int(warmup))))
    else:
        main()
