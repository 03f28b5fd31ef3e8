"""fnn.remat / Remat: the same parameters, outputs and gradients, fewer saved activations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn


def block():
    return fnn.serial(fnn.Dense(64), jnp.tanh, fnn.Dense(64), jnp.tanh)


def saved_bytes(loss, params):
    """Bytes the compiled forward pass keeps for the backward pass (the vjp's residuals)."""
    forward = jax.jit(lambda p: jax.vjp(loss, p)[1]).lower(params).compile()
    return forward.memory_analysis().output_size_in_bytes


def test_remat_keeps_the_parameter_tree_outputs_and_gradients():
    x = jax.random.normal(jax.random.key(1), (256, 64))
    plain = fnn.serial(*[block() for _ in range(4)])
    remat = fnn.serial(*[fnn.remat(block()) for _ in range(4)])
    params, _ = plain.init(jax.random.key(0), x)
    remat_params, _ = remat.init(jax.random.key(0), x)
    assert jax.tree.structure(params) == jax.tree.structure(remat_params)
    jax.tree.map(np.testing.assert_array_equal, params, remat_params)
    assert list(params) == ["serial_0", "serial_1", "serial_2", "serial_3"]
    np.testing.assert_allclose(remat(params, x), plain(params, x), rtol=1e-6)

    def loss(model):
        return lambda p: (model(p, x) ** 2).mean()

    grads = [jax.jit(jax.grad(loss(model)))(params) for model in (remat, plain)]  # eager remat is slow
    for got, want in zip(*map(jax.tree.leaves, grads)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)
    # 4 blocks of 4 saved [256, 64] activations each, against only each block's input (the
    # weights, needed by both, are among the saved values too)
    assert saved_bytes(loss(remat), params) < 0.5 * saved_bytes(loss(plain), params)


def test_a_rematerialised_transformer_saves_less_for_its_backward_pass():
    ids = jax.random.randint(jax.random.key(2), (4, 32), 0, 50)
    kwargs = dict(vocab_size=50, d_model=32, num_heads=4, num_layers=3, max_len=32)
    plain, remat = fnn.TransformerLM(**kwargs), fnn.TransformerLM(**kwargs, remat=True)
    params, _ = plain.init(jax.random.key(0), ids)
    assert jax.tree.structure(remat.init(jax.random.key(0), ids)[0]) == jax.tree.structure(params)

    def loss(model):
        return lambda p: fnn.losses.softmax_cross_entropy(model(p, ids), ids)

    grads = [jax.jit(jax.grad(loss(model)))(params) for model in (remat, plain)]  # eager remat is slow
    for got, want in zip(*map(jax.tree.leaves, grads)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    assert saved_bytes(loss(remat), params) < 0.6 * saved_bytes(loss(plain), params)
    # decoding with a cache runs the same blocks on the same parameters
    cache = remat.init_cache(params, 4)
    np.testing.assert_allclose(remat.decode(params, cache, ids[:, 0])[0], plain.decode(params, cache, ids[:, 0])[0])


def test_remat_with_a_policy_and_a_bad_policy():
    x = jnp.ones((2, 8))
    layer = fnn.remat(fnn.Dense(8), policy="dots_with_no_batch_dims_saveable")
    params, _ = layer.init(jax.random.key(0), x)
    assert layer(params, x).shape == (2, 8) and layer.name == "dense"
    with pytest.raises(ValueError, match="policy 'everything' is not in jax.checkpoint_policies"):
        fnn.remat(fnn.Dense(8), policy="everything")


def test_remat_keeps_state_and_dropout_keys():
    x = jax.random.normal(jax.random.key(3), (16, 8))
    plain = fnn.serial(fnn.Dense(8), fnn.BatchNorm(), fnn.Dropout(0.5))
    remat = fnn.remat(fnn.Dense(8), fnn.BatchNorm(), fnn.Dropout(0.5))
    params, state = plain.init(jax.random.key(0), x)
    key = jax.random.key(4)
    y1, s1 = plain.apply(params, state, x, key=key, train=True)
    y2, s2 = remat.apply(params, state, x, key=key, train=True)
    np.testing.assert_allclose(y1, y2, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), s1, s2)
