"""The layer contract and the combinators."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn

KEY = jax.random.key(0)


def spec(*shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def test_layers_are_immutable_and_hashable():
    layer = fnn.Dense(4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        layer.features = 5
    assert hash(fnn.Dense(4)) == hash(fnn.Dense(4)) and fnn.Dense(4) == fnn.Dense(4)
    model = fnn.serial(fnn.Dense(4), fnn.relu)
    assert {model: 1}[fnn.serial(fnn.Dense(4), fnn.relu)] == 1


def test_init_from_spec_under_eval_shape_matches_real_init():
    model = fnn.serial(fnn.Conv(4, (3, 3)), fnn.BatchNorm(), fnn.relu, fnn.Flatten(), fnn.Dense(3))
    x = jnp.ones((2, 6, 6, 1))
    params, state = model.init(KEY, x)
    shapes = jax.eval_shape(model.init, KEY, spec(2, 6, 6, 1))
    real = jax.tree.map(lambda a: (a.shape, a.dtype), (params, state))
    abstract = jax.tree.map(lambda a: (a.shape, a.dtype), shapes)
    assert real == abstract


def test_serial_names_children_by_type_and_skips_empty_ones():
    model = fnn.serial(fnn.Conv(4, (3, 3)), jax.nn.relu, fnn.Conv(4, (3, 3)), fnn.BatchNorm(),
                       fnn.Flatten(), fnn.Dense(2))
    params, state = model.init(KEY, spec(1, 5, 5, 1))
    assert list(params) == ["conv_0", "conv_1", "batch_norm_0", "dense_0"]
    assert list(state) == ["batch_norm_0"]
    assert set(params["conv_0"]) == {"w", "b"}


def test_serial_accepts_names_by_keyword():
    model = fnn.serial(encoder=fnn.serial(fnn.Dense(8), fnn.relu), head=fnn.Dense(2))
    params, _ = model.init(KEY, spec(1, 3))
    assert jax.tree.map(jnp.shape, params) == {
        "encoder": {"dense_0": {"w": (3, 8), "b": (8,)}},
        "head": {"w": (8, 2), "b": (2,)},
    }
    with pytest.raises(TypeError, match="either all by position or all by name"):
        fnn.serial(fnn.Dense(2), head=fnn.Dense(2))


def test_serial_output_equals_hand_composition():
    model = fnn.serial(fnn.Dense(8), jnp.tanh, fnn.Dense(2))
    x = jax.random.normal(KEY, (4, 3))
    params, _ = model.init(KEY, x)
    h = jnp.tanh(x @ params["dense_0"]["w"] + params["dense_0"]["b"])
    expected = h @ params["dense_1"]["w"] + params["dense_1"]["b"]
    np.testing.assert_allclose(model(params, x), expected, rtol=1e-5, atol=1e-6)


def test_any_pure_function_is_a_layer():
    model = fnn.serial(jnp.square, fnn.Fn(lambda v: v + 1, label="plus_one"))
    params, _ = model.init(KEY, spec(3))
    assert params == {}
    np.testing.assert_allclose(model(params, jnp.arange(3.0)), [1.0, 2.0, 5.0])
    assert model.names == ("square_0", "plus_one_0")
    with pytest.raises(TypeError, match="expected a fnn Layer or a callable"):
        fnn.serial(3)


def test_parallel_fan_out_and_fan_in():
    concat = fnn.serial(fnn.fan_out(2), fnn.parallel(fnn.Dense(3), fnn.Dense(5)), fnn.fan_in_concat())
    summed = fnn.serial(fnn.fan_out(2), fnn.parallel(fnn.Dense(3), fnn.Dense(3)), fnn.fan_in_sum())
    x = jax.random.normal(KEY, (2, 4))
    p, _ = concat.init(KEY, x)
    branches = p["parallel_0"]
    a = x @ branches["dense_0"]["w"] + branches["dense_0"]["b"]
    b = x @ branches["dense_1"]["w"] + branches["dense_1"]["b"]
    np.testing.assert_allclose(concat(p, x), jnp.concatenate([a, b], -1), rtol=1e-5)
    q, _ = summed.init(KEY, x)
    qb = q["parallel_0"]
    expected = x @ qb["dense_0"]["w"] + qb["dense_0"]["b"] + x @ qb["dense_1"]["w"] + qb["dense_1"]["b"]
    np.testing.assert_allclose(summed(q, x), expected, rtol=1e-5)


def test_parallel_needs_a_tuple_of_matching_length():
    with pytest.raises(fnn.ShapeError, match=r"parallel_0: parallel of 2 layers expected a tuple of 2"):
        fnn.serial(fnn.parallel(fnn.Dense(3), fnn.Dense(3))).init(KEY, spec(2, 4))


def test_fan_in_errors_name_the_shapes():
    bad_sum = fnn.serial(fnn.fan_out(2), fnn.parallel(fnn.Dense(3), fnn.Dense(4)), fnn.fan_in_sum())
    with pytest.raises(fnn.ShapeError, match=r"fan_in_sum_0: FanInSum needs inputs of one shape.*\[2,3\].*\[2,4\]"):
        bad_sum.init(KEY, spec(2, 4))
    bad_cat = fnn.serial(fnn.fan_out(2), fnn.parallel(fnn.Dense(3), fnn.Flatten()), fnn.fan_in_concat(1))
    with pytest.raises(fnn.ShapeError, match="FanInConcat"):
        bad_cat.init(KEY, spec(2, 4, 2))
    with pytest.raises(ValueError, match="FanOut: n must be a positive int"):
        fnn.fan_out(0)


def test_residual_adds_the_input_and_keeps_the_body_params():
    block = fnn.residual(fnn.Dense(4), jnp.tanh, fnn.Dense(4))
    x = jax.random.normal(KEY, (3, 4))
    params, _ = block.init(KEY, x)
    body = fnn.serial(fnn.Dense(4), jnp.tanh, fnn.Dense(4))
    np.testing.assert_allclose(block(params, x), x + body(params, x), rtol=1e-6)
    with pytest.raises(fnn.ShapeError, match=r"residual body must keep its input's shape.*float32\[3,4\].*float32\[3,5\]"):
        fnn.residual(fnn.Dense(5)).init(KEY, x)


def test_residual_of_a_masked_sequence_adds_the_values_and_keeps_the_mask():
    x = jax.random.normal(KEY, (2, 4, 8))
    mask = fnn.lengths_to_mask(jnp.array([2, 4]), 4)
    block = fnn.residual(fnn.KeepMask(fnn.Dense(8)))
    params, _ = block.init(KEY, (x, mask))
    y, y_mask = block(params, (x, mask))
    seen = jnp.where(mask[..., None], x, 0.0)  # KeepMask gives the Dense zeros at the padding
    np.testing.assert_allclose(y, x + fnn.Dense(8)(params, seen), rtol=1e-6)
    assert y_mask is mask
    with pytest.raises(fnn.ShapeError, match=r"expected \(float32\[2,4,8\], bool\[2,4\]\), got float32\[2,4,8\]"):
        fnn.residual(lambda pair: pair[0]).init(KEY, (x, mask))  # the body dropped the mask
    with pytest.raises(fnn.ShapeError, match=r"residual takes an array or a masked sequence \(x, mask\), got dict"):
        fnn.residual(fnn.Dense(8)).init(KEY, {"x": x})


def test_parameters_missing_a_layer_name_the_layer():
    model = fnn.serial(enc=fnn.serial(fnn.Dense(4), fnn.relu, fnn.Dense(3)))
    params, _ = model.init(KEY, jnp.ones((2, 3)))
    del params["enc"]["dense_1"]
    with pytest.raises(fnn.LayerError, match=r"^enc/dense_1: Dense found no parameter 'w' among its parameters \{\}"):
        model(params, jnp.ones((2, 3)))
    # a key missing from the input, not from the parameters, stays the KeyError it is
    pair = fnn.serial(fnn.Fn(lambda x: x["a"] + x["b"]))
    params, _ = pair.init(KEY, {"a": jnp.ones(2), "b": jnp.ones(2)})
    with pytest.raises(KeyError, match="'b'") as error:
        pair(params, {"a": jnp.ones(2)})
    assert not isinstance(error.value, fnn.LayerError)


def test_a_layer_of_ones_own_missing_its_state_names_the_layer():
    @dataclasses.dataclass(frozen=True)
    class RunningCenter(fnn.Layer):
        def init(self, key, x):
            return {}, {"mean": jnp.zeros(x.shape[-1:])}

        def apply(self, params, state, x, *, key=None, train=False):
            return x - state["mean"], state

    model = fnn.serial(dense=fnn.Dense(4), center=RunningCenter())
    params, state = model.init(KEY, jnp.ones((2, 3)))
    with pytest.raises(fnn.LayerError, match=r"^center: RunningCenter found no state entry 'mean' among its "
                                             r"state entries \{\}; a model that keeps state runs as "
                                             r"model.apply\(params, state, x, train=...\)"):
        model(params, jnp.ones((2, 3)))  # a bare KeyError('mean') before
    y, _ = model.apply(params, state, jnp.ones((2, 3)))
    assert y.shape == (2, 4)


def test_a_masked_sequence_given_to_a_layer_without_masks_names_the_layer_and_keep_mask():
    pair = (jnp.ones((2, 4, 8)), jnp.ones((2, 4), bool))
    hint = r"\(float32\[2,4,8\], bool\[2,4\]\).*inside fnn.KeepMask"
    with pytest.raises(fnn.ShapeError, match=r"^enc/layer_norm_0: LayerNorm cannot take input " + hint):
        fnn.serial(enc=fnn.serial(fnn.MultiHeadAttention(2), fnn.LayerNorm())).init(KEY, pair)
    dropout = fnn.serial(fnn.Dropout(0.1))  # nothing to initialise: found at apply
    params, state = dropout.init(KEY, pair)
    with pytest.raises(fnn.ShapeError, match=r"^dropout_0: Dropout cannot take input " + hint):
        dropout.apply(params, state, pair, key=KEY, train=True)


def test_identity():
    x = jnp.arange(3.0)
    assert fnn.identity({}, x) is x


def test_init_error_names_the_path_and_both_shapes():
    model = fnn.serial(
        features=fnn.serial(fnn.Conv(4, (3, 3)), fnn.relu, fnn.Flatten()),
        head=fnn.serial(fnn.Dense(8), fnn.Conv(2, (3, 3))),
    )
    with pytest.raises(fnn.ShapeError) as info:
        model.init(KEY, spec(2, 6, 6, 1))
    message = str(info.value)
    assert message.startswith("head/conv_0: Conv expects input of rank 4")
    assert "float32[2,8]" in message
    assert info.value.path == ("head", "conv_0")


def test_apply_error_names_the_path_and_both_shapes():
    model = fnn.serial(fnn.Dense(4), fnn.relu, fnn.Dense(2))
    params, _ = model.init(KEY, spec(1, 3))
    with pytest.raises(fnn.ShapeError, match=r"dense_0: Dense expected 3 features on axis -1, got input float32\[1,5\]"):
        model(params, jnp.ones((1, 5)))


def test_dtype_mismatch_is_reported_at_init():
    with pytest.raises(fnn.ShapeError, match=r"dense_0: Dense expects floating-point input, got int32\[2,3\]"):
        fnn.serial(fnn.Dense(2)).init(KEY, spec(2, 3, dtype=jnp.int32))


def test_foreign_errors_from_a_child_are_wrapped_with_the_path():
    def needs_pairs(x):
        if x.shape[-1] % 2:
            raise ValueError("needs an even feature count")
        return x

    with pytest.raises(fnn.ShapeError, match=r"needs_pairs_0: Fn cannot take input float32\[1,3\]: needs an even"):
        fnn.serial(fnn.Dense(3), needs_pairs).init(KEY, spec(1, 2))


def test_stateful_models_thread_state_and_stateless_call_says_what_to_do():
    model = fnn.serial(fnn.Dense(3), fnn.BatchNorm(momentum=0.5))
    x = jax.random.normal(KEY, (8, 2))
    params, state = model.init(KEY, x)
    _, new_state = model.apply(params, state, x, train=True)
    assert not np.allclose(new_state["batch_norm_0"]["mean"], state["batch_norm_0"]["mean"])
    _, same_state = model.apply(params, state, x, train=False)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), same_state, state))
    with pytest.raises(fnn.LayerError, match="batch_norm_0: BatchNorm keeps running statistics as state"):
        model(params, x)


def test_rng_reaches_every_dropout_and_differs_between_them():
    model = fnn.serial(fnn.Dropout(0.5), fnn.Dropout(0.5))
    params, _ = model.init(KEY, spec(1000))
    y1 = model(params, jnp.ones(1000), key=jax.random.key(1), train=True)
    y2 = model(params, jnp.ones(1000), key=jax.random.key(1), train=True)
    np.testing.assert_array_equal(y1, y2)
    assert set(np.unique(np.asarray(y1)).tolist()) <= {0.0, 4.0}
    with pytest.raises(fnn.LayerError, match="dropout_0: Dropout needs an rng key"):
        model(params, jnp.ones(1000), train=True)


def test_apply_is_pure_under_jit_and_grad():
    model = fnn.serial(fnn.Dense(8), fnn.relu, fnn.Dense(1))
    x = jax.random.normal(KEY, (4, 3))
    params, _ = model.init(KEY, x)
    np.testing.assert_allclose(jax.jit(model)(params, x), model(params, x), rtol=1e-6)
    grads = jax.grad(lambda p: jnp.sum(model(p, x)))(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)


def test_initializers_are_selectable_per_layer():
    for name in ("glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform",
                 "lecun_normal", "orthogonal"):
        params, _ = fnn.Dense(16, w_init=name).init(KEY, spec(1, 16))
        assert params["w"].shape == (16, 16) and float(jnp.std(params["w"])) > 0
    ones, _ = fnn.Dense(2, w_init="ones", b_init=jax.nn.initializers.constant(0.5)).init(KEY, spec(1, 3))
    np.testing.assert_array_equal(ones["w"], jnp.ones((3, 2)))
    np.testing.assert_array_equal(ones["b"], jnp.full((2,), 0.5))
    orthogonal, _ = fnn.Dense(8, w_init="orthogonal").init(KEY, spec(1, 8))
    np.testing.assert_allclose(orthogonal["w"].T @ orthogonal["w"], jnp.eye(8), atol=1e-5)
    with pytest.raises(ValueError, match="unknown initializer 'nope'.*glorot_uniform"):
        fnn.Dense(2, w_init="nope").init(KEY, spec(1, 3))


def test_combinators_check_shapes_again_at_apply():
    squash = fnn.Fn(lambda v: v.mean(-1, keepdims=True), label="squash")  # [b, f] -> [b, 1]
    x, wider = jnp.ones((2, 1)), jnp.ones((2, 3))
    cases = [
        (fnn.serial(block=fnn.residual(squash)), r"block: residual body must keep its input's shape"),
        (fnn.serial(fnn.fan_out(2), fnn.parallel(fnn.identity, squash), fnn.fan_in_sum()),
         r"fan_in_sum_0: FanInSum needs inputs of one shape, got \(float32\[2,3\], float32\[2,1\]\)"),
        (fnn.serial(fnn.fan_out(2), fnn.parallel(fnn.identity, squash), fnn.fan_in_concat(axis=0)),
         r"fan_in_concat_0: FanInConcat\(axis=0\) needs inputs equal in all other axes"),
    ]
    for model, message in cases:  # broadcast silently to [2, 3] (or raised a raw TypeError)
        params, _ = model.init(KEY, x)
        with pytest.raises(fnn.ShapeError, match=message):
            model(params, wider)


def test_fan_in_concat_refuses_scalars_and_a_non_int_axis():
    with pytest.raises(fnn.ShapeError, match=r"fan_in_concat_0: FanInConcat\(axis=-1\) needs inputs of one rank"):
        fnn.serial(fnn.fan_out(2), fnn.fan_in_concat()).init(KEY, jnp.ones(()))  # was ZeroDivisionError
    with pytest.raises(fnn.ShapeError, match=r"FanInConcat\(axis=2\) needs inputs of one rank with an axis 2"):
        fnn.fan_in_concat(axis=2)({}, (jnp.ones((2, 3)), jnp.ones((2, 3))))
    for axis in (1.0, "0", True):
        with pytest.raises(ValueError, match="FanInConcat: axis must be an int"):
            fnn.fan_in_concat(axis)
    assert fnn.fan_in_concat(np.int64(0)) == fnn.fan_in_concat(0)


def test_fan_out_takes_a_numpy_int():
    layer = fnn.fan_out(np.int64(2))
    assert layer == fnn.fan_out(2) and type(layer.n) is int and hash(layer) == hash(fnn.fan_out(2))
