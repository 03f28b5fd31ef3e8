"""Backpropagation (1986) trains a network with a hidden layer to compute XOR.

XOR -- output 1 when exactly one of two inputs is 1 -- is the classic function that a
single threshold unit cannot compute: no line separates {(0, 1), (1, 0)} from
{(0, 0), (1, 1)}. Minsky and Papert's "Perceptrons" (1969) made such limits of
one-layer networks famous. A layer of hidden units between inputs and output removes
the limit, but the perceptron rule (``experiments/perceptron.py``) gives no way to
train hidden units: nothing says what they should have output.

Rumelhart, Hinton and Williams (1986; "Learning representations by back-propagating
errors" in Nature, and "Learning internal representations by error propagation" in
the Parallel Distributed Processing volumes, where XOR is the first worked example)
showed that hidden units with smooth sigmoid outputs can be trained by gradient
descent, with the chain rule carrying the error derivatives backwards from the output
through each layer. The idea of computing such gradients in reverse is older
(Linnainmaa 1970, Werbos 1974); their work showed that the hidden units learn useful
internal representations and made the method widely used.

Here a 2-4-1 network, ``Dense(4) -> sigmoid -> Dense(1)``, whose output is the logit
of P(y = 1), is trained with full-batch gradient descent with momentum (which the
1986 papers used as well) on the four XOR points, minimising the binary cross-entropy.
``jax.grad`` does the backward pass that the paper derived by hand.

Run: fnn run xor [hidden=4] [steps=1000] [learning_rate=0.5] [seed=0]
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import optax

import fnn
from fnn.pipeline import Experiment, Pipeline


@dataclasses.dataclass(frozen=True)
class Config:
    hidden: int = 4  # sigmoid units in the hidden layer
    steps: int = 1000  # full-batch gradient steps
    learning_rate: float = 0.5
    momentum: float = 0.9
    seed: int = 0  # initial weights

    def __post_init__(self):
        fnn.config.check_at_least(self, (("hidden", 1), ("steps", 1)))
        fnn.config.check_seeds(self, ["seed"])
        fnn.config.check_that(self, (("learning_rate", self.learning_rate > 0, "positive"),
                                     ("momentum", 0 <= self.momentum < 1, "in [0, 1)")))


X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
Y = np.array([[0], [1], [1], [0]], np.float32)  # XOR of the two inputs


# -- the stages ------------------------------------------------------------------------


def model(config: Config) -> dict:
    return {
        "model": fnn.serial(fnn.Dense(config.hidden), fnn.sigmoid, fnn.Dense(1)),
        "optimizer": optax.sgd(config.learning_rate, momentum=config.momentum),
        "loss": fnn.losses.sigmoid_binary_cross_entropy,
    }


def train(model, optimizer, loss, config: Config, run=None, progress: bool = False) -> dict:
    """Full-batch training: every step sees all four points."""
    import grain

    state = fnn.init_train_state(model, optimizer, jax.random.key(config.seed), X)
    step = fnn.make_train_step(model, optimizer, loss)
    full_batch = grain.MapDataset.range(config.steps).map(lambda k: (X, Y))
    log_every = max(1, config.steps // 5)
    state, history = fnn.loop.train_loop(
        step, state, full_batch, run=run, log_every=log_every, progress=progress
    )
    return {"state": state, "history": history}


def report(model, state, loss, history) -> dict:
    probabilities = jax.nn.sigmoid(model(state.params, X))[:, 0]
    predictions = (probabilities > 0.5).astype(np.int32)
    final = {
        "probabilities": np.asarray(probabilities).tolist(),  # P(y = 1) for each point
        "predictions": np.asarray(predictions).tolist(),
        "all_correct": bool((predictions == Y[:, 0]).all()),
        "loss": float(loss(model(state.params, X), Y)),
    }
    lines = [f"step {r['step']:5d}  loss {r['loss']:.4f}" for r in history if r["split"] == "train"]
    lines.append("x1 x2  target  P(y=1)  output")
    for (x1, x2), target, p, out in zip(X.astype(int), Y[:, 0].astype(int), final["probabilities"],
                                        final["predictions"]):
        lines.append(f" {x1}  {x2}     {target}     {p:.3f}     {out}")
    verdict = "all four right" if final["all_correct"] else "NOT all right"
    lines.append(f"{verdict}; final loss {final['loss']:.4f}")
    return {"final": final, "report": lines}


PIPELINE = Pipeline(model, train, report)
EXPERIMENT = Experiment("xor", "a 2-4-1 sigmoid network learns XOR by backpropagation", Config(), PIPELINE)


def run(config: Config = Config(), **options) -> dict:
    """Train the network on the four XOR points; returns the pipeline's values
    (``history``: the mean training loss over each fifth of the run)."""
    return EXPERIMENT(config, **options)


if __name__ == "__main__":
    fnn.cli.experiment_main("xor", program=True)
