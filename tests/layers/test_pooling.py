"""Reference tests for the pooling layers: MaxPool, AvgPool, GlobalAvgPool, GlobalMaxPool.

Each is checked against plain NumPy loops over the output positions (with the padding
written out by hand) and against ``flax.linen.max_pool``/``avg_pool``, whose conventions
(channels last, lax 'SAME' padding, count_include_pad) are the same; then the layer
contract and the errors for bad configurations and inputs.
"""

import itertools
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

import fnn

KEY = jax.random.key(0)


def rand(shape, seed=1, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def distinct(shape, seed=1, dtype=jnp.float32):
    """Values 0.05 apart in a random order: no ties in any max-pool window."""
    values = np.random.default_rng(seed).permutation(math.prod(shape)).reshape(shape)
    return jnp.asarray(0.05 * (values - values.mean()), dtype)


def spec(*shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def close(actual, expected, tol=1e-5):
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                               rtol=tol, atol=tol)


# ---- plain-NumPy reference -------------------------------------------------------------------


def np_pads(spatial, window, strides, padding):
    if padding == "VALID":
        return [(0, 0)] * len(window)
    if padding == "SAME":
        pads = []
        for size, w, s in zip(spatial, window, strides):
            out = -(-size // s)
            total = max((out - 1) * s + w - size, 0)
            pads.append((total // 2, total - total // 2))
        return pads
    return [tuple(p) for p in padding]


def np_pool(x, window, strides, padding, kind, count_include_pad=True):
    """``kind`` is "max" or "avg"; loops over every output position of every axis."""
    x = np.asarray(x, np.float64)
    spatial = x.shape[1:-1]
    strides = strides or window
    pads = np_pads(spatial, window, strides, padding)
    padded = np.pad(x, [(0, 0), *pads, (0, 0)])
    real = np.pad(np.ones(spatial, bool), pads)
    out_shape = [(size + lo + hi - w) // s + 1
                 for size, (lo, hi), w, s in zip(spatial, pads, window, strides)]
    out = np.empty((x.shape[0], *out_shape, x.shape[-1]))
    for position in itertools.product(*(range(n) for n in out_shape)):
        where = tuple(slice(i * s, i * s + w) for i, s, w in zip(position, strides, window))
        block = padded[(slice(None), *where, slice(None))]
        mask = real[where][None, ..., None]
        axes = tuple(range(1, 1 + len(window)))
        if kind == "max":
            value = np.where(mask, block, -np.inf).max(axes)
        else:
            count = math.prod(window) if count_include_pad else mask.sum()
            value = np.where(mask, block, 0.0).sum(axes) / count
        out[(slice(None), *position, slice(None))] = value
    return out


# (input shape, window, strides, padding): 1, 2 and 3 spatial axes
CONFIGS = [
    ((2, 7, 3), (3,), (2,), "SAME"),
    ((2, 7, 3), (3,), (2,), "VALID"),
    ((2, 8, 3), (2,), None, "VALID"),
    ((2, 7, 3), (3,), (1,), ((1, 2),)),
    ((2, 5, 6, 2), (2, 3), (1, 2), "SAME"),
    ((2, 5, 6, 2), (2, 3), (1, 2), "VALID"),
    ((1, 5, 5, 2), (3, 3), (2, 2), "SAME"),
    ((1, 6, 4, 1), (2, 2), None, ((1, 1), (0, 1))),
    ((1, 4, 5, 3, 2), (2, 2, 2), (1, 2, 1), "SAME"),
    ((1, 4, 5, 3, 2), (3, 2, 2), (2, 2, 2), "VALID"),
]
CONFIG_IDS = [f"{len(w)}d-{'x'.join(map(str, w))}-s{s}-{p if isinstance(p, str) else 'explicit'}"
              for _, w, s, p in CONFIGS]


@pytest.mark.parametrize("shape, window, strides, padding", CONFIGS, ids=CONFIG_IDS)
def test_pools_match_numpy_loops_and_flax(shape, window, strides, padding):
    x = rand(shape)
    flax_strides = strides or window
    flax_padding = padding if isinstance(padding, str) else tuple(padding)

    y = fnn.MaxPool(window, strides, padding)({}, x)
    close(y, np_pool(x, window, strides, padding, "max"))
    close(y, nn.max_pool(x, window, flax_strides, flax_padding))

    for include in (True, False):
        y = fnn.AvgPool(window, strides, padding, count_include_pad=include)({}, x)
        close(y, np_pool(x, window, strides, padding, "avg", include))
        close(y, nn.avg_pool(x, window, flax_strides, flax_padding, count_include_pad=include))


def test_avg_pool_count_include_pad_at_the_borders():
    """SAME padding of a 3-window over [1..5]: one zero of padding at each end."""
    x = jnp.arange(1.0, 6.0).reshape(1, 5, 1)
    included = fnn.AvgPool((3,), strides=(1,), padding="SAME", count_include_pad=True)({}, x)
    close(included[0, :, 0], [3 / 3, 6 / 3, 9 / 3, 12 / 3, 9 / 3], tol=1e-6)
    excluded = fnn.AvgPool((3,), strides=(1,), padding="SAME", count_include_pad=False)({}, x)
    close(excluded[0, :, 0], [3 / 2, 6 / 3, 9 / 3, 12 / 3, 9 / 2], tol=1e-6)
    # the default is count_include_pad=True; with VALID padding both agree
    close(fnn.AvgPool((3,), strides=(1,), padding="SAME")({}, x), included)
    valid = [fnn.AvgPool((3,), strides=(1,), count_include_pad=c)({}, x)[0, :, 0] for c in (True, False)]
    close(valid[0], [2.0, 3.0, 4.0], tol=1e-6)
    close(valid[1], valid[0], tol=1e-6)


def test_avg_pool_count_include_pad_on_a_2d_corner():
    """A 3x3 SAME window at the corner of a 4x4 image of ones covers 4 real pixels."""
    x = jnp.ones((1, 4, 4, 1))
    included = fnn.AvgPool((3, 3), strides=(1, 1), padding="SAME")({}, x)[0, :, :, 0]
    expected = np.array([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]]) / 9
    close(included, expected, tol=1e-6)
    excluded = fnn.AvgPool((3, 3), strides=(1, 1), padding="SAME", count_include_pad=False)({}, x)
    close(excluded, np.ones((1, 4, 4, 1)), tol=1e-6)


def test_max_pool_padding_never_wins_over_negative_values():
    x = -jnp.arange(1.0, 6.0).reshape(1, 5, 1)  # all negative: a zero pad would win
    y = fnn.MaxPool((3,), strides=(1,), padding="SAME")({}, x)
    close(y[0, :, 0], [-1.0, -1.0, -2.0, -3.0, -4.0])
    y = fnn.MaxPool((2,), strides=(2,), padding=((1, 1),))({}, x)
    close(y[0, :, 0], [-1.0, -2.0, -4.0])


def test_default_strides_are_the_window_and_padding_is_valid():
    x = rand((2, 7, 5, 3))
    layer = fnn.MaxPool((3, 2))
    assert layer.strides == (3, 2) and layer.padding == "VALID"
    close(layer({}, x), np_pool(x, (3, 2), (3, 2), "VALID", "max"))
    assert layer({}, x).shape == (2, 2, 2, 3)
    assert fnn.AvgPool([2, 2], strides=1, padding="same") == fnn.AvgPool((2, 2), (1, 1), "SAME")
    assert fnn.AvgPool((2, 2), padding=1).padding == ((1, 1), (1, 1))


@pytest.mark.parametrize("shape", [(2, 7, 3), (2, 4, 5, 3), (1, 3, 4, 2, 3)])
def test_global_pools_match_numpy(shape):
    x = rand(shape)
    axes = tuple(range(1, len(shape) - 1))
    y = fnn.GlobalAvgPool()({}, x)
    assert y.shape == (shape[0], shape[-1])
    close(y, np.asarray(x, np.float64).mean(axes))
    y = fnn.GlobalMaxPool()({}, x)
    assert y.shape == (shape[0], shape[-1])
    close(y, np.asarray(x).max(axes))
    # and equal to a pool whose window is the whole image
    close(fnn.GlobalAvgPool()({}, x), fnn.AvgPool(shape[1:-1])({}, x).reshape(shape[0], shape[-1]))
    close(fnn.GlobalMaxPool()({}, x), fnn.MaxPool(shape[1:-1])({}, x).reshape(shape[0], shape[-1]))


# ---- contract ----------------------------------------------------------------------------------

POOLS = [
    (fnn.MaxPool((2,)), (2, 6, 3)),
    (fnn.MaxPool((3, 3), strides=(2, 1), padding="SAME"), (2, 5, 6, 3)),
    (fnn.AvgPool((2, 2), padding="VALID"), (2, 6, 6, 3)),
    (fnn.AvgPool((3, 3), strides=2, padding="SAME", count_include_pad=False), (2, 5, 5, 2)),
    (fnn.AvgPool((2, 2, 2), padding=((1, 0), (0, 1), (1, 1))), (1, 3, 4, 3, 2)),
    (fnn.GlobalAvgPool(), (2, 4, 5, 3)),
    (fnn.GlobalMaxPool(), (2, 4, 3)),
]
POOL_IDS = [f"{type(layer).__name__}{i}" for i, (layer, _) in enumerate(POOLS)]


@pytest.mark.parametrize("layer, shape", POOLS, ids=POOL_IDS)
def test_abstract_init_and_output_spec_match_real_ones(layer, shape):
    assert jax.eval_shape(layer.init, KEY, spec(*shape)) == ({}, {})
    assert layer.init(KEY, rand(shape)) == ({}, {})
    x = rand(shape)
    y = layer({}, x)
    out = layer.output_spec({}, {}, spec(*shape))
    assert (out.shape, out.dtype) == (y.shape, jnp.float32)
    hash(layer)  # layers are hashable descriptions


@pytest.mark.parametrize("layer, shape", POOLS, ids=POOL_IDS)
def test_bfloat16_in_bfloat16_out(layer, shape):
    x = distinct(shape)
    y = layer({}, x.astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    close(y.astype(jnp.float32), layer({}, x), tol=0.02)


@pytest.mark.parametrize(
    "layer, shape",
    [(fnn.MaxPool((2, 2), strides=(1, 1), padding="SAME"), (1, 3, 4, 2)),
     (fnn.AvgPool((2, 2), strides=(1, 1), padding="SAME", count_include_pad=False), (1, 3, 4, 2)),
     (fnn.GlobalMaxPool(), (1, 3, 4, 2)),
     (fnn.GlobalAvgPool(), (1, 3, 4, 2))],
    ids=["MaxPool", "AvgPool", "GlobalMaxPool", "GlobalAvgPool"],
)
def test_gradients_second_order_float64(layer, shape):
    """Inputs without ties, 0.05 apart, so finite differences never switch the maximum."""
    with jax.enable_x64(True):
        x = distinct(shape, dtype=jnp.float64)
        check_grads(jax.jit(lambda v: layer({}, v)), (x,), order=2, modes=["fwd", "rev"], atol=1e-6, rtol=1e-6,
                    eps=1e-4)


def test_max_pool_gradient_routes_to_the_maximum():
    x = jnp.array([[[1.0], [3.0], [2.0], [0.0]]])
    grad = jax.grad(lambda v: fnn.MaxPool((2,))({}, v).sum())(x)
    close(grad[0, :, 0], [0.0, 1.0, 1.0, 0.0])
    grad = jax.grad(lambda v: fnn.AvgPool((2,))({}, v).sum())(x)
    close(grad[0, :, 0], [0.5, 0.5, 0.5, 0.5])


# Windows that tile the input are pooled by a reshape, not lax.reduce_window.
TILED = [
    ((2, 8, 3), (2,), "VALID"),
    ((2, 9, 3), (2,), "VALID"),  # the last position is past every window
    ((2, 6, 7, 3), (2, 3), "VALID"),
    ((2, 6, 9, 3), (2, 3), "SAME"),  # divisible: SAME pads nothing
    ((1, 4, 6, 2), (2, 2), ((0, 0), (0, 0))),
    ((1, 4, 6, 5, 2), (2, 3, 2), "VALID"),
]


def reduce_window_pool(x, window, padding, kind):
    strides, dims = (1, *window, 1), (1, *window, 1)
    pad = padding if isinstance(padding, str) else ((0, 0), *padding, (0, 0))
    if kind == "max":
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, strides, pad)
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, pad) / math.prod(window)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("shape, window, padding", TILED, ids=[f"{s}-{w}-{p}" for s, w, p in TILED])
def test_tiling_windows_are_pooled_without_reduce_window_and_equal_it_with_ties(shape, window, padding, kind):
    """Values and gradients equal reduce_window's, also where a window has several equal
    maxima (rounded inputs): the whole gradient goes to the first of them."""
    x = jnp.round(rand(shape))  # many ties
    layer = (fnn.MaxPool if kind == "max" else fnn.AvgPool)(window, padding=padding)
    assert "reduce_window" not in str(jax.make_jaxpr(jax.grad(lambda v: layer({}, v).sum()))(x))
    close(layer({}, x), reduce_window_pool(x, window, padding, kind))
    weights = rand(layer({}, x).shape, seed=2)
    grad = jax.grad(lambda v: (layer({}, v) * weights).sum())(x)
    expected = jax.grad(lambda v: (reduce_window_pool(v, window, padding, kind) * weights).sum())(x)
    close(grad, expected)


def test_tiled_max_pool_gradient_goes_to_the_first_of_equal_maxima():
    x = jnp.zeros((1, 4, 4, 1)).at[0, 3, 3, 0].set(-1.0)
    grad = jax.grad(lambda v: fnn.MaxPool((2, 2))({}, v).sum())(x)[0, :, :, 0]
    close(grad, [[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize("layer", [fnn.MaxPool((2, 2)), fnn.AvgPool((2, 2))], ids=["MaxPool", "AvgPool"])
def test_tiled_pool_gradients_second_order_float64(layer):
    with jax.enable_x64(True):
        x = distinct((1, 4, 5, 2), dtype=jnp.float64)
        check_grads(jax.jit(lambda v: layer({}, v)), (x,), order=2, modes=["fwd", "rev"], atol=1e-6, rtol=1e-6,
                    eps=1e-4)


class PoolJitEqualsEager(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*[(name, layer, shape) for name, (layer, shape) in zip(POOL_IDS, POOLS)])
    def test_apply(self, layer, shape):
        x = rand(shape)
        y = self.variant(lambda v: layer({}, v))(x)
        chex.assert_trees_all_close(y, layer({}, x), rtol=1e-6, atol=1e-6)
        chex.assert_shape(y, layer.output_spec({}, {}, x).shape)


# ---- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: fnn.MaxPool((2, 2, 2, 2)),
         r"MaxPool: window must give one size per spatial axis, 1 to 3 of them, e.g. \(3, 3\); "
         r"got \(2, 2, 2, 2\)"),
        (lambda: fnn.AvgPool(()),
         r"AvgPool: window must give one size per spatial axis, 1 to 3 .*got \(\)"),
        (lambda: fnn.MaxPool(2), r"MaxPool: window must give one size per spatial axis.*got 2"),
        (lambda: fnn.MaxPool((0, 2)),
         r"MaxPool: window must be a positive int or 2 positive ints, got \(0, 2\)"),
        (lambda: fnn.AvgPool((2.0,)),
         r"AvgPool: window must be a positive int or 1 positive ints, got \(2\.0,\)"),
        (lambda: fnn.MaxPool((2,), strides=-1),
         "MaxPool: strides must be a positive int or 1 positive ints, got -1"),
        (lambda: fnn.MaxPool((2, 2), strides=(1, -2)),
         r"MaxPool: strides must be a positive int or 2 positive ints, got \(1, -2\)"),
        (lambda: fnn.AvgPool((2, 2), strides=(1,)),
         r"AvgPool: strides must be a positive int or 2 positive ints, got \(1,\)"),
        (lambda: fnn.MaxPool((2,), strides=0),
         "MaxPool: strides must be a positive int or 1 positive ints, got 0"),
        (lambda: fnn.MaxPool((2,), padding="FULL"),
         r"MaxPool: padding must be 'SAME', 'VALID', an int, 1 ints or 1 \(low, high\) pairs, got 'FULL'"),
        (lambda: fnn.AvgPool((2, 2), padding=-1), r"AvgPool: padding must be 'SAME', 'VALID'.*got -1"),
        (lambda: fnn.AvgPool((2, 2), padding=((1, 1),)),
         r"AvgPool: padding must be .*2 \(low, high\) pairs"),
    ],
)
def test_bad_configuration_raises_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "layer, x, message",
    [
        (fnn.MaxPool((2, 2)), spec(2, 8, 3),
         r"MaxPool expects input of rank 4 \(batch, height, width, channels\), got float32\[2,8,3\]"),
        (fnn.AvgPool((2,)), spec(2, 8, 8, 3),
         r"AvgPool expects input of rank 3 \(batch, width, channels\), got float32\[2,8,8,3\]"),
        (fnn.MaxPool((2, 2, 2)), spec(2, 4, 4, 3),
         r"MaxPool expects input of rank 5 \(batch, depth, height, width, channels\), "
         r"got float32\[2,4,4,3\]"),
        (fnn.MaxPool((3, 3)), spec(1, 2, 5, 1),
         r"MaxPool leaves no output positions for input float32\[1,2,5,1\] "
         r"\(output would be \(1, 0, 1, 1\)\); use a smaller window or 'SAME' padding"),
        (fnn.GlobalAvgPool(), spec(2, 3),
         r"GlobalAvgPool expects \[batch, \*spatial, channels\] with at least one spatial axis, "
         r"got float32\[2,3\]"),
        (fnn.GlobalMaxPool(), spec(3),
         r"GlobalMaxPool expects \[batch, \*spatial, channels\].*got float32\[3\]"),
    ],
)
def test_bad_input_raises_at_init_and_names_the_path_inside_serial(layer, x, message):
    with pytest.raises(fnn.ShapeError, match=message):
        layer.init(KEY, x)
    model = fnn.serial(features=fnn.serial(before=fnn.Identity(), pool=layer))
    with pytest.raises(fnn.ShapeError, match="^features/pool: " + message) as info:
        model.init(KEY, x)
    assert info.value.path == ("features", "pool")


def test_default_pool_names_in_the_path():
    model = fnn.serial(fnn.MaxPool((2, 2)), fnn.MaxPool((2, 2)))
    with pytest.raises(fnn.ShapeError, match=r"^max_pool_1: MaxPool leaves no output positions"):
        model.init(KEY, spec(1, 3, 3, 1))


def test_pools_refuse_an_input_empty_on_a_spatial_axis():
    x = jnp.ones((2, 0, 3))
    for pool in (fnn.GlobalMaxPool(), fnn.GlobalAvgPool()):  # a raw NumPy ValueError, or NaN
        for run in (lambda p: fnn.serial(head=p)({}, x), lambda p: fnn.serial(head=p).init(KEY, x)):
            with pytest.raises(fnn.ShapeError, match=r"^head: Global\w+Pool got an input empty on a spatial axis"):
                run(pool)
    with pytest.raises(fnn.ShapeError) as info:  # advised "a smaller window or 'SAME' padding"
        fnn.MaxPool((2, 2), padding="SAME")({}, jnp.ones((2, 0, 4, 3)))
    assert "MaxPool got an input empty on a spatial axis, float32[2,0,4,3]" in str(info.value)
    assert "'SAME'" not in str(info.value)


def test_pool_window_takes_numpy_ints():
    pool = fnn.MaxPool((np.int64(2), 2))
    assert pool == fnn.MaxPool((2, 2)) and all(type(w) is int for w in pool.window)
