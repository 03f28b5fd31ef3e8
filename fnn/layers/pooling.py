"""Max, average and global pooling over 1 to 3 spatial axes, channels last."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from fnn.core import Layer, ShapeError, shape_str
from fnn.layers._common import freeze, int_tuple, require_rank
from fnn.layers.conv import layout, padding_spec, require_nonempty, spatial_dims


@dataclasses.dataclass(frozen=True)
class _Pool(Layer):
    window: tuple[int, ...]
    strides: Any = None
    padding: Any = "VALID"

    def __post_init__(self):
        window = spatial_dims(self, "window", self.window)
        n = len(window)
        freeze(self, "window", window)
        strides = window if self.strides is None else self.strides
        freeze(self, "strides", int_tuple(self, "strides", strides, n))
        freeze(self, "padding", padding_spec(self, self.padding, n))

    def _reduce(self, x: jax.Array, init: Any, op: Any) -> jax.Array:
        padding = self.padding if isinstance(self.padding, str) else ((0, 0), *self.padding, (0, 0))
        return lax.reduce_window(
            x, init, op, (1, *self.window, 1), (1, *self.strides, 1), padding
        )

    def init_params(self, key, x):
        require_rank(self, x, len(self.window) + 2, layout(len(self.window)))
        require_nonempty(self, x, jax.eval_shape(lambda v: self({}, v), x))
        return {}


@dataclasses.dataclass(frozen=True)
class MaxPool(_Pool):
    """The maximum over each window.

    Args:
        window: one size per spatial axis, e.g. ``(2, 2)``.
        strides: one per axis; defaults to the window (non-overlapping windows).
        padding: ``"VALID"`` (default), ``"SAME"`` or explicit (low, high) pairs.

    Shapes: ``x: [batch, *spatial, channels]`` -> ``[batch, *spatial', channels]``.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.MaxPool((2, 2))({}, jnp.zeros((1, 8, 8, 3))).shape
        (1, 4, 4, 3)
    """

    def forward(self, params, x, *, key=None, train=False):
        return self._reduce(x, -jnp.inf, lax.max)


@dataclasses.dataclass(frozen=True)
class AvgPool(_Pool):
    """The mean over each window.

    Args:
        window, strides, padding: as for ``MaxPool``.
        count_include_pad: divide by the full window size even where it overlaps the
            padding (``True``), or by the number of real entries (``False``).

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.AvgPool((2,))({}, jnp.arange(4.0).reshape(1, 4, 1))[0, :, 0]
        Array([0.5, 2.5], dtype=float32)
    """

    count_include_pad: bool = True

    def forward(self, params, x, *, key=None, train=False):
        total = self._reduce(x, 0.0, lax.add)
        if self.count_include_pad or self.padding == "VALID":
            return total / jnp.prod(jnp.array(self.window))
        counts = self._reduce(jnp.ones((1, *x.shape[1:-1], 1), x.dtype), 0.0, lax.add)
        return total / counts


@dataclasses.dataclass(frozen=True)
class _GlobalPool(Layer):
    def init_params(self, key, x):
        if len(x.shape) < 3:
            raise ShapeError(
                f"{type(self).__name__} expects [batch, *spatial, channels] with at least one "
                f"spatial axis, got {shape_str(x)}"
            )
        return {}


@dataclasses.dataclass(frozen=True)
class GlobalAvgPool(_GlobalPool):
    """The mean over all spatial axes: ``[batch, *spatial, channels] -> [batch, channels]``.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.GlobalAvgPool()({}, jnp.arange(8.0).reshape(1, 2, 2, 2))
        Array([[3., 4.]], dtype=float32)
    """

    def forward(self, params, x, *, key=None, train=False):
        return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))


@dataclasses.dataclass(frozen=True)
class GlobalMaxPool(_GlobalPool):
    """The maximum over all spatial axes: ``[batch, *spatial, channels] -> [batch, channels]``.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.GlobalMaxPool()({}, jnp.arange(8.0).reshape(1, 2, 2, 2))
        Array([[6., 7.]], dtype=float32)
    """

    def forward(self, params, x, *, key=None, train=False):
        return jnp.max(x, axis=tuple(range(1, x.ndim - 1)))
