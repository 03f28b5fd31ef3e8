"""Max, average and global pooling over 1 to 3 spatial axes, channels last.

Windows that tile the input (strides equal to the window, no padding) are pooled by
reshaping each window onto its own axes and reducing them, not with
``lax.reduce_window``, whose max gradient is slow on CPU; in ``benchmarks/`` fnn's LeNet
step with JAX's own gradient rules (the pooling the only difference) plans 9.7 MiB
against raw JAX's 25.1 MiB with ``reduce_window``. Both paths give
the same values and route a max-pool gradient to the first maximum of each window, as
``reduce_window``'s gradient does (a window holding a NaN, whose loss is NaN, gives the
gradient to all its elements on the tiled path: telling the NaN apart made fnn's LeNet
step 0.85-0.95x as fast).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from fnn.core import Layer, ShapeError, shape_str
from fnn.layers._common import freeze, int_tuple, require_rank
from fnn.layers.conv import layout, padding_spec, require_nonempty, require_positions, spatial_dims


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

    def _tiles(self, x: jax.Array) -> tuple[jax.Array, tuple[int, ...]] | None:
        """``x`` as ``[batch, out_1, window_1, ..., out_n, window_n, channels]`` and the
        window axes, when the windows tile it; else ``None``. With "VALID" padding the
        positions past the last whole window are dropped, as ``reduce_window`` drops them."""
        spatial = x.shape[1:-1]
        if self.strides != self.window:
            return None
        if self.padding == "SAME" and any(size % w for size, w in zip(spatial, self.window)):
            return None
        if not isinstance(self.padding, str) and any(lo or hi for lo, hi in self.padding):
            return None
        x = x[(slice(None), *(slice(0, size - size % w) for size, w in zip(spatial, self.window)))]
        shape = [x.shape[0]]
        for size, w in zip(x.shape[1:-1], self.window):
            shape += [size // w, w]
        return x.reshape(*shape, x.shape[-1]), tuple(range(2, 2 + 2 * len(self.window), 2))

    def _reduce(self, x: jax.Array, init: Any, op: Any) -> jax.Array:
        padding = self.padding if isinstance(self.padding, str) else ((0, 0), *self.padding, (0, 0))
        return lax.reduce_window(
            x, init, op, (1, *self.window, 1), (1, *self.strides, 1), padding
        )

    def init_params(self, key, x):
        jax.eval_shape(lambda v: self({}, v), x)  # forward's checks
        return {}

    def forward(self, params, x, *, key=None, train=False):
        require_rank(self, x, len(self.window) + 2, layout(len(self.window)))
        require_positions(self, x)
        y = self._pool(x)
        require_nonempty(self, x, y)  # static shapes: an input smaller than the window
        return y


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

    def _pool(self, x):
        tiled = self._tiles(x)
        if tiled is not None:
            return _first_max(*tiled)
        return self._reduce(x, -jnp.inf, lax.max)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _first_max(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """``x.max(axes)``, whose derivative follows the first maximum (in row-major order of
    ``axes``) where several are equal, as ``reduce_window``'s does; ``jnp.max``'s would split
    it among them."""
    return x.max(axes)


@_first_max.defjvp
def _first_max_jvp(axes, primals, tangents):
    (x,), (dx,) = primals, tangents
    y = x.max(axes, keepdims=True)
    index = jnp.zeros(x.shape, jnp.int32)
    for axis in axes:
        index = index * x.shape[axis] + lax.broadcasted_iota(jnp.int32, x.shape, axis)
    index = jnp.where(x == y, index, jnp.iinfo(jnp.int32).max)
    first = index == index.min(axes, keepdims=True)
    return y.squeeze(axes), jnp.where(first, dx, jnp.zeros_like(dx)).sum(axes)


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

    def _pool(self, x):
        tiled = self._tiles(x)
        if tiled is not None:
            return tiled[0].mean(tiled[1])
        total = self._reduce(x, 0.0, lax.add)
        if self.count_include_pad or self.padding == "VALID":
            return total / math.prod(self.window)  # a Python int: x's dtype, under strict promotion too
        counts = self._reduce(jnp.ones((1, *x.shape[1:-1], 1), x.dtype), 0.0, lax.add)
        return total / counts


@dataclasses.dataclass(frozen=True)
class _GlobalPool(Layer):
    def init_params(self, key, x):
        self._check(x)
        return {}

    def _check(self, x: Any) -> tuple[int, ...]:
        """The spatial axes of ``x``, which must have at least one, none of them empty."""
        if len(x.shape) < 3:
            raise ShapeError(
                f"{type(self).__name__} expects [batch, *spatial, channels] with at least one "
                f"spatial axis, got {shape_str(x)}"
            )
        require_positions(self, x)
        return tuple(range(1, len(x.shape) - 1))


@dataclasses.dataclass(frozen=True)
class GlobalAvgPool(_GlobalPool):
    """The mean over all spatial axes: ``[batch, *spatial, channels] -> [batch, channels]``.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.GlobalAvgPool()({}, jnp.arange(8.0).reshape(1, 2, 2, 2))
        Array([[3., 4.]], dtype=float32)
    """

    def forward(self, params, x, *, key=None, train=False):
        return jnp.mean(x, axis=self._check(x))


@dataclasses.dataclass(frozen=True)
class GlobalMaxPool(_GlobalPool):
    """The maximum over all spatial axes: ``[batch, *spatial, channels] -> [batch, channels]``.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.GlobalMaxPool()({}, jnp.arange(8.0).reshape(1, 2, 2, 2))
        Array([[6., 7.]], dtype=float32)
    """

    def forward(self, params, x, *, key=None, train=False):
        return jnp.max(x, axis=self._check(x))
