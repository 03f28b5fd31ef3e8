"""Dropout: zero a random fraction of the input during training."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from fnn.core import Layer, LayerError


@dataclasses.dataclass(frozen=True)
class Dropout(Layer):
    """Zeroes each entry with probability ``rate`` and scales the rest by ``1 / (1 - rate)``.

    Active only when ``train=True``, which then needs an rng ``key``; otherwise the
    identity.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> drop = fnn.Dropout(0.5)
        >>> drop({}, jnp.ones(4))                      # evaluation: unchanged
        Array([1., 1., 1., 1.], dtype=float32)
        >>> y = drop({}, jnp.ones(1000), key=jax.random.key(0), train=True)
        >>> sorted(set(y.tolist()))
        [0.0, 2.0]
    """

    rate: float

    def __post_init__(self):
        if not isinstance(self.rate, int | float) or not 0.0 <= self.rate < 1.0:
            raise ValueError(f"Dropout: rate must be in [0, 1), got {self.rate!r}")

    def forward(self, params, x, *, key=None, train=False):
        if not train or self.rate == 0.0:
            return x
        if key is None:
            raise LayerError("Dropout needs an rng key when train=True: pass key=...")
        keep = jax.random.bernoulli(key, 1.0 - self.rate, x.shape)
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))
