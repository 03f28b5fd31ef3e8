"""Flax NNX: ``nnx.Module`` models and ``nnx.Optimizer``, compiled two ways: ``nnx.jit``
on the stateful objects, and the pure ``nnx.split`` / ``nnx.merge`` + ``jax.jit`` path
(the graph structure fixed outside, only the state's arrays crossing the jit boundary)."""

from __future__ import annotations

import jax
import optax
from flax import nnx

from benchmarks.frameworks.raw_jax import cross_entropy
from benchmarks.models import (
    D_MODEL,
    HEADS,
    LAYERS,
    LEARNING_RATE,
    LSTM_EMBED,
    LSTM_HIDDEN,
    MLP_DIM,
    MLP_WIDTHS,
    SEQ,
    SPECS,
    VOCAB,
    Bench,
    count_floats,
)


class Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(D_MODEL, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(HEADS, D_MODEL, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(D_MODEL, rngs=rngs)
        self.fc1 = nnx.Linear(D_MODEL, MLP_DIM, rngs=rngs)
        self.fc2 = nnx.Linear(MLP_DIM, D_MODEL, rngs=rngs)

    def __call__(self, h, mask):
        h = h + self.attention(self.ln1(h), mask=mask)
        return h + self.fc2(nnx.gelu(self.fc1(self.ln2(h))))


class Model(nnx.Module):
    def __init__(self, name: str, rngs: nnx.Rngs):
        self.kind = kind = SPECS[name].kind
        if kind == "lstm":
            self.embed = nnx.Embed(VOCAB, LSTM_EMBED, rngs=rngs)
            self.rnn = nnx.RNN(nnx.OptimizedLSTMCell(LSTM_EMBED, LSTM_HIDDEN, rngs=rngs))
            self.head = nnx.Linear(LSTM_HIDDEN, VOCAB, rngs=rngs)
            return
        if kind == "transformer":
            self.embed = nnx.Embed(VOCAB, D_MODEL, rngs=rngs)
            self.pos = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (SEQ, D_MODEL)))
            self.blocks = nnx.List([Block(rngs) for _ in range(LAYERS)])
            self.norm = nnx.LayerNorm(D_MODEL, rngs=rngs)
            self.head = nnx.Linear(D_MODEL, VOCAB, rngs=rngs)
            return
        if kind == "lenet":
            self.c1 = nnx.Conv(1, 6, (5, 5), rngs=rngs)
            self.c2 = nnx.Conv(6, 16, (5, 5), padding="VALID", rngs=rngs)
            widths = (400, 120, 84, 10)
        else:
            widths = MLP_WIDTHS[name]
        self.dense = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths, widths[1:])])

    def __call__(self, x):
        if self.kind == "lstm":
            return self.head(self.rnn(self.embed(x)))
        if self.kind == "transformer":
            h = self.embed(x) + self.pos[: x.shape[1]]
            mask = nnx.make_causal_mask(x)
            for block in self.blocks:
                h = block(h, mask)
            return self.head(self.norm(h))
        if self.kind == "lenet":
            x = nnx.max_pool(nnx.relu(self.c1(x)), (2, 2), (2, 2))
            x = nnx.max_pool(nnx.relu(self.c2(x)), (2, 2), (2, 2))
            x = x.reshape(x.shape[0], -1)
        for layer in self.dense[:-1]:
            x = nnx.relu(layer(x))
        return self.dense[-1](x)


def _loss(model, x, y):
    return cross_entropy(model(x), y)


def _build(name: str) -> tuple[Model, nnx.Optimizer, int]:
    model = Model(name, nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(LEARNING_RATE), wrt=nnx.Param)
    count = sum(a.size for a in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return model, optimizer, count


@nnx.jit(donate_argnums=(0, 1))
def _train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(_loss)(model, x, y)
    optimizer.update(model, grads)
    return loss


def make_jit(name: str, batch: tuple) -> Bench:
    """``nnx.jit`` over the model and optimizer objects (updated in place)."""
    model, optimizer, count = _build(name)

    def step(state, b):
        return state, _train_step(*state, *b)

    def lower(state, b):
        return _train_step.lower(*state, *b)

    return Bench(step, (model, optimizer), jax.device_put(batch), count, jax.block_until_ready, lower)


def make_split(name: str, batch: tuple) -> Bench:
    """``nnx.split`` once; each step ``nnx.merge``s inside ``jax.jit`` and returns the state."""
    model, optimizer, count = _build(name)
    graphdef, state = nnx.split((model, optimizer))

    def step(state, b):
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(_loss)(model, *b)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    step = jax.jit(step, donate_argnums=0)
    return Bench(step, state, jax.device_put(batch), count, jax.block_until_ready, step.lower)




def count_params(name: str, batch: tuple) -> int:
    """The parameter count, from shapes alone (nothing is computed)."""
    return count_floats(nnx.state(nnx.eval_shape(lambda: Model(name, nnx.Rngs(0))), nnx.Param))
