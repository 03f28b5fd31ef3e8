"""Convolutions over 1, 2 or 3 spatial axes, channels last: Conv and ConvTranspose.

The number of spatial axes is the length of ``kernel_size``: ``(5,)`` for sequences
``[batch, width, channels]``, ``(3, 3)`` for images ``[batch, height, width, channels]``,
``(3, 3, 3)`` for volumes ``[batch, depth, height, width, channels]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from jax import lax

from fnn import autodiff
from fnn.core import Layer, ShapeError, is_count, shape_str, to_rank
from fnn.layers._common import (
    WeightOptions,
    compute_dtype,
    freeze,
    int_tuple,
    positive_int,
    require_float,
    require_rank,
    weight_and_bias,
)

_LAYOUTS = {1: ("NWC", "WIO"), 2: ("NHWC", "HWIO"), 3: ("NDHWC", "DHWIO")}


def spatial_dims(layer: Any, field: str, value: Any) -> tuple[int, ...]:
    """A window or kernel size: a tuple of 1 to 3 positive ints."""
    if not isinstance(value, tuple | list) or len(value) not in _LAYOUTS:
        raise ValueError(
            f"{type(layer).__name__}: {field} must give one size per spatial axis, "
            f"1 to 3 of them, e.g. (3, 3); got {value!r}"
        )
    return int_tuple(layer, field, value, len(value))


def _natural(v: Any) -> bool:
    """An int >= 0 (Python's or NumPy's, and not a bool)."""
    return is_count(v, least=0)


def padding_spec(layer: Any, padding: Any, n: int) -> str | tuple[tuple[int, int], ...]:
    """``"SAME"``/``"VALID"``, an int, ``n`` ints or ``n`` (low, high) pairs, normalised."""
    if isinstance(padding, str) and padding.upper() in ("SAME", "VALID"):
        return padding.upper()
    if _natural(padding):
        return ((int(padding), int(padding)),) * n
    if isinstance(padding, tuple | list) and len(padding) == n:
        pairs = tuple((p, p) if _natural(p) else p for p in padding)
        if all(isinstance(p, tuple | list) and len(p) == 2 and all(map(_natural, p)) for p in pairs):
            return tuple((int(low), int(high)) for low, high in pairs)
    raise ValueError(
        f"{type(layer).__name__}: padding must be 'SAME', 'VALID', an int, {n} ints or "
        f"{n} (low, high) pairs, got {padding!r}"
    )


def layout(n: int) -> str:
    """The axes of an input with ``n`` spatial axes, for error messages.

    Example:
        >>> layout(2)
        'batch, height, width, channels'
    """
    return "batch, " + ", ".join(("depth", "height", "width")[3 - n :]) + ", channels"


def require_positions(layer: Layer, x: Any) -> None:
    """Raise when a spatial axis of ``x`` is empty: there is nothing to slide a window over."""
    if any(d < 1 for d in x.shape[1:-1]):
        raise ShapeError(
            f"{type(layer).__name__} got an input empty on a spatial axis, {shape_str(x)}: every "
            "spatial axis needs at least one position"
        )


def require_nonempty(layer: Layer, x: Any, y: Any) -> None:
    """Raise when the window leaves no output positions (e.g. a kernel larger than the input)."""
    if any(d < 1 for d in y.shape[1:-1]):
        raise ShapeError(
            f"{type(layer).__name__} leaves no output positions for input {shape_str(x)} "
            f"(output would be {tuple(y.shape)}); use a smaller window or 'SAME' padding"
        )


@dataclasses.dataclass(frozen=True)
class _ConvBase(WeightOptions, Layer):
    """The fields, their checks and the input checks that Conv and ConvTranspose share."""

    features: int
    kernel_size: tuple[int, ...]
    strides: Any = 1
    padding: Any = "SAME"
    dilation: Any = 1

    def __post_init__(self):
        positive_int(self, "features", self.features)
        kernel = spatial_dims(self, "kernel_size", self.kernel_size)
        n = len(kernel)
        freeze(self, "kernel_size", kernel)
        freeze(self, "strides", int_tuple(self, "strides", self.strides, n))
        freeze(self, "dilation", int_tuple(self, "dilation", self.dilation, n))
        freeze(self, "padding", padding_spec(self, self.padding, n))

    def _check(self, x: Any, params: dict | None = None, groups: int = 1) -> None:
        """Float input of the right rank with at least one position and one channel; with
        ``params``, the channels, the kernel and the bias they were made for."""
        n = len(self.kernel_size)
        require_float(self, x)
        require_rank(self, x, n + 2, layout(n))
        require_positions(self, x)
        if x.shape[-1] < 1:
            raise ShapeError(f"{type(self).__name__} needs at least one input channel, got {shape_str(x)}")
        if params is None:
            return
        w = params["w"].shape
        if len(w) != n + 2 or tuple(w[:-2]) != self.kernel_size or w[-1] != self.features or (
            not self._bias_fits(params)
        ):
            raise ShapeError(
                f"{type(self).__name__} with kernel {self.kernel_size} and {self.features} features got "
                f"parameters {self._param_shapes(params)}: were they made by this layer's init?"
            )
        if x.shape[-1] != w[-2] * groups:
            raise ShapeError(
                f"{type(self).__name__} expected {w[-2] * groups} input channels, got {shape_str(x)}"
            )

    def _init_weights(self, key: jax.Array, x: Any, in_per_group: int) -> dict[str, jax.Array]:
        params = weight_and_bias(self, key, (*self.kernel_size, in_per_group, self.features))
        require_nonempty(self, x, jax.eval_shape(lambda p, v: self(p, v), params, x))
        return params

    def _convolve(self, params: dict, x: jax.Array, conv: Any, **options: Any) -> jax.Array:
        """``conv(x, w, ...)`` in the compute dtype, channels last, plus the bias."""
        w = params["w"]
        dtype = compute_dtype(self, x, w)
        lhs, rhs = _LAYOUTS[len(self.kernel_size)]
        y = conv(
            x.astype(dtype), w.astype(dtype), padding=self.padding, rhs_dilation=self.dilation,
            dimension_numbers=(lhs, rhs, lhs), **options,
        )
        require_nonempty(self, x, y)  # static shapes: an input smaller than the window
        return y + to_rank(params["b"].astype(dtype), y.ndim) if self.use_bias else y


@dataclasses.dataclass(frozen=True)
class Conv(_ConvBase):
    """An N-d convolution (N = 1, 2, 3) with stride, padding, dilation and groups.

    Args:
        features: output channels.
        kernel_size: one size per spatial axis, e.g. ``(3, 3)``.
        strides: an int or one per spatial axis.
        padding: ``"SAME"``, ``"VALID"``, an int, or one int or (low, high) pair per axis.
        dilation: kernel dilation, an int or one per spatial axis.
        groups: split input and output channels into this many independent groups
            (``groups == in_channels == features`` is a depthwise convolution).
        use_bias, w_init, b_init, dtype, param_dtype: keyword-only, see ``WeightOptions``.

    Shapes: ``x: [batch, *spatial, in]`` -> ``y: [batch, *spatial', features]``; params
    ``w: [*kernel_size, in // groups, features]``, ``b: [features]``.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> conv = fnn.Conv(8, (3, 3), strides=2)
        >>> params, _ = conv.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
        >>> conv(params, jnp.zeros((1, 28, 28, 1))).shape
        (1, 14, 14, 8)
    """

    groups: int = 1

    def __post_init__(self):
        super().__post_init__()
        positive_int(self, "groups", self.groups)
        if self.features % self.groups:
            raise ValueError(f"Conv: features ({self.features}) must divide by groups ({self.groups})")

    def init_params(self, key, x):
        self._check(x)
        if x.shape[-1] % self.groups:
            raise ShapeError(
                f"Conv with groups={self.groups} needs input channels divisible by "
                f"{self.groups}, got {shape_str(x)}"
            )
        return self._init_weights(key, x, x.shape[-1] // self.groups)

    def forward(self, params, x, *, key=None, train=False):
        self._check(x, params, self.groups)
        if self.groups == 1:
            # fnn.autodiff.conv: the same convolution, with fnn's gradient rule in a training step
            return self._convolve(params, x, _fnn_conv, window_strides=self.strides)
        return self._convolve(
            params, x, lax.conv_general_dilated, window_strides=self.strides, feature_group_count=self.groups
        )


def _fnn_conv(x, w, *, window_strides, padding, rhs_dilation, dimension_numbers):
    """``autodiff.conv`` called as ``lax.conv_general_dilated`` is (one group, channels last)."""
    del dimension_numbers  # channels last, as autodiff.conv takes them
    pads = padding
    if isinstance(padding, str):
        window = [d * (k - 1) + 1 for k, d in zip(w.shape[:-2], rhs_dilation)]
        pads = lax.padtype_to_pads(x.shape[1:-1], window, window_strides, padding)
    return autodiff.conv(x, w, pads, window_strides, rhs_dilation)


@dataclasses.dataclass(frozen=True)
class ConvTranspose(_ConvBase):
    """The transpose (gradient) of a convolution, for upsampling, on 1 to 3 spatial axes.

    Args:
        features: output channels.
        kernel_size: one size per spatial axis.
        strides: upsampling factor per axis (an int or one per axis).
        padding: ``"SAME"`` (output = input * stride), ``"VALID"``, or (low, high) pairs
            applied to the stride-dilated input as in ``jax.lax.conv_transpose``.
        dilation: kernel dilation.
        use_bias, w_init, b_init, dtype, param_dtype: keyword-only, see ``WeightOptions``.

    Shapes: ``x: [batch, *spatial, in]`` -> ``y: [batch, *spatial', features]``; params
    ``w: [*kernel_size, in, features]``, ``b: [features]``.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> up = fnn.ConvTranspose(4, (2, 2), strides=2)
        >>> params, _ = up.init(jax.random.key(0), jnp.zeros((1, 7, 7, 8)))
        >>> up(params, jnp.zeros((1, 7, 7, 8))).shape
        (1, 14, 14, 4)
    """

    def init_params(self, key, x):
        self._check(x)
        return self._init_weights(key, x, x.shape[-1])

    def forward(self, params, x, *, key=None, train=False):
        self._check(x, params)
        # fnn.autodiff.conv_transpose: the same, with fnn's gradient rule in a training step
        return self._convolve(params, x, _fnn_conv_transpose, strides=self.strides)


def _fnn_conv_transpose(x, w, *, strides, padding, rhs_dilation, dimension_numbers):
    """``autodiff.conv_transpose`` called as ``lax.conv_transpose`` is (channels last)."""
    del dimension_numbers  # channels last, as autodiff.conv_transpose takes them
    pads = padding
    if isinstance(padding, str):
        window = [d * (k - 1) + 1 for k, d in zip(w.shape[:-2], rhs_dilation)]
        pads = tuple(_transpose_pads(k, s, padding) for k, s in zip(window, strides))
    return autodiff.conv_transpose(x, w, pads, strides, rhs_dilation)


def _transpose_pads(k: int, s: int, padding: str) -> tuple[int, int]:
    """The (low, high) padding of the stride-dilated input that ``lax.conv_transpose``
    takes for ``"SAME"`` or ``"VALID"``, for a (dilated) kernel extent ``k`` and stride ``s``."""
    if padding == "SAME":
        total = k + s - 2
        low = k - 1 if s > k - 1 else -(-total // 2)
    else:  # VALID
        total = k + s - 2 + max(k - s, 0)
        low = k - 1
    return low, total - low
