"""Dropout: zero a random fraction of the input during training."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fnn.core import Layer, LayerError, is_real
from fnn.layers._common import freeze

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """Which entries dropout at ``rate`` keeps: ``jax.random.bernoulli(key, 1 - rate, shape)``,
    bit for bit.

    For a Threefry key (JAX's default) the mask is computed here with the Threefry-2x32
    rounds written out, so that XLA fuses them into the ops that read the mask. On CPU JAX
    runs the rounds as a loop over the whole array instead; there, a mask of a million
    entries and the ``where`` that applies it took 1.7 ms against 8.3 ms (a one-off
    script). For any other key type, a batch of keys, 64-bit floats enabled,
    ``jax_threefry_partitionable`` off, or 2**32 entries or more, it is
    ``jax.random.bernoulli``.
    """
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    if (
        str(jax.random.key_impl(key)) != "threefry2x32"
        or not jax.config.jax_threefry_partitionable
        or jax.config.jax_enable_x64
        or key.shape != (() if typed else (2,))
        or math.prod(shape) >= 2**32
    ):
        return jax.random.bernoulli(key, 1.0 - rate, shape)
    k1, k2 = jax.random.key_data(key) if typed else key
    # the 64-bit counter of each entry (its row-major index): high word 0, low word the index
    index = jnp.zeros(shape, np.uint32)
    for axis in range(len(shape)):
        index = index + lax.broadcasted_iota(np.uint32, shape, axis) * np.uint32(math.prod(shape[axis + 1 :]))
    high, low = _threefry2x32(k1, k2, jnp.zeros(shape, np.uint32), index)
    # jax.random.uniform's float32 in [0, 1) from 32 bits, compared with 1 - rate
    bits = (high ^ low) >> np.uint32(9) | np.uint32(0x3F800000)
    return lax.bitcast_convert_type(bits, np.float32) - np.float32(1.0) < np.float32(1.0 - rate)


def _threefry2x32(k1, k2, x1, x2):
    """The Threefry-2x32 hash of the counters ``(x1, x2)`` under the key ``(k1, k2)``: 20
    rounds, the key injected after every four."""
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = (x2 << np.uint32(r) | x2 >> np.uint32(32 - r)) ^ x1
        x1, x2 = x1 + ks[(i + 1) % 3], x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


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
        if not is_real(self.rate) or not 0.0 <= self.rate < 1.0:
            raise ValueError(f"Dropout: rate must be in [0, 1), got {self.rate!r}")
        freeze(self, "rate", float(self.rate))  # a NumPy float as Python's: it must not promote x

    def forward(self, params, x, *, key=None, train=False):
        if not train or self.rate == 0.0:
            return x
        if key is None:
            raise LayerError("Dropout needs an rng key when train=True: pass key=...")
        keep = keep_mask(key, self.rate, x.shape)
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))
