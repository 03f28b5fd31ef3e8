"""Conv and ConvTranspose against flax.linen, jax.lax and plain NumPy loops, plus shapes,
dtypes, gradients, jit, initializers and error messages."""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

import fnn
from fnn import initializers
from tests.layers.reference import KEY, close, rand, random_params, shapes_and_dtypes, spec


def shared_weights(ours, ref, x):
    """Weights for fnn and, the same ones, for flax, checked to have exactly flax's shapes."""
    params = random_params(ours, x)
    variables = to_flax(params)
    assert shapes_and_dtypes(variables) == shapes_and_dtypes(jax.eval_shape(ref.init, KEY, x))
    return params, variables


def zero_params(layer, x):
    """Params of the right shapes without drawing random numbers, for tests of shapes and errors."""
    params, _ = jax.eval_shape(layer.init, KEY, x)
    return jax.tree.map(lambda v: jnp.zeros(v.shape, v.dtype), params)


def to_flax(params):
    return {"params": {"kernel": params["w"], **({"bias": params["b"]} if "b" in params else {})}}


# ---- Conv against flax.linen.Conv -------------------------------------------------------------

CONV_CASES = {
    # name: (input shape, kernel_size, fnn options); 6 output channels in every case
    "1d": ((2, 9, 3), (3,), {}),
    "1d_stride_valid": ((2, 11, 4), (4,), {"strides": 2, "padding": "VALID"}),
    "1d_dilation_int_padding": ((2, 10, 4), (3,), {"dilation": 2, "padding": 1}),
    "1d_causal_pair": ((2, 8, 2), (3,), {"padding": [(2, 0)], "use_bias": False}),
    "2d_same": ((2, 7, 8, 3), (3, 3), {}),
    "2d_same_stride_even": ((2, 8, 8, 3), (3, 3), {"strides": 2}),
    "2d_stride_valid_rect": ((2, 9, 7, 3), (3, 2), {"strides": (2, 1), "padding": "VALID"}),
    "2d_per_axis_ints": ((1, 6, 7, 2), (3, 3), {"padding": (2, 0), "strides": (1, 2)}),
    "2d_pairs_dilation": ((2, 8, 8, 4), (3, 3), {"padding": ((1, 2), (0, 1)), "dilation": (1, 2)}),
    "2d_groups": ((2, 6, 6, 4), (3, 3), {"groups": 2}),
    "2d_depthwise": ((2, 6, 6, 6), (3, 3), {"groups": 6, "use_bias": False}),
    "2d_depthwise_multiplier": ((1, 5, 5, 3), (3, 3), {"groups": 3, "strides": 2}),
    "3d": ((1, 5, 6, 5, 2), (3, 3, 3), {}),
    "3d_stride_valid_nobias": ((1, 7, 6, 5, 2), (2, 3, 2), {"strides": (2, 1, 2), "padding": "VALID",
                                                             "use_bias": False}),
    "3d_groups_dilation": ((1, 6, 6, 6, 4), (2, 2, 2), {"groups": 2, "dilation": 2, "padding": 1}),
}


def flax_conv(features, kernel, options, transpose=False):
    common = {
        "strides": options.get("strides", 1),
        "padding": options.get("padding", "SAME"),
        "kernel_dilation": options.get("dilation", 1),
        "use_bias": options.get("use_bias", True),
    }
    if transpose:
        return nn.ConvTranspose(features, kernel, **common)
    return nn.Conv(features, kernel, feature_group_count=options.get("groups", 1), **common)


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_matches_flax_with_copied_weights(case):
    shape, kernel, options = CONV_CASES[case]
    x = rand(shape)
    ref = flax_conv(6, kernel, options)
    ours = fnn.Conv(6, kernel, **options)
    params, variables = shared_weights(ours, ref, x)
    # jitted on both sides: one compilation each instead of one per operation (see JitTest for
    # jitted against eager)
    expected = jax.jit(ref.apply)(variables, x)
    y = jax.jit(ours.__call__)(params, x)
    assert y.shape == expected.shape and y.dtype == jnp.float32
    close(y, expected)


def test_conv_params_work_on_other_spatial_sizes():
    ours = fnn.Conv(5, (3, 3), strides=2)
    params = random_params(ours, spec(2, 8, 8, 3))
    ref = nn.Conv(5, (3, 3), strides=2)
    for shape in [(1, 5, 11, 3), (3, 4, 4, 3)]:
        x = rand(shape, seed=sum(shape))
        close(ours(params, x), ref.apply(to_flax(params), x))


def test_conv_padding_is_normalised_and_case_insensitive():
    x = rand((1, 6, 5, 2))
    params = random_params(fnn.Conv(3, (3, 3)), x)
    assert fnn.Conv(3, (3, 3), padding="same") == fnn.Conv(3, (3, 3), padding="SAME")
    np.testing.assert_array_equal(fnn.Conv(3, (3, 3), padding="valid")(params, x),
                                  fnn.Conv(3, (3, 3), padding="VALID")(params, x))
    # an int pads every side; per-axis ints pad both ends of their axis; pairs are (low, high)
    assert fnn.Conv(3, (3, 3), padding=1).padding == ((1, 1), (1, 1))
    assert fnn.Conv(3, (3, 3), padding=(1, 2)).padding == ((1, 1), (2, 2))
    assert fnn.Conv(3, (3, 3), padding=[1, (0, 2)]).padding == ((1, 1), (0, 2))
    conv = fnn.Conv(3, [3, 3], strides=2, dilation=(1, 2))
    assert (conv.kernel_size, conv.strides, conv.dilation) == ((3, 3), (2, 2), (1, 2))
    assert conv == fnn.Conv(3, (3, 3), strides=(2, 2), dilation=(1, 2))
    assert hash(conv) == hash(fnn.Conv(3, (3, 3), strides=(2, 2), dilation=(1, 2)))
    # padding 1 with a 3x3 window is SAME at stride 1
    close(fnn.Conv(3, (3, 3), padding=1)(params, x), fnn.Conv(3, (3, 3))(params, x))


# ---- Conv against plain NumPy loops -------------------------------------------------------------


def numpy_conv2d(x, w, b, strides, padding, dilation, groups):
    """A 2-D grouped, dilated, strided convolution (cross-correlation) with explicit loops.

    x: [N, H, W, C], w: [KH, KW, C // groups, O]; padding: 'SAME', 'VALID' or pairs.
    """
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    n, h, wd, c = x.shape
    kh, kw, cg, o = w.shape
    sh, sw = strides
    dh, dw = dilation
    eff = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
    if padding == "VALID":
        pads = ((0, 0), (0, 0))
    elif padding == "SAME":  # TF/XLA: output = ceil(in / stride), the extra pad goes at the end
        pads = []
        for size, stride, k in zip((h, wd), strides, eff):
            total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
            pads.append((total // 2, total - total // 2))
    else:
        pads = padding
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    out_h = (xp.shape[1] - eff[0]) // sh + 1
    out_w = (xp.shape[2] - eff[1]) // sw + 1
    og = o // groups
    y = np.zeros((n, out_h, out_w, o))
    for batch in range(n):
        for i in range(out_h):
            for j in range(out_w):
                for out in range(o):
                    g = out // og
                    total = 0.0 if b is None else float(b[out])
                    for u in range(kh):
                        for v in range(kw):
                            for ci in range(cg):
                                total += (xp[batch, i * sh + u * dh, j * sw + v * dw, g * cg + ci]
                                          * w[u, v, ci, out])
                    y[batch, i, j, out] = total
    return y


@pytest.mark.parametrize("shape, kernel, options", [
    ((1, 5, 6, 2), (3, 2), {"strides": (2, 1), "padding": "VALID"}),
    ((1, 6, 5, 2), (3, 3), {"strides": 2}),  # SAME with asymmetric padding on the even axis
    ((1, 6, 6, 4), (3, 2), {"padding": ((1, 2), (0, 1)), "dilation": (2, 1), "groups": 2}),
], ids=["valid_stride", "same_stride", "pairs_dilation_groups"])
def test_conv2d_against_numpy_loops(shape, kernel, options):
    x = rand(shape)
    conv = fnn.Conv(4, kernel, **options)
    params = random_params(conv, x)
    expected = numpy_conv2d(x, params["w"], params["b"], conv.strides, conv.padding, conv.dilation,
                            conv.groups)
    close(conv(params, x), expected)


# ---- ConvTranspose against flax.linen.ConvTranspose, lax and NumPy ----------------------------

# flax's ConvTranspose (transpose_kernel=False, its default) calls lax.conv_transpose exactly as
# fnn documents its semantics: the kernel is not flipped and padding applies to the
# stride-dilated input. So the two must agree given the same weights.
CONV_T_CASES = {
    "1d_same_stride": ((2, 5, 3), (3,), {"strides": 2}),
    "1d_valid_stride": ((2, 5, 3), (4,), {"strides": 2, "padding": "VALID"}),
    "1d_valid_kernel_below_stride": ((2, 4, 3), (2,), {"strides": 3, "padding": "VALID"}),
    "1d_pairs_nobias": ((1, 6, 2), (3,), {"strides": 2, "padding": [(1, 2)], "use_bias": False}),
    "2d_same": ((2, 4, 5, 3), (3, 3), {}),
    "2d_same_stride": ((2, 4, 5, 3), (2, 2), {"strides": 2}),
    "2d_same_stride_odd_kernel": ((1, 3, 4, 2), (3, 3), {"strides": 2}),
    "2d_valid_rect": ((2, 4, 5, 3), (3, 2), {"strides": (2, 1), "padding": "VALID", "use_bias": False}),
    "2d_int_padding_dilation": ((1, 5, 4, 2), (3, 3), {"strides": 2, "padding": 1, "dilation": 2}),
    "3d_same_stride": ((1, 3, 3, 2, 2), (2, 2, 2), {"strides": 2}),
}


@pytest.mark.parametrize("case", list(CONV_T_CASES))
def test_conv_transpose_matches_flax_with_copied_weights(case):
    shape, kernel, options = CONV_T_CASES[case]
    x = rand(shape)
    ref = flax_conv(4, kernel, options, transpose=True)
    assert ref.transpose_kernel is False
    ours = fnn.ConvTranspose(4, kernel, **options)
    params, variables = shared_weights(ours, ref, x)
    lhs, rhs = {1: ("NWC", "WIO"), 2: ("NHWC", "HWIO"), 3: ("NDHWC", "DHWIO")}[len(kernel)]

    def references(variables, params, x):  # flax, and jax.lax.conv_transpose called directly
        direct = lax.conv_transpose(x, params["w"], ours.strides, ours.padding, rhs_dilation=ours.dilation,
                                    dimension_numbers=(lhs, rhs, lhs))
        return ref.apply(variables, x), direct + params.get("b", 0.0)

    expected, direct = jax.jit(references)(variables, params, x)
    y = jax.jit(ours.__call__)(params, x)
    assert y.shape == expected.shape
    close(y, expected)
    close(y, direct)


def numpy_conv_transpose_valid(x, w, b, strides):
    """VALID transposed convolution as a scatter with explicit loops (1-D or 2-D).

    Every input position i adds x[i] * w[k - 1 - m] at output i * stride + m, which is what
    lax.conv_transpose(padding='VALID', transpose_kernel=False) computes. The output is
    in * stride + max(k - stride, 0) long.
    """
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    spatial, kernel = x.shape[1:-1], w.shape[:-2]
    out_shape = [s * st + max(k - st, 0) for s, st, k in zip(spatial, strides, kernel)]
    y = np.zeros((x.shape[0], *out_shape, w.shape[-1]))
    flipped = w[tuple(slice(None, None, -1) for _ in kernel)]
    for batch in range(x.shape[0]):
        for i in np.ndindex(*spatial):
            for m in np.ndindex(*kernel):
                at = tuple(a * st + d for a, st, d in zip(i, strides, m))
                y[(batch, *at)] += x[(batch, *i)] @ flipped[m]
    return y + (0.0 if b is None else np.asarray(b))


@pytest.mark.parametrize("shape, kernel, strides", [
    ((2, 4, 3), (3,), (2,)),
    ((1, 3, 2), (2,), (3,)),
    ((1, 3, 4, 2), (3, 2), (2, 2)),
    ((1, 2, 3, 2), (2, 3), (1, 2)),
])
def test_conv_transpose_valid_against_numpy_scatter(shape, kernel, strides):
    x = rand(shape)
    layer = fnn.ConvTranspose(3, kernel, strides=strides, padding="VALID")
    params = random_params(layer, x)
    close(layer(params, x), numpy_conv_transpose_valid(x, params["w"], params["b"], strides))


@pytest.mark.parametrize("shape, kernel, strides, padding", [
    ((1, 9, 2), (3,), 2, "VALID"),
    ((1, 8, 2), (4,), 2, "VALID"),
    ((1, 9, 9, 2), (3, 3), 2, "VALID"),
    ((1, 6, 7, 2), (3, 3), 1, "SAME"),
    ((1, 5, 6, 2), (3, 1), 1, "SAME"),
])
def test_conv_transpose_is_the_gradient_of_a_conv(shape, kernel, strides, padding):
    """ConvTranspose with the conv's kernel flipped and in/out swapped is the conv's vjp."""
    conv = fnn.Conv(4, kernel, strides=strides, padding=padding, use_bias=False)
    x = rand(shape)
    params = random_params(conv, x)
    y, pullback = jax.vjp(lambda v: conv(params, v), x)
    g = rand(y.shape, seed=2)
    (expected,) = pullback(g)
    up = fnn.ConvTranspose(shape[-1], kernel, strides=strides, padding=padding, use_bias=False)
    spatial_axes = tuple(range(len(kernel)))
    w_t = jnp.flip(params["w"], spatial_axes).swapaxes(-1, -2)
    got = up({"w": w_t}, g)
    assert got.shape == x.shape
    close(got, expected)


# ---- shapes and dtypes ------------------------------------------------------------------------

SHAPE_CASES = [
    # layer, input shape, output shape, w shape
    (fnn.Conv(8, (3, 3), strides=2), (1, 28, 28, 1), (1, 14, 14, 8), (3, 3, 1, 8)),
    (fnn.Conv(8, (3, 3), strides=2, padding="VALID"), (1, 28, 28, 1), (1, 13, 13, 8), (3, 3, 1, 8)),
    (fnn.Conv(8, (3, 3), strides=2, padding=1), (1, 28, 27, 1), (1, 14, 14, 8), (3, 3, 1, 8)),
    (fnn.Conv(4, (3, 3), dilation=2, padding="VALID"), (2, 9, 10, 3), (2, 5, 6, 4), (3, 3, 3, 4)),
    (fnn.Conv(4, (4,), strides=3, padding="VALID"), (2, 10, 3), (2, 3, 4), (4, 3, 4)),
    (fnn.Conv(4, (3,), padding=[(2, 0)]), (2, 10, 3), (2, 10, 4), (3, 3, 4)),
    (fnn.Conv(6, (2, 3, 3), strides=(1, 2, 2)), (1, 4, 8, 7, 2), (1, 4, 4, 4, 6), (2, 3, 3, 2, 6)),
    (fnn.Conv(6, (3, 3), groups=3, padding=1), (1, 5, 5, 3), (1, 5, 5, 6), (3, 3, 1, 6)),
    (fnn.Conv(8, (1, 1), groups=4), (3, 2, 2, 12), (3, 2, 2, 8), (1, 1, 3, 8)),
    (fnn.ConvTranspose(4, (2, 2), strides=2), (1, 7, 7, 8), (1, 14, 14, 4), (2, 2, 8, 4)),
    (fnn.ConvTranspose(4, (3,), strides=2, padding="VALID"), (2, 7, 3), (2, 15, 4), (3, 3, 4)),
    (fnn.ConvTranspose(4, (1,), strides=2, padding="VALID"), (2, 7, 3), (2, 14, 4), (1, 3, 4)),
    (fnn.ConvTranspose(4, (3, 3)), (2, 5, 6, 3), (2, 5, 6, 4), (3, 3, 3, 4)),
    (fnn.ConvTranspose(2, (3, 3, 3), strides=2), (1, 2, 3, 4, 1), (1, 4, 6, 8, 2), (3, 3, 3, 1, 2)),
]


@pytest.mark.parametrize("layer, in_shape, out_shape, w_shape", SHAPE_CASES,
                         ids=[str(i) for i in range(len(SHAPE_CASES))])
def test_output_and_param_shapes(layer, in_shape, out_shape, w_shape):
    params, state = jax.eval_shape(layer.init, KEY, spec(*in_shape))
    assert state == {}
    assert all(isinstance(v, jax.ShapeDtypeStruct) for v in jax.tree.leaves(params))
    assert shapes_and_dtypes(params) == {
        "w": (w_shape, jnp.dtype(jnp.float32)),
        "b": ((out_shape[-1],), jnp.dtype(jnp.float32)),
    }
    out = layer.output_spec(params, state, spec(*in_shape))
    assert (out.shape, out.dtype) == (out_shape, jnp.float32)


def test_real_outputs_have_the_computed_shapes():
    for layer, in_shape, out_shape, _ in SHAPE_CASES[::3]:
        x = jnp.ones(in_shape)
        assert layer(zero_params(layer, x), x).shape == out_shape


def test_init_under_eval_shape_allocates_nothing_and_matches_real_init():
    model = fnn.serial(
        fnn.Conv(4, (3, 3), strides=2), jax.nn.relu, fnn.Conv(4, (3, 3), groups=2, use_bias=False),
        fnn.ConvTranspose(2, (2, 2), strides=2),
    )
    abstract_params, abstract_state = jax.eval_shape(model.init, KEY, spec(2, 8, 8, 3))
    leaves = jax.tree.leaves(abstract_params)
    assert len(leaves) == 5
    assert all(isinstance(v, jax.ShapeDtypeStruct) and not isinstance(v, jax.Array) for v in leaves)
    real_params, real_state = model.init(KEY, jnp.zeros((2, 8, 8, 3)))
    assert shapes_and_dtypes(abstract_params) == shapes_and_dtypes(real_params)
    assert shapes_and_dtypes(real_params) == {
        "conv_0": {"w": ((3, 3, 3, 4), jnp.dtype(jnp.float32)), "b": ((4,), jnp.dtype(jnp.float32))},
        "conv_1": {"w": ((3, 3, 2, 4), jnp.dtype(jnp.float32))},
        "conv_transpose_0": {"w": ((2, 2, 4, 2), jnp.dtype(jnp.float32)),
                             "b": ((2,), jnp.dtype(jnp.float32))},
    }
    assert abstract_state == real_state == {}
    # init from a spec gives the same values as from an array of that shape
    chex.assert_trees_all_equal(model.init(KEY, spec(2, 8, 8, 3))[0], real_params)
    assert model(real_params, jnp.ones((2, 8, 8, 3))).shape == (2, 8, 8, 2)


@pytest.mark.parametrize("cls, kernel, options", [
    (fnn.Conv, (3,), {"strides": 2, "groups": 2}),
    (fnn.ConvTranspose, (2, 2), {"strides": 2}),
])
def test_dtypes_follow_promotion_or_the_dtype_field(cls, kernel, options):
    shape = (2, 6, 6, 4) if len(kernel) == 2 else (2, 7, 4)
    x32 = rand(shape)
    x16 = x32.astype(jnp.bfloat16)
    layer = cls(5 if "groups" not in options else 6, kernel, **options)
    params = random_params(layer, x16)
    assert {v.dtype for v in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    # bfloat16 input with float32 params computes in float32, exactly as on the upcast input
    y = layer(params, x16)
    assert y.dtype == jnp.float32
    close(y, layer(params, x16.astype(jnp.float32)))
    # dtype=bfloat16: computed and returned in bfloat16, near the float32 result
    half = cls(layer.features, kernel, dtype=jnp.bfloat16, **options)
    y16 = half(params, x32)
    assert y16.dtype == jnp.bfloat16
    close(y16, layer(params, x32), tol=6e-2)
    ref = flax_conv(layer.features, kernel, options, transpose=cls is fnn.ConvTranspose)
    ref16 = ref.clone(dtype=jnp.bfloat16)
    close(y16, ref16.apply(to_flax(params), x32), tol=2e-2)
    # param_dtype=bfloat16 stores bfloat16 weights; bfloat16 in, bfloat16 out
    stored = cls(layer.features, kernel, param_dtype=jnp.bfloat16, **options)
    p16 = random_params(stored, x16)
    assert {v.dtype for v in jax.tree.leaves(p16)} == {jnp.dtype(jnp.bfloat16)}
    assert stored(p16, x16).dtype == jnp.bfloat16
    assert stored(p16, x32).dtype == jnp.float32


def test_float64_matches_numpy_to_double_precision():
    with jax.enable_x64(True):
        x = rand((1, 5, 6, 4), dtype=jnp.float64)
        conv = fnn.Conv(4, (3, 2), strides=(2, 1), padding=((1, 0), (0, 1)), groups=2,
                        param_dtype=jnp.float64)
        params = random_params(conv, x)
        assert params["w"].dtype == jnp.float64
        y = conv(params, x)
        assert y.dtype == jnp.float64
        expected = numpy_conv2d(x, params["w"], params["b"], conv.strides, conv.padding, conv.dilation, 2)
        np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)


# ---- gradients --------------------------------------------------------------------------------


GRAD_CASES = {
    # name: (layer class, input shape, kernel, options, order of derivatives checked); order 2 costs
    # about twice order 1 to compile, so one case, the one with most options at once, checks it
    "conv_1d": (fnn.Conv, (2, 6, 4), (3,), {"strides": 2, "padding": [(2, 1)]}, 1),
    "conv_2d": (fnn.Conv, (1, 5, 4, 4), (3, 2), {"dilation": (2, 1), "strides": (1, 2), "groups": 2}, 2),
    "conv_transpose_2d": (fnn.ConvTranspose, (1, 3, 2, 2), (2, 3), {"strides": (2, 1), "padding": "VALID"},
                          1),
}


@pytest.mark.parametrize("case", list(GRAD_CASES))
def test_gradients_check_numerically_in_float64(case):
    cls, shape, kernel, options, order = GRAD_CASES[case]
    with jax.enable_x64(True):
        layer = cls(4, kernel, param_dtype=jnp.float64, **options)
        x = rand(shape, dtype=np.float64)
        params = random_params(layer, x)
        f = lambda p, v: jnp.tanh(layer(p, v))  # tanh: second derivatives are not zero
        assert f(params, x).dtype == jnp.float64
        # eager: cheaper here than jit, which compiles every transformation check_grads makes
        check_grads(f, (params, x), order=order, modes=["fwd", "rev"])


def test_conv_gradient_wrt_weights_is_the_input_correlated_with_the_cotangent():
    conv = fnn.Conv(3, (2,), strides=2, padding="VALID")
    x = rand((2, 6, 2))
    params = random_params(conv, x)
    g = rand((2, 3, 3), seed=4)
    grads = jax.grad(lambda p: jnp.sum(conv(p, x) * g))(params)
    xn, gn = np.asarray(x), np.asarray(g)
    expected_w = np.zeros((2, 2, 3))
    for k in range(2):
        expected_w[k] = np.einsum("nti,nto->io", xn[:, k::2][:, :3], gn)
    close(grads["w"], expected_w)
    close(grads["b"], gn.sum((0, 1)))


# ---- jit ----------------------------------------------------------------------------------


class JitTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_conv_apply_is_the_same_jitted_or_not(self):
        conv = fnn.Conv(4, (3, 3), strides=(2, 1), padding=((1, 0), (1, 1)), dilation=(1, 2), groups=2)
        x = rand((2, 6, 7, 4))
        params, state = random_params(conv, x), {}
        y, new_state = self.variant(lambda p, s, v: conv.apply(p, s, v))(params, state, x)
        expected = lax.conv_general_dilated(
            x, params["w"], (2, 1), ((1, 0), (1, 1)), rhs_dilation=(1, 2), feature_group_count=2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        ) + params["b"]
        np.testing.assert_allclose(np.asarray(y), np.asarray(expected), rtol=1e-5, atol=1e-5)
        assert new_state == {}

    @chex.variants(with_jit=True, without_jit=True)
    def test_conv_transpose_apply_is_the_same_jitted_or_not(self):
        up = fnn.ConvTranspose(3, (3,), strides=2, padding="VALID")
        x = rand((2, 4, 2))
        params = random_params(up, x)
        y = self.variant(up.__call__)(params, x)
        expected = numpy_conv_transpose_valid(x, params["w"], params["b"], (2,))
        np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)


# ---- initializers -----------------------------------------------------------------------------


def test_empty_batches_zero_channels_and_other_layers_parameters():
    for layer, shape in [(fnn.Conv(2, (3, 3)), (6, 6, 1)), (fnn.ConvTranspose(1, (3, 3), strides=2), (4, 4, 2))]:
        params, _ = layer.init(KEY, spec(1, *shape))
        with fnn.reverse_mode_only():  # fnn's rules indexed the cotangent of an empty batch
            grads = jax.grad(lambda p, layer=layer, shape=shape: layer(p, jnp.ones((0, *shape))).sum())(params)
        chex.assert_trees_all_equal(grads, jax.tree.map(jnp.zeros_like, params))
    with pytest.raises(fnn.ShapeError, match=r"^conv_0: Conv needs at least one input channel, got float32\[2,8,8,0\]"):
        fnn.serial(fnn.Conv(4, (3, 3))).init(KEY, spec(2, 8, 8, 0))
    params, _ = fnn.Conv(4, (3, 3)).init(KEY, spec(2, 8, 8, 2))
    with pytest.raises(fnn.ShapeError, match=r"Conv with kernel \(9, 9\) and 4 features got parameters w\[3, 3, 2, 4\]"):
        fnn.Conv(4, (9, 9), padding="VALID")(params, rand((2, 8, 8, 2)))  # gave a [2,6,6,4] output
    params, _ = fnn.ConvTranspose(4, (3, 3)).init(KEY, spec(2, 8, 8, 2))
    with pytest.raises(fnn.ShapeError, match=r"ConvTranspose with kernel \(3, 3\) and 5 features got parameters"):
        fnn.ConvTranspose(5, (3, 3))(params, rand((2, 8, 8, 2)))


def test_every_named_initializer_is_the_same_as_passing_its_function():
    x = spec(1, 5, 5, 4)
    for name in initializers.NAMES:
        by_name, _ = fnn.Conv(8, (3, 3), w_init=name).init(KEY, x)
        by_function, _ = fnn.Conv(8, (3, 3), w_init=initializers.get(name)).init(KEY, x)
        chex.assert_trees_all_equal(by_name, by_function)
        assert by_name["w"].shape == (3, 3, 4, 8) and bool(jnp.all(jnp.isfinite(by_name["w"])))


def test_zero_and_constant_initializers_take_effect():
    x = rand((2, 5, 5, 3))
    zero = fnn.Conv(4, (3, 3), w_init="zeros")
    np.testing.assert_array_equal(zero(zero.init(KEY, x)[0], x), np.zeros((2, 5, 5, 4)))
    bias_only = fnn.ConvTranspose(4, (2, 2), strides=2, w_init="zeros", b_init="ones")
    np.testing.assert_array_equal(bias_only(bias_only.init(KEY, x)[0], x), np.ones((2, 10, 10, 4)))
    box = fnn.Conv(2, (2, 3), padding="VALID", w_init=jax.nn.initializers.constant(0.25), use_bias=False)
    xn = np.asarray(x)
    expected = np.zeros((2, 4, 3))
    for i in range(4):
        for j in range(3):
            expected[:, i, j] = 0.25 * xn[:, i : i + 2, j : j + 3].sum((1, 2, 3))
    close(box(box.init(KEY, x)[0], x), np.repeat(expected[..., None], 2, -1))


@pytest.mark.parametrize("layer, in_channels, fan_in", [
    (fnn.Conv(64, (3, 3), w_init="he_normal"), 32, 3 * 3 * 32),
    (fnn.Conv(64, (3, 3), w_init="he_normal", groups=4), 32, 3 * 3 * 8),
    (fnn.Conv(48, (5,), w_init="he_normal"), 40, 5 * 40),
    (fnn.Conv(64, (3, 3)), 32, 3 * 3 * 32),  # the default, lecun_normal, has variance 1 / fan_in
])
def test_variance_scaling_uses_the_kernel_fan_in(layer, in_channels, fan_in):
    shape = (1,) + (4,) * len(layer.kernel_size) + (in_channels,)
    params, _ = layer.init(KEY, spec(*shape))
    variance = (2.0 if layer.w_init == "he_normal" else 1.0) / fan_in
    np.testing.assert_allclose(np.asarray(params["w"], np.float64).var(), variance, rtol=0.05)
    np.testing.assert_array_equal(params["b"], 0.0)


# ---- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [fnn.Conv, fnn.ConvTranspose])
@pytest.mark.parametrize("args, options, message", [
    ((0, (3, 3)), {}, "features must be a positive int, got 0"),
    ((-2, (3, 3)), {}, "features must be a positive int, got -2"),
    ((4, (3, 3, 3, 3)), {},
     r"kernel_size must give one size per spatial axis, 1 to 3 of them.*\(3, 3, 3, 3\)"),
    ((4, ()), {}, "kernel_size must give one size per spatial axis"),
    ((4, 3), {}, "kernel_size must give one size per spatial axis.*got 3"),
    ((4, (3, 0)), {}, r"kernel_size must be a positive int or 2 positive ints, got \(3, 0\)"),
    ((4, (3, 3)), {"strides": -1}, "strides must be a positive int or 2 positive ints, got -1"),
    ((4, (3, 3)), {"strides": 0}, "strides must be a positive int or 2 positive ints, got 0"),
    ((4, (3, 3)), {"strides": (1, -2)}, r"strides must be .*got \(1, -2\)"),
    ((4, (3, 3)), {"strides": (1, 1, 1)},
     r"strides must be a positive int or 2 positive ints, got \(1, 1, 1\)"),
    ((4, (3,)), {"dilation": 0}, "dilation must be a positive int or 1 positive ints, got 0"),
    ((4, (3, 3)), {"padding": "FOO"},
     r"padding must be 'SAME', 'VALID', an int, 2 ints or 2 \(low, high\) pairs, got 'FOO'"),
    ((4, (3, 3)), {"padding": -1}, "padding must be .*got -1"),
    ((4, (3, 3)), {"padding": (1, 2, 3)}, r"padding must be .*got \(1, 2, 3\)"),
    ((4, (3, 3)), {"padding": ((1, 2, 3), (0, 0))}, "padding must be"),
    ((4, (3, 3)), {"padding": ((1, -1), (0, 0))}, "padding must be"),
    ((4, (3,)), {"padding": (1, 2)}, r"padding must be .*1 \(low, high\) pairs, got \(1, 2\)"),
])
def test_bad_config_is_rejected_at_construction(cls, args, options, message):
    with pytest.raises(ValueError, match=f"^{cls.__name__}: {message}"):
        cls(*args, **options)


def test_bad_groups_are_rejected():
    with pytest.raises(ValueError, match=r"^Conv: groups must be a positive int, got 0"):
        fnn.Conv(4, (3, 3), groups=0)
    with pytest.raises(ValueError, match=r"^Conv: features \(6\) must divide by groups \(4\)"):
        fnn.Conv(6, (3, 3), groups=4)
    model = fnn.serial(fnn.Conv(4, (3, 3)), jax.nn.relu, fnn.Conv(4, (3, 3), groups=4),
                       fnn.Conv(6, (1, 1), groups=3))
    with pytest.raises(fnn.ShapeError) as info:
        model.init(KEY, spec(1, 5, 5, 2))
    assert str(info.value) == (
        "conv_2: Conv with groups=3 needs input channels divisible by 3, got float32[1,5,5,4]"
    )
    assert info.value.path == ("conv_2",)


@pytest.mark.parametrize("layer, name, in_shape, message", [
    (fnn.Conv(4, (3, 3)), "conv_0", (5, 5, 3),
     r"Conv expects input of rank 4 \(batch, height, width, channels\), got float32\[5,5,3\]"),
    (fnn.Conv(4, (3,)), "conv_0", (2, 5, 5, 3),
     r"Conv expects input of rank 3 \(batch, width, channels\), got float32\[2,5,5,3\]"),
    (fnn.Conv(4, (3, 3, 3)), "conv_0", (2, 5, 5, 3),
     r"Conv expects input of rank 5 \(batch, depth, height, width, channels\)"),
    (fnn.ConvTranspose(4, (3, 3)), "conv_transpose_0", (5, 3),
     r"ConvTranspose expects input of rank 4 .*got float32\[5,3\]"),
])
def test_wrong_rank_at_init_names_the_path_layout_and_shape(layer, name, in_shape, message):
    model = fnn.serial(encoder=fnn.serial(layer))
    with pytest.raises(fnn.ShapeError, match=f"^encoder/{name}: {message}") as info:
        model.init(KEY, spec(*in_shape))
    assert info.value.path == ("encoder", name)


def test_wrong_rank_at_apply_names_the_path():
    model = fnn.serial(fnn.Conv(4, (3, 3)), fnn.ConvTranspose(2, (2, 2), strides=2))
    params = zero_params(model, spec(2, 6, 6, 3))
    message = r"^conv_0: Conv expects input of rank 4 \(batch, height, width, channels\), got float32\[6,6,3"
    with pytest.raises(fnn.ShapeError, match=message):
        model(params, jnp.ones((6, 6, 3)))
    up = fnn.serial(up=fnn.ConvTranspose(2, (2, 2), strides=2))
    up_params = zero_params(up, spec(2, 6, 6, 3))
    message = r"^up: ConvTranspose expects input of rank 4 .*float32\[2,6,3\]"
    with pytest.raises(fnn.ShapeError, match=message):
        up(up_params, jnp.ones((2, 6, 3)))


def test_integer_input_is_rejected_at_init_and_apply():
    model = fnn.serial(fnn.Conv(4, (3, 3)))
    message = r"^conv_0: Conv expects floating-point input, got int32\[1,5,5,3\]"
    with pytest.raises(fnn.ShapeError, match=message + "; embed integer ids with fnn.Embedding"):
        model.init(KEY, spec(1, 5, 5, 3, dtype=jnp.int32))
    params = zero_params(model, spec(1, 5, 5, 3))
    with pytest.raises(fnn.ShapeError, match=message):
        model(params, jnp.ones((1, 5, 5, 3), jnp.int32))
    message = r"^up/conv_transpose_0: ConvTranspose expects floating-point input, got uint8\[1,5,3\]"
    with pytest.raises(fnn.ShapeError, match=message):
        fnn.serial(up=fnn.serial(fnn.ConvTranspose(2, (2,)))).init(KEY, spec(1, 5, 3, dtype=jnp.uint8))


def test_reapplied_to_another_channel_count_names_expected_and_received():
    model = fnn.serial(fnn.Conv(4, (3, 3)), jax.nn.relu, fnn.Conv(2, (3, 3)), fnn.ConvTranspose(2, (2, 2)))
    params = zero_params(model, spec(2, 6, 6, 3))
    with pytest.raises(fnn.ShapeError) as info:
        model(params, jnp.ones((2, 6, 6, 5)))
    assert str(info.value) == "conv_0: Conv expected 3 input channels, got float32[2,6,6,5]"
    # params of a first layer built for another width, with the rest of the model's params:
    # the layer whose parameters they are not says so (not the next one, given 8 channels)
    other = zero_params(fnn.serial(fnn.Conv(8, (3, 3)), jax.nn.relu, fnn.Conv(2, (3, 3))), spec(2, 6, 6, 3))
    message = r"^conv_0: Conv with kernel \(3, 3\) and 4 features got parameters w\[3, 3, 3, 8\]"
    with pytest.raises(fnn.ShapeError, match=message):
        model({**params, "conv_0": other["conv_0"]}, jnp.ones((2, 6, 6, 3)))
    wide = zero_params(fnn.serial(fnn.Conv(4, (3, 3)), jax.nn.relu, fnn.Conv(5, (3, 3))), spec(2, 6, 6, 3))
    message = r"^conv_1: Conv with kernel \(3, 3\) and 2 features got parameters w\[3, 3, 4, 5\]"
    with pytest.raises(fnn.ShapeError, match=message):
        model({**params, "conv_1": wide["conv_1"]}, jnp.ones((2, 6, 6, 3)))
    message = r"^conv_transpose_0: ConvTranspose expected 2 input channels, got float32\[2,6,6,5\]"
    with pytest.raises(fnn.ShapeError, match=message):  # a conv_1 that gives 5 channels where 2 were expected
        fnn.serial(fnn.ConvTranspose(2, (2, 2)))({"conv_transpose_0": params["conv_transpose_0"]}, jnp.ones((2, 6, 6, 5)))
    grouped = fnn.serial(fnn.Conv(4, (3, 3), groups=2))
    gparams = zero_params(grouped, spec(1, 5, 5, 4))
    message = r"^conv_0: Conv expected 4 input channels, got float32\[1,5,5,6\]"
    with pytest.raises(fnn.ShapeError, match=message):
        grouped(gparams, jnp.ones((1, 5, 5, 6)))


def test_a_window_larger_than_the_input_is_reported_at_init():
    model = fnn.serial(fnn.Conv(4, (3, 3), padding="VALID"))
    with pytest.raises(fnn.ShapeError) as info:
        model.init(KEY, spec(1, 2, 5, 1))
    assert str(info.value) == (
        "conv_0: Conv leaves no output positions for input float32[1,2,5,1] (output would be "
        "(1, 0, 3, 4)); use a smaller window or 'SAME' padding"
    )
    # SAME padding, or enough explicit padding, is fine
    same = fnn.Conv(4, (3, 3))
    params, state = jax.eval_shape(same.init, KEY, spec(1, 2, 5, 1))
    assert same.output_spec(params, state, spec(1, 2, 5, 1)).shape == (1, 2, 5, 4)
    padded = fnn.Conv(4, (3, 3), padding=((1, 0), (0, 0)))
    params, state = jax.eval_shape(padded.init, KEY, spec(1, 2, 5, 1))
    assert padded.output_spec(params, state, spec(1, 2, 5, 1)).shape == (1, 1, 3, 4)


def test_conv_checks_the_bias_against_the_layer():
    x = jnp.ones((2, 8, 8, 3))
    for layer in (fnn.Conv(4, (3, 3)), fnn.ConvTranspose(4, (3, 3))):
        params, _ = layer.init(KEY, x)
        for b in (jnp.ones(1), jnp.ones((8, 1, 4)), jnp.ones(7)):  # broadcast silently (or a raw error)
            with pytest.raises(fnn.ShapeError) as info:
                layer({"w": params["w"], "b": b}, x)
            assert f"got parameters w[3, 3, 3, 4], b{list(b.shape)}: were they made by this layer's init?" in str(
                info.value
            )


def test_an_input_empty_on_a_spatial_axis_is_refused():
    x = jnp.ones((1, 0, 2, 3))
    for layer in (fnn.ConvTranspose(4, (2, 2), strides=2), fnn.ConvTranspose(4, (3, 3), padding="VALID"),
                  fnn.Conv(4, (3, 3))):  # ConvTranspose made output positions from nothing
        with pytest.raises(fnn.ShapeError, match=r"got an input empty on a spatial axis, float32\[1,0,2,3\]"):
            fnn.serial(layer).init(KEY, x)
    with pytest.raises(fnn.ShapeError) as info:  # advised "a smaller window or 'SAME' padding"
        fnn.serial(fnn.Conv(4, (3, 3), padding="SAME")).init(KEY, x)
    assert "'SAME'" not in str(info.value) and str(info.value).startswith("conv_0: Conv got an input empty")


def test_conv_sizes_take_numpy_ints():
    conv = fnn.Conv(4, (np.int64(3), 3), strides=np.int64(2), dilation=(1, np.int32(1)), padding=np.int64(1))
    assert conv == fnn.Conv(4, (3, 3), strides=2, padding=1) and hash(conv) == hash(fnn.Conv(4, (3, 3), strides=2, padding=1))
    assert all(type(v) is int for v in (*conv.kernel_size, *conv.strides, *conv.dilation, *conv.padding[0]))
