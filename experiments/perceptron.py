"""Rosenblatt's perceptron (1958) learns to separate two classes of points in the plane.

Frank Rosenblatt's perceptron ("The perceptron: a probabilistic model for information
storage and organization in the brain", Psychological Review, 1958) is a single
threshold unit: it outputs ``y_hat = step(w . x + b)``, 1 or 0. Its learning rule is
not gradient descent on the output's error -- the step function has no useful
gradient (it is a subgradient step on the perceptron criterion). Instead, after each
example it is shown, the unit changes its weights only if it got the example wrong::

    w += lr * (y - y_hat) * x

which adds the input to the weights when the unit said 0 and should have said 1, and
subtracts it in the opposite case. The perceptron convergence theorem (Block 1962,
Novikoff 1962) says that if some line separates the classes with margin ``gamma``, and
no input is farther than ``R`` from the origin, the rule makes at most ``(R / gamma)**2``
mistakes in all, however the examples are ordered, and so stops changing: a pass over
the data without a mistake means zero training errors.

Here the data are points drawn uniformly from the square [-1, 1]^2, labelled by the
side of a random line they fall on, with the points closer to the line than ``margin``
left out so that the classes are separable with that margin. The bias is learned as
the weight of a constant input 1. Each pass over the data (an epoch) is one compiled
``lax.scan`` of the update over the examples, in order; the loop stops at the first
pass without a mistake.

A single unit can only draw a straight line, so it cannot learn XOR (Minsky & Papert,
"Perceptrons", 1969); ``experiments/xor.py`` shows how a hidden layer trained by
backpropagation gets past that.

Run: fnn run perceptron [points=200] [margin=0.1] [seed=0]
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import fnn
from fnn.pipeline import Experiment, Pipeline


@dataclasses.dataclass(frozen=True)
class Config:
    points: int = 200  # training examples
    margin: float = 0.1  # no point lies closer than this to the separating line
    learning_rate: float = 1.0  # lr in the rule (from zero weights it only scales w, up to 1e30)
    max_epochs: int = 1000  # give up after this many passes over the data
    seed: int = 0  # draws the line and the points

    def __post_init__(self):
        fnn.config.check_at_least(self, (("points", 2), ("max_epochs", 1), ("margin", 0)))
        fnn.config.check_seeds(self, ["seed"])
        fnn.config.check_that(self, (
            ("learning_rate", self.learning_rate > 0, "positive"),
            # w is float32 (at most 3.4e38) and each mistake adds lr * x to it, with |x| <= sqrt(3)
            ("learning_rate", self.learning_rate <= 1e30, "at most 1e30 (float32 weights would overflow)"),
        ))


def make_data(points: int, margin: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``points`` 2-D inputs in [-1, 1]^2, their 0/1 labels (the side of a random line
    they fall on), and that line as weights ``(w1, w2, b)``: label 1 where ``w . x + b > 0``."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    normal = np.array([np.cos(angle), np.sin(angle)])  # unit normal of the line
    offset = rng.uniform(-0.3, 0.3)  # the line is {x : normal . x = offset}
    candidates = rng.uniform(-1.0, 1.0, size=(4 * points, 2))
    distance = candidates @ normal - offset
    keep = np.abs(distance) >= margin
    if keep.sum() < points:
        raise fnn.config.ConfigError(f"margin {margin} leaves too few points; use a smaller margin")
    x = candidates[keep][:points].astype(np.float32)
    y = (distance[keep][:points] > 0).astype(np.float32)
    return x, y, np.array([*normal, -offset])


def with_bias_input(x: np.ndarray) -> np.ndarray:
    """Append a constant input 1, so the bias is just one more weight."""
    return np.concatenate([x, np.ones((len(x), 1), x.dtype)], axis=1)


def predict(w: jax.Array, x: jax.Array) -> jax.Array:
    """The perceptron's output: 1 where ``w . x > 0``, else 0 (a step function)."""
    return (x @ w > 0).astype(jnp.float32)


@jax.jit
def train_epoch(w: jax.Array, x: jax.Array, y: jax.Array, lr: float) -> tuple[jax.Array, jax.Array]:
    """One pass over the examples in order, applying the rule after each; returns the new
    weights and the number of mistakes made during the pass."""

    def visit(w, example):
        xi, yi = example
        y_hat = predict(w, xi)
        w = w + lr * (yi - y_hat) * xi  # (y - y_hat) is 0 when right, +1 or -1 when wrong
        return w, y_hat != yi

    w, mistakes = lax.scan(visit, w, (x, y))
    return w, mistakes.sum()


# -- the stages ------------------------------------------------------------------------


def data(config: Config) -> dict:
    x, y, true_line = make_data(config.points, config.margin, config.seed)
    return {"x": with_bias_input(x), "y": y, "true_line": true_line}


def train(x, y, config: Config, run=None) -> dict:
    """Apply the rule, one pass at a time, until a pass without mistakes; each pass's
    mistakes go to the run's metrics log."""
    w = jnp.zeros(3)  # two input weights and the bias, all starting at zero
    epochs, total_mistakes, converged = 0, 0, False
    while epochs < config.max_epochs and not converged:
        w, mistakes = train_epoch(w, x, y, config.learning_rate)
        epochs += 1
        total_mistakes += int(mistakes)
        converged = int(mistakes) == 0
        if run is not None:
            run.log({"step": epochs, "split": "train", "mistakes": int(mistakes)})
    return {"w": w, "epochs": epochs, "mistakes": total_mistakes, "converged": converged}


def line(weights) -> str:
    """The line ``w . (x1, x2, 1) = 0``, scaled so that (w1, w2) is a unit vector."""
    w1, w2, b = np.asarray(weights) / np.linalg.norm(weights[:2])
    return f"{w1:+.3f} * x1 {w2:+.3f} * x2 {b:+.3f} = 0"


def report(x, y, true_line, w, epochs, mistakes, converged) -> dict:
    # Novikoff's bound on the mistakes, (R / gamma)**2, in the (x1, x2, 1) space the
    # perceptron works in: R is the longest input, gamma the margin of the true line.
    radius = np.linalg.norm(x, axis=1).max()
    gamma = np.abs(x @ true_line).min() / np.linalg.norm(true_line)
    accuracy = float(jnp.mean(predict(w, x) == y))
    final = {
        "converged": converged,
        "epochs": epochs,  # passes until (and including) the first one without a mistake
        "mistakes": mistakes,  # weight updates in all
        "mistake_bound": float((radius / gamma) ** 2),
        "train_errors": int(round((1.0 - accuracy) * len(y))),
        "accuracy": accuracy,
        "weights": np.asarray(w).tolist(),  # (w1, w2, b)
        "true_line": true_line.tolist(),
    }
    status = "converged" if converged else "did NOT converge"
    lines = [
        f"{status} after {epochs} epochs: {mistakes} mistakes in all "
        f"(Novikoff's bound: {final['mistake_bound']:.0f})",
        f"learned line: {line(final['weights'])}",
        f"true line:    {line(final['true_line'])}",
        f"training accuracy {accuracy:.4f} ({final['train_errors']} errors)",
    ]
    return {"final": final, "report": lines}


PIPELINE = Pipeline(data, train, report)
EXPERIMENT = Experiment(
    "perceptron", "Rosenblatt's perceptron rule (1958) on linearly separable points", Config(), PIPELINE
)


def run(config: Config = Config(), **options) -> dict:
    """Train the perceptron until a pass without mistakes; returns the pipeline's values."""
    return EXPERIMENT(config, **options)


if __name__ == "__main__":
    fnn.cli.experiment_main("perceptron", program=True)
