"""Haiku: ``hk.transform``-ed functions, ``jax.jit(value_and_grad)`` and optax."""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp

from benchmarks.frameworks.raw_jax import adam_bench
from benchmarks.models import (
    D_MODEL,
    HEADS,
    LAYERS,
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


def _layer_norm():
    return hk.LayerNorm(-1, create_scale=True, create_offset=True, eps=1e-6)


def forward(name: str, x: jax.Array) -> jax.Array:
    kind = SPECS[name].kind
    if kind == "lstm":
        h = hk.Embed(VOCAB, LSTM_EMBED)(x)
        lstm = hk.LSTM(LSTM_HIDDEN)
        hs, _ = hk.dynamic_unroll(lstm, h, lstm.initial_state(x.shape[0]), time_major=False)
        return hk.Linear(VOCAB)(hs)
    if kind == "transformer":
        pos = hk.get_parameter("pos", (SEQ, D_MODEL), init=hk.initializers.RandomNormal(0.02))
        h = hk.Embed(VOCAB, D_MODEL)(x) + pos[: x.shape[1]]
        mask = jnp.tril(jnp.ones((1, 1, x.shape[1], x.shape[1]), bool))
        for _ in range(LAYERS):
            a = _layer_norm()(h)
            h = h + hk.MultiHeadAttention(HEADS, D_MODEL // HEADS, w_init=hk.initializers.VarianceScaling(1.0))(
                a, a, a, mask=mask)
            h = h + hk.Linear(D_MODEL)(jax.nn.gelu(hk.Linear(MLP_DIM)(_layer_norm()(h))))
        return hk.Linear(VOCAB)(_layer_norm()(h))
    if kind == "lenet":
        x = hk.max_pool(jax.nn.relu(hk.Conv2D(6, 5)(x)), 2, 2, "VALID")
        x = hk.max_pool(jax.nn.relu(hk.Conv2D(16, 5, padding="VALID")(x)), 2, 2, "VALID")
        x = x.reshape(x.shape[0], -1)
        widths = (120, 84, 10)
    else:
        widths = MLP_WIDTHS[name][1:]
    for width in widths[:-1]:
        x = jax.nn.relu(hk.Linear(width)(x))
    return hk.Linear(widths[-1])(x)


def make(name: str, batch: tuple) -> Bench:
    model = hk.without_apply_rng(hk.transform(lambda x: forward(name, x)))
    params = model.init(jax.random.key(0), jax.device_put(batch[0]))
    return adam_bench(model.apply, params, batch)


def count_params(name: str, batch: tuple) -> int:
    """The parameter count, from shapes alone (nothing is computed)."""
    model = hk.without_apply_rng(hk.transform(lambda x: forward(name, x)))
    return count_floats(jax.eval_shape(model.init, jax.random.key(0), batch[0]))
