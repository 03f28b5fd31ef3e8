"""Reference tests for the parameter-free layers: Flatten, Reshape, Dropout and the
activations, against NumPy and ``jax.nn``; then the layer contract and their errors."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

import fnn
from fnn.layers.dropout import keep_mask

KEY = jax.random.key(0)

NAMES = ["sigmoid", "relu", "tanh", "gelu", "silu", "leaky_relu", "elu", "softplus", "softmax", "log_softmax"]


def rand(shape, seed=1, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def away_from_zero(shape, seed=1, dtype=jnp.float32):
    """Normal values pushed at least 0.1 away from 0, where relu-like functions have a kink."""
    x = np.random.default_rng(seed).standard_normal(shape)
    return jnp.asarray(np.where(x >= 0, x + 0.1, x - 0.1), dtype)


def spec(*shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def close(actual, expected, tol=1e-6):
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                               rtol=tol, atol=tol)


# ---- Flatten and Reshape ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 3, 4), (4, 6), (3, 1, 1, 1), (5,)])
def test_flatten_keeps_the_batch_axis_and_the_order_of_values(shape):
    x = rand(shape)
    y = fnn.Flatten()({}, x)
    expected = np.asarray(x).reshape(shape[0], -1)
    assert y.shape == expected.shape == (shape[0], math.prod(shape[1:]))
    np.testing.assert_array_equal(y, expected)
    assert fnn.Flatten().init(KEY, spec(*shape)) == ({}, {})


def test_flatten_keeps_the_dtype_and_works_on_integers():
    x = jnp.arange(24, dtype=jnp.int32).reshape(2, 3, 4)
    y = fnn.Flatten()({}, x)
    assert y.dtype == jnp.int32
    np.testing.assert_array_equal(y, np.arange(24).reshape(2, 12))
    assert fnn.Flatten()({}, x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "in_shape, target, out_shape",
    [
        ((2, 3, 4), (4, 3), (2, 4, 3)),
        ((2, 3, 4), (4, -1), (2, 4, 3)),
        ((2, 3, 4), (-1,), (2, 12)),
        ((2, 12), (2, -1, 3), (2, 2, 2, 3)),
        ((1, 12), (12,), (1, 12)),
        ((3, 2, 2), (1, 4, 1), (3, 1, 4, 1)),
    ],
)
def test_reshape_keeps_the_batch_axis_and_matches_numpy(in_shape, target, out_shape):
    x = rand(in_shape)
    layer = fnn.Reshape(target)
    assert layer.init(KEY, spec(*in_shape)) == ({}, {})
    y = layer({}, x)
    assert y.shape == out_shape
    np.testing.assert_array_equal(y, np.asarray(x).reshape(out_shape))
    assert layer.output_spec({}, {}, spec(*in_shape)).shape == out_shape


def test_reshape_normalises_its_shape_and_is_batch_size_agnostic():
    assert fnn.Reshape([3, 4]).shape == (3, 4)
    assert fnn.Reshape(12).shape == (12,)
    assert fnn.Reshape([3, 4]) == fnn.Reshape((3, 4))
    assert hash(fnn.Reshape([3, 4])) == hash(fnn.Reshape((3, 4)))
    layer = fnn.Reshape((3, -1))
    layer.init(KEY, spec(2, 12))
    assert layer({}, jnp.zeros((7, 12))).shape == (7, 3, 4)


def test_flatten_then_reshape_round_trips():
    x = rand((2, 3, 4, 5))
    model = fnn.serial(fnn.Flatten(), fnn.Reshape((3, 4, 5)))
    params, state = model.init(KEY, x)
    assert (params, state) == ({}, {})
    np.testing.assert_array_equal(model(params, x), x)


@pytest.mark.parametrize(
    "target, in_shape, message",
    [
        ((5, -1), (2, 3, 4), r"float32\[2,3,4\] \(12 values each\) to \(5, -1\)"),
        ((5,), (2, 3, 4), r"float32\[2,3,4\] \(12 values each\) to \(5,\)"),
        ((2, 2, 2), (4, 12), r"float32\[4,12\] \(12 values each\) to \(2, 2, 2\)"),
        ((-1, 7), (1, 6), r"float32\[1,6\] \(6 values each\) to \(-1, 7\)"),
    ],
)
def test_reshape_to_a_size_that_does_not_match_raises_at_init_naming_the_path(target, in_shape, message):
    message = "Reshape cannot reshape examples of " + message
    with pytest.raises(fnn.ShapeError, match=message):
        fnn.Reshape(target).init(KEY, spec(*in_shape))
    model = fnn.serial(head=fnn.serial(fnn.Identity(), fnn.Reshape(target)))
    with pytest.raises(fnn.ShapeError, match="^head/reshape_0: " + message) as info:
        model.init(KEY, spec(*in_shape))
    assert info.value.path == ("head", "reshape_0")


@pytest.mark.parametrize("shape", [(0, 3), (-1, -1), (2.5,), (-2, 3), (3, None), ("4",)])
def test_bad_reshape_target_raises_at_construction(shape):
    with pytest.raises(ValueError, match=r"Reshape: shape must be positive ints and at most one -1, got "):
        fnn.Reshape(shape)


def test_flatten_of_a_scalar_is_a_clear_error():
    with pytest.raises(fnn.ShapeError, match=r"^flatten_0: Flatten expects a batch axis, got float32\[\]"):
        fnn.serial(fnn.Flatten()).init(KEY, spec())


# ---- Dropout ------------------------------------------------------------------------------------


def test_dropout_in_evaluation_is_the_identity():
    x = rand((4, 5))
    layer = fnn.Dropout(0.5)
    assert layer.init(KEY, x) == ({}, {})
    np.testing.assert_array_equal(layer({}, x), x)
    np.testing.assert_array_equal(layer({}, x, key=jax.random.key(3)), x)  # a key does not switch it on
    np.testing.assert_array_equal(layer({}, x, key=jax.random.key(3), train=False), x)
    y, state = layer.apply({}, {}, x, train=False)
    assert state == {}
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_dropout_keeps_a_fraction_one_minus_rate_scaled_up(rate):
    n = 100_000
    x = jnp.ones((n // 100, 100))
    y = fnn.Dropout(rate)({}, x, key=jax.random.key(1), train=True)
    y = np.asarray(y)
    kept = y != 0
    assert abs(kept.mean() - (1 - rate)) < 5 * math.sqrt(rate * (1 - rate) / n)
    close(y[kept], np.full(kept.sum(), 1 / (1 - rate)), tol=1e-6)
    # the expectation is preserved
    assert abs(y.mean() - 1.0) < 5 * math.sqrt(rate / ((1 - rate) * n))
    # with varied inputs each survivor is its input scaled by 1 / (1 - rate)
    x = rand((50, 40)) + 3.0
    y = np.asarray(fnn.Dropout(rate)({}, x, key=jax.random.key(2), train=True))
    kept = y != 0
    close(y[kept], np.asarray(x)[kept] / (1 - rate), tol=1e-5)


def test_dropout_is_deterministic_given_the_key_and_differs_between_keys():
    x = jnp.ones((64, 64))
    layer = fnn.Dropout(0.5)
    a = layer({}, x, key=jax.random.key(1), train=True)
    b = layer({}, x, key=jax.random.key(1), train=True)
    c = layer({}, x, key=jax.random.key(2), train=True)
    np.testing.assert_array_equal(a, b)
    assert (np.asarray(a) != np.asarray(c)).mean() > 0.3  # independent masks disagree on ~half
    # the mask is not the same for every row or column
    mask = np.asarray(a) != 0
    assert len({row.tobytes() for row in mask}) > 1 and len({col.tobytes() for col in mask.T}) > 1


def test_dropout_with_rate_zero_is_the_identity_even_in_training():
    x = rand((3, 7))
    np.testing.assert_array_equal(fnn.Dropout(0.0)({}, x, key=jax.random.key(1), train=True), x)
    np.testing.assert_array_equal(fnn.Dropout(0)({}, x, key=jax.random.key(1), train=True), x)


def test_dropout_keeps_the_dtype_and_shape():
    for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
        x = rand((3, 4, 5), dtype=dtype)
        y = fnn.Dropout(0.25)({}, x, key=jax.random.key(1), train=True)
        assert y.shape == (3, 4, 5) and y.dtype == dtype


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), "0.5", None])
def test_dropout_with_a_bad_rate_raises_at_construction(rate):
    with pytest.raises(ValueError, match=r"Dropout: rate must be in \[0, 1\), got "):
        fnn.Dropout(rate)


def test_dropout_in_training_without_a_key_names_the_path():
    x = jnp.ones((2, 3))
    with pytest.raises(fnn.LayerError, match=r"Dropout needs an rng key when train=True: pass key=\.\.\."):
        fnn.Dropout(0.5)({}, x, train=True)
    model = fnn.serial(body=fnn.serial(fnn.Dense(4), fnn.relu, fnn.Dropout(0.5)))
    params, state = model.init(KEY, x)
    with pytest.raises(fnn.LayerError, match=r"^body/dropout_0: Dropout needs an rng key when train=True"):
        model.apply(params, state, x, train=True)
    # evaluation needs no key
    model.apply(params, state, x, train=False)


def test_dropout_gradient_is_the_scaled_mask():
    x = rand((6, 5))
    key = jax.random.key(4)
    y = fnn.Dropout(0.4)({}, x, key=key, train=True)
    grad = jax.grad(lambda v: fnn.Dropout(0.4)({}, v, key=key, train=True).sum())(x)
    close(grad, np.where(np.asarray(y) != 0, 1 / 0.6, 0.0))


@pytest.mark.parametrize("shape", [(), (7,), (2, 3, 1, 33), (4, 2, 64, 64)])
def test_keep_mask_is_jax_random_bernoulli_bit_for_bit(shape):
    """fnn's mask (Threefry written out, so that XLA fuses it) is the mask of
    ``jax.random.bernoulli(key, 1 - rate, shape)``, for typed, raw and split keys, jitted
    or not, and under ``vmap`` over keys."""
    keys = [jax.random.key(1), jax.random.PRNGKey(9), jax.random.split(jax.random.key(3))[1]]
    jitted = jax.jit(keep_mask, static_argnums=(1, 2))
    for key in keys:
        for rate in (0.0, 0.1, 0.97):
            want = jax.random.bernoulli(key, 1.0 - rate, shape)
            got = jitted(key, rate, shape)
            assert got.shape == want.shape and got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(keep_mask(keys[0], 0.5, shape), jax.random.bernoulli(keys[0], 0.5, shape))
    batch = jax.random.split(jax.random.key(5), 3)
    np.testing.assert_array_equal(
        jax.vmap(lambda k: keep_mask(k, 0.3, shape))(batch),
        jax.vmap(lambda k: jax.random.bernoulli(k, 0.7, shape))(batch),
    )


def test_keep_mask_of_another_generator_or_in_float64_is_jax_random_bernoulli():
    for key in (jax.random.key(2, impl="rbg"), jax.random.key(2, impl="unsafe_rbg")):
        np.testing.assert_array_equal(keep_mask(key, 0.25, (8, 9)), jax.random.bernoulli(key, 0.75, (8, 9)))
    with jax.enable_x64(True):
        key = jax.random.key(2)
        np.testing.assert_array_equal(keep_mask(key, 0.25, (8, 9)), jax.random.bernoulli(key, 0.75, (8, 9)))


# ---- activations --------------------------------------------------------------------------------


def np_reference(name, x):
    x = np.asarray(x, np.float64)
    sigmoid = 1 / (1 + np.exp(-x))
    shifted = x - x.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return {
        "sigmoid": sigmoid,
        "relu": np.maximum(x, 0),
        "tanh": np.tanh(x),
        # jax.nn.gelu defaults to the tanh approximation
        "gelu": 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))),
        "silu": x * sigmoid,
        "leaky_relu": np.where(x >= 0, x, 0.01 * x),
        "elu": np.where(x > 0, x, np.expm1(x)),
        "softplus": np.log1p(np.exp(x)),
        "softmax": np.exp(log_softmax),
        "log_softmax": log_softmax,
    }[name]


def test_the_catalogue_has_exactly_the_ten_activations():
    assert list(fnn.ACTIVATIONS) == NAMES
    for name in NAMES:
        assert fnn.activation(name) is fnn.ACTIVATIONS[name] is getattr(fnn, name)
        assert fnn.activation(name).name == name


@pytest.mark.parametrize("name", NAMES)
def test_activation_equals_jax_nn_and_numpy(name):
    x = rand((3, 5)) * 3
    layer = fnn.activation(name)
    assert layer.init(KEY, x) == ({}, {})
    y = layer({}, x)
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(y, getattr(jax.nn, name)(x))
    close(y, np_reference(name, x), tol=1e-5)


def test_unknown_activation_lists_the_valid_names():
    for bad in ("swish", "ReLU", "", "Relu"):
        with pytest.raises(ValueError, match=f"unknown activation {bad!r}; choose one of ") as info:
            fnn.activation(bad)
        message = str(info.value)
        assert all(name in message for name in NAMES)
        assert message.endswith("choose one of " + ", ".join(NAMES))


@pytest.mark.parametrize("name", NAMES)
def test_activations_work_inside_serial(name):
    model = fnn.serial(fnn.Dense(4), fnn.activation(name), fnn.Dense(2))
    x = rand((3, 5))
    params, state = model.init(KEY, x)
    assert model.names == ("dense_0", f"{name}_0", "dense_1")
    assert list(params) == ["dense_0", "dense_1"] and state == {}
    h = getattr(jax.nn, name)(x @ params["dense_0"]["w"] + params["dense_0"]["b"])
    close(model(params, x), h @ params["dense_1"]["w"] + params["dense_1"]["b"], tol=1e-5)
    # the same as passing the jax.nn function itself
    plain = fnn.serial(fnn.Dense(4), getattr(jax.nn, name), fnn.Dense(2))
    close(plain(params, x), model(params, x), tol=1e-6)


def test_activation_gradients_second_order_float64():
    """All ten at once, in one jitted function, to keep the compile time down; the inputs stay
    0.1 away from the kinks of relu and leaky_relu."""
    with jax.enable_x64(True):
        x = away_from_zero((2, 4), dtype=jnp.float64)
        outputs = jax.jit(lambda v: {name: fnn.activation(name)({}, v) for name in NAMES})
        check_grads(outputs, (x,), order=2, modes=["fwd", "rev"], atol=1e-6, rtol=1e-6, eps=1e-5)


# ---- contract for the whole family -------------------------------------------------------------

MISC = [
    (fnn.Flatten(), (2, 3, 4), False),
    (fnn.Reshape((2, -1)), (2, 3, 4), False),
    (fnn.Dropout(0.3), (3, 6), True),
    (fnn.Dropout(0.3), (3, 6), False),
    (fnn.gelu, (3, 6), False),
    (fnn.softmax, (2, 3, 4), False),
    (fnn.serial(fnn.Reshape((4, 3)), fnn.tanh, fnn.Dropout(0.5), fnn.Flatten()), (2, 12), True),
]
MISC_IDS = [f"{layer.name}{i}_{'train' if train else 'eval'}" for i, (layer, _, train) in enumerate(MISC)]


@pytest.mark.parametrize("layer, shape, train", MISC, ids=MISC_IDS)
def test_abstract_init_and_output_spec_match_real_ones(layer, shape, train):
    abstract = jax.eval_shape(layer.init, KEY, spec(*shape))
    assert abstract == layer.init(KEY, rand(shape)) == ({}, {})
    y = layer({}, rand(shape), key=jax.random.key(1), train=train)
    out = layer.output_spec({}, {}, spec(*shape))
    assert (out.shape, out.dtype) == (y.shape, y.dtype) == (out.shape, jnp.float32)


def test_gradients_second_order():
    """Flatten, Reshape and Dropout in training (with a fixed key), alone and in a serial
    with tanh, against finite differences, first and second order, forward and reverse."""
    layers = {"flatten": fnn.Flatten(), "reshape": fnn.Reshape((3, -1)), "dropout": fnn.Dropout(0.3),
              "serial": fnn.serial(fnn.Reshape((4, 3)), fnn.tanh, fnn.Flatten())}
    with jax.enable_x64(True):
        x = away_from_zero((2, 3, 4), dtype=jnp.float64)
        key = jax.random.key(1)
        # eagerly: the dropout masks then come from jax.random's own cached compiled functions
        outputs = lambda v: {name: layer({}, v, key=key, train=True) for name, layer in layers.items()}
        assert jax.tree.map(jnp.shape, outputs(x)) == {"flatten": (2, 12), "reshape": (2, 3, 4),
                                                       "dropout": (2, 3, 4), "serial": (2, 12)}
        check_grads(outputs, (x,), order=2, modes=["fwd", "rev"], atol=1e-6, rtol=1e-6, eps=1e-5)


class MiscJitEqualsEager(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*[(name, *case) for name, case in zip(MISC_IDS, MISC)])
    def test_apply(self, layer, shape, train):
        x = rand(shape)
        apply = self.variant(lambda v, k: layer({}, v, key=k, train=train))
        y = apply(x, jax.random.key(5))
        chex.assert_trees_all_close(y, layer({}, x, key=jax.random.key(5), train=train), rtol=1e-6, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_activations(self):
        x = rand((3, 4)) * 2
        y = self.variant(lambda v: {name: fnn.activation(name)({}, v) for name in NAMES})(x)
        expected = {name: getattr(jax.nn, name)(x) for name in NAMES}
        chex.assert_trees_all_close(y, expected, rtol=1e-6, atol=1e-6)


# ---- checks that apply repeats (they held at init only) -----------------------------------------


@pytest.mark.parametrize("layer", [fnn.LayerNorm(), fnn.RMSNorm(), fnn.GroupNorm(2), fnn.BatchNorm()])
def test_norms_refuse_integer_input_at_apply(layer):
    params, state = layer.init(KEY, jnp.ones((2, 4)))
    with pytest.raises(fnn.ShapeError, match=r"expects floating-point input, got int32\[2,4\]"):
        layer.apply(params, state, jnp.ones((2, 4), jnp.int32))  # returned truncated integers


def test_batch_norm_axis_and_parameters_are_checked():
    for axis in (5, 0, -4):
        with pytest.raises(fnn.ShapeError, match=f"BatchNorm's axis {axis} is not a feature axis of float32"):
            fnn.BatchNorm(axis=axis).init(KEY, jnp.ones((2, 3, 3, 4)))
    params, state = fnn.BatchNorm(axis=1).init(KEY, jnp.ones((2, 3, 3, 4)))
    assert params["scale"].shape == state["mean"].shape == (3,)
    params, state = fnn.BatchNorm().init(KEY, jnp.ones((2, 4)))
    with pytest.raises(fnn.ShapeError, match=r"BatchNorm expected 3 features on axis -1, got input float32\[2,4\]"):
        fnn.BatchNorm().apply({**params, "scale": jnp.ones(3)}, state, jnp.ones((2, 4)))


def test_pools_check_rank_and_size_at_apply():
    for pool in (fnn.MaxPool((8, 8)), fnn.AvgPool((8, 8))):  # returned an empty [2,0,0,3]
        with pytest.raises(fnn.ShapeError, match=r"leaves no output positions for input float32\[2,7,6,3\]"):
            pool({}, jnp.ones((2, 7, 6, 3)))
    with pytest.raises(fnn.ShapeError, match=r"MaxPool expects input of rank 4"):
        fnn.MaxPool((2, 2))({}, jnp.ones((2, 7, 3)))
    with pytest.raises(fnn.ShapeError, match=r"GlobalAvgPool expects \[batch, \*spatial, channels\]"):
        fnn.GlobalAvgPool()({}, jnp.ones((2, 3)))  # returned its input
    assert fnn.MaxPool((2, 2))({}, jnp.ones((2, 8, 8, 3))).shape == (2, 4, 4, 3)


def test_embedding_checks_its_table_features_and_dtype():
    embed = fnn.Embedding(5, 4)
    params, _ = embed.init(KEY, jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(fnn.ShapeError, match=r"Embedding expected 4 features on axis -1, got input float32\[2,3\]"):
        embed.attend(params, jnp.ones((2, 3)))
    with pytest.raises(fnn.ShapeError, match=r"Embedding\(5, 4\) got a table float32\[5,3\]"):
        embed({"w": jnp.ones((5, 3))}, jnp.zeros((2, 3), jnp.int32))  # returned width 3
    with pytest.raises(fnn.LayerError, match="Embedding: dtype must be a floating-point dtype"):
        fnn.Embedding(5, 4, dtype="nope").init(KEY, jnp.zeros((2, 3), jnp.int32))


def test_sequence_helpers_check_their_input():
    for lengths in (jnp.array([[1, 2]]), jnp.array(2), jnp.array([1.5])):
        with pytest.raises(fnn.ShapeError, match="lengths_to_mask expects integer lengths int"):
            fnn.lengths_to_mask(lengths, 4)
    pooled = fnn.SequencePool("max")({}, (jnp.full((1, 2, 1), -jnp.inf), jnp.array([[True, False]])))
    assert pooled.tolist() == [[-np.inf]]  # was float32's lowest finite value
    assert fnn.Flatten()({}, jnp.ones((0, 3, 4))).shape == (0, 12)  # a ZeroDivisionError before
    attention = fnn.MultiHeadAttention(2)
    params, _ = attention.init(KEY, jnp.ones((1, 3, 8)))
    with pytest.raises(fnn.ShapeError, match=r"MultiHeadAttention expects input of rank 3"):
        attention(params, jnp.ones((3, 8)))


def test_reshape_checks_the_size_again_at_apply():
    model = fnn.serial(fnn.Reshape((2, 2)))
    with pytest.raises(fnn.ShapeError, match=r"reshape_0: Reshape cannot reshape examples of float32\[2,6\]"):
        model({}, jnp.ones((2, 6)))  # was a raw TypeError without the layer's path
    with pytest.raises(fnn.ShapeError, match="Reshape expects a batch axis"):
        fnn.Reshape((1,))({}, jnp.ones(()))


def test_numpy_scalars_are_accepted_as_hyperparameters():
    assert fnn.Reshape((np.int64(2), -1)).shape == (2, -1)
    assert all(type(d) is int for d in fnn.Reshape((np.int64(2), -1)).shape)
    drop = fnn.Dropout(np.float32(0.5))
    assert type(drop.rate) is float and hash(drop) == hash(fnn.Dropout(float(np.float32(0.5))))
    y = drop({}, jnp.ones(8, jnp.bfloat16), key=KEY, train=True)
    assert y.dtype == jnp.bfloat16  # a NumPy float32 rate would have promoted it
    with pytest.raises(ValueError, match=r"Dropout: rate must be in \[0, 1\)"):
        fnn.Dropout(True)
