"""The weight product of fnn's layers, and the gradient it takes in a training step.

Every layer with a weight matrix (``Dense``, the projections of ``MultiHeadAttention``,
the recurrent cells, ``Embedding.attend``) computes ``x @ w`` with ``matmul`` below.

Outside ``reverse_mode_only()`` it is ``jnp.matmul``: every JAX transformation applies,
forward-mode ones (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``) included.

Inside it (``make_train_step`` takes its gradient inside it), ``matmul`` has a
custom VJP that computes the weight's gradient as ``x^T @ g`` for ``x: [..., in]`` and the
output's cotangent ``g: [..., out]``. JAX's own rule for ``dot_general`` computes
``(g^T @ x)^T``: the cotangent comes first, contracted over its leading (batch) axis, so
XLA's CPU backend lays ``g`` out transposed before the product. When ``g`` is the end of
a long elementwise chain (the residual stream of a transformer, through every layer
norm's backward pass), XLA fuses that whole chain into the transposing copy and computes
it a second time there, in transposed order. With ``x^T @ g`` the transposed operand is
``x``, an activation already in memory. The numbers are the same up to float summation
order; the transformer's training step in ``benchmarks/`` runs faster on CPU (see
``BENCHMARKS.md``).

Inside it, ``fnn.Recurrent`` also takes the weight gradients of the built-in cells
(``SimpleRNN``, ``LSTM``, ``GRU``) as one product each over all time steps, after the
backward loop, where JAX's scan computes a small product and adds it to an accumulator
at every step. The loop hands out each step's cotangent of the two products instead
(``[time, batch, gates * hidden]``, kept for the one product; one array for ``SimpleRNN``
and ``LSTM``, whose two products share it, two for ``GRU``). The gradient of the layer's
input (``g @ w^T``) and of the input projection's bias come from the same array, as one
product and one sum after the loop.

Inside it and on CPU, ``conv`` (the convolution of an ``fnn.Conv`` with one group, at
any stride and dilation) has fnn's rule as well where one of its parts applies: the
forward pass of one input channel, and the input gradient of few input channels (with,
at stride and dilation 1, the weight gradient); see ``conv``. XLA's CPU convolutions
are slow for few channels. ``conv_transpose`` (an
``fnn.ConvTranspose`` with a stride) takes the gradients of the strided convolution whose
input gradient it is (see ``conv_transpose``). On GPU and TPU both are XLA's.

Inside it and on CPU, ``attention`` (``fnn.dot_product_attention`` without dropout, with
at least twice as many keys as the head dimension) has fnn's rule as well: the scores'
cotangent from the row sums of ``do * o`` (see ``attention``). On GPU and TPU it is
``jax.nn.dot_product_attention``.

A custom VJP cannot be differentiated in forward mode, so a loss that applies
``jax.jvp`` (or ``jacfwd``) to a model inside a training step turns the fast rule off
around that call with ``reverse_mode_only(False)``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import math
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_REVERSE_ONLY = contextvars.ContextVar("fnn_reverse_mode_only", default=False)


@contextlib.contextmanager
def reverse_mode_only(enabled: bool = True) -> Iterator[None]:
    """While tracing inside it, fnn's weight products assume reverse-mode differentiation
    only and take their weight gradient as ``x^T @ g``, ``fnn.Recurrent`` takes its
    weight and input gradients after the loop, and on CPU ``fnn.Conv`` with one group and
    attention without dropout take fnn's rules (see the module docstring).

    ``fnn.make_train_step`` traces its loss and gradient inside it; a hand-written step
    can do the same. ``reverse_mode_only(False)`` turns it off again, for a loss that
    applies ``jax.jvp`` to the model. It acts at trace time: a function already compiled
    keeps the rule it was traced with.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> model = fnn.Dense(3)
        >>> params, _ = model.init(jax.random.key(0), jnp.ones((2, 4)))
        >>> loss = lambda p: (model(p, jnp.ones((2, 4))) ** 2).sum()
        >>> with fnn.reverse_mode_only():
        ...     fast = jax.grad(loss)(params)
        >>> bool(jnp.allclose(fast["w"], jax.grad(loss)(params)["w"]))
        True
    """
    token = _REVERSE_ONLY.set(bool(enabled))
    try:
        yield
    finally:
        _REVERSE_ONLY.reset(token)


def reverse_only() -> bool:
    """Whether the trace is inside ``reverse_mode_only()``."""
    return _REVERSE_ONLY.get()


def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` for ``x: [..., in]`` and ``w: [in, out]``; inside ``reverse_mode_only()``
    with the weight gradient ``x^T @ g``."""
    if reverse_only():
        return _matmul_reverse(x, w)
    return jnp.matmul(x, w)


@jax.custom_vjp
def _matmul_reverse(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.matmul(x, w)


def _matmul_forward(x, w):
    return jnp.matmul(x, w), (x, w)


def _matmul_backward(residuals, g):
    x, w = residuals
    return jnp.matmul(g, w.T).astype(x.dtype), weight_grad(x, g).astype(w.dtype)


# On CPU, ``weight_grad`` transposes ``x`` into its own array first when ``x`` has at most
# this many elements.
_SMALL_TRANSPOSE = 2**16


def weight_grad(x: jax.Array, g: jax.Array) -> jax.Array:
    """``x^T @ g`` summed over every leading axis: ``[..., in], [..., out] -> [in, out]``,
    as one product of rows (the leading axes merged; the batch axis, which may be split
    among devices, comes first).

    On CPU, for an ``x`` of at most 65,536 elements, ``x^T`` is first copied into an array
    of its own (an optimization barrier keeps XLA from folding the transpose back into the
    product). XLA's CPU backend runs a product contracted over both operands' first axes
    on a slower path than a plain one; the copy is cheap at this size. One-off A/Bs of
    fnn's training steps in ``benchmarks/``: the small MLP 1.12-1.17x faster, LeNet 1.05x; at
    the large MLP's 200,000 elements the copy made the step 0.97x, at the transformer's
    0.86x, so larger ``x`` keep the one product."""
    n = math.prod(x.shape[:-1])  # not -1: a reshape cannot infer it beside an axis of size 0
    rows = x.reshape(n, x.shape[-1]).astype(g.dtype)
    g = g.reshape(n, g.shape[-1])
    if rows.size <= _SMALL_TRANSPOSE and jax.default_backend() == "cpu":
        return jnp.matmul(lax.optimization_barrier(rows.T), g)
    return lax.dot_general(rows, g, (((0,), (0,)), ((), ())))


_matmul_reverse.defvjp(_matmul_forward, _matmul_backward)


def conv(
    x: jax.Array,
    w: jax.Array,
    padding: tuple[tuple[int, int], ...],
    strides: tuple[int, ...] | None = None,
    dilation: tuple[int, ...] | None = None,
) -> jax.Array:
    """A convolution with one group, channels last: ``x: [batch, *spatial, in]``,
    ``w: [*kernel, in, out]``, ``padding`` one (low, high) pair per spatial axis,
    ``strides`` and the kernel's ``dilation`` one int per spatial axis (default 1).

    Inside ``reverse_mode_only()`` on CPU, where one of its two parts applies, it has fnn's
    rule; each part is used only at the sizes where it was measured faster than XLA's
    (``benchmarks/conv_layers.py``, and the layers of the suite's and the experiments'
    models, on 2-core CPUs; the weight gradient is fnn's only at stride and dilation 1,
    see ``_weight_grad``):

    - one input channel and at most 25 kernel offsets (a 5x5 kernel): the forward pass is
      the sum over kernel offsets of a shifted (and strided) window of the input times
      that offset's weights. Each term is an elementwise product, and XLA fuses the sum
      into one loop, computed once for all its consumers (``_computed_once``). XLA's CPU
      convolution with one input channel is slow: a 128 x 128 image to 16 channels took
      0.65x XLA's time.
    - up to 8 input channels and at least as many ``offsets x in`` as output channels
      (with a stride, at most ``4 x stride^2`` offsets): the input gradient is one product
      ``g @ w^T`` for every offset at once, each offset's slice then added back at its
      shift, the sum computed once. XLA's input gradient is then a convolution with few
      output channels: LeNet's first convolution's step took 0.27x XLA's time, its
      second 0.89x. With more output channels than ``offsets x in``, or a large kernel
      at a stride (whose ``[batch, *out, offsets, in]`` product outgrows the input
      ``offsets / stride^2`` times), XLA's was faster.

    Sums over offsets run in float32 for lower-precision inputs. Elsewhere (where neither
    part applies, outside the context, or on GPU and TPU) it is ``lax.conv_general_dilated``.
    """
    n = x.ndim - 2
    padding = tuple(map(tuple, padding))
    strides = tuple(strides or (1,) * n)
    dilation = tuple(dilation or (1,) * n)
    shape = _Shape(padding, strides, dilation)
    # no examples or no output positions: XLA's convolution gives the empty shape
    if (reverse_only() and jax.default_backend() == "cpu" and min(x.shape[0], *shape.out(x, w)) > 0
            and (_shifted_sum(w) or _col2im_wins(shape, w))):
        return _conv_reverse(shape, x, w)
    return _xla_conv(shape, x, w)


class _Shape(NamedTuple):
    """A convolution's padding, strides and kernel dilation (static)."""

    padding: tuple[tuple[int, int], ...]
    strides: tuple[int, ...]
    dilation: tuple[int, ...]

    def out(self, x, w) -> tuple[int, ...]:
        """The output's spatial sizes."""
        axes = zip(x.shape[1:-1], self.padding, w.shape[:-2], self.strides, self.dilation)
        return tuple((size + lo + hi - d * (k - 1) - 1) // s + 1 for size, (lo, hi), k, s, d in axes)


def _layouts(n: int) -> tuple[str, str, str]:
    """Channels-last dimension numbers for ``n`` spatial axes: input, kernel, output."""
    spatial = "DHW"[3 - n :]
    return "N" + spatial + "C", spatial + "IO", "N" + spatial + "C"


def _xla_conv(shape, x, w):
    layouts = _layouts(x.ndim - 2)
    return lax.conv_general_dilated(
        x, w, shape.strides, shape.padding, rhs_dilation=shape.dilation, dimension_numbers=layouts
    )


def _windows(xp: jax.Array, kernel, out, strides, dilation):
    """``(offset, window)`` for every offset of the kernel: the padded input's positions
    ``offset * dilation + stride * j`` on each spatial axis, ``j < out``."""
    for offset in itertools.product(*map(range, kernel)):
        start = [o * d for o, d in zip(offset, dilation)]
        stop = [a + s * (n - 1) + 1 for a, s, n in zip(start, strides, out)]
        yield offset, lax.slice(
            xp, (0, *start, 0), (xp.shape[0], *stop, xp.shape[-1]), (1, *strides, 1)
        )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv_reverse(shape, x, w):
    """``conv``'s rule (see its docstring): a custom VJP, reverse mode only."""
    return _conv_forward(shape, x, w)[0]


# The most kernel offsets the one-channel forward pass sums (a 5x5 kernel); past them, XLA's
# (a 7x7 kernel at stride 2 over 128 x 128 images was 1.2x slower).
_SHIFTED_SUM_OFFSETS = 25


def _shifted_sum(w) -> bool:
    """Whether the forward pass is the one-channel sum of shifted windows."""
    return w.shape[-2] == 1 and math.prod(w.shape[:-2]) <= _SHIFTED_SUM_OFFSETS


def _conv_forward(shape, x, w):
    if not _shifted_sum(w):
        return _xla_conv(shape, x, w), (x, w)
    xp = _pad(x, shape.padding)
    acc = _accumulator(x.dtype)
    windows = _windows(xp, w.shape[:-2], shape.out(x, w), shape.strides, shape.dilation)
    # w[offset][0] is [out_channels]: given the window's rank explicitly (for rank promotion "raise")
    y = sum(window.astype(acc) * jax.lax.expand_dims(w[offset][0].astype(acc), tuple(range(window.ndim - 1)))
            for offset, window in windows)
    return _computed_once(y.astype(x.dtype)), (x, w)


def _computed_once(y: jax.Array) -> jax.Array:
    """``y``, divided by ones made from it. XLA fuses a cheap element-wise producer (a sum of
    shifted terms: the one-channel forward pass, ``_col2im``) into each of its consumers and
    computes it again in each, and again for each element a consumer reads it at; a
    division it counts as expensive, and keeps its output instead. In the LeNet benchmark's
    step the first convolution's sum was computed three times (for the ReLU after it, the
    pooling's choice of each window's maximum, and the backward ReLU mask), and the second
    one's input gradient four times for each element (the pooling's gradient spreads it
    over a 2x2 window). Computed once, the first made the step 1.10x and 1.12x faster, both
    1.14x and 1.15x, for 1.2 MiB more of its temporaries (one-off A/Bs of 15 and 21
    interleaved rounds). ``sign`` keeps an infinite ``y`` infinite."""
    return y / (1 + 0 * jnp.sign(y))


def _accumulator(dtype) -> jnp.dtype:
    """The dtype a sum over kernel offsets runs in: float32, or the inputs' if wider (spelled
    out: ``promote_types`` raises for bfloat16 under ``jax_numpy_dtype_promotion="strict"``)."""
    return dtype if jnp.finfo(dtype).bits > 32 else jnp.dtype(jnp.float32)


# Up to this many input channels the input gradient may be ``_col2im``; past them, XLA's.
_COL2IM_CHANNELS = 8


def _col2im_wins(shape, w) -> bool:
    """Whether the input gradient is ``_col2im`` (see ``conv``): few input channels, no more
    output channels than ``offsets x in``, and with a stride at most ``4 x stride^2``
    offsets."""
    offsets, (cin, cout) = math.prod(w.shape[:-2]), w.shape[-2:]
    strided = math.prod(shape.strides)
    return cin <= _COL2IM_CHANNELS and offsets * cin >= cout and (strided == 1 or offsets <= 4 * strided)


def _conv_backward(shape, residuals, g):
    x, w = residuals
    if _col2im_wins(shape, w):
        dx = _col2im(shape, x, w, g)
    else:
        dx = jax.vjp(lambda x: _xla_conv(shape, x, w), x)[1](g)[0]
    return dx, _weight_grad(shape, x, g, w)


# The one-channel weight gradient's product covers every pair of an input position and an
# output position along the last axis: up to this many times the work of the pairs it keeps.
_ROWS_WASTE = 8


def _weight_grad(shape, x, g, w):
    """The weight gradient. At stride and dilation 1, where ``_col2im`` is the input
    gradient: ``_weight_grad_by_offset`` for more than one input channel, and
    ``_weight_grad_one_channel`` for one with a last axis at most ``_ROWS_WASTE`` kernels
    long. Elsewhere XLA's. fnn's two were up to 1,000x slower than XLA's on long
    one-channel sequences (the product grows with the square of the last axis's length)
    and 1.2-1.7x slower with a stride, a dilation, one example, bfloat16 or many
    channels; on LeNet's step XLA's was as fast, but in its ``steps_per_call=10`` loop
    3.8x slower."""
    kernel = w.shape[:-2]
    if set(shape.strides) == set(shape.dilation) == {1} and _col2im_wins(shape, w):
        if x.shape[-1] > 1:
            return _weight_grad_by_offset(shape, x, g, kernel).reshape(w.shape).astype(w.dtype)
        padded = x.shape[-2] + sum(shape.padding[-1])
        if padded <= _ROWS_WASTE * kernel[-1]:
            return _weight_grad_one_channel(shape, x, g, kernel).reshape(w.shape).astype(w.dtype)
    return _xla_weight_grad(shape, x, g, w)


def _xla_weight_grad(shape, x, g, w):
    """XLA's weight gradient of the convolution ``shape`` of ``x``, at its cotangent ``g``."""
    return jax.vjp(lambda w: _xla_conv(shape, x, w), w)[1](g)[0]


def _weight_grad_one_channel(shape, x, g, kernel):
    """The weight gradient with one input channel, ``[*kernel, out]``, as one product.

    The input's windows are stacked for the offsets along every spatial axis but the last;
    along the last the rows stay whole (``padded`` long). One product ``rows^T @ g`` then
    gives ``m[window, p, j, c]``, the sum over batch and leading positions of the input at
    ``p`` times the cotangent at output position ``j``, and the gradient at last-axis
    offset ``o`` is the sum of ``m`` where ``p = stride * j + dilation * o``: a product
    with a constant 0/1 selection. XLA's weight gradient of LeNet's first convolution took
    2x as long in a one-off microbenchmark (4.6 ms against 2.3 ms)."""
    xp = _pad(_after(x, g), shape.padding)[..., 0]
    *lead_kernel, last_kernel = kernel
    *lead_out, last_out = g.shape[1:-1]
    *lead_strides, last_stride = shape.strides
    *lead_dilation, last_dilation = shape.dilation
    padded, cout = xp.shape[-1], g.shape[-1]
    # windows along the leading spatial axes; the last axis (after them) stays whole
    windows = [window for _, window in _windows(xp, lead_kernel, lead_out, lead_strides, lead_dilation)]
    rows = jnp.stack(windows, -2).reshape(-1, len(windows) * padded)
    m = weight_grad(rows, g.reshape(rows.shape[0], last_out * cout))
    select = np.zeros((last_kernel, padded, last_out), np.float32)
    for o in range(last_kernel):
        select[o, last_stride * np.arange(last_out) + last_dilation * o, np.arange(last_out)] = 1
    return jnp.einsum("wpc,op->woc", m.reshape(len(windows), padded * last_out, cout),
                      jnp.asarray(select.reshape(last_kernel, -1), m.dtype),
                      preferred_element_type=_accumulator(m.dtype))


def _after(x: jax.Array, g: jax.Array) -> jax.Array:
    """``x`` plus zero times ``g``'s first element: the same values (a non-finite ``g``
    gives NaN), but computed only once ``g`` exists. When ``x`` is the training data, XLA's
    CPU scheduler would otherwise make what the rule builds from it (the stacked rows) for
    every step of an unrolled ``steps_per_call`` loop at the start, and keep them all: the
    LeNet benchmark's ten unrolled steps planned 39.5 MiB of temporaries that way, and 17.6
    with this. (An ``optimization_barrier`` does not order XLA's CPU schedule: it is
    removed before scheduling.)"""
    return x + jnp.zeros((), x.dtype) * g.reshape(-1)[0].astype(x.dtype)


def _weight_grad_by_offset(shape, x, g, kernel):
    """``window^T @ g`` for every kernel offset: ``[offsets, in, out]``. A loop over the
    offsets, so XLA compiles one product, not one per offset: in a one-off A/B of LeNet's
    step, 0.5-1 s less to compile and 6 MiB less temporary memory, at the same speed. With
    a stride the loop slices the window's extent and then takes every stride-th position."""
    xp = _pad(x, shape.padding)
    rows = g.reshape(-1, g.shape[-1])
    out = g.shape[1:-1]
    extent = (x.shape[0], *(s * (n - 1) + 1 for s, n in zip(shape.strides, out)), x.shape[-1])
    starts = jnp.array([(0, *(o * d for o, d in zip(offset, shape.dilation)), 0)
                        for offset in itertools.product(*map(range, kernel))], jnp.int32)

    def one(start):
        window = lax.dynamic_slice(xp, tuple(start), extent)
        if set(shape.strides) != {1}:
            window = lax.slice(window, (0,) * window.ndim, window.shape, (1, *shape.strides, 1))
        return weight_grad(window, rows)

    return lax.map(one, starts)


def _pad(x, padding):
    """``x`` padded on its spatial axes (every axis but the first and last)."""
    return jnp.pad(x, ((0, 0), *padding, (0, 0)))


def _col2im(shape, x, w, g):
    """The input gradient as one product ``g @ w^T`` for every offset at once
    (``[batch, *out, offsets, in]``), each offset's slice then added back at its shift
    (and, with a stride, spread ``stride`` apart)."""
    kernel, (cin, cout) = w.shape[:-2], w.shape[-2:]
    out = g.shape[1:-1]
    padded = tuple(s + lo + hi for s, (lo, hi) in zip(x.shape[1:-1], shape.padding))
    cols = lax.dot_general(g, w.reshape(-1, cin, cout), (((g.ndim - 1,), (2,)), ((), ())),
                           preferred_element_type=_accumulator(g.dtype))
    zero = jnp.zeros((), cols.dtype)
    dxp = 0
    for i, offset in enumerate(itertools.product(*map(range, kernel))):
        spread = []
        for o, p, n, s, d in zip(offset, padded, out, shape.strides, shape.dilation):
            spread.append((o * d, p - o * d - s * (n - 1) - 1, s - 1))
        dxp = dxp + lax.pad(cols[..., i, :], zero, ((0, 0, 0), *spread, (0, 0, 0)))
    crop = tuple(slice(lo, lo + s) for (lo, _), s in zip(shape.padding, x.shape[1:-1]))
    return _computed_once(dxp[(slice(None), *crop, slice(None))].astype(x.dtype))


_conv_reverse.defvjp(_conv_forward, _conv_backward)


def conv_transpose(
    x: jax.Array,
    w: jax.Array,
    padding: tuple[tuple[int, int], ...],
    strides: tuple[int, ...],
    dilation: tuple[int, ...],
) -> jax.Array:
    """``lax.conv_transpose(x, w, strides, padding, rhs_dilation=dilation)``, channels
    last (``x: [batch, *spatial, in]``, ``w: [*kernel, in, out]``, ``padding`` one
    (low, high) pair per spatial axis, applied to the stride-dilated input).

    A transposed convolution is the input gradient of a strided convolution whose kernel
    is ``w`` flipped along its spatial axes with its channel axes swapped, and whose
    padding is what is left of the dilated kernel's extent: ``d * (k - 1) - low`` and
    ``d * (k - 1) - high``. Inside ``reverse_mode_only()`` on CPU, with a stride above 1
    and neither of those negative, it has a rule built on ``conv``'s: the forward pass is
    XLA's; the input gradient is that strided convolution of ``g`` (with ``conv``'s
    one-channel forward pass where it applies), and the weight gradient XLA's weight
    gradient of it. XLA's CPU backend computes both gradients of its transposed
    convolution as convolutions of dilated arrays: at stride 2 the rule's step took
    0.14-0.62x the time of JAX's (``benchmarks/conv_layers.py``, a 1-D layer to one
    channel and 2-D ones to 1-32 channels); at stride 1, a plain convolution, the two were
    level, and XLA's is used. (The forward pass as the input gradient of ``conv``'s rule,
    one product for every offset with its slices added back, planned 14.6 MiB more for
    the benchmark segmenter's step and was slower there.) Elsewhere it is
    ``lax.conv_transpose``.
    """
    shape = _Shape(_mirror(padding, w, dilation), tuple(strides), tuple(dilation))
    size = _transposed_size(shape, x, w)
    # at stride 1 (a plain convolution) XLA's was as fast in a one-off microbenchmark
    ok = (set(shape.strides) != {1} and min(x.shape[0], *size) > 0
          and min(min(pair) for pair in shape.padding) >= 0)
    if reverse_only() and jax.default_backend() == "cpu" and ok:
        return _conv_transpose_reverse(shape, x, w)
    return _xla_conv_transpose(shape, x, w)


def _xla_conv_transpose(shape, x, w):
    """``lax.conv_transpose`` of the strided convolution ``shape``'s input gradient."""
    padding = _mirror(shape.padding, w, shape.dilation)
    return lax.conv_transpose(
        x, w, shape.strides, padding, rhs_dilation=shape.dilation, dimension_numbers=_layouts(x.ndim - 2)
    )


def _mirror(padding, w, dilation) -> tuple[tuple[int, int], ...]:
    """``d * (k - 1) - low`` and ``d * (k - 1) - high`` per spatial axis: a transposed
    convolution's padding from its strided convolution's, and back (its own inverse)."""
    axes = zip(padding, w.shape[:-2], dilation)
    return tuple((d * (k - 1) - lo, d * (k - 1) - hi) for (lo, hi), k, d in axes)


def _transposed_size(shape, x, w) -> tuple[int, ...]:
    """The spatial sizes of a transposed convolution's output: the input sizes of the
    strided convolution (``shape``) whose input gradient it is."""
    axes = zip(x.shape[1:-1], shape.padding, w.shape[:-2], shape.strides, shape.dilation)
    return tuple((n - 1) * s + 1 + d * (k - 1) - lo - hi for n, (lo, hi), k, s, d in axes)


def _adjoint_kernel(w: jax.Array) -> jax.Array:
    """``w`` flipped along its spatial axes, its channel axes swapped (its own inverse)."""
    n = w.ndim - 2
    return jnp.swapaxes(jnp.flip(w, tuple(range(n))), -1, -2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv_transpose_reverse(shape, x, w):
    """``conv_transpose``'s rule (see its docstring): a custom VJP, reverse mode only."""
    return _conv_transpose_forward(shape, x, w)[0]


def _conv_transpose_forward(shape, x, w):
    return _xla_conv_transpose(shape, x, w), (x, w)


def _conv_transpose_backward(shape, residuals, g):
    x, w = residuals
    adjoint = _adjoint_kernel(w)
    g = g.astype(x.dtype)
    dx = _conv_forward(shape, g, adjoint)[0]
    return dx, _adjoint_kernel(_xla_weight_grad(shape, g, x, adjoint)).astype(w.dtype)


_conv_transpose_reverse.defvjp(_conv_transpose_forward, _conv_transpose_backward)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    visible: jax.Array | None = None,
    keep: jax.Array | None = None,
    rate: float = 0.0,
) -> jax.Array:
    """``softmax(q k^T / sqrt(d)) v`` per head, the scores and the softmax in float32, as
    ``jax.nn.dot_product_attention(q, k, v, mask=visible)``. ``q: [batch, tq, heads, d]``,
    ``k, v: [batch, tk, heads, d]``, ``visible``: bool, broadcastable to
    ``[batch, heads, tq, tk]``. With dropout, ``keep`` (bool, broadcastable like ``visible``)
    keeps a weight, scaled by ``1 / (1 - rate)``, and drops the others.

    Without dropout, inside ``reverse_mode_only()`` on CPU, with at least twice as many
    keys as the head dimension ``d``, it has fnn's rule, a custom VJP
    that keeps the softmax weights ``p`` and the output ``o``, and takes the scores'
    cotangent as ``p * (dp - rowsum(do * o))`` (``dp = do v^T``). JAX's gradient of the
    softmax sums ``dp * p`` over the keys instead, a pass over the
    ``[batch, heads, tq, tk]`` array that XLA's CPU backend fuses into the product
    ``do v^T``; the row sums of ``do * o`` run over the head dimension. In a one-process
    A/B (a one-off script) the rule ran the benchmark transformer's training step 1.13x
    faster and planned 70 MiB of temporaries against 80. Elsewhere (outside the context,
    with fewer keys, or on GPU and TPU, where a backend may have a fused attention of its own) it is
    ``jax.nn.dot_product_attention``, except in float16 on CPU, whose products that
    function asks for XLA's CPU backend does not compile: there it is the rule's forward
    maths, differentiated by JAX.

    With dropout it is that maths written out, differentiated by JAX: the rule extended to
    the mask was no faster for the benchmark transformer with dropout 0.1 (the step's time
    with JAX's gradient over the rule's: paired medians of 1.06 and 0.95 in two one-off
    runs) and planned 4.8 MiB more.
    """
    if keep is not None:
        p = jnp.where(keep, attention_weights(q, k, visible) / (1.0 - rate), 0.0)
        return jnp.einsum("bhqk,bkhd->bqhd", p.astype(v.dtype), v)
    if reverse_only() and jax.default_backend() == "cpu" and k.shape[1] >= _KEYS_PER_DIM * q.shape[-1]:
        if visible is None:
            visible = jnp.ones((1, 1, q.shape[1], k.shape[1]), bool)
        return _attention_reverse(q, k, v, visible)
    if q.dtype == jnp.float16 and jax.default_backend() == "cpu":
        # XLA's CPU dot_general refuses jax.nn's float16 products (float32 results) under jit
        return _attention_forward(q, k, v, visible)[0]
    return jax.nn.dot_product_attention(q, k, v, mask=visible)


# The rule's row sums run over the head dimension d, JAX's over the keys: with fewer than
# 2d keys, JAX's (16 x 8 queries x 8 keys x 4 heads of 64: the rule 1.3x slower, 1.5x the
# temporaries; 512 queries x 64 keys of 64: 1.18x; x 128 keys: 0.95x)
_KEYS_PER_DIM = 2


@jax.custom_vjp
def _attention_reverse(q, k, v, visible):
    """``attention``'s rule (see its docstring): a custom VJP, reverse mode only."""
    return _attention_forward(q, k, v, visible)[0]


def attention_weights(q: jax.Array, k: jax.Array, visible: jax.Array | None) -> jax.Array:
    """The float32 softmax weights ``[batch, heads, tq, tk]`` of ``q k^T / sqrt(d)``, a key
    that is not ``visible`` given the lowest float32 score, as
    ``jax.nn.dot_product_attention``'s XLA implementation computes them."""
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
    if visible is not None:
        scores = jnp.where(visible, scores, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1)


def _attention_forward(q, k, v, visible):
    p = attention_weights(q, k, visible).astype(k.dtype)
    o = jnp.einsum("bhqk,bkhd->bqhd", p, v)
    return o, (q, k, v, p, o)


def _attention_backward(residuals, do):
    q, k, v, p, o = residuals
    dv = jnp.einsum("bhqk,bqhd->bkhd", p, do)
    dp = jnp.einsum("bqhd,bkhd->bhqk", do, v, preferred_element_type=jnp.float32)
    rows = jnp.einsum("bqhd,bqhd->bhq", do, o, preferred_element_type=jnp.float32)
    ds = (p * (dp - rows[..., None]) / math.sqrt(q.shape[-1])).astype(q.dtype)
    dq = jnp.einsum("bhqk,bkhd->bqhd", ds, k)
    dk = jnp.einsum("bhqk,bqhd->bkhd", ds, q)
    return dq, dk, dv, None


_attention_reverse.defvjp(_attention_forward, _attention_backward)
