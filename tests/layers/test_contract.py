"""Every layer of the catalogue keeps the contract: abstract init, jit == eager,
correct gradients, dtypes, and clear errors for bad configs and bad inputs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

import fnn

KEY = jax.random.key(0)

# (layer, input shape): one entry per family and variant; inputs are float32 normals.
CATALOGUE = [
    (fnn.Dense(4), (3, 5)),
    (fnn.Conv(4, (3,), strides=2), (2, 7, 3)),
    (fnn.Conv(4, (3, 3), dilation=2, groups=2), (2, 7, 7, 2)),
    (fnn.Conv(2, (2, 2, 2)), (1, 4, 4, 4, 2)),
    (fnn.ConvTranspose(3, (3, 3), strides=2), (2, 4, 4, 2)),
    (fnn.MaxPool((2, 2)), (2, 6, 6, 3)),
    (fnn.AvgPool((3,), strides=(2,), padding="SAME", count_include_pad=False), (2, 7, 3)),
    (fnn.GlobalAvgPool(), (2, 4, 4, 3)),
    (fnn.GlobalMaxPool(), (2, 4, 4, 3)),
    (fnn.Flatten(), (2, 3, 4)),
    (fnn.Reshape((2, -1)), (2, 3, 4)),
    (fnn.LayerNorm(), (3, 6)),
    (fnn.GroupNorm(num_groups=2), (2, 3, 3, 4)),
    (fnn.RMSNorm(), (3, 6)),
    (fnn.BatchNorm(), (8, 4)),
    (fnn.Dropout(0.5), (3, 6)),
    (fnn.Recurrent(fnn.LSTM(3)), (2, 4, 3)),
    (fnn.Bidirectional(fnn.GRU(3)), (2, 4, 3)),
    (fnn.serial(fnn.Dense(4), fnn.gelu, fnn.residual(fnn.Dense(4), fnn.tanh)), (3, 5)),
]
IDS = [type(layer).__name__ + str(i) for i, (layer, _) in enumerate(CATALOGUE)]


def example(shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize("layer, shape", CATALOGUE, ids=IDS)
def test_init_is_abstract_and_matches_a_real_init(layer, shape):
    spec = jax.ShapeDtypeStruct(shape, jnp.float32)
    abstract = jax.eval_shape(layer.init, KEY, spec)
    real = layer.init(KEY, example(shape))
    assert jax.tree.map(lambda a: (a.shape, a.dtype), abstract) == jax.tree.map(lambda a: (a.shape, a.dtype), real)
    params, state = real
    y, _ = layer.apply(params, state, example(shape))
    assert y.dtype == jnp.float32
    assert layer.output_spec(params, state, spec).shape == y.shape


@pytest.mark.parametrize("layer, shape", CATALOGUE, ids=IDS)
def test_same_key_same_params_and_pure_apply(layer, shape):
    x = example(shape)
    first, second = layer.init(KEY, x), layer.init(KEY, x)
    chex.assert_trees_all_equal(first, second)
    params, state = first
    chex.assert_trees_all_equal(layer.apply(params, state, x), layer.apply(params, state, x))


@pytest.mark.parametrize("layer, shape", CATALOGUE, ids=IDS)
def test_gradients_check_against_finite_differences(layer, shape):
    x = example(shape) + 0.1 * jnp.arange(np.prod(shape)).reshape(shape) / np.prod(shape)  # no max-pool ties
    params, state = layer.init(KEY, x)

    def f(p, v):
        y, _ = layer.apply(p, state, v, train=True, key=jax.random.key(3))
        return y

    check_grads(jax.jit(f), (params, x), order=1, modes=["fwd", "rev"], atol=5e-2, rtol=5e-2, eps=1e-3)


@pytest.mark.parametrize("layer", [fnn.Dense(3), fnn.Conv(2, (3,)), fnn.LayerNorm(), fnn.Recurrent(fnn.GRU(2))])
def test_second_order_gradients(layer):
    shape = (2, 4, 3)
    x = example(shape)
    params, _ = layer.init(KEY, x)
    check_grads(jax.jit(lambda p, v: layer(p, v)), (params, x), order=2, modes=["rev"], atol=5e-2, rtol=5e-2, eps=1e-3)


class JitEqualsEager(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*[(name, layer, shape) for name, (layer, shape) in zip(IDS, CATALOGUE)])
    def test_apply(self, layer, shape):
        x = example(shape)
        params, state = layer.init(KEY, x)
        apply = self.variant(lambda p, s, v: layer.apply(p, s, v, key=jax.random.key(1), train=True))
        y, new_state = apply(params, state, x)
        y_ref, state_ref = layer.apply(params, state, x, key=jax.random.key(1), train=True)
        chex.assert_trees_all_close((y, new_state), (y_ref, state_ref), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "layer, shape",
    [(fnn.Dense(4), (3, 5)), (fnn.Conv(4, (3, 3)), (2, 5, 5, 3)), (fnn.LayerNorm(), (3, 6)),
     (fnn.RMSNorm(), (3, 6)), (fnn.BatchNorm(), (8, 4)), (fnn.Recurrent(fnn.LSTM(3)), (2, 4, 3))],
)
def test_bfloat16_inputs_follow_the_documented_dtype_rules(layer, shape):
    """Layers with weights compute in the promoted dtype of input and params (or their
    ``dtype`` option); normalisations return the input's dtype."""
    x = example(shape).astype(jnp.bfloat16)
    params, state = layer.init(KEY, x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    y, _ = layer.apply(params, state, x)
    y32, _ = layer.apply(params, state, x.astype(jnp.float32))
    norm = isinstance(layer, fnn.LayerNorm | fnn.RMSNorm | fnn.BatchNorm)
    assert y.dtype == (jnp.bfloat16 if norm else jnp.float32)
    np.testing.assert_allclose(y.astype(jnp.float32), y32, rtol=0.05, atol=0.05)


@pytest.mark.parametrize(
    "layer, shape",
    [(fnn.Dense(4, dtype=jnp.bfloat16), (3, 5)), (fnn.Conv(4, (3, 3), dtype=jnp.bfloat16), (2, 5, 5, 3)),
     (fnn.Recurrent(fnn.LSTM(3, dtype=jnp.bfloat16)), (2, 4, 3))],
)
def test_dtype_option_computes_in_bfloat16_with_float32_params(layer, shape):
    x = example(shape)
    params, state = layer.init(KEY, x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    y, _ = layer.apply(params, state, x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(y.astype(jnp.float32), layer.apply(params, state, x.astype(jnp.bfloat16))[0]
                               .astype(jnp.float32), rtol=0.05, atol=0.05)


# ---- initializers ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", fnn.initializers.NAMES)
def test_every_named_initializer_is_selectable_per_layer(name):
    layer = fnn.Dense(8, w_init=name, b_init="ones")
    params, _ = layer.init(KEY, jnp.ones((2, 8)))
    np.testing.assert_array_equal(params["b"], 1.0)
    assert params["w"].shape == (8, 8)
    if name == "zeros":
        np.testing.assert_array_equal(layer(params, jnp.ones((2, 8))), 1.0)


def test_he_normal_variance_and_function_initializers():
    params, _ = fnn.Conv(64, (3, 3), w_init="he_normal").init(KEY, jnp.ones((1, 8, 8, 32)))
    fan_in = 3 * 3 * 32
    assert abs(float(params["w"].var()) * fan_in / 2 - 1) < 0.05
    params, _ = fnn.Dense(3, w_init=jax.nn.initializers.constant(0.5)).init(KEY, jnp.ones((1, 2)))
    np.testing.assert_array_equal(params["w"], 0.5)
    with pytest.raises(ValueError, match="unknown initializer 'glorot'; choose a function or one of"):
        fnn.Dense(3, w_init="glorot").init(KEY, jnp.ones((1, 2)))


# ---- configuration errors: at construction, naming the field ---------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: fnn.Dense(0), "Dense: features must be a positive int, got 0"),
        (lambda: fnn.Dense(2.5), "Dense: features must be a positive int, got 2.5"),
        (lambda: fnn.Conv(4, (3, 3, 3, 3)), r"Conv: kernel_size must give one size per spatial axis, 1 to 3"),
        (lambda: fnn.Conv(4, (3, 3), strides=-1), r"Conv: strides must be a positive int or 2 positive ints"),
        (lambda: fnn.Conv(4, (3, 3), padding="FOO"), r"Conv: padding must be 'SAME', 'VALID', an int"),
        (lambda: fnn.Conv(4, (3, 3), strides=True), r"Conv: strides must be a positive int or 2 positive ints"),
        (lambda: fnn.Conv(4, (3,), padding=[(1, None)]), r"Conv: padding must be 'SAME', 'VALID', an int"),
        (lambda: fnn.Conv(4, (3,), padding=True), r"Conv: padding must be 'SAME', 'VALID', an int"),
        (lambda: fnn.Conv(5, (3, 3), groups=2), r"Conv: features \(5\) must divide by groups \(2\)"),
        (lambda: fnn.ConvTranspose(4, (3,), dilation=(1, 1)), "ConvTranspose: dilation must be a positive int or 1"),
        (lambda: fnn.MaxPool((2, 2), strides=(0, 1)), "MaxPool: strides must be a positive int or 2 positive ints"),
        (lambda: fnn.AvgPool(3), r"AvgPool: window must give one size per spatial axis"),
        (lambda: fnn.LayerNorm(epsilon=0), "LayerNorm: epsilon must be > 0 and finite, got 0"),
        (lambda: fnn.GroupNorm(num_groups=0), "GroupNorm: num_groups must be a positive int, got 0"),
        (lambda: fnn.BatchNorm(momentum=1.5), r"BatchNorm: momentum must be in \[0, 1\], got 1.5"),
        (lambda: fnn.Dropout(1.0), r"Dropout: rate must be in \[0, 1\), got 1.0"),
        (lambda: fnn.Dropout(-0.1), r"Dropout: rate must be in \[0, 1\), got -0.1"),
        (lambda: fnn.Embedding(0, 4), "Embedding: num_embeddings must be a positive int, got 0"),
        (lambda: fnn.activation("swish"), "unknown activation 'swish'; choose one of sigmoid, relu, tanh"),
    ],
)
def test_bad_configuration_is_an_error_at_construction(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ---- input errors: at init, naming the path, the expected and the received shape -------------


@pytest.mark.parametrize(
    "layer, x, message",
    [
        (fnn.Conv(4, (3, 3)), jnp.ones((2, 8, 3)),
         r"net/bad: Conv expects input of rank 4 \(batch, height, width, channels\), got float32\[2,8,3\]"),
        (fnn.Conv(4, (3, 3), groups=2), jnp.ones((2, 8, 8, 3)),
         r"net/bad: Conv with groups=2 needs input channels divisible by 2, got float32\[2,8,8,3\]"),
        (fnn.Conv(4, (5, 5), padding="VALID"), jnp.ones((2, 3, 3, 1)),
         r"net/bad: Conv leaves no output positions for input float32\[2,3,3,1\]"),
        (fnn.Dense(4), jnp.ones((2, 3), jnp.int32),
         r"net/bad: Dense expects floating-point input, got int32\[2,3\]; embed integer ids with fnn.Embedding"),
        (fnn.Embedding(5, 2), jnp.ones((2, 3)), r"net/bad: Embedding expects integer ids, got float32\[2,3\]"),
        (fnn.GroupNorm(num_groups=4), jnp.ones((2, 4, 4, 6)),
         r"net/bad: GroupNorm\(num_groups=4\) expects \[batch, ..., channels\] with channels divisible by 4"),
        (fnn.MaxPool((2, 2)), jnp.ones((2, 8, 3)), r"net/bad: MaxPool expects input of rank 4"),
        (fnn.Reshape((5, -1)), jnp.ones((2, 3, 4)), r"net/bad: Reshape"),
        (fnn.LayerNorm(), jnp.ones((2, 3), jnp.int32), r"net/bad: LayerNorm expects floating-point input"),
    ],
)
def test_bad_input_is_an_error_at_init_naming_the_path(layer, x, message):
    model = fnn.serial(net=fnn.serial(bad=layer))
    with pytest.raises(fnn.ShapeError, match=message):
        model.init(KEY, x)


@pytest.mark.parametrize(
    "layer, good, bad, message",
    [
        (fnn.Dense(4), (2, 3), (2, 5), r"Dense expected 3 features on axis -1, got input float32\[2,5\]"),
        (fnn.Conv(4, (3,)), (2, 6, 3), (2, 6, 2), r"Conv expected 3 input channels, got float32\[2,6,2\]"),
        (fnn.ConvTranspose(4, (3,)), (2, 6, 3), (2, 6, 2), r"ConvTranspose expected 3 input channels"),
        (fnn.BatchNorm(), (4, 3), (4, 2), r"BatchNorm expected 3 features on axis -1, got float32\[4,2\]"),
    ],
)
def test_params_reused_on_another_input_size_is_a_clear_error(layer, good, bad, message):
    model = fnn.serial(layer)
    params, state = model.init(KEY, jnp.ones(good))
    name = next(iter(params or state))
    with pytest.raises(fnn.ShapeError, match=f"{name}: {message}"):
        model.apply(params, state, jnp.ones(bad))


def test_a_valid_window_larger_than_the_input_at_apply_is_a_clear_error():
    model = fnn.serial(fnn.Conv(2, (3,), padding="VALID"))
    params, _ = model.init(KEY, jnp.ones((1, 8, 1)))
    with pytest.raises(fnn.ShapeError, match=r"conv_0: Conv leaves no output positions for input float32\[1,2,1\]"):
        model(params, jnp.ones((1, 2, 1)))


def test_dropout_in_training_without_a_key_is_a_clear_error():
    with pytest.raises(fnn.LayerError, match=r"dropout_0: Dropout needs an rng key when train=True"):
        fnn.serial(fnn.Dropout(0.5))({}, jnp.ones(3), train=True)


def test_batch_norm_without_its_state_is_a_clear_error():
    bn = fnn.BatchNorm()
    params, _ = bn.init(KEY, jnp.ones((4, 3)))
    with pytest.raises(fnn.LayerError, match="BatchNorm keeps running statistics as state"):
        bn(params, jnp.ones((4, 3)))
