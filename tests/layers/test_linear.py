"""Dense and Embedding against flax.linen and plain NumPy, plus shapes, dtypes, gradients,
jit, initializers and error messages."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import fnn
from fnn import initializers
from tests.layers.reference import KEY, close, rand, random_params, shapes_and_dtypes, spec


def to_flax_dense(params):
    return {"params": {"kernel": params["w"], **({"bias": params["b"]} if "b" in params else {})}}


# ---- Dense: references ------------------------------------------------------------------------


@pytest.mark.parametrize("shape, use_bias", [((6,), True), ((4, 6), False), ((2, 1, 3, 6), True)])
def test_dense_matches_flax_with_copied_weights(shape, use_bias):
    x = rand(shape)
    ref = nn.Dense(5, use_bias=use_bias)
    ours = fnn.Dense(5, use_bias=use_bias)
    params = random_params(ours, x)
    variables = to_flax_dense(params)
    # the same layout as flax's: kernel [in, features] and bias [features]
    assert shapes_and_dtypes(variables) == shapes_and_dtypes(jax.eval_shape(ref.init, KEY, x))
    y = ours(params, x)
    assert y.shape == (*shape[:-1], 5) and y.dtype == jnp.float32
    close(y, ref.apply(variables, x))


def test_dense_against_numpy_loops():
    x = np.asarray(rand((3, 4)))
    layer = fnn.Dense(2)
    params = jax.tree.map(np.asarray, random_params(layer, x))
    w, b = params["w"], params["b"]
    assert np.abs(b).min() > 0  # the bias is non-zero, so the test sees it
    expected = np.zeros((3, 2), np.float64)
    for n in range(3):
        for o in range(2):
            total = float(b[o])
            for i in range(4):
                total += float(x[n, i]) * float(w[i, o])
            expected[n, o] = total
    close(layer(params, x), expected)


def test_dense_apply_returns_state_unchanged_and_call_is_shorthand():
    layer = fnn.Dense(3)
    x = rand((2, 4))
    params, state = layer.init(KEY, x)
    assert state == {}
    y, new_state = layer.apply(params, state, x)
    assert new_state == {}
    np.testing.assert_array_equal(y, layer(params, x))
    np.testing.assert_array_equal(y, layer(params, x, train=True))  # Dense ignores the mode


def test_dense_in_float64_matches_numpy_to_double_precision():
    with jax.enable_x64(True):
        x = rand((3, 5), dtype=jnp.float64)
        layer = fnn.Dense(4, param_dtype=jnp.float64)
        params = random_params(layer, x)
        assert params["w"].dtype == jnp.float64 and params["b"].dtype == jnp.float64
        y = layer(params, x)
        assert y.dtype == jnp.float64
        expected = np.asarray(x) @ np.asarray(params["w"]) + np.asarray(params["b"])
        np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-12, atol=1e-12)


# ---- Dense: shapes and dtypes ---------------------------------------------------------------


@pytest.mark.parametrize("shape, features", [((7,), 3), ((2, 7), 1), ((2, 3, 4, 7), 9)])
def test_dense_param_and_output_shapes(shape, features):
    layer = fnn.Dense(features)
    params, _ = jax.eval_shape(layer.init, KEY, spec(*shape))
    assert shapes_and_dtypes(params) == {
        "w": ((shape[-1], features), jnp.dtype(jnp.float32)),
        "b": ((features,), jnp.dtype(jnp.float32)),
    }
    assert set(jax.eval_shape(fnn.Dense(features, use_bias=False).init, KEY, spec(*shape))[0]) == {"w"}
    out = layer.output_spec(params, {}, spec(*shape))
    assert out.shape == (*shape[:-1], features) and out.dtype == jnp.float32


def test_dense_init_under_eval_shape_allocates_nothing_and_matches_real_init():
    model = fnn.serial(fnn.Dense(8), jax.nn.relu, fnn.Dense(3, use_bias=False))
    abstract_params, abstract_state = jax.eval_shape(model.init, KEY, spec(4, 5))
    leaves = jax.tree.leaves(abstract_params)
    assert leaves and all(isinstance(v, jax.ShapeDtypeStruct) for v in leaves)
    assert not any(isinstance(v, jax.Array) for v in leaves)
    real_params, real_state = model.init(KEY, jnp.zeros((4, 5)))
    assert shapes_and_dtypes(abstract_params) == shapes_and_dtypes(real_params)
    assert abstract_state == real_state == {}
    # a spec works as init's input directly too, and gives the same values as an array
    from_spec, _ = model.init(KEY, spec(4, 5))
    chex.assert_trees_all_equal(from_spec, real_params)


@pytest.mark.parametrize("make", [lambda **kw: fnn.Dense(2, **kw), lambda **kw: fnn.Conv(2, (3,), **kw)])
def test_a_dtype_that_is_not_floating_is_refused_naming_the_layer(make):
    model = fnn.serial(fnn.Dense(3), make(dtype="int8"))
    x = jnp.ones((2, 5, 4))
    with pytest.raises(fnn.LayerError, match=r"(dense_1: Dense|conv_0: Conv): dtype must be a floating-point dtype .* got 'int8'"):
        model.apply(model.init(KEY, x)[0], {}, x)
    complex_params, _ = make(param_dtype=jnp.complex64).init(KEY, x)
    assert complex_params["w"].dtype == jnp.complex64  # complex layers stay possible
    for field, value in (("dtype", "bfloat17"), ("param_dtype", jnp.int32)):
        with pytest.raises(fnn.LayerError, match=f"{field} must be a floating-point dtype"):
            model = fnn.serial(fnn.Dense(3), make(**{field: value}))
            model.apply(model.init(KEY, x)[0], {}, x)


def test_dense_dtypes_follow_promotion_or_the_dtype_field():
    x32 = rand((4, 6))
    x16 = x32.astype(jnp.bfloat16)
    layer = fnn.Dense(3)
    params = random_params(layer, x16)
    assert params["w"].dtype == jnp.float32
    # bfloat16 input with float32 params computes in the promoted float32, as flax does
    y = layer(params, x16)
    assert y.dtype == jnp.float32
    close(y, x16.astype(jnp.float32) @ params["w"] + params["b"])
    ref = nn.Dense(3)
    close(y, ref.apply({"params": {"kernel": params["w"], "bias": params["b"]}}, x16))
    # dtype=bfloat16 computes in bfloat16 (close to float32, but not exactly it)
    y_bf16 = fnn.Dense(3, dtype=jnp.bfloat16)(params, x32)
    assert y_bf16.dtype == jnp.bfloat16
    close(y_bf16, layer(params, x32), tol=5e-2)
    ref16 = nn.Dense(3, dtype=jnp.bfloat16)
    close(y_bf16, ref16.apply({"params": {"kernel": params["w"], "bias": params["b"]}}, x32), tol=1e-2)
    # param_dtype=bfloat16 stores bfloat16 weights; with bfloat16 input the output is bfloat16
    half = fnn.Dense(3, param_dtype=jnp.bfloat16)
    half_params = random_params(half, x16)
    assert {v.dtype for v in jax.tree.leaves(half_params)} == {jnp.dtype(jnp.bfloat16)}
    assert half(half_params, x16).dtype == jnp.bfloat16
    assert half(half_params, x32).dtype == jnp.float32


# ---- Dense: gradients -------------------------------------------------------------------------


def test_dense_gradients_check_numerically_in_float64():
    with jax.enable_x64(True):
        x = rand((3, 4), dtype=jnp.float64)
        layer = fnn.Dense(2, param_dtype=jnp.float64)
        params = random_params(layer, x)
        f = lambda p, v: jnp.tanh(layer(p, v))
        check_grads(jax.jit(f), (params, x), order=2, modes=["fwd", "rev"])


def test_dense_gradient_has_the_closed_form():
    x = rand((5, 3))
    g = rand((5, 2), seed=4)
    layer = fnn.Dense(2)
    params = random_params(layer, x)
    grads, gx = jax.grad(lambda p, v: jnp.sum(layer(p, v) * g), argnums=(0, 1))(params, x)
    close(grads["w"], np.asarray(x).T @ np.asarray(g))
    close(grads["b"], np.asarray(g).sum(0))
    close(gx, np.asarray(g) @ np.asarray(params["w"]).T)


# ---- Dense and Embedding under jit ------------------------------------------------------------


class JitTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_dense_apply_is_the_same_jitted_or_not(self):
        layer = fnn.Dense(4)
        x = rand((3, 2, 5))
        params, state = random_params(layer, x), {}
        y, new_state = self.variant(lambda p, s, v: layer.apply(p, s, v))(params, state, x)
        expected = np.asarray(x) @ np.asarray(params["w"]) + np.asarray(params["b"])
        np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
        assert new_state == {}

    @chex.variants(with_jit=True, without_jit=True)
    def test_embedding_lookup_and_attend_are_the_same_jitted_or_not(self):
        layer = fnn.Embedding(7, 3)
        ids = jnp.array([[0, 6, 2], [2, 2, 5]])
        params = random_params(layer, ids)
        table = np.asarray(params["w"])
        np.testing.assert_array_equal(np.asarray(self.variant(layer.__call__)(params, ids)), table[ids])
        q = rand((2, 3))
        scores = self.variant(layer.attend)(params, q)
        np.testing.assert_allclose(np.asarray(scores), np.asarray(q) @ table.T, rtol=1e-5, atol=1e-5)


# ---- Dense: initializers ----------------------------------------------------------------------


@pytest.mark.parametrize("name", initializers.NAMES)
def test_every_named_initializer_is_the_same_as_passing_its_function(name):
    x = spec(2, 6)
    function = initializers.get(name)
    by_name, _ = fnn.Dense(5, w_init=name).init(KEY, x)
    by_function, _ = fnn.Dense(5, w_init=function).init(KEY, x)
    chex.assert_trees_all_equal(by_name, by_function)
    assert shapes_and_dtypes(by_name) == shapes_and_dtypes(fnn.Dense(5).init(KEY, x)[0])


def test_orthogonal_in_half_precision_and_an_uncalled_initializer_factory():
    x = spec(2, 6)
    params, _ = fnn.Dense(5, w_init="orthogonal", param_dtype=jnp.bfloat16).init(KEY, x)  # QR has no bf16 kernel
    assert params["w"].dtype == jnp.bfloat16
    w = np.asarray(params["w"], np.float32)
    np.testing.assert_allclose(w.T @ w, np.eye(5), atol=0.02)
    with pytest.raises(fnn.LayerError, match=r"^head: initializer he_normal returned function for a parameter of "
                                             r"shape \(6, 5\).*he_normal\(\) \(the factory called\)"):
        fnn.serial(head=fnn.Dense(5, w_init=jax.nn.initializers.he_normal)).init(KEY, x)
    # no input features: a fan of 0 (a ZeroDivisionError from inside JAX before)
    with pytest.raises(fnn.LayerError, match=r"^head: initializer lecun_normal cannot scale a parameter of "
                                             r"shape \(0, 5\): an axis of size 0 makes its fan 0"):
        fnn.serial(head=fnn.Dense(5)).init(KEY, spec(2, 0))


def test_zero_initializers_give_zero_output_and_constants_take_effect():
    x = rand((3, 4))
    zero = fnn.Dense(5, w_init="zeros")
    np.testing.assert_array_equal(zero(zero.init(KEY, x)[0], x), np.zeros((3, 5)))
    ones = fnn.Dense(5, w_init="ones", b_init=jax.nn.initializers.constant(0.5))
    params, _ = ones.init(KEY, x)
    expected = np.repeat(np.asarray(x).sum(-1, keepdims=True), 5, -1) + 0.5
    close(ones(params, x), expected)


@pytest.mark.parametrize("name, variance", [
    ("he_normal", lambda fan_in, fan_out: 2 / fan_in),
    ("he_uniform", lambda fan_in, fan_out: 2 / fan_in),
    ("lecun_normal", lambda fan_in, fan_out: 1 / fan_in),
    ("glorot_normal", lambda fan_in, fan_out: 2 / (fan_in + fan_out)),
    ("glorot_uniform", lambda fan_in, fan_out: 2 / (fan_in + fan_out)),
])
def test_variance_scaling_initializers_have_the_right_variance(name, variance):
    fan_in, fan_out = 400, 300
    params, _ = fnn.Dense(fan_out, w_init=name).init(KEY, spec(1, fan_in))
    w = np.asarray(params["w"], np.float64)
    np.testing.assert_allclose(w.var(), variance(fan_in, fan_out), rtol=0.05)
    assert abs(w.mean()) < 0.02 * np.sqrt(variance(fan_in, fan_out))
    np.testing.assert_array_equal(params["b"], np.zeros(fan_out))


def test_default_initializers_are_lecun_normal_and_zero_bias():
    params, _ = fnn.Dense(300).init(KEY, spec(1, 400))
    np.testing.assert_allclose(np.asarray(params["w"], np.float64).var(), 1 / 400, rtol=0.05)
    np.testing.assert_array_equal(params["b"], np.zeros(300))


def test_unknown_initializer_name_is_reported_with_the_path():
    with pytest.raises(ValueError, match="unknown initializer 'he_nrmal'.*he_normal"):
        fnn.Dense(2, w_init="he_nrmal").init(KEY, spec(1, 3))
    with pytest.raises(fnn.LayerError, match=r"^head/dense_0: .*unknown initializer 'nope'"):
        fnn.serial(head=fnn.serial(fnn.Dense(2, b_init="nope"))).init(KEY, spec(1, 3))


# ---- Dense: errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("features", [0, -3, 2.5, "4", None, True])
def test_dense_rejects_bad_features_at_construction(features):
    with pytest.raises(ValueError, match=r"Dense: features must be a positive int, got"):
        fnn.Dense(features)


def test_dense_rejects_integer_input_at_init_with_the_path():
    model = fnn.serial(fnn.Dense(4), jax.nn.relu, fnn.Dense(2))
    with pytest.raises(fnn.ShapeError) as info:
        model.init(KEY, spec(2, 3, dtype=jnp.int32))
    message = str(info.value)
    assert message.startswith("dense_0: Dense expects floating-point input, got int32[2,3]")
    assert "fnn.Embedding" in message
    assert info.value.path == ("dense_0",)


def test_dense_rejects_a_scalar_input_at_init():
    message = r"^blocks/dense_0: Dense expects input with a feature axis, got float32\[\]"
    with pytest.raises(fnn.ShapeError, match=message):
        fnn.serial(blocks=fnn.serial(fnn.Dense(2))).init(KEY, spec())


def test_dense_reapplied_to_another_feature_size_names_expected_and_received():
    model = fnn.serial(fnn.Dense(4), jax.nn.relu, fnn.Dense(2))
    params = random_params(model, spec(2, 3))
    with pytest.raises(fnn.ShapeError) as info:
        model(params, jnp.ones((2, 5)))
    assert str(info.value) == "dense_0: Dense expected 3 features on axis -1, got input float32[2,5]"
    # the first layer (4 features) gets another's parameters for 6: it ran, as a 6-feature layer
    other = random_params(fnn.serial(fnn.Dense(6), jax.nn.relu, fnn.Dense(2)), spec(2, 3))
    mixed = {"dense_0": other["dense_0"], "dense_1": params["dense_1"]}
    message = (r"^dense_0: Dense with 4 features got parameters w\[3, 6\], b\[6\]: were they made by this "
               r"layer's init\? \(w is \[in, out\]: \[n, 4\]\)")
    with pytest.raises(fnn.ShapeError, match=message):
        model(mixed, jnp.ones((2, 3)))
    # a PyTorch-layout weight [out, in] is named as the parameters' fault, not the input's
    torch_layout = {**params, "dense_0": {"w": params["dense_0"]["w"].T, "b": params["dense_0"]["b"]}}
    with pytest.raises(fnn.ShapeError, match=r"^dense_0: Dense with 4 features got parameters w\[4, 3\], b\[4\]"):
        model(torch_layout, jnp.ones((2, 3)))
    with pytest.raises(fnn.ShapeError, match=r"^dense_0: Dense with 4 features got parameters w\[3, 4\], b\[3\]"):
        model({**params, "dense_0": {"w": params["dense_0"]["w"], "b": jnp.zeros(3)}}, jnp.ones((2, 3)))


def test_dense_reapplied_to_a_scalar_raises_a_shape_error():
    # init rejects a scalar with a ShapeError; apply should too, not crash with an IndexError
    model = fnn.serial(fnn.Dense(2))
    params = random_params(model, spec(1, 3))
    with pytest.raises(fnn.ShapeError, match=r"^dense_0: Dense .*float32\[\]"):
        model(params, jnp.float32(1.0))


# ---- Embedding --------------------------------------------------------------------------------


@pytest.mark.parametrize("ids_shape", [(5,), (3, 7), (2, 2, 3)])
def test_embedding_matches_flax_and_table_indexing(ids_shape):
    ids = jnp.asarray(np.random.default_rng(3).integers(0, 11, ids_shape), jnp.int32)
    ref = nn.Embed(11, 4)
    ours = fnn.Embedding(11, 4)
    params = random_params(ours, ids)
    variables = {"params": {"embedding": params["w"]}}
    assert shapes_and_dtypes(variables) == shapes_and_dtypes(jax.eval_shape(ref.init, KEY, ids))
    y = ours(params, ids)
    assert y.shape == (*ids_shape, 4) and y.dtype == jnp.float32
    np.testing.assert_array_equal(y, ref.apply(variables, ids))
    np.testing.assert_array_equal(y, np.asarray(params["w"])[np.asarray(ids)])


def test_embedding_attend_matches_flax_and_the_transposed_table():
    ids = jnp.zeros((2,), jnp.int32)
    ref = nn.Embed(9, 4)
    ours = fnn.Embedding(9, 4)
    params = random_params(ours, ids)
    variables = {"params": {"embedding": params["w"]}}
    q = rand((2, 3, 4))
    scores = ours.attend(params, q)
    assert scores.shape == (2, 3, 9)
    close(scores, ref.apply(variables, q, method=ref.attend))
    close(scores, np.einsum("abf,nf->abn", np.asarray(q), np.asarray(params["w"])))


def test_embedding_attend_computes_in_the_dtype_field_as_lookup_does():
    # `dtype` is documented as the computation dtype: lookup honours it, and so does flax's attend
    params = random_params(fnn.Embedding(9, 4), spec(2, dtype=jnp.int32))
    q = rand((2, 4))
    ours = fnn.Embedding(9, 4, dtype=jnp.bfloat16)
    assert ours(params, jnp.array([1, 2])).dtype == jnp.bfloat16
    ref = nn.Embed(9, 4, dtype=jnp.bfloat16)
    expected = ref.apply({"params": {"embedding": params["w"]}}, q, method=ref.attend)
    assert expected.dtype == jnp.bfloat16
    scores = ours.attend(params, q)
    assert scores.dtype == jnp.bfloat16
    close(scores, expected, tol=2e-2)


def test_embedding_accepts_every_integer_dtype():
    layer = fnn.Embedding(6, 2)
    params = random_params(layer, spec(3, dtype=jnp.int32))
    table = np.asarray(params["w"])
    for dtype in (np.int8, np.uint8, np.int16, np.int32, np.uint32):
        ids = np.array([5, 0, 3], dtype)
        np.testing.assert_array_equal(layer(params, ids), table[ids.astype(np.int64)])
        np.testing.assert_array_equal(layer(params, jnp.asarray(ids)), table[ids.astype(np.int64)])


def test_embedding_gradient_flows_only_to_the_rows_used():
    layer = fnn.Embedding(8, 3)
    ids = jnp.array([[1, 4, 4], [6, 1, 4]])
    params = random_params(layer, ids)
    g = rand((2, 3, 3), seed=5)
    grads = jax.grad(lambda p: jnp.sum(layer(p, ids) * g))(params)["w"]
    expected = np.zeros((8, 3), np.float32)
    np.add.at(expected, np.asarray(ids).reshape(-1), np.asarray(g).reshape(-1, 3))
    close(grads, expected)
    unused = [0, 2, 3, 5, 7]
    np.testing.assert_array_equal(np.asarray(grads)[unused], 0.0)
    assert np.all(np.abs(np.asarray(grads)[[1, 4, 6]]).sum(-1) > 0)


def test_embedding_gradients_check_numerically_in_float64():
    with jax.enable_x64(True):
        layer = fnn.Embedding(5, 3, param_dtype=jnp.float64)
        ids = jnp.array([0, 3, 3, 1])
        params = random_params(layer, ids)
        q = rand((2, 3), seed=3, dtype=jnp.float64)
        # lookup and attend together: the table gets gradient through both uses
        f = lambda p, v: jnp.tanh(layer.attend(p, layer(p, ids)[:2] + v))
        check_grads(jax.jit(f), (params, q), order=1, modes=["fwd", "rev"])
    q = rand((2, 3), seed=3)
    params = random_params(fnn.Embedding(5, 3), ids)
    grads = jax.grad(lambda p: jnp.sum(layer.attend(p, q)))(params)["w"]
    close(grads, np.repeat(np.asarray(q).sum(0, keepdims=True), 5, 0))


def test_embedding_shapes_dtypes_and_eval_shape_init():
    layer = fnn.Embedding(10, 6)
    abstract, state = jax.eval_shape(layer.init, KEY, spec(2, 3, dtype=jnp.int32))
    assert isinstance(abstract["w"], jax.ShapeDtypeStruct) and state == {}
    assert shapes_and_dtypes(abstract) == {"w": ((10, 6), jnp.dtype(jnp.float32))}
    real, _ = layer.init(KEY, jnp.zeros((2, 3), jnp.int32))
    assert shapes_and_dtypes(real) == shapes_and_dtypes(abstract)
    # the default table is standard normal
    big, _ = fnn.Embedding(500, 40).init(KEY, spec(1, dtype=jnp.int32))
    np.testing.assert_allclose(np.asarray(big["w"]).std(), 1.0, rtol=0.03)
    # dtype and param_dtype
    half = fnn.Embedding(10, 6, param_dtype=jnp.bfloat16)
    half_params = random_params(half, spec(2, dtype=jnp.int32))
    assert half_params["w"].dtype == jnp.bfloat16
    assert half(half_params, jnp.array([1, 2])).dtype == jnp.bfloat16
    cast = fnn.Embedding(10, 6, dtype=jnp.bfloat16)
    y = cast(real, jnp.array([3, 9]))
    assert y.dtype == jnp.bfloat16
    close(y, np.asarray(real["w"])[[3, 9]], tol=1e-2)


def test_embedding_w_init_by_name_and_function():
    zeros, _ = fnn.Embedding(4, 3, w_init="zeros").init(KEY, spec(2, dtype=jnp.int32))
    np.testing.assert_array_equal(zeros["w"], np.zeros((4, 3)))
    layer = fnn.Embedding(4, 3, w_init=jax.nn.initializers.constant(2.0))
    params, _ = layer.init(KEY, spec(2, dtype=jnp.int32))
    np.testing.assert_array_equal(layer(params, jnp.array([0, 3])), np.full((2, 3), 2.0))


@pytest.mark.parametrize("args, field", [((0, 4), "num_embeddings"), ((-1, 4), "num_embeddings"),
                                         ((5, 0), "features"), ((5, 2.0), "features")])
def test_embedding_rejects_bad_sizes_at_construction(args, field):
    with pytest.raises(ValueError, match=rf"Embedding: {field} must be a positive int"):
        fnn.Embedding(*args)


def test_embedding_rejects_float_ids_at_init_and_apply_with_the_path():
    model = fnn.serial(fnn.Embedding(5, 3), fnn.Dense(2))
    message = r"^embedding_0: Embedding expects integer ids, got float32\[2,4\]"
    with pytest.raises(fnn.ShapeError, match=message):
        model.init(KEY, spec(2, 4))
    params = random_params(model, spec(2, 4, dtype=jnp.int32))
    with pytest.raises(fnn.ShapeError, match=message):
        model(params, jnp.zeros((2, 4)))


def test_embedding_out_of_range_ids_raise_when_concrete_and_give_nan_under_jit():
    model = fnn.serial(fnn.Embedding(5, 3))
    params = random_params(model, spec(3, dtype=jnp.int32))
    with pytest.raises(fnn.ShapeError) as info:
        model(params, jnp.array([[0, 1], [5, 2]]))
    assert str(info.value) == (
        "embedding_0: Embedding has ids 0 to 4, got 5 at index (1, 0) of ids int32[2,2] (1 out of range)"
    )
    with pytest.raises(fnn.ShapeError, match=r"got -1 at index \(2,\) .*\(2 out of range\)"):
        model(params, jnp.array([0, 4, -1, 7]))
    y = jax.jit(model)(params, jnp.array([0, 4, -1, 5]))
    table = np.asarray(params["embedding_0"]["w"])
    np.testing.assert_array_equal(y[:2], table[[0, 4]])
    assert np.isnan(np.asarray(y[2:])).all()
