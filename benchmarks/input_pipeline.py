"""Does the input pipeline keep the train step fed? The fraction of the training loop's
wall time spent waiting for the next batch, in the digits, language-model and
text-classification experiments, and what the input costs the run.

``fnn.loop.train_loop(..., stats=...)`` times every request for the next batch
(``fnn.data.Prefetch``, which makes two batches ahead of the step) and the loop's wall time
less evaluation and checkpoints. JAX dispatches a step and returns before it has run, so
the host makes the next batch while the device works: the wait measured is an upper bound
on the time the step was starved. Each case also trains with its input replaced by one
batch, on the device, handed to every step (``--rounds`` pairs, interleaved): ``slowdown``
is the training time with the real input over that one's, less one (medians over rounds).

    .venv/bin/python -m benchmarks.input_pipeline               # the experiments' defaults
    .venv/bin/python -m benchmarks.input_pipeline --quick       # a few hundred steps each
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics

import jax

import fnn.loop
from experiments import char_lm, digits, text_classify
from fnn.pipeline import TrainConfig


def cases(quick: bool) -> dict[str, tuple]:
    lm = char_lm.Config(steps=200, eval_every=100) if quick else char_lm.Config()
    return {
        "digits (cnn, batch 64)": (digits.run, digits.Config(train=TrainConfig(epochs=3 if quick else 20))),
        "digits (mlp, batch 64)": (digits.run, digits.Config(model="mlp", train=TrainConfig(epochs=3 if quick else 20))),
        "char-lm (transformer, batch 64 x 64)": (char_lm.run, lm),
        "char-lm (lstm, batch 64 x 64)": (char_lm.run, dataclasses.replace(lm, model="lstm")),
        "text-classify (bag, batch 64)": (text_classify.run, text_classify.Config(
            train=dataclasses.replace(text_classify.Config().train, epochs=2 if quick else 10))),
    }


class OneBatch:
    """``fnn.data.Prefetch``'s stand-in: the data's first batch, put on the device once and
    handed to every step (no input work at all)."""

    def __init__(self, dataset, *, state=None, size=2, device=None, put=None):
        self._batch = (put or jax.device_put)(dataset[0])
        self._consumed = 0 if state is None else state["next_index"]
        self._total = len(dataset)

    def __iter__(self):
        return self

    def __next__(self):
        if self._consumed == self._total:
            raise StopIteration
        self._consumed += 1
        return self._batch

    def state(self) -> dict:
        return {"next_index": self._consumed}


@contextlib.contextmanager
def one_batch():
    """Train loops in this block take :class:`OneBatch` for their input."""
    real = fnn.loop.Prefetch
    fnn.loop.Prefetch = OneBatch
    try:
        yield
    finally:
        fnn.loop.Prefetch = real


def measure(run, config, rounds: int) -> dict:
    """Medians over ``rounds`` interleaved pairs of runs, with the real input and with one batch."""
    real, alone, waits, steps = [], [], [], 0
    for _ in range(rounds):
        values = run(config)
        stats = values["loop_stats"]
        real.append(stats["training_seconds"])
        waits.append(stats["input_wait_seconds"])
        steps = max(r["step"] for r in values["history"])
        with one_batch():
            alone.append(run(config)["loop_stats"]["training_seconds"])
    seconds, wait, ideal = (statistics.median(v) for v in (real, waits, alone))
    return {"steps": steps, "seconds": seconds, "wait": wait, "fraction": wait / seconds, "one_batch": ideal,
            "slowdown": seconds / ideal - 1}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test, not the figures)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved pairs of runs per case")
    parser.add_argument("--cases", nargs="*", help="only the cases whose names contain one of these")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; {args.rounds} rounds")
    print("| experiment | steps | training s | waiting for input s | fraction | one batch s | slowdown |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, (run, config) in cases(args.quick).items():
        if args.cases and not any(part in name for part in args.cases):
            continue
        m = measure(run, config, args.rounds)
        print(f"| {name} | {m['steps']} | {m['seconds']:.2f} | {m['wait']:.2f} | {m['fraction']:.1%} | "
              f"{m['one_batch']:.2f} | {m['slowdown']:+.1%} |", flush=True)


if __name__ == "__main__":
    main()
