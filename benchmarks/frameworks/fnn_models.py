"""fnn: the models from fnn's layers, trained by ``fnn.make_train_step``."""

from __future__ import annotations

import contextlib
import dataclasses
import types

import jax
import jax.numpy as jnp
import optax

import fnn
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

STEPS_PER_CALL = 10


def model(name: str) -> fnn.Layer:
    kind = SPECS[name].kind
    if kind == "lenet":
        return fnn.serial(
            fnn.Conv(6, (5, 5)), fnn.relu, fnn.MaxPool((2, 2)),
            fnn.Conv(16, (5, 5), padding="VALID"), fnn.relu, fnn.MaxPool((2, 2)),
            fnn.Flatten(), fnn.Dense(120), fnn.relu, fnn.Dense(84), fnn.relu, fnn.Dense(10),
        )
    if kind == "lstm":
        return fnn.serial(fnn.Embedding(VOCAB, LSTM_EMBED), fnn.Recurrent(fnn.LSTM(LSTM_HIDDEN)), fnn.Dense(VOCAB))
    if kind == "transformer":
        return fnn.TransformerLM(vocab_size=VOCAB, d_model=D_MODEL, num_heads=HEADS, num_layers=LAYERS,
                                 mlp_dim=MLP_DIM, max_len=SEQ)
    layers = []
    for width in MLP_WIDTHS[name][1:-1]:
        layers += [fnn.Dense(width), fnn.relu]
    return fnn.serial(*layers, fnn.Dense(MLP_WIDTHS[name][-1]))


@dataclasses.dataclass(frozen=True)
class JaxRules(fnn.Layer):
    """``model`` with JAX's own gradient rules: its apply leaves ``fnn.reverse_mode_only``
    (which ``make_train_step`` enters), to measure what fnn's rules (``fnn.autodiff``, and
    ``Recurrent``'s hand-written backward loop) gain.
    Same parameters, same numbers up to summation order."""

    model: fnn.Layer

    def init(self, key, x):
        return self.model.init(key, x)

    def apply(self, params, state, x, *, key=None, train=False):
        with fnn.reverse_mode_only(False):
            return self.model.apply(params, state, x, key=key, train=train)


def make(name: str, batch: tuple, steps_per_call: int = 1, jax_rules: bool = False) -> Bench:
    """fnn's step; with ``steps_per_call`` K > 1, K steps per call (``lax.scan`` over K
    batches staged on the device), counted as K steps."""
    net = JaxRules(model(name)) if jax_rules else model(name)
    optimizer = optax.adam(LEARNING_RATE)
    batch = jax.device_put(batch)
    state = fnn.init_train_state(net, optimizer, jax.random.key(0), batch[0])
    step = fnn.make_train_step(net, optimizer, fnn.losses.softmax_cross_entropy, steps_per_call=steps_per_call)
    if steps_per_call > 1:
        batch = jax.device_put(jax.tree.map(lambda a: jnp.stack([a] * steps_per_call), batch))

    def run(s, b):
        s, metrics = step(s, b)
        return s, metrics["loss"]

    params = sum(x.size for x in jax.tree.leaves(state.params))
    return Bench(run, state, batch, params, jax.block_until_ready, step.lower, steps_per_call)


def traced_under(net: fnn.Layer, batch: tuple, patch: contextlib.AbstractContextManager) -> Bench:
    """fnn's step of ``net`` (adam, one step per call), traced and compiled inside the
    context ``patch`` (a variant of fnn that holds only while the step is traced)."""
    optimizer = optax.adam(LEARNING_RATE)
    batch = jax.device_put(batch)
    state = fnn.init_train_state(net, optimizer, jax.random.key(0), batch[0])
    step = fnn.make_train_step(net, optimizer, fnn.losses.softmax_cross_entropy)
    with patch:
        compiled = step.lower(state, batch).compile()

    def run(s, b):
        s, metrics = compiled(s, b)
        return s, metrics["loss"]

    params = sum(x.size for x in jax.tree.leaves(state.params))
    lowered = types.SimpleNamespace(compile=lambda: compiled)  # for suite.analyse
    return Bench(run, state, batch, params, jax.block_until_ready, lambda s, b: lowered)


def make_scan(name: str, batch: tuple) -> Bench:
    return make(name, batch, STEPS_PER_CALL)


def make_jax_rules(name: str, batch: tuple) -> Bench:
    return make(name, batch, jax_rules=True)


def count_params(name: str, batch: tuple) -> int:
    """The parameter count, from shapes alone (nothing is computed)."""
    return count_floats(jax.eval_shape(lambda x: model(name).init(jax.random.key(0), x)[0], batch[0]))
