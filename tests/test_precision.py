"""fnn.precision: bfloat16 (and loss-scaled float16) computation over float32 parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn.precision import Policy


def data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    return x, (x[:, :4].sum(1) > x[:, 4:].sum(1)).astype(np.int32)


def recording(dtypes, label):
    """An identity layer that notes the dtype it sees while tracing."""
    return fnn.Fn(lambda x: (dtypes.append((label, x.dtype.name)), x)[1])


def test_the_policy_casts_parameters_inputs_and_outputs():
    policy = Policy("bfloat16", keep=("head/*",))
    params = {"body": {"w": jnp.ones((2, 2)), "count": jnp.ones((), jnp.int32)}, "head": {"w": jnp.ones(2)}}
    cast = policy.cast_params(params)
    assert cast["body"]["w"].dtype == jnp.bfloat16 and cast["head"]["w"].dtype == jnp.float32
    assert cast["body"]["count"].dtype == jnp.int32
    ids, mask = policy.cast_inputs((jnp.ones((2, 3), jnp.int32), jnp.ones((2, 3), bool)))
    assert ids.dtype == jnp.int32 and mask.dtype == jnp.bool_
    assert policy.cast_inputs(jnp.ones(2)).dtype == jnp.bfloat16
    assert policy.cast_outputs(jnp.ones(2, jnp.bfloat16)).dtype == jnp.float32


def test_a_bfloat16_step_computes_in_bfloat16_and_keeps_float32_state():
    x, y = data()
    seen = []
    model = fnn.serial(body=fnn.serial(fnn.Dense(32), recording(seen, "hidden"), fnn.BatchNorm(), jax.nn.relu),
                       head=fnn.serial(fnn.Dense(2), recording(seen, "logits")))
    optimizer = optax.adam(1e-2)
    policy = Policy("bfloat16", keep=("head/*",))
    state = fnn.init_train_state(model, optimizer, jax.random.key(0), x)
    step = fnn.make_train_step(model, optimizer, fnn.losses.softmax_cross_entropy, policy=policy)
    for _ in range(60):
        state, metrics = step(state, (x, y))
    # the hidden layer ran in bfloat16; the kept head computed in float32 (its weights promote)
    assert ("hidden", "bfloat16") in seen and ("logits", "float32") in seen
    assert metrics["loss"].dtype == jnp.float32
    for tree in (state.params, state.model_state, state.opt_state):
        assert {leaf.dtype for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)} == {
            jnp.dtype(jnp.float32)}

    reference = fnn.init_train_state(model, optimizer, jax.random.key(0), x)
    plain = fnn.make_train_step(model, optimizer, fnn.losses.softmax_cross_entropy)
    for _ in range(60):
        reference, plain_metrics = plain(reference, (x, y))
    assert float(metrics["loss"]) < 0.1 and abs(float(metrics["loss"]) - float(plain_metrics["loss"])) < 0.03

    eval_step = fnn.make_eval_step(model, fnn.losses.softmax_cross_entropy, policy=policy,
                                   metrics={"accuracy": fnn.metrics.accuracy})
    result = fnn.evaluate(eval_step, state, [(x, y)])
    assert result["accuracy"] > 0.95


def test_float16_needs_a_loss_scale_which_keeps_small_gradients_alive():
    with pytest.raises(ValueError, match="float16 computation needs a loss_scale"):
        Policy("float16")
    x = jnp.ones((8, 4))
    y = jnp.full((8, 1), 1e-3)
    model = fnn.Dense(1, w_init="zeros")

    def tiny_loss(outputs, targets):  # gradients of about 1e-8: below float16's smallest number
        return 1e-5 * fnn.losses.mean_squared_error(outputs, targets)

    grads = {}
    for scale in (1.0, 2.0**12):
        optimizer = optax.sgd(1.0)
        state = fnn.init_train_state(model, optimizer, jax.random.key(0), x)
        step = fnn.make_train_step(model, optimizer, tiny_loss, policy=Policy("float16", loss_scale=scale))
        new, metrics = step(state, (x, y))
        grads[scale] = -np.asarray(new.params["b"])  # sgd(1.0): the update is minus the gradient
        assert metrics["loss"].dtype == jnp.float32
    assert np.all(grads[1.0] == 0)  # underflowed
    np.testing.assert_allclose(grads[2.0**12], -2e-5 * 1e-3, rtol=0.05)  # d/db of 1e-5 (b - 1e-3)^2 at 0


def test_bad_policies_are_refused():
    with pytest.raises(ValueError, match="compute must be one of float32, bfloat16, float16, got 'int8'"):
        Policy("int8")
    with pytest.raises(ValueError, match="keep must be a tuple of path patterns"):
        Policy("bfloat16", keep="head/*")
    with pytest.raises(ValueError, match="loss_scale must be positive"):
        Policy("bfloat16", loss_scale=0.0)
    with pytest.raises(fnn.config.ConfigError, match="precision: 'half' is not one of"):
        fnn.config.override(fnn.pipeline.TrainConfig(), ["precision=half"])
