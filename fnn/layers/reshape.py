"""Flatten and Reshape: change the shape of each example, keeping the batch axis."""

from __future__ import annotations

import dataclasses
import math

from fnn.core import Layer, ShapeError, is_count, is_int, shape_str
from fnn.layers._common import freeze


@dataclasses.dataclass(frozen=True)
class Flatten(Layer):
    """``[batch, d1, d2, ...] -> [batch, d1 * d2 * ...]``.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.Flatten()({}, jnp.zeros((2, 4, 4, 3))).shape
        (2, 48)
    """

    def init_params(self, key, x):
        if len(x.shape) < 1:
            raise ShapeError(f"Flatten expects a batch axis, got {shape_str(x)}")
        return {}

    def forward(self, params, x, *, key=None, train=False):
        if len(x.shape) < 1:
            raise ShapeError(f"Flatten expects a batch axis, got {shape_str(x)}")
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))


@dataclasses.dataclass(frozen=True)
class Reshape(Layer):
    """Reshapes each example to ``shape`` (one entry may be -1): ``[batch, ...] -> [batch, *shape]``.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.Reshape((4, 4, 3))({}, jnp.zeros((2, 48))).shape
        (2, 4, 4, 3)
    """

    shape: tuple[int, ...]

    def __post_init__(self):
        shape = tuple(self.shape) if isinstance(self.shape, tuple | list) else (self.shape,)
        if not all(is_count(d) or (is_int(d) and d == -1) for d in shape) or shape.count(-1) > 1:
            raise ValueError(f"Reshape: shape must be positive ints and at most one -1, got {self.shape!r}")
        freeze(self, "shape", tuple(int(d) for d in shape))

    def _check(self, x):
        """Examples whose size fits ``shape`` (at init and again at apply)."""
        if len(x.shape) < 1:
            raise ShapeError(f"Reshape expects a batch axis, got {shape_str(x)}")
        size = math.prod(x.shape[1:])
        known = math.prod(d for d in self.shape if d != -1)
        if (-1 in self.shape and size % known) or (-1 not in self.shape and size != known):
            raise ShapeError(
                f"Reshape cannot reshape examples of {shape_str(x)} ({size} values each) "
                f"to {self.shape}"
            )

    def init_params(self, key, x):
        self._check(x)
        return {}

    def forward(self, params, x, *, key=None, train=False):
        self._check(x)
        return x.reshape(x.shape[0], *self.shape)
