"""The benchmark models, their data, and what every framework's implementation returns.

Every framework builds the same five architectures (same layers, same parameter count,
same floating-point work per step) and trains them with adam on the same batch:

- ``mlp-small``: 64-128-128-10, batch 128 (dispatch-bound: the host's work per call is a
  large part of a step);
- ``mlp-large``: 784-1024-1024-10, batch 256 (compute-bound);
- ``lenet``: LeNet-5 on 28x28x1 images (conv 6@5x5 same, max-pool 2, conv 16@5x5 valid,
  max-pool 2, dense 120-84-10), batch 128;
- ``lstm``: a character language model: embedding 96x64, one LSTM layer of 256 units
  over 64 steps (one bias vector of 4x256), a dense head to 96 characters; batch 32;
- ``transformer``: a decoder-only language model: embedding 96x128 and learned positions,
  2 pre-norm blocks (LayerNorm, causal 4-head attention with biased q/k/v/out projections,
  LayerNorm, MLP 128-512-128 with tanh-approximated GELU), a final LayerNorm and a dense
  head to 96; sequences of 128, batch 16.

The classifiers take integer labels; the language models predict the next character of a
random sequence (``x = s[:, :-1]``, ``y = s[:, 1:]``), with cross-entropy over all positions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

LEARNING_RATE = 1e-3
VOCAB = 96
LSTM_EMBED, LSTM_HIDDEN, LSTM_STEPS = 64, 256, 64
D_MODEL, HEADS, LAYERS, MLP_DIM, SEQ = 128, 4, 2, 512, 128
MLP_WIDTHS = {"mlp-small": (64, 128, 128, 10), "mlp-large": (784, 1024, 1024, 10)}


@dataclasses.dataclass(frozen=True)
class Spec:
    """One benchmark model: its kind, batch size and the steps one timed round takes."""

    name: str
    kind: str  # "mlp", "lenet", "lstm" or "transformer"
    batch: int
    steps: int  # steps per timed round (a round should take a fraction of a second)
    compute_bound: bool = False


SPECS = {
    "mlp-small": Spec("mlp-small", "mlp", 128, 300),
    "mlp-large": Spec("mlp-large", "mlp", 256, 10, compute_bound=True),
    "lenet": Spec("lenet", "lenet", 128, 10),
    "lstm": Spec("lstm", "lstm", 32, 4),
    "transformer": Spec("transformer", "transformer", 16, 4, compute_bound=True),
}


def batch_for(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The (inputs, labels) batch every framework trains on: float32 inputs (NHWC images
    for ``lenet``) or int32 character ids, and int32 labels."""
    spec = SPECS[name]
    rng = np.random.default_rng(0)
    if spec.kind in ("lstm", "transformer"):
        steps = LSTM_STEPS if spec.kind == "lstm" else SEQ
        s = rng.integers(0, VOCAB, (spec.batch, steps + 1)).astype(np.int32)
        return s[:, :-1], s[:, 1:]
    shape = (28, 28, 1) if spec.kind == "lenet" else (MLP_WIDTHS[name][0],)
    x = rng.normal(size=(spec.batch, *shape)).astype(np.float32)
    return x, rng.integers(0, 10, spec.batch).astype(np.int32)


def expected_params(name: str) -> int:
    """The parameter count of ``name``, counted from the architecture above."""
    kind = SPECS[name].kind

    def dense(a, b):
        return a * b + b

    if kind == "mlp":
        w = MLP_WIDTHS[name]
        return sum(dense(a, b) for a, b in zip(w, w[1:]))
    if kind == "lenet":
        return (5 * 5 * 1 * 6 + 6) + (5 * 5 * 6 * 16 + 16) + dense(400, 120) + dense(120, 84) + dense(84, 10)
    if kind == "lstm":
        gates = 4 * LSTM_HIDDEN
        return VOCAB * LSTM_EMBED + (LSTM_EMBED + LSTM_HIDDEN) * gates + gates + dense(LSTM_HIDDEN, VOCAB)
    block = 2 * (2 * D_MODEL) + 4 * dense(D_MODEL, D_MODEL) + dense(D_MODEL, MLP_DIM) + dense(MLP_DIM, D_MODEL)
    return VOCAB * D_MODEL + SEQ * D_MODEL + LAYERS * block + 2 * D_MODEL + dense(D_MODEL, VOCAB)


@dataclasses.dataclass
class Bench:
    """One framework's training of one model, ready to time.

    ``step(state, batch) -> (state, loss)`` takes ``steps_per_call`` steps; ``sync(loss)``
    waits for the result; ``lower(state, batch)`` (JAX frameworks only) gives the step's
    ``jax.stages.Lowered`` for XLA's memory and cost analyses.
    """

    step: Callable[[Any, Any], tuple[Any, Any]]
    state: Any
    batch: Any
    params: int
    sync: Callable[[Any], Any]
    lower: Callable[[Any, Any], Any] | None = None
    steps_per_call: int = 1


def count_floats(tree: Any) -> int:
    """The number of floating-point values in a pytree of arrays or shape specs."""
    import jax
    import jax.numpy as jnp

    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree)
               if hasattr(leaf, "shape") and jnp.issubdtype(leaf.dtype, jnp.floating))
