"""Equinox: ``eqx.Module`` models on single examples, ``jax.vmap``-ed over the batch,
``eqx.filter_value_and_grad`` and ``eqx.filter_jit`` with optax."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

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


class Block(eqx.Module):
    ln1: eqx.nn.LayerNorm
    attention: eqx.nn.MultiheadAttention
    ln2: eqx.nn.LayerNorm
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.ln1, self.ln2 = eqx.nn.LayerNorm(D_MODEL, eps=1e-6), eqx.nn.LayerNorm(D_MODEL, eps=1e-6)
        self.attention = eqx.nn.MultiheadAttention(
            HEADS, D_MODEL, use_query_bias=True, use_key_bias=True, use_value_bias=True, use_output_bias=True,
            key=k1,
        )
        self.fc1 = eqx.nn.Linear(D_MODEL, MLP_DIM, key=k2)
        self.fc2 = eqx.nn.Linear(MLP_DIM, D_MODEL, key=k3)

    def __call__(self, h, mask):  # h: [time, d_model]
        a = jax.vmap(self.ln1)(h)
        h = h + self.attention(a, a, a, mask=mask)
        m = jax.vmap(self.fc2)(jax.nn.gelu(jax.vmap(self.fc1)(jax.vmap(self.ln2)(h))))
        return h + m


class Model(eqx.Module):
    kind: str = eqx.field(static=True)
    layers: list

    def __init__(self, name: str, key):
        self.kind = kind = SPECS[name].kind
        keys = iter(jax.random.split(key, 16))
        if kind == "lstm":
            self.layers = [eqx.nn.Embedding(VOCAB, LSTM_EMBED, key=next(keys)),
                           eqx.nn.LSTMCell(LSTM_EMBED, LSTM_HIDDEN, key=next(keys)),
                           eqx.nn.Linear(LSTM_HIDDEN, VOCAB, key=next(keys))]
        elif kind == "transformer":
            self.layers = [eqx.nn.Embedding(VOCAB, D_MODEL, key=next(keys)),
                           jax.random.normal(next(keys), (SEQ, D_MODEL)) * 0.02,
                           [Block(next(keys)) for _ in range(LAYERS)],
                           eqx.nn.LayerNorm(D_MODEL, eps=1e-6),
                           eqx.nn.Linear(D_MODEL, VOCAB, key=next(keys))]
        else:
            convs = []
            if kind == "lenet":  # channels first, as equinox's convolutions are
                convs = [eqx.nn.Conv2d(1, 6, 5, padding="SAME", key=next(keys)),
                         eqx.nn.Conv2d(6, 16, 5, padding="VALID", key=next(keys))]
                widths = (400, 120, 84, 10)
            else:
                widths = MLP_WIDTHS[name]
            self.layers = [convs, [eqx.nn.Linear(a, b, key=next(keys)) for a, b in zip(widths, widths[1:])]]

    def __call__(self, x):  # one example
        if self.kind == "lstm":
            embed, cell, head = self.layers
            zeros = jnp.zeros(LSTM_HIDDEN)

            def scan_step(carry, x_t):
                h, c = cell(x_t, carry)
                return (h, c), h

            _, hs = jax.lax.scan(scan_step, (zeros, zeros), embed.weight[x])
            return jax.vmap(head)(hs)
        if self.kind == "transformer":
            embed, pos, blocks, norm, head = self.layers
            h = embed.weight[x] + pos[: x.shape[0]]
            mask = jnp.tril(jnp.ones((x.shape[0], x.shape[0]), bool))
            for block in blocks:
                h = block(h, mask)
            return jax.vmap(head)(jax.vmap(norm)(h))
        convs, dense = self.layers
        if convs:
            pool = eqx.nn.MaxPool2d(2, 2)
            x = jnp.moveaxis(x, -1, 0)
            for conv in convs:
                x = pool(jax.nn.relu(conv(x)))
            x = x.reshape(-1)
        for layer in dense[:-1]:
            x = jax.nn.relu(layer(x))
        return dense[-1](x)


def make(name: str, batch: tuple) -> Bench:
    model = Model(name, jax.random.key(0))
    optimizer = optax.adam(LEARNING_RATE)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))

    def loss_fn(model, x, y):
        return cross_entropy(jax.vmap(model)(x), y)

    @eqx.filter_jit(donate="all-except-first")
    def train_step(batch, model, opt_state):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(model, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    def step(state, b):
        model, opt_state, loss = train_step(b, *state)
        return (model, opt_state), loss

    def lower(state, b):
        return train_step.lower(b, *state).lowered  # equinox's wrapper around jax's Lowered

    count = sum(a.size for a in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))
    return Bench(step, (model, opt_state), jax.device_put(batch), count, jax.block_until_ready, lower)


def count_params(name: str, batch: tuple) -> int:
    """The parameter count, from shapes alone (nothing is computed)."""
    return count_floats(eqx.filter_eval_shape(Model, name, jax.random.key(0)))
