"""Each layer against an independent reference with the same weights: flax.linen's module
or plain NumPy. A mismatch here is a wrong answer, not a style difference."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn

KEY = jax.random.key(0)


def rand(shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def flax_init(module, x):
    return module.init(jax.random.key(7), x)


# ---- Dense and Embedding ------------------------------------------------------------------


@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_matches_flax_and_numpy(use_bias):
    x = rand((4, 3, 6))  # any leading axes
    ref = nn.Dense(5, use_bias=use_bias)
    variables = flax_init(ref, x)
    p = variables["params"]
    params = {"w": p["kernel"], **({"b": p["bias"]} if use_bias else {})}
    ours = fnn.Dense(5, use_bias=use_bias)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, ours.init(KEY, x)[0])
    close(ours(params, x), ref.apply(variables, x))
    w, xn = np.asarray(p["kernel"]), np.asarray(x)
    expected = np.einsum("abi,io->abo", xn, w) + (np.asarray(p["bias"]) if use_bias else 0)
    close(ours(params, x), expected)


def test_embedding_matches_flax_and_attend():
    ids = jax.random.randint(KEY, (3, 7), 0, 11)
    ref = nn.Embed(11, 4)
    variables = flax_init(ref, ids)
    params = {"w": variables["params"]["embedding"]}
    ours = fnn.Embedding(11, 4)
    close(ours(params, ids), ref.apply(variables, ids))
    q = rand((3, 4))
    close(ours.attend(params, q), ref.apply(variables, q, method=ref.attend))


def test_embedding_gradient_reaches_only_the_rows_used():
    ours = fnn.Embedding(6, 2)
    params, _ = ours.init(KEY, jnp.zeros((1,), jnp.int32))
    grads = jax.grad(lambda p: ours(p, jnp.array([1, 4, 4])).sum())(params)["w"]
    np.testing.assert_array_equal(grads[:, 0], [0, 1, 0, 0, 2, 0])


# ---- Convolutions -------------------------------------------------------------------------

CONV_CASES = [
    # (input shape, kernel, options)
    ((2, 9, 3), (3,), {}),
    ((2, 9, 4), (4,), {"strides": 2, "padding": "VALID"}),
    ((2, 10, 4), (3,), {"dilation": 2, "padding": 1}),
    ((2, 8, 8, 3), (3, 3), {}),
    ((2, 9, 7, 3), (3, 2), {"strides": (2, 1), "padding": "VALID"}),
    ((2, 8, 8, 4), (3, 3), {"padding": ((1, 2), (0, 1)), "dilation": (1, 2)}),
    ((2, 8, 8, 4), (3, 3), {"groups": 2}),
    ((2, 8, 8, 6), (3, 3), {"groups": 6}),  # depthwise
    ((2, 6, 6, 6, 2), (3, 3, 3), {}),
    ((1, 7, 6, 5, 2), (2, 3, 2), {"strides": (2, 1, 2), "padding": "VALID", "use_bias": False}),
]


@pytest.mark.parametrize("shape, kernel, options", CONV_CASES, ids=[str(i) for i in range(len(CONV_CASES))])
def test_conv_matches_flax(shape, kernel, options):
    x = rand(shape)
    flax_options = {
        "strides": options.get("strides", 1),
        "padding": options.get("padding", "SAME"),
        "kernel_dilation": options.get("dilation", 1),
        "feature_group_count": options.get("groups", 1),
        "use_bias": options.get("use_bias", True),
    }
    ref = nn.Conv(6, kernel, **flax_options)
    variables = flax_init(ref, x)
    p = variables["params"]
    params = {"w": p["kernel"], **({"b": p["bias"]} if "bias" in p else {})}
    ours = fnn.Conv(6, kernel, **options)
    ours_shapes = jax.tree.map(jnp.shape, ours.init(KEY, x)[0])
    assert ours_shapes == jax.tree.map(jnp.shape, params)
    close(ours(params, x), ref.apply(variables, x))


def test_conv2d_against_numpy_loops():
    x = np.asarray(rand((1, 5, 6, 2)))
    conv = fnn.Conv(3, (3, 2), strides=(2, 1), padding="VALID")
    params = jax.tree.map(np.asarray, conv.init(KEY, x)[0])
    w, b = params["w"], params["b"]
    out_h, out_w = (5 - 3) // 2 + 1, 6 - 2 + 1
    expected = np.zeros((1, out_h, out_w, 3), np.float32)
    for i in range(out_h):
        for j in range(out_w):
            patch = x[0, 2 * i : 2 * i + 3, j : j + 2, :]  # [3, 2, in]
            expected[0, i, j] = np.einsum("hwi,hwio->o", patch, w) + b
    close(conv(params, x), expected)


CONV_T_CASES = [
    ((2, 5, 3), (3,), {"strides": 2}),
    ((2, 5, 3), (4,), {"strides": 2, "padding": "VALID"}),
    ((2, 4, 5, 3), (3, 3), {}),
    ((2, 4, 5, 3), (2, 2), {"strides": 2}),
    ((2, 4, 5, 3), (3, 3), {"strides": (2, 1), "padding": "VALID", "use_bias": False}),
    ((1, 3, 3, 3, 2), (2, 2, 2), {"strides": 2}),
]


@pytest.mark.parametrize("shape, kernel, options", CONV_T_CASES, ids=[str(i) for i in range(len(CONV_T_CASES))])
def test_conv_transpose_matches_flax(shape, kernel, options):
    x = rand(shape)
    ref = nn.ConvTranspose(
        4, kernel, strides=options.get("strides", 1), padding=options.get("padding", "SAME"),
        use_bias=options.get("use_bias", True),
    )
    variables = flax_init(ref, x)
    p = variables["params"]
    params = {"w": p["kernel"], **({"b": p["bias"]} if "bias" in p else {})}
    ours = fnn.ConvTranspose(4, kernel, **options)
    assert jax.tree.map(jnp.shape, ours.init(KEY, x)[0]) == jax.tree.map(jnp.shape, params)
    close(ours(params, x), ref.apply(variables, x))


def test_conv_transpose_is_the_adjoint_of_a_strided_conv():
    """<conv(x), y> == <x, conv_transpose(y)> with the kernel flipped and in/out swapped."""
    conv = fnn.Conv(4, (3, 3), strides=2, padding="VALID", use_bias=False)
    x = rand((1, 9, 9, 2))
    params, _ = conv.init(KEY, x)
    y = rand((1, 4, 4, 4), seed=2)
    up = fnn.ConvTranspose(2, (3, 3), strides=2, padding="VALID", use_bias=False)
    w_t = jnp.flip(params["w"], (0, 1)).swapaxes(2, 3)
    lhs = jnp.vdot(conv(params, x), y)
    rhs = jnp.vdot(x, up({"w": w_t}, y))
    close(lhs, rhs, 1e-4)


# ---- Normalisation --------------------------------------------------------------------------


def scale_bias_from(variables):
    p = variables["params"]
    return {k: v for k, v in (("scale", p.get("scale")), ("bias", p.get("bias"))) if v is not None}


def randomised(params, seed=3):
    """Non-trivial scale and bias, so the test sees whether they are applied."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [v + jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)])


@pytest.mark.parametrize("use_scale, use_bias", [(True, True), (False, True), (True, False)])
def test_layer_norm_matches_flax_and_numpy(use_scale, use_bias):
    x = rand((3, 4, 8)) * 3 + 1
    ref = nn.LayerNorm(epsilon=1e-5, use_scale=use_scale, use_bias=use_bias)
    variables = {"params": randomised(flax_init(ref, x)["params"])}
    params = scale_bias_from(variables)
    ours = fnn.LayerNorm(epsilon=1e-5, use_scale=use_scale, use_bias=use_bias)
    assert set(ours.init(KEY, x)[0]) == set(params)
    close(ours(params, x), ref.apply(variables, x))
    xn = np.asarray(x)
    normed = (xn - xn.mean(-1, keepdims=True)) / np.sqrt(xn.var(-1, keepdims=True) + 1e-5)
    expected = normed * np.asarray(params.get("scale", 1.0)) + np.asarray(params.get("bias", 0.0))
    close(ours(params, x), expected)


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_group_norm_matches_flax_and_numpy(groups):
    x = rand((2, 4, 5, 6)) * 2 - 1
    ref = nn.GroupNorm(num_groups=groups, epsilon=1e-5)
    variables = {"params": randomised(flax_init(ref, x)["params"])}
    params = scale_bias_from(variables)
    ours = fnn.GroupNorm(num_groups=groups, epsilon=1e-5)
    close(ours(params, x), ref.apply(variables, x))
    xg = np.asarray(x).reshape(2, 4, 5, groups, 6 // groups)
    mean = xg.mean((1, 2, 4), keepdims=True)
    var = xg.var((1, 2, 4), keepdims=True)
    expected = ((xg - mean) / np.sqrt(var + 1e-5)).reshape(x.shape) * params["scale"] + params["bias"]
    close(ours(params, x), expected)


def test_rms_norm_matches_flax_and_numpy():
    x = rand((3, 5, 8)) + 0.5
    ref = nn.RMSNorm(epsilon=1e-6)
    variables = {"params": randomised(flax_init(ref, x)["params"])}
    params = scale_bias_from(variables)
    ours = fnn.RMSNorm()
    close(ours(params, x), ref.apply(variables, x))
    xn = np.asarray(x)
    close(ours(params, x), xn / np.sqrt((xn**2).mean(-1, keepdims=True) + 1e-6) * params["scale"])


@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 3, 5)])
def test_batch_norm_train_and_eval_match_flax_with_running_statistics(shape):
    ref = nn.BatchNorm(momentum=0.9, epsilon=1e-5)
    ours = fnn.BatchNorm(momentum=0.9, epsilon=1e-5)
    x0 = rand(shape)
    variables = ref.init(jax.random.key(7), x0, use_running_average=False)
    variables = {"params": randomised(variables["params"]), "batch_stats": variables["batch_stats"]}
    params = scale_bias_from(variables)
    _, state = ours.init(KEY, x0)
    for seed in range(3):  # three training steps: outputs and running statistics agree
        x = rand(shape, seed=10 + seed) * (seed + 1) + seed
        y_ref, updates = ref.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
        variables = {"params": variables["params"], **updates}
        y, state = ours.apply(params, state, x, train=True)
        close(y, y_ref)
        close(state["mean"], variables["batch_stats"]["mean"])
        close(state["var"], variables["batch_stats"]["var"])
    x = rand(shape, seed=20)
    y_eval, same_state = ours.apply(params, state, x, train=False)
    close(y_eval, ref.apply(variables, x, use_running_average=True))
    assert same_state is state  # evaluation leaves the statistics alone
    reduce = tuple(range(len(shape) - 1))
    xn = np.asarray(x)
    normed = (xn - np.asarray(state["mean"])) / np.sqrt(np.asarray(state["var"]) + 1e-5)
    close(y_eval, normed * params["scale"] + params["bias"])
    y_train, _ = ours.apply(params, state, x, train=True)
    batch = (xn - xn.mean(reduce)) / np.sqrt(xn.var(reduce) + 1e-5)
    close(y_train, batch * params["scale"] + params["bias"])


# ---- Pooling ----------------------------------------------------------------------------------


def numpy_pool(x, window, strides, padding, reduce, count_include_pad=True):
    """Pool [batch, *spatial, channels] with explicit loops over output positions."""
    n = len(window)
    spatial = x.shape[1:-1]
    if padding == "SAME":
        out = [-(-s // st) for s, st in zip(spatial, strides)]
        total = [max((o - 1) * st + w - s, 0) for o, st, w, s in zip(out, strides, window, spatial)]
        pads = [(t // 2, t - t // 2) for t in total]
    else:
        pads = [(0, 0)] * n
    fill = -np.inf if reduce is np.max else 0.0
    padded = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=fill)
    real = np.pad(np.ones(spatial), pads)
    out_shape = [(p - w) // st + 1 for p, w, st in zip(padded.shape[1:-1], window, strides)]
    result = np.zeros((x.shape[0], *out_shape, x.shape[-1]), np.float32)
    for index in np.ndindex(*out_shape):
        slices = tuple(slice(i * st, i * st + w) for i, st, w in zip(index, strides, window))
        block = padded[(slice(None), *slices, slice(None))]
        axes = tuple(range(1, n + 1))
        if reduce is np.max:
            result[(slice(None), *index, slice(None))] = block.max(axes)
        else:
            count = np.prod(window) if count_include_pad else real[slices].sum()
            result[(slice(None), *index, slice(None))] = block.sum(axes) / count
    return result


POOL_CASES = [
    ((2, 9, 3), (2,), None, "VALID"),
    ((2, 9, 3), (3,), (2,), "SAME"),
    ((2, 7, 8, 2), (2, 2), None, "VALID"),
    ((2, 7, 8, 2), (3, 3), (2, 2), "SAME"),
    ((2, 7, 8, 2), (3, 2), (1, 2), "VALID"),
    ((1, 5, 6, 4, 2), (2, 2, 2), None, "VALID"),
    ((1, 5, 6, 4, 2), (3, 3, 3), (2, 2, 2), "SAME"),
]


@pytest.mark.parametrize("shape, window, strides, padding", POOL_CASES, ids=[str(i) for i in range(len(POOL_CASES))])
def test_pooling_against_numpy_loops_and_flax(shape, window, strides, padding):
    x = rand(shape)
    st = strides or window
    xn = np.asarray(x)
    close(fnn.MaxPool(window, strides, padding)({}, x), numpy_pool(xn, window, st, padding, np.max))
    close(fnn.AvgPool(window, strides, padding)({}, x), numpy_pool(xn, window, st, padding, np.mean))
    close(fnn.AvgPool(window, strides, padding, count_include_pad=False)({}, x),
          numpy_pool(xn, window, st, padding, np.mean, count_include_pad=False))
    close(fnn.MaxPool(window, strides, padding)({}, x), nn.max_pool(x, window, st, padding))
    close(fnn.AvgPool(window, strides, padding)({}, x), nn.avg_pool(x, window, st, padding))


def test_global_pools():
    x = rand((2, 3, 4, 5))
    close(fnn.GlobalAvgPool()({}, x), np.asarray(x).mean((1, 2)))
    close(fnn.GlobalMaxPool()({}, x), np.asarray(x).max((1, 2)))
    close(fnn.GlobalAvgPool()({}, rand((2, 3, 4, 2, 5))), np.asarray(rand((2, 3, 4, 2, 5))).mean((1, 2, 3)))


# ---- Activations, Dropout, Flatten, Reshape ---------------------------------------------------


@pytest.mark.parametrize("name", sorted(fnn.ACTIVATIONS))
def test_activation_is_the_jax_nn_function(name):
    x = rand((3, 4)) * 3
    close(fnn.activation(name)({}, x), getattr(jax.nn, name)(x), 1e-6)
    model = fnn.serial(fnn.Dense(4), fnn.activation(name))
    params, _ = model.init(KEY, x)
    close(model(params, x), getattr(jax.nn, name)(fnn.Dense(4)(params["dense_0"], x)), 1e-6)


def test_dropout_statistics_and_determinism():
    x = jnp.ones((200_000,))
    drop = fnn.Dropout(0.3)
    y = drop({}, x, key=jax.random.key(1), train=True)
    kept = y != 0
    assert abs(float(kept.mean()) - 0.7) < 0.005
    close(y[kept], 1 / 0.7, 1e-6)
    close(y.mean(), 1.0, 0.01)  # the expectation is unchanged
    np.testing.assert_array_equal(y, drop({}, x, key=jax.random.key(1), train=True))
    assert not jnp.array_equal(y, drop({}, x, key=jax.random.key(2), train=True))
    np.testing.assert_array_equal(drop({}, x), x)
    np.testing.assert_array_equal(fnn.Dropout(0.0)({}, x, key=jax.random.key(1), train=True), x)


def test_flatten_and_reshape_keep_the_batch_axis():
    x = rand((2, 3, 4, 5))
    np.testing.assert_array_equal(fnn.Flatten()({}, x), np.asarray(x).reshape(2, 60))
    np.testing.assert_array_equal(fnn.Reshape((4, -1))({}, x), np.asarray(x).reshape(2, 4, 15))
