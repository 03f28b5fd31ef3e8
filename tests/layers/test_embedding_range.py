"""Embedding ids outside the table: a clear error when concrete, NaN (never a wrong row) under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn


def table_layer():
    layer = fnn.Embedding(5, 3)
    params, _ = layer.init(jax.random.key(0), jnp.zeros((2, 4), jnp.int32))
    return layer, params


@pytest.mark.parametrize("bad", [5, -1])
def test_concrete_out_of_range_id_names_layer_id_and_position(bad):
    layer, params = table_layer()
    ids = jnp.zeros((2, 4), jnp.int32).at[1, 2].set(bad)
    model = fnn.serial(embed=layer)
    with pytest.raises(fnn.ShapeError, match=rf"embed: Embedding has ids 0 to 4, got {bad} at index \(1, 2\) of ids int32\[2,4\]"):
        model({"embed": params}, ids)


def test_traced_out_of_range_ids_give_nan_rows_and_fit_stops():
    layer, params = table_layer()
    ids = jnp.array([[0, 4, 5, -1]])
    rows = jax.jit(layer)(params, ids)
    np.testing.assert_allclose(rows[0, :2], params["w"][jnp.array([0, 4])])
    assert jnp.isnan(rows[0, 2:]).all()  # -1 does not wrap around to the last row

    model = fnn.serial(fnn.Embedding(5, 3), fnn.Flatten(), fnn.Dense(2))
    optimizer = optax.sgd(0.1)
    state = fnn.init_train_state(model, optimizer, jax.random.key(0), ids)
    step = fnn.make_train_step(model, optimizer, fnn.losses.softmax_cross_entropy)
    with pytest.raises(FloatingPointError, match="token ids are within the embedding's range"):
        fnn.fit(step, state, [(ids, jnp.array([1]))])


def test_in_range_ids_look_up_rows():
    layer, params = table_layer()
    ids = jnp.array([[4, 0, 2]])
    np.testing.assert_array_equal(layer(params, ids), params["w"][ids])
    np.testing.assert_array_equal(jax.jit(layer)(params, ids), params["w"][ids])
