"""Dense (fully connected) and Embedding layers."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn import initializers
from fnn.autodiff import matmul
from fnn.core import Layer, ShapeError, promoted, shape_str, to_rank
from fnn.layers._common import (
    WeightOptions,
    compute_dtype,
    float_dtype,
    positive_int,
    require_features,
    require_float,
    weight_and_bias,
)


@dataclasses.dataclass(frozen=True)
class Dense(WeightOptions, Layer):
    """A fully connected layer: ``y = x @ w + b`` on the last axis.

    Args:
        features: size of the output's last axis.
        use_bias, w_init, b_init, dtype, param_dtype: keyword-only, see ``WeightOptions``.

    Shapes: ``x: [..., in]`` -> ``y: [..., features]``; params ``w: [in, features]``,
    ``b: [features]``.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> layer = fnn.Dense(4)
        >>> params, _ = layer.init(jax.random.key(0), jnp.zeros((2, 3)))
        >>> layer(params, jnp.ones((2, 3))).shape
        (2, 4)
    """

    features: int

    def __post_init__(self):
        positive_int(self, "features", self.features)

    def init_params(self, key, x):
        require_float(self, x)
        if not x.shape:
            raise ShapeError(f"Dense expects input with a feature axis, got {shape_str(x)}")
        return weight_and_bias(self, key, (x.shape[-1], self.features))

    def forward(self, params, x, *, key=None, train=False):
        w = params["w"]
        if len(w.shape) != 2 or w.shape[1] != self.features or not self._bias_fits(params):
            raise ShapeError(
                f"Dense with {self.features} features got parameters {self._param_shapes(params)}: were they "
                f"made by this layer's init? (w is [in, out]: [n, {self.features}])"
            )
        require_float(self, x)
        require_features(self, x, w.shape[0])
        dtype = compute_dtype(self, x, w)
        y = matmul(x.astype(dtype), w.astype(dtype))
        return y + to_rank(params["b"].astype(dtype), y.ndim) if self.use_bias else y


@dataclasses.dataclass(frozen=True)
class Embedding(Layer):
    """A lookup table from integer ids to vectors.

    Args:
        num_embeddings: number of ids (the vocabulary size).
        features: size of each vector.
        w_init: initializer of the table (default: standard normal).
        dtype, param_dtype: computation and storage dtypes.

    Shapes: ``ids: int[...]`` -> ``y: [..., features]``; params ``w: [num_embeddings,
    features]``. Use ``attend`` to score vectors against the table (tied output layers).
    An id outside ``[0, num_embeddings)`` is a ``ShapeError`` when the ids are concrete;
    under ``jit`` it cannot raise, and its row comes out NaN instead.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> layer = fnn.Embedding(100, 8)
        >>> params, _ = layer.init(jax.random.key(0), jnp.zeros((2, 5), jnp.int32))
        >>> layer(params, jnp.array([[1, 2, 3, 4, 5]])).shape
        (1, 5, 8)
    """

    num_embeddings: int
    features: int
    w_init: Any = jax.nn.initializers.normal(1.0)
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        positive_int(self, "num_embeddings", self.num_embeddings)
        positive_int(self, "features", self.features)

    def init_params(self, key, x):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise ShapeError(f"Embedding expects integer ids, got {shape_str(x)}")
        init = initializers.get(self.w_init)
        dtype = float_dtype(self, "param_dtype", self.param_dtype)
        if self.dtype is not None:
            float_dtype(self, "dtype", self.dtype)
        return {"w": init(key, (self.num_embeddings, self.features), dtype)}

    def _table(self, params: dict) -> jax.Array:
        """The table, checked to be this layer's ``[num_embeddings, features]``."""
        table = params["w"]
        if tuple(table.shape) != (self.num_embeddings, self.features):
            raise ShapeError(
                f"Embedding({self.num_embeddings}, {self.features}) got a table {shape_str(table)}: "
                "were the parameters made by this layer's init?"
            )
        return table

    def forward(self, params, x, *, key=None, train=False):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise ShapeError(f"Embedding expects integer ids, got {shape_str(x)}")
        table = self._table(params)
        n = table.shape[0]
        if not isinstance(x, jax.core.Tracer):  # concrete ids: check them here
            ids = np.asarray(x)
            bad = np.flatnonzero((ids < 0) | (ids >= n))
            if bad.size:
                where = np.unravel_index(bad[0], x.shape)
                raise ShapeError(
                    f"Embedding has ids 0 to {n - 1}, got {int(ids[where])} at index "
                    f"{tuple(int(i) for i in where)} of ids {shape_str(x)} ({bad.size} out of range)"
                )
        # Traced ids cannot raise: an out-of-range id (negative too) gives a row of NaN, so
        # the loss is NaN and fnn.fit stops, rather than a silently wrong lookup.
        rows = jnp.take(table, jnp.where(x < 0, n, x), axis=0, mode="fill", fill_value=jnp.nan)
        return rows.astype(self.dtype or table.dtype)

    def attend(self, params, x):
        """Scores ``x: [..., features]`` against every embedding: ``[..., num_embeddings]``."""
        table = self._table(params)
        require_features(self, x, self.features)
        dtype = self.dtype or promoted(x, table)
        return matmul(x.astype(dtype), table.astype(dtype).T)
