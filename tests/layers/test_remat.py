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


# ---- inside fnn.reverse_mode_only (a train step): the recomputation waits for the cotangent ----


def grads_in_a_train_step(model, params, state, x, key):
    """The gradients of params and of the float inputs, as a train step takes them."""

    def loss(p, x):
        with fnn.reverse_mode_only():
            y, _ = model.apply(p, state, x, key=key, train=True)
        values = y[0] if isinstance(y, tuple) else y
        return (values**2).mean()

    return jax.jit(jax.grad(loss, argnums=(0, 1), allow_int=True))(params, x)


@pytest.mark.parametrize("case", ["dense", "state and dropout", "masked sequence"])
def test_remat_in_a_train_step_gives_the_bodys_gradients(case):
    k = jax.random.key(5)
    if case == "dense":
        layers, x = [fnn.Dense(16), jnp.tanh, fnn.Dense(16)], jax.random.normal(k, (8, 16))
    elif case == "state and dropout":
        layers, x = [fnn.Dense(8), fnn.BatchNorm(), fnn.Dropout(0.5)], jax.random.normal(k, (16, 8))
    else:  # a (values, bool mask) pair: the mask gets no cotangent
        layers = [fnn.Recurrent(fnn.GRU(8))]
        x = (jax.random.normal(k, (4, 6, 3)), jnp.arange(6)[None, :] < jnp.array([6, 4, 2, 1])[:, None])
    plain = fnn.serial(*layers) if len(layers) > 1 else layers[0]  # remat of one layer takes its tree
    remat = fnn.remat(*layers)
    params, state = plain.init(jax.random.key(0), x)
    want = grads_in_a_train_step(plain, params, state, x, jax.random.key(6))
    got = grads_in_a_train_step(remat, params, state, x, jax.random.key(6))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        if g.dtype != jax.dtypes.float0:
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)


def test_remat_in_a_train_step_has_second_order_gradients_and_exact_values_for_non_finite_cotangents():
    layer = fnn.remat(fnn.Dense(4), jnp.tanh)
    x = jax.random.normal(jax.random.key(0), (3, 4))
    params, _ = layer.init(jax.random.key(1), x)

    def loss(p, scale):
        with fnn.reverse_mode_only():
            return (layer(p, x) * scale).sum()

    hvp = jax.jit(jax.grad(lambda p: jax.tree.reduce(lambda a, b: a + (b**2).sum(), jax.grad(loss)(p, 1.0), 0.0)))
    want = jax.grad(lambda p: jax.tree.reduce(lambda a, b: a + (b**2).sum(), jax.grad(
        lambda q: (fnn.serial(fnn.Dense(4), jnp.tanh)(q, x)).sum())(p), 0.0))(params)
    for g, w in zip(jax.tree.leaves(hvp(params)), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
    # an infinite cotangent: the zero tied to it stays zero (not 0 * inf = nan), so the
    # gradient is the body's, inf and nan where the body's are
    def plain_loss(p, scale):
        with fnn.reverse_mode_only():
            return (fnn.serial(fnn.Dense(4), jnp.tanh)(p, x) * scale).sum()

    scale = jnp.ones((3, 4)).at[0, 0].set(jnp.inf)  # the cotangent's first value, which the zero is made from
    got, want = (jax.jit(jax.grad(f))(params, scale) for f in (loss, plain_loss))
    jax.tree.map(np.testing.assert_array_equal, got, want)
    assert np.isfinite(np.asarray(got["dense_0"]["b"][1:])).all()  # the other columns stay finite


def test_a_train_steps_plan_keeps_less_with_remat():
    """XLA's CPU backend merges jax.checkpoint's recomputation with the forward pass; fnn's
    Remat inside a train step keeps the plan's temporaries down (XLA's memory analysis),
    with or without a policy."""
    import optax

    from benchmarks.frameworks.fnn_models import JaxRules  # the model outside reverse_mode_only

    x = jax.ShapeDtypeStruct((1024, 256), jnp.float32)
    y = jax.ShapeDtypeStruct((1024,), jnp.int32)

    def temporaries(make, wrap=lambda m: m):
        model = wrap(fnn.serial(*[make(fnn.Dense(256), jnp.tanh, fnn.Dense(256), jnp.tanh) for _ in range(6)],
                                fnn.Dense(10)))
        opt = optax.sgd(0.1)
        state = jax.eval_shape(lambda: fnn.init_train_state(model, opt, jax.random.key(0), jnp.zeros(x.shape)))
        step = fnn.make_train_step(model, opt, fnn.losses.softmax_cross_entropy)
        return step.lower(state, (x, y)).compile().memory_analysis().temp_size_in_bytes

    plain, remat = temporaries(fnn.serial), temporaries(fnn.remat)
    policy = temporaries(lambda *layers: fnn.remat(*layers, policy="nothing_saveable"))
    assert remat < 0.7 * plain and policy < 0.7 * plain, (remat, policy, plain)
    # jax.checkpoint alone (outside reverse_mode_only): XLA plans about as much as without it
    checkpoint, jax_plain = temporaries(fnn.remat, wrap=JaxRules), temporaries(fnn.serial, wrap=JaxRules)
    assert checkpoint > 0.9 * jax_plain, (checkpoint, jax_plain)


@pytest.mark.parametrize("policy", ["dots_saveable", "nothing_saveable"])
def test_remat_with_a_policy_in_a_train_step_gives_the_bodys_gradients(policy):
    layers = [fnn.Dense(16), jnp.tanh, fnn.Dense(16), jnp.tanh]
    x = jax.random.normal(jax.random.key(7), (8, 16))
    plain, remat = fnn.serial(*layers), fnn.remat(*layers, policy=policy)
    params, state = plain.init(jax.random.key(0), x)
    want = grads_in_a_train_step(plain, params, state, x, None)
    got = grads_in_a_train_step(remat, params, state, x, None)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
