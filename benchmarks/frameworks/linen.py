"""Flax Linen: ``nn.Module`` models, ``jax.jit(value_and_grad)`` and optax."""

from __future__ import annotations

import flax.linen as nn
import jax

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


class Block(nn.Module):
    dropout: float = 0.0  # on the attention weights and both residual branches (rng "dropout")

    @nn.compact
    def __call__(self, h, mask):
        drop = nn.Dropout(self.dropout, deterministic=self.dropout == 0.0)
        attention = nn.MultiHeadDotProductAttention(num_heads=HEADS, qkv_features=D_MODEL, dropout_rate=self.dropout,
                                                    deterministic=self.dropout == 0.0)
        h = h + drop(attention(nn.LayerNorm()(h), mask=mask))
        m = nn.Dense(D_MODEL)(nn.gelu(nn.Dense(MLP_DIM)(nn.LayerNorm()(h))))
        return h + drop(m)


class Model(nn.Module):
    model: str
    dropout: float = 0.0  # the transformer's, as fnn.TransformerLM's (embeddings included)

    @nn.compact
    def __call__(self, x):
        kind = SPECS[self.model].kind
        if kind == "lstm":
            h = nn.RNN(nn.OptimizedLSTMCell(LSTM_HIDDEN))(nn.Embed(VOCAB, LSTM_EMBED)(x))
            return nn.Dense(VOCAB)(h)
        if kind == "transformer":
            pos = self.param("pos", nn.initializers.normal(0.02), (SEQ, D_MODEL))
            h = nn.Dropout(self.dropout, deterministic=self.dropout == 0.0)(nn.Embed(VOCAB, D_MODEL)(x))
            h = h + pos[: x.shape[1]]
            mask = nn.make_causal_mask(x)
            for _ in range(LAYERS):
                h = Block(self.dropout)(h, mask)
            return nn.Dense(VOCAB)(nn.LayerNorm()(h))
        if kind == "lenet":
            x = nn.max_pool(nn.relu(nn.Conv(6, (5, 5))(x)), (2, 2), (2, 2))
            x = nn.max_pool(nn.relu(nn.Conv(16, (5, 5), padding="VALID")(x)), (2, 2), (2, 2))
            x = x.reshape(x.shape[0], -1)
            widths = (120, 84, 10)
        else:
            widths = MLP_WIDTHS[self.model][1:]
        for width in widths[:-1]:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(widths[-1])(x)


def make(name: str, batch: tuple, dropout: float = 0.0) -> Bench:
    """With ``dropout``, the step draws a fresh ``"dropout"`` rng from a key it carries."""
    model = Model(name, dropout)
    params = model.init(jax.random.key(0), jax.device_put(batch[0]))
    if dropout == 0.0:
        return adam_bench(model.apply, params, batch)
    return adam_bench(lambda p, x, key: model.apply(p, x, rngs={"dropout": key}), params, batch, key=jax.random.key(1))


def count_params(name: str, batch: tuple) -> int:
    """The parameter count, from shapes alone (nothing is computed)."""
    return count_floats(jax.eval_shape(Model(name).init, jax.random.key(0), batch[0]))
