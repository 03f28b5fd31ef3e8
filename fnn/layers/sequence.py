"""Sequences and masked sequences, shared by the recurrent and attention layers.

A sequence is ``x: [batch, time, features]``. A *masked sequence* is the pair
``(x, mask)`` with ``mask: bool[batch, time]``, True at real steps and False at
padding. Every sequence layer takes either form and returns the same form, so padded
batches of variable-length sequences flow through ``fnn.serial`` with their mask.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from fnn.core import Layer, ShapeError, as_layer, promoted, shape_str


def split_mask(layer: Layer | str, x: Any) -> tuple[Any, Any]:
    """``(values, mask)`` of a masked sequence, ``(x, None)`` of a plain one; checks both.

    The values must be ``[batch, time, ...]`` with at least one step; the mask, if any,
    ``bool[batch, time]``. Errors name ``layer`` (its class, or the name given).
    """
    name = layer if isinstance(layer, str) else type(layer).__name__
    if isinstance(x, tuple | list):
        if len(x) != 2:
            raise ShapeError(f"{name} expects a sequence or a pair (sequence, mask), got {shape_str(x)}")
        x, mask = x
    else:
        mask = None
    if len(x.shape) < 2:
        raise ShapeError(f"{name} expects a sequence [batch, time, ...], got {shape_str(x)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ShapeError(f"{name} got an empty batch {shape_str(x)}: batch and time must be >= 1")
    if mask is not None:
        if tuple(mask.shape) != tuple(x.shape[:2]) or mask.dtype != jnp.bool_:
            raise ShapeError(
                f"{name} expects a mask bool[{x.shape[0]},{x.shape[1]}] for the sequence {shape_str(x)}, "
                f"got {shape_str(mask)}"
            )
    return x, mask


def along(mask: Any, ndim: int) -> Any:
    """``mask`` (``[batch]`` or ``[batch, time]``) with trailing axes of size 1, to broadcast
    against values of rank ``ndim`` that begin with its axes."""
    return mask.reshape(mask.shape + (1,) * (ndim - mask.ndim))


def zero_padding(values: Any, mask: Any) -> Any:
    """``values [batch, time, ...]`` with zeros at the steps ``mask`` marks as padding
    (``values`` itself when ``mask`` is None).

    A mask-aware layer calls it first: a product with a zero weight (a masked key's
    probability, a padded step's cotangent) is NaN when the other factor is NaN or infinite,
    so what the padding holds would reach real outputs and gradients otherwise.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> zero_padding(jnp.array([[1.0, jnp.nan]]), jnp.array([[True, False]])).tolist()
        [[1.0, 0.0]]
    """
    if mask is None:
        return values
    return jnp.where(along(mask, values.ndim), values, jnp.zeros((), values.dtype))


def split_outputs(name: str, outputs: Any) -> tuple[Any, Any]:
    """``(values, mask)`` of a masked sequence's outputs (checked as ``split_mask`` does: a
    ``ValueError`` naming ``name``, not a layer's path), ``(outputs, None)`` of any other:
    the losses' and metrics' first step."""
    if not isinstance(outputs, tuple | list):
        return outputs, None
    try:
        return split_mask(name, outputs)
    except ShapeError as error:
        raise ValueError(error.message) from None


def real_mean(values: Any, mask: Any) -> Any:
    """The mean of ``values [batch, time, ...]`` over the steps ``mask`` marks as real, each
    step's entries counted alike (over every entry when ``mask`` is None); 0 with no real step.

    Example:
        >>> import jax.numpy as jnp
        >>> float(real_mean(jnp.array([[1.0, 3.0, jnp.nan]]), jnp.array([[True, True, False]])))
        2.0
    """
    if mask is None:
        return jnp.mean(values)
    real = jnp.broadcast_to(along(mask, values.ndim), values.shape)
    acc = promoted(values.dtype, jnp.float32)  # as jnp.mean sums: float16 would overflow, bfloat16 miscount
    total = jnp.sum(jnp.where(real, values, jnp.zeros((), values.dtype)), dtype=acc)
    return (total / jnp.maximum(jnp.sum(real, dtype=acc), 1)).astype(values.dtype)


def join_mask(y: Any, mask: Any) -> Any:
    """The output in the input's form: ``y`` alone, or ``(y, mask)`` for a masked sequence."""
    return y if mask is None else (y, mask)


def lengths_to_mask(lengths: jax.Array, time: int) -> jax.Array:
    """``bool[batch, time]``: True at the first ``lengths[b]`` steps of row ``b``.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.lengths_to_mask(jnp.array([1, 3]), 3).astype(int)
        Array([[1, 0, 0],
               [1, 1, 1]], dtype=int32)
    """
    lengths = jnp.asarray(lengths)
    if lengths.ndim != 1 or not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise ShapeError(f"lengths_to_mask expects integer lengths int[batch], got {shape_str(lengths)}")
    return jnp.arange(time)[None, :] < lengths[:, None]


@dataclasses.dataclass(frozen=True)
class KeepMask(Layer):
    """Applies ``layer`` to the values of a masked sequence and passes the mask along.

    Use it for layers that know nothing of masks, e.g. an ``Embedding`` of padded ids:
    ``fnn.KeepMask(fnn.Embedding(vocab, 64))`` maps ``(ids, mask)`` to
    ``(vectors, mask)``. A plain input goes straight through ``layer``.

    ``layer`` sees zeros at the padded steps, whatever they held: a convolution over time
    (stride 1, ``"SAME"`` or causal padding) then sees beyond a sequence's end the zeros it
    would see beyond the end of that sequence alone, so its real steps come out the same
    however far the row is padded, in a stack of such layers too. A layer that changes the
    time length (a strided or ``"VALID"`` convolution, pooling) is refused: the mask would
    no longer fit.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> embed = fnn.KeepMask(fnn.Embedding(10, 4))
        >>> ids, mask = jnp.zeros((2, 3), jnp.int32), jnp.ones((2, 3), bool)
        >>> params, _ = embed.init(jax.random.key(0), (ids, mask))
        >>> [a.shape for a in embed(params, (ids, mask))]
        [(2, 3, 4), (2, 3)]
    """

    layer: Any

    def __post_init__(self):
        object.__setattr__(self, "layer", as_layer(self.layer))

    @property
    def name(self) -> str:
        return self.layer.name

    def init(self, key, x):  # transparent: errors name the wrapped layer's path
        values, _ = split_mask(self, x) if isinstance(x, tuple | list) else (x, None)
        return self.layer.init(key, values)

    def apply(self, params, state, x, *, key=None, train=False):
        values, mask = split_mask(self, x) if isinstance(x, tuple | list) else (x, None)
        values = zero_padding(values, mask)
        y, state = self.layer.apply(params, state, values, key=key, train=train)
        if mask is not None and tuple(getattr(y, "shape", ())[:2]) != tuple(mask.shape):
            raise ShapeError(
                f"KeepMask: {type(self.layer).__name__} turned the sequence {shape_str(values)} into "
                f"{shape_str(y)}, and the mask {shape_str(mask)} no longer fits its batch and time; a "
                f"layer that changes the time length (a strided or VALID convolution, pooling) cannot "
                f"keep the mask"
            )
        return join_mask(y, mask), state


_POOLS = ("mean", "max", "last", "first")


@dataclasses.dataclass(frozen=True)
class SequencePool(Layer):
    """Reduces a sequence over time to one vector per example, skipping padding.

    Args:
        mode: ``"mean"`` or ``"max"`` over the real steps, or the ``"last"`` or
            ``"first"`` real step.

    Shapes: ``x: [batch, time, features]`` or ``(x, mask)`` -> ``[batch, features]``.
    A row whose mask is all False gives zeros.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> x = jnp.array([[[1.0], [2.0], [9.0]]])
        >>> mask = jnp.array([[True, True, False]])
        >>> fnn.SequencePool("last")({}, (x, mask)), fnn.SequencePool("mean")({}, (x, mask))
        (Array([[2.]], dtype=float32), Array([[1.5]], dtype=float32))
    """

    mode: str = "mean"

    def __post_init__(self):
        if self.mode not in _POOLS:
            raise ValueError(f"SequencePool: mode must be one of {', '.join(_POOLS)}, got {self.mode!r}")

    def forward(self, params, x, *, key=None, train=False):
        x, mask = split_mask(self, x)
        if len(x.shape) != 3:
            raise ShapeError(f"SequencePool expects [batch, time, features], got {shape_str(x)}")
        x = zero_padding(x, mask)  # a row of padding alone picks a padded step, NaN or not
        if mask is None:
            mask = jnp.ones(x.shape[:2], bool)
        m = mask[..., None]
        count = mask.sum(1)[:, None]
        if self.mode == "mean":
            return jnp.where(m, x, 0).sum(1) / jnp.maximum(count, 1).astype(x.dtype)
        if self.mode == "max":
            low = -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
            return jnp.where(count > 0, jnp.where(m, x, low).max(1), 0)
        steps = jnp.arange(x.shape[1])
        if self.mode == "last":
            index = jnp.where(mask, steps, -1).max(1)
        else:
            index = jnp.where(mask, steps, x.shape[1]).min(1)
        picked = jnp.take_along_axis(x, jnp.clip(index, 0, x.shape[1] - 1)[:, None, None], axis=1)[:, 0]
        return jnp.where(count > 0, picked, 0)
