"""Normalisation layers: BatchNorm (running statistics as state), LayerNorm, GroupNorm, RMSNorm.

Statistics are computed in at least float32 whatever the input dtype, and the output
has the input's dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from fnn.core import Layer, LayerError, ShapeError, is_int, is_real, promoted, shape_str
from fnn.layers._common import freeze, positive_int, require_features, require_float
from fnn.layers.sequence import along, join_mask, split_mask, zero_padding


def _check_epsilon(layer: Any) -> None:
    eps = layer.epsilon
    if not is_real(eps) or not 0 < eps < float("inf"):
        raise ValueError(f"{type(layer).__name__}: epsilon must be > 0 and finite, got {eps!r}")
    freeze(layer, "epsilon", float(eps))  # a NumPy float as Python's: it must not promote x


def _check_vector(layer: Any, what: str, name: str, value: Any) -> None:
    """A ShapeError unless the parameter or state entry ``name`` is a vector ``[features]``."""
    if len(value.shape) != 1:
        raise ShapeError(
            f"{type(layer).__name__} expects {what} {name} of shape [features], got {shape_str(value)}: "
            f"were they made by this layer's init?"
        )


def _check_features(layer: Any, params: dict, x: Any, axis: int = -1) -> None:
    """Float input, as at ``init``, and the params ``init`` makes (``scale`` and ``bias`` as the
    layer learns them, each ``[features]``); params made for one feature size, applied to
    another: a ShapeError, not a reshape error or a silently dropped bias."""
    require_float(layer, x)
    learned = sorted(_learned(layer))
    if sorted(params) != learned:
        raise ShapeError(
            f"{type(layer).__name__} learns parameters {{{', '.join(learned)}}}, got "
            f"{{{', '.join(sorted(params))}}}: were they made by this layer's init?"
        )
    for name, value in params.items():
        _check_vector(layer, "parameter", name, value)
        require_features(layer, x, value.shape[0], axis)


def _learned(layer: Any) -> list[str]:
    """The parameters the layer learns: ``scale`` and ``bias``, each if it uses it."""
    return [name for name, used in (("scale", layer.use_scale), ("bias", getattr(layer, "use_bias", False)))
            if used]


def _scale_and_bias(layer: Any, features: int) -> dict[str, jax.Array]:
    made = {"scale": jnp.ones, "bias": jnp.zeros}
    return {name: made[name]((features,), jnp.float32) for name in _learned(layer)}


def _affine(params: dict, y: jax.Array, axis: int = -1) -> jax.Array:
    """``y * scale + bias``, each present only if the layer learns it, broadcast along ``axis``."""
    shape = [1] * y.ndim
    shape[axis] = y.shape[axis]
    if "scale" in params:  # in y's dtype (the statistics'), whatever a precision policy made the params
        y = y * params["scale"].astype(y.dtype).reshape(shape)
    if "bias" in params:
        y = y + params["bias"].astype(y.dtype).reshape(shape)
    return y


def _normalize(
    layer: Any, params: dict, x: jax.Array, mean: jax.Array, var: jax.Array, axis: int = -1
) -> jax.Array:
    """``(x - mean) / sqrt(var + eps) * scale + bias``, in the statistics' dtype, cast back.

    ``mean`` and ``var`` either broadcast against ``x`` already or are vectors of the
    features on ``axis``.
    """
    if mean.ndim == 1:
        shape = [1] * x.ndim
        shape[axis] = mean.shape[0]
        mean, var = mean.reshape(shape), var.reshape(shape)
    y = (x.astype(mean.dtype) - mean) * jax.lax.rsqrt(var + layer.epsilon)
    return _affine(params, y, axis).astype(x.dtype)


def _real_moments(x32: jax.Array, mask: jax.Array, reduce: tuple[int, ...]) -> tuple[jax.Array, ...]:
    """Mean, variance and count of the real steps of ``x32 [batch, time, ...]`` (padding
    zeroed already) over the axes ``reduce``, kept as size-1 axes; mean and variance are 0
    where no step is real."""
    real = along(mask, x32.ndim)
    count = jnp.sum(jnp.broadcast_to(real, x32.shape), reduce, keepdims=True, dtype=x32.dtype)
    mean = jnp.sum(x32, reduce, keepdims=True) / jnp.maximum(count, 1)
    var = jnp.sum(jnp.where(real, x32 - mean, 0) ** 2, reduce, keepdims=True) / jnp.maximum(count, 1)
    return mean, var, count


def _stats_dtype(x: jax.Array) -> Any:
    """float32, or the input's dtype if wider."""
    return promoted(x.dtype, jnp.float32)


@dataclasses.dataclass(frozen=True)
class BatchNorm(Layer):
    """Normalises each feature over the batch (and spatial axes) while training; uses the
    running statistics, kept as state, in evaluation.

    Args:
        momentum: running statistic update ``r = momentum * r + (1 - momentum) * batch``.
        epsilon: added to the variance.
        axis: the feature axis (default: last, for channels-last layouts).
        use_scale, use_bias: learn a per-feature scale and bias.

    Params ``scale, bias: [features]``; state ``mean, var: [features]``. A training step on
    an empty batch leaves the running statistics as they are (its output is empty too).

    A masked sequence ``(x [batch, time, ...], mask bool[batch, time])`` gives
    ``(y, mask)``, and its statistics are those of the real steps alone: what the padding
    holds changes neither the real steps' outputs nor the running statistics, and a batch
    that is all padding leaves them as they are. (``KeepMask(BatchNorm())`` would count
    the padding, as zeros.) The feature axis is then one after time.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> bn = fnn.BatchNorm()
        >>> params, state = bn.init(jax.random.key(0), jnp.zeros((8, 3)))
        >>> y, state = bn.apply(params, state, jnp.arange(24.0).reshape(8, 3), train=True)
        >>> [round(float(v), 3) for v in state["mean"]]
        [0.105, 0.115, 0.125]
        >>> x, mask = jnp.array([[[1.0], [3.0]], [[5.0], [1e6]]]), jnp.array([[True, True], [True, False]])
        >>> params, state = bn.init(None, (x, mask))
        >>> (y, mask), state = bn.apply(params, state, (x, mask), train=True)
        >>> round(float(state["mean"][0]), 6), [round(float(v), 3) for v in y[mask, 0]]   # mean of 1, 3, 5
        (0.03, [-1.225, 0.0, 1.225])
    """

    momentum: float = 0.99
    epsilon: float = 1e-5
    axis: int = -1
    use_scale: bool = True
    use_bias: bool = True

    def __post_init__(self):
        _check_epsilon(self)
        if not is_real(self.momentum) or not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"BatchNorm: momentum must be in [0, 1], got {self.momentum!r}")
        freeze(self, "momentum", float(self.momentum))
        if not is_int(self.axis):
            raise ValueError(f"BatchNorm: axis must be an int (the feature axis), got {self.axis!r}")
        freeze(self, "axis", int(self.axis))

    def _check_axis(self, x: Any) -> None:
        if len(x.shape) < 2:
            raise ShapeError(f"BatchNorm expects a batch axis and a feature axis, got {shape_str(x)}")
        if not -len(x.shape) <= self.axis < len(x.shape) or self.axis % len(x.shape) == 0:
            raise ShapeError(
                f"BatchNorm's axis {self.axis} is not a feature axis of {shape_str(x)} "
                f"(axes 1 to {len(x.shape) - 1}, or -1 to {1 - len(x.shape)}; axis 0 is the batch)"
            )

    def _split(self, x: Any) -> tuple[Any, Any]:
        """``(values, mask)`` of a masked sequence, ``(x, None)`` of a plain input; checks both."""
        if not isinstance(x, tuple | list):
            return x, None
        x, mask = split_mask(self, x)
        if len(x.shape) < 3 or self.axis % len(x.shape) < 2:
            raise ShapeError(
                f"BatchNorm of a masked sequence needs a feature axis after batch and time, got axis "
                f"{self.axis} of {shape_str(x)}"
            )
        return x, mask

    def init(self, key, x):
        x, _ = self._split(x)
        require_float(self, x)
        self._check_axis(x)
        features = x.shape[self.axis]
        state = {"mean": jnp.zeros((features,), jnp.float32), "var": jnp.ones((features,), jnp.float32)}
        return _scale_and_bias(self, features), state

    def apply(self, params, state, x, *, key=None, train=False):
        x, mask = self._split(x)
        y, state = self._apply(params, state, x, mask, train)
        return (y if mask is None else (y, mask)), state

    def _apply(self, params, state, x, mask, train):
        if not state:
            raise LayerError(
                "BatchNorm keeps running statistics as state: call "
                "model.apply(params, state, x, train=...) with the state from model.init"
            )
        require_float(self, x)
        self._check_axis(x)
        axis = self.axis % x.ndim
        running_mean, running_var = state["mean"], state["var"]
        _check_vector(self, "state", "mean", running_mean)
        if tuple(running_var.shape) != tuple(running_mean.shape):
            raise ShapeError(
                f"BatchNorm expects state mean and var of one shape [features], got mean "
                f"{shape_str(running_mean)} and var {shape_str(running_var)}: "
                "were they made by this layer's init?"
            )
        if x.shape[axis] != running_mean.shape[0]:
            raise ShapeError(
                f"BatchNorm expected {running_mean.shape[0]} features on axis {self.axis}, got {shape_str(x)}"
            )
        _check_features(self, params, x, self.axis)
        x = zero_padding(x, mask)  # what the padding holds, NaN too, reaches no output, statistic or gradient
        if not train or x.size == 0:  # an empty batch (static) leaves the running statistics as they are
            return _normalize(self, params, x, running_mean, running_var, axis), state
        reduce = tuple(i for i in range(x.ndim) if i != axis)
        x32 = x.astype(_stats_dtype(x))
        m = self.momentum
        if mask is None:
            mean, var = jnp.mean(x32, reduce), jnp.var(x32, reduce)
            new_mean, new_var = m * state["mean"] + (1 - m) * mean, m * state["var"] + (1 - m) * var
        else:  # the real steps' statistics; a batch of padding alone keeps the running ones
            mean, var, count = (jnp.squeeze(v, reduce) for v in _real_moments(x32, mask, reduce))
            some = count > 0
            mean, var = jnp.where(some, mean, running_mean), jnp.where(some, var, running_var)
            new_mean = jnp.where(some, m * state["mean"] + (1 - m) * mean, state["mean"])
            new_var = jnp.where(some, m * state["var"] + (1 - m) * var, state["var"])
        new_state = {  # the state keeps its dtype, so a compiled step keeps its signature
            "mean": new_mean.astype(state["mean"].dtype), "var": new_var.astype(state["var"].dtype),
        }
        return _normalize(self, params, x, mean, var, axis), new_state


@dataclasses.dataclass(frozen=True)
class LayerNorm(Layer):
    """Normalises each example over its last axis, then applies a learned scale and bias.

    Params ``scale, bias: [features]``.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> ln = fnn.LayerNorm()
        >>> params, _ = ln.init(jax.random.key(0), jnp.zeros((2, 4)))
        >>> ln(params, jnp.array([[1.0, 2.0, 3.0, 4.0]])).mean()
        Array(0., dtype=float32)
    """

    epsilon: float = 1e-6
    use_scale: bool = True
    use_bias: bool = True

    def __post_init__(self):
        _check_epsilon(self)

    def init_params(self, key, x):
        require_float(self, x)
        if not x.shape:
            raise ShapeError(f"LayerNorm expects a feature axis, got {shape_str(x)}")
        return _scale_and_bias(self, x.shape[-1])

    def forward(self, params, x, *, key=None, train=False):
        _check_features(self, params, x)
        x32 = x.astype(_stats_dtype(x))
        mean = jnp.mean(x32, -1, keepdims=True)
        var = jnp.var(x32, -1, keepdims=True)
        return _normalize(self, params, x, mean, var)


@dataclasses.dataclass(frozen=True)
class GroupNorm(Layer):
    """Splits the channels into ``num_groups`` groups and normalises each group of each
    example over its channels and spatial positions.

    Shapes: ``x: [batch, ..., channels]`` with ``channels % num_groups == 0``; params
    ``scale, bias: [channels]``.

    A masked sequence ``(x [batch, time, ..., channels], mask bool[batch, time])`` gives
    ``(y, mask)``, and each example's statistics are those of its real steps alone: a
    padded row's real steps equal those of the row alone, whatever the padding holds.
    (``KeepMask(GroupNorm(...))`` would count the padding, as zeros.)

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> gn = fnn.GroupNorm(num_groups=2)
        >>> params, _ = gn.init(jax.random.key(0), jnp.zeros((1, 4, 4, 6)))
        >>> gn(params, jnp.ones((1, 4, 4, 6))).shape
        (1, 4, 4, 6)
        >>> gn = fnn.GroupNorm(num_groups=1)
        >>> x, mask = jnp.array([[[1.0], [3.0], [1e6]]]), jnp.array([[True, True, False]])
        >>> params, _ = gn.init(None, (x, mask))
        >>> y, mask = gn(params, (x, mask))
        >>> [round(float(v), 3) for v in y[mask, 0]]   # as [[1.0], [3.0]] alone
        [-1.0, 1.0]
    """

    num_groups: int = 32
    epsilon: float = 1e-6
    use_scale: bool = True
    use_bias: bool = True

    def __post_init__(self):
        positive_int(self, "num_groups", self.num_groups)
        _check_epsilon(self)

    def _split(self, x: Any) -> tuple[Any, Any]:
        """``(values, mask)`` of a masked sequence, ``(x, None)`` of a plain input; checks both."""
        if not isinstance(x, tuple | list):
            return x, None
        x, mask = split_mask(self, x)
        if len(x.shape) < 3:
            raise ShapeError(
                f"GroupNorm of a masked sequence needs a channel axis after batch and time, "
                f"got {shape_str(x)}"
            )
        return x, mask

    def _check_groups(self, x):
        if len(x.shape) < 2 or x.shape[-1] % self.num_groups:
            raise ShapeError(
                f"GroupNorm(num_groups={self.num_groups}) expects [batch, ..., channels] with "
                f"channels divisible by {self.num_groups}, got {shape_str(x)}"
            )

    def init_params(self, key, x):
        x, _ = self._split(x)
        require_float(self, x)
        self._check_groups(x)
        return _scale_and_bias(self, x.shape[-1])

    def forward(self, params, x, *, key=None, train=False):
        x, mask = self._split(x)
        _check_features(self, params, x)
        self._check_groups(x)  # without scale and bias, no parameter holds the channels
        x = zero_padding(x, mask)  # what the padding holds, NaN too, reaches no real output or gradient
        groups = x.reshape(*x.shape[:-1], self.num_groups, x.shape[-1] // self.num_groups)
        g32 = groups.astype(_stats_dtype(x))
        reduce = (*range(1, x.ndim - 1), x.ndim)
        if mask is None:
            mean = jnp.mean(g32, reduce, keepdims=True)
            var = jnp.var(g32, reduce, keepdims=True)
        else:  # over each example's real steps; a row of padding alone has mean and var 0
            mean, var, _ = _real_moments(g32, mask, reduce)
        normed = ((g32 - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        return join_mask(_affine(params, normed).astype(x.dtype), mask)


@dataclasses.dataclass(frozen=True)
class RMSNorm(Layer):
    """Scales each example by the inverse root-mean-square of its last axis.

    ``y = x / sqrt(mean(x**2) + epsilon) * scale``; params ``scale: [features]``.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> rms = fnn.RMSNorm()
        >>> params, _ = rms.init(jax.random.key(0), jnp.zeros((1, 2)))
        >>> [round(float(v), 3) for v in rms(params, jnp.array([[3.0, 4.0]]))[0]]
        [0.849, 1.131]
    """

    epsilon: float = 1e-6
    use_scale: bool = True

    def __post_init__(self):
        _check_epsilon(self)

    def init_params(self, key, x):
        require_float(self, x)
        if not x.shape:
            raise ShapeError(f"RMSNorm expects a feature axis, got {shape_str(x)}")
        return _scale_and_bias(self, x.shape[-1])

    def forward(self, params, x, *, key=None, train=False):
        _check_features(self, params, x)
        x32 = x.astype(_stats_dtype(x))
        # Measured (train-step gradients at [32, 128, 768] and [4096, 64]): from bfloat16,
        # jnp.square of the cast input (or a zero mean subtracted from it) made XLA plan 1.75x
        # the temporaries of x * x (84 against 48 MiB) and run 1.1x slower; in float32,
        # jnp.square ran 1.7-1.9x faster than x * x, at the same memory
        square = jnp.square(x32) if x32.dtype == x.dtype else x32 * x32
        mean_square = jnp.mean(square, -1, keepdims=True)
        return _affine(params, x32 * jax.lax.rsqrt(mean_square + self.epsilon)).astype(x.dtype)
