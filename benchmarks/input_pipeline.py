"""Does the input pipeline keep the train step fed? The fraction of the training loop's
wall time spent waiting for the next batch, in the digits and language-model experiments.

``fnn.loop.train_loop(..., stats=...)`` times every request for the next batch (grain's
iterator behind ``fnn.data.Prefetch``, which keeps two batches on the device ahead of
the step) and the loop's wall time less evaluation and checkpoints. JAX dispatches a
step and returns before it has run, so the host asks for the next batch while the
device works: the wait measured is an upper bound on the time the step was starved.

    .venv/bin/python -m benchmarks.input_pipeline               # the experiments' defaults
    .venv/bin/python -m benchmarks.input_pipeline --quick       # a few hundred steps each
"""

from __future__ import annotations

import argparse
import dataclasses

import jax

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test, not the figures)")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
    print("| experiment | steps | training s | waiting for input s | fraction |")
    print("| --- | --- | --- | --- | --- |")
    for name, (run, config) in cases(args.quick).items():
        values = run(config)
        stats = values["loop_stats"]
        steps = max(r["step"] for r in values["history"])
        print(f"| {name} | {steps} | {stats['training_seconds']:.1f} | {stats['input_wait_seconds']:.2f} | "
              f"{stats['input_wait_fraction']:.1%} |", flush=True)


if __name__ == "__main__":
    main()
