"""Checks and parameter helpers shared by the layer families."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax
import jax.numpy as jnp

from fnn import initializers
from fnn.core import Layer, LayerError, ShapeError, is_count, promoted, shape_str


def require_float(layer: Layer, x: Any) -> None:
    """Raise unless ``x`` is a floating-point array spec."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ShapeError(
            f"{type(layer).__name__} expects floating-point input, got {shape_str(x)}"
            + ("; embed integer ids with fnn.Embedding first" if jnp.issubdtype(x.dtype, jnp.integer) else "")
        )


def require_rank(layer: Layer, x: Any, rank: int, layout: str) -> None:
    """Raise unless ``x`` has exactly ``rank`` axes, laid out as ``layout``."""
    if len(x.shape) != rank:
        raise ShapeError(
            f"{type(layer).__name__} expects input of rank {rank} ({layout}), got {shape_str(x)}"
        )


def require_features(layer: Layer, x: Any, expected: int, axis: int = -1) -> None:
    """Raise unless axis ``axis`` of ``x`` has ``expected`` entries (checked again at apply)."""
    if not -len(x.shape) <= axis < len(x.shape) or x.shape[axis] != expected:
        raise ShapeError(
            f"{type(layer).__name__} expected {expected} features on axis {axis}, "
            f"got input {shape_str(x)}"
        )


def positive_int(layer: Any, field: str, value: Any) -> None:
    """A ``ValueError`` naming ``layer`` and ``field`` unless ``value`` is an int >= 1 (not a bool)."""
    if not is_count(value):
        raise ValueError(f"{type(layer).__name__}: {field} must be a positive int, got {value!r}")


def int_tuple(layer: Any, field: str, value: Any, n: int) -> tuple[int, ...]:
    """``value`` as a tuple of ``n`` positive Python ints (an int is repeated ``n`` times)."""
    items = (value,) * n if isinstance(value, numbers.Integral) else value
    if not isinstance(items, tuple | list) or len(items) != n or not all(is_count(v) for v in items):
        raise ValueError(
            f"{type(layer).__name__}: {field} must be a positive int or {n} positive ints, "
            f"got {value!r}"
        )
    return tuple(int(v) for v in items)


def freeze(layer: Any, field: str, value: Any) -> None:
    """Set a field of a frozen dataclass during ``__post_init__`` (to normalise it)."""
    object.__setattr__(layer, field, value)


def float_dtype(layer: Any, field: str, value: Any) -> Any:
    """``value`` as a floating-point (or complex) dtype; a ``LayerError`` naming ``layer`` and
    ``field`` for anything else (an integer dtype, a name numpy does not know)."""
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
        raise LayerError(
            f"{type(layer).__name__}: {field} must be a floating-point dtype (float32, bfloat16, float16, "
            f"float64), got {value!r}"
        )
    return dtype


def compute_dtype(layer: Any, x: Any, *params: Any) -> Any:
    """The dtype a layer computes in: its ``dtype`` field, else the inputs' promoted type."""
    if getattr(layer, "dtype", None) is not None:
        return float_dtype(layer, "dtype", layer.dtype)
    return promoted(x, *params)  # cast to explicitly: strict dtype promotion allows it


@dataclasses.dataclass(frozen=True, kw_only=True)
class WeightOptions:
    """Keyword-only options of the layers with a weight ``w`` and a bias ``b``.

    Args:
        use_bias: add the bias ``b``.
        w_init, b_init: initializer functions or names (see ``fnn.initializers``).
        dtype: dtype to compute in (``None``: the inputs' promoted dtype).
        param_dtype: dtype the parameters are stored in.
    """

    use_bias: bool = True
    w_init: Any = "lecun_normal"
    b_init: Any = "zeros"
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def _bias_fits(self, params: dict) -> bool:
        """Whether ``params`` hold the bias this layer makes: ``b[features]``, if it uses one."""
        return not self.use_bias or tuple(params["b"].shape) == (self.features,)

    def _param_shapes(self, params: dict) -> str:
        """``w[3, 4], b[4]``: the shapes of the parameters this layer uses, for a message."""
        return f"w{list(params['w'].shape)}" + (f", b{list(params['b'].shape)}" if self.use_bias else "")


def weight_and_bias(layer: Any, key: jax.Array, w_shape: tuple[int, ...]) -> dict[str, jax.Array]:
    """``{"w": w_init(w_shape)}`` plus ``"b": b_init([features])`` when the layer uses a bias."""
    w_key, b_key = jax.random.split(key)
    dtype = float_dtype(layer, "param_dtype", layer.param_dtype)
    params = {"w": initializers.get(layer.w_init)(w_key, w_shape, dtype)}
    if layer.use_bias:
        params["b"] = initializers.get(layer.b_init)(b_key, (layer.features,), dtype)
    return params
