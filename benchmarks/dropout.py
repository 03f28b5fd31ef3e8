"""What dropout costs in a training step: the benchmark transformer with dropout on its
embeddings, its attention weights and both residual branches of every block, in one
process, interleaved rounds.

- ``fnn``: ``fnn.TransformerLM(dropout=rate)`` as shipped, its masks from
  ``fnn.layers.dropout.keep_mask`` (``jax.random.bernoulli``'s bits, Threefry's rounds
  written out);
- ``fnn, jax.random.bernoulli masks``: the same model drawing its masks with
  ``jax.random.bernoulli``, as Flax's, Equinox's and Haiku's dropout do (the same bits);
- ``fnn, no dropout``: the model without dropout, for what dropout adds;
- ``flax linen`` and ``pytorch (eager)`` (when installed): the suite's peers with the same
  dropout.

Every fnn variant draws the same masks, so their first losses agree (the peers initialise
their parameters otherwise). Ratios are to ``fnn``; the first call is building, tracing,
compiling and one step.

    .venv/bin/python -m benchmarks.dropout
    .venv/bin/python -m benchmarks.dropout --rate 0.2 --rounds 15
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
from collections.abc import Callable, Iterator

import jax

import fnn.layers.attention as attention_module
import fnn.layers.dropout as dropout_module
from benchmarks.frameworks import linen
from benchmarks.frameworks.fnn_models import model as fnn_model
from benchmarks.frameworks.fnn_models import traced_under
from benchmarks.models import SPECS, Bench, batch_for
from benchmarks.suite import analyse, time_variants
from fnn import hostmem

NAME = "transformer"


def _bernoulli(key, rate, shape):
    return jax.random.bernoulli(key, 1.0 - rate, shape)


@contextlib.contextmanager
def _bernoulli_masks(enabled: bool) -> Iterator[None]:
    """fnn's dropout masks drawn by ``jax.random.bernoulli`` while a step is traced."""
    saved = dropout_module.keep_mask, attention_module.keep_mask
    if enabled:
        dropout_module.keep_mask = attention_module.keep_mask = _bernoulli
    try:
        yield
    finally:
        dropout_module.keep_mask, attention_module.keep_mask = saved


def fnn_bench(rate: float, bernoulli: bool = False) -> Callable[[tuple], Bench]:
    def make(batch: tuple) -> Bench:
        net = dataclasses.replace(fnn_model(NAME), dropout=rate)
        return traced_under(net, batch, _bernoulli_masks(bernoulli))

    return make


def frameworks(rate: float) -> dict[str, Callable[[tuple], Bench]]:
    found = {
        "fnn": fnn_bench(rate),
        "fnn, jax.random.bernoulli masks": fnn_bench(rate, bernoulli=True),
        "fnn, no dropout": fnn_bench(0.0),
        "flax linen": lambda batch: linen.make(NAME, batch, dropout=rate),
    }
    if importlib.util.find_spec("torch") is not None:
        from benchmarks.frameworks import torch_models

        found["pytorch (eager)"] = lambda batch: torch_models.make(NAME, batch, dropout=rate)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    if not 0.0 < args.rate < 1.0:
        parser.error(f"--rate must be in (0, 1), got {args.rate}")
    batch = batch_for(NAME)
    malloc = "huge pages" if hostmem.huge_pages_set() else "system settings"
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; {NAME} (batch {SPECS[NAME].batch}), "
          f"dropout {args.rate}, {args.rounds} rounds; malloc: {malloc}", flush=True)
    fnn_bench(0.0)(batch)  # the process's first compilation pays for more than its own program
    variants = time_variants(frameworks(args.rate), batch, args.rounds, SPECS[NAME].steps)
    reference = variants["fnn"].rate
    print("| variant | first loss | steps/s | vs fnn | first call s | MiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, v in variants.items():
        mib = f"{analyse(v.bench)[0]:.1f}" if v.bench.lower is not None else "-"
        print(f"| {name} | {v.first_loss:.4f} | {v.rate:.1f} | {v.rate / reference:.3f} | {v.first_call:.2f} | {mib} |")

if __name__ == "__main__":
    hostmem.exec_with_huge_pages()  # as the suite and the fnn command do (FNN_SYSTEM_MALLOC=1 to not)
    main()
