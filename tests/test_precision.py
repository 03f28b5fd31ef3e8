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
    for scale in (0.0, float("inf"), float("nan"), 2.0**25, True):
        with pytest.raises(ValueError, match="loss_scale must be a positive number of at most 2\\*\\*24"):
            Policy("float16", loss_scale=scale)
    for scale in (np.float32(1024), np.int64(1024), jnp.float32(1024), 1024):
        assert Policy("float16", loss_scale=scale).loss_scale == 1024.0  # kept as a float: hashable
    for interval in (0, 1.5, True):
        with pytest.raises(ValueError, match="growth_interval must be a positive int"):
            Policy("float16", loss_scale=8.0, growth_interval=interval)
    model = fnn.Dense(1)
    with pytest.raises(TypeError, match="make_train_step: policy must be a fnn.precision.Policy, a dtype's name"):
        fnn.make_train_step(model, optax.sgd(0.1), fnn.losses.mean_squared_error, policy=jnp.bfloat16)
    with pytest.raises(ValueError, match="precision must be one of"):
        fnn.make_eval_step(model, fnn.losses.mean_squared_error, policy="half")
    with pytest.raises(fnn.config.ConfigError, match="precision: 'half' is not one of"):
        fnn.config.override(fnn.pipeline.TrainConfig(), ["precision=half"])


def test_a_policy_may_be_named_and_a_keep_pattern_must_match_a_parameter():
    x, y = data()
    model = fnn.serial(fnn.Dense(4), jax.nn.relu, fnn.Dense(2))
    state = fnn.init_train_state(model, optax.sgd(0.1), jax.random.key(0), x)
    named = fnn.make_train_step(model, optax.sgd(0.1), fnn.losses.softmax_cross_entropy, policy="bfloat16",
                                donate=False)
    explicit = fnn.make_train_step(model, optax.sgd(0.1), fnn.losses.softmax_cross_entropy,
                                   policy=Policy("bfloat16"), donate=False)
    (a_state, a_metrics), (b_state, b_metrics) = named(state, (x, y)), explicit(state, (x, y))
    for a, b in zip(jax.tree.leaves((saved(a_state), a_metrics)), jax.tree.leaves((saved(b_state), b_metrics))):
        np.testing.assert_array_equal(a, b)
    for keep in (("dense_1",), ("head/*",), ("dense_1/*", "dense_9/*")):
        with pytest.raises(ValueError, match=r"keep pattern\(s\) .* match no parameter; .* are: dense_0/b, dense_0/w"):
            Policy("bfloat16", keep=keep).cast_params(state.params)


def test_a_kept_float32_layer_may_end_a_residual_body():
    """The body's output is float32 and its input bfloat16: their sum is float32, as before
    residual checked its output at apply (it checks the shape there, not the dtype)."""
    x, y = data()
    model = fnn.serial(fnn.Dense(8), fnn.residual(fnn.LayerNorm(), fnn.Dense(8)), fnn.Dense(2))
    state = fnn.init_train_state(model, optax.sgd(0.1), jax.random.key(0), x)
    policy = Policy("bfloat16", keep=("residual_0/dense_0/*",))
    out, _ = fnn.precision.apply(policy, model, state.params, state.model_state, x)
    assert out.dtype == jnp.float32
    step = fnn.make_train_step(model, optax.sgd(0.1), fnn.losses.softmax_cross_entropy, policy=policy)
    _, metrics = step(state, (x, y))
    assert np.isfinite(metrics["loss"])


def saved(state):
    """The state with its key as raw data, to compare leaf by leaf."""
    return fnn.checkpoint.to_saved(state)


def overflowing():
    """A model, optimizer, state and batch whose float16 gradients overflow at a loss scale of
    2**12 (the true ones are finite: about 2300) and fit below 2**5."""
    model = fnn.serial(fnn.Dense(4), fnn.Dense(1))
    optimizer = optax.adam(1e-3)
    x, y = jnp.full((2, 3), 30.0), jnp.zeros((2, 1))
    return model, optimizer, (x, y)


def test_a_float16_step_whose_gradients_overflow_is_skipped():
    model, optimizer, batch = overflowing()
    policy = Policy("float16", loss_scale=2.0**12)
    state = fnn.init_train_state(model, optimizer, jax.random.key(0), batch[0])
    assert state.loss_scale is None
    step = fnn.make_train_step(model, optimizer, fnn.losses.mean_squared_error, policy=policy, donate=False)
    new, metrics = step(state, batch)
    assert float(metrics["skipped"]) == 1.0 and np.isfinite(float(metrics["loss"]))
    assert int(new.step) == 1 and new.loss_scale is None  # the scale lives in the policy only
    for got, was in zip(jax.tree.leaves((new.params, new.opt_state)), jax.tree.leaves((state.params, state.opt_state))):
        np.testing.assert_array_equal(got, was)
    # a batch whose gradients fit trains as usual
    fine, metrics = step(state, (batch[0] / 30, batch[1]))
    assert float(metrics["skipped"]) == 0.0
    assert not np.array_equal(fine.params["dense_1"]["w"], state.params["dense_1"]["w"])


def test_a_float16_state_adapts_its_loss_scale():
    model, optimizer, batch = overflowing()
    policy = Policy("float16", loss_scale=2.0**12, growth_interval=3)
    state = fnn.init_train_state(model, optimizer, jax.random.key(0), batch[0], policy=policy)
    assert float(state.loss_scale.scale) == 2.0**12 and int(state.loss_scale.good_steps) == 0
    step = fnn.make_train_step(model, optimizer, fnn.losses.mean_squared_error, policy=policy, donate=False)
    skipped, scales = [], []
    s = state
    for _ in range(12):
        s, metrics = step(s, batch)
        skipped.append(float(metrics["skipped"]))
        scales.append(float(s.loss_scale.scale))
    first = skipped.index(0.0)  # halved at each skipped step until the gradients fit
    assert first > 0 and skipped[:first] == [1.0] * first
    assert scales[:first] == [2.0**12 / 2**k for k in range(1, first + 1)]
    assert scales[first + 2] == 2 * scales[first]  # doubled after 3 finite steps in a row
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(s.params))
    # several steps per call carry the scale through the loop as single calls do
    four = fnn.make_train_step(model, optimizer, fnn.losses.mean_squared_error, policy=policy, donate=False,
                               steps_per_call=4)
    stacked, metrics = four(state, jax.tree.map(lambda a: jnp.stack([a] * 4), batch))
    single = state
    for _ in range(4):
        single, _ = step(single, batch)
    np.testing.assert_array_equal(metrics["skipped"], skipped[:4])
    for a, b in zip(jax.tree.leaves(saved(stacked)), jax.tree.leaves(saved(single))):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("steps_per_call", [1, 4])
def test_a_float16_step_skipped_at_loss_scale_one_stops_training(steps_per_call):
    model, optimizer = fnn.serial(fnn.Dense(4), fnn.Dense(1)), optax.adam(1e-3)
    x, y = jnp.full((2, 3), 3000.0), jnp.zeros((2, 1))  # gradients beyond float16 even unscaled
    policy = Policy("float16", loss_scale=16.0)
    state = fnn.init_train_state(model, optimizer, jax.random.key(0), x, policy=policy)
    step = fnn.make_train_step(model, optimizer, fnn.losses.mean_squared_error, policy=policy,
                               steps_per_call=steps_per_call)
    batches = [(x, y)] * 12 if steps_per_call == 1 else [(jnp.stack([x] * 4), jnp.stack([y] * 4))] * 3
    # skipped at 16, 8, 4, 2, then at 1: step 5 (before, it skipped every step in silence)
    with pytest.raises(FloatingPointError, match="gradients of step 5 overflowed float16 at loss scale 1"):
        fnn.fit(step, state, batches, log_every=8)
    # the scale each step used is a metric; steps that fit after a few skips train on
    model, optimizer, batch = overflowing()
    state = fnn.init_train_state(model, optimizer, jax.random.key(0), batch[0], policy=policy)
    step = fnn.make_train_step(model, optimizer, fnn.losses.mean_squared_error, policy=policy)
    _, history = fnn.fit(step, state, [batch] * 4, log_every=1)
    assert [r["loss_scale"] for r in history] == [16.0] * 4 and [r["skipped"] for r in history] == [0.0] * 4


def test_a_float16_run_resumes_with_its_loss_scale(tmp_path):
    model, optimizer, batch = overflowing()
    policy = Policy("float16", loss_scale=2.0**12)
    state = fnn.init_train_state(model, optimizer, jax.random.key(0), batch[0], policy=policy)
    step = fnn.make_train_step(model, optimizer, fnn.losses.mean_squared_error, policy=policy, donate=False)
    for _ in range(3):
        state, _ = step(state, batch)
    checkpoints = fnn.checkpoint.Checkpoints(tmp_path)
    checkpoints.save(state)
    template = fnn.init_train_state(model, optimizer, jax.random.key(0), batch[0], policy=policy)
    restored, _ = checkpoints.restore(template)
    assert float(restored.loss_scale.scale) == float(state.loss_scale.scale) == 2.0**9


def test_a_float16_checkpoint_without_a_loss_scale_restores_with_the_templates(tmp_path):
    model, optimizer, batch = overflowing()
    policy = Policy("float16", loss_scale=2.0**12)
    state = fnn.init_train_state(model, optimizer, jax.random.key(0), batch[0], policy=policy)
    state, _ = fnn.make_train_step(model, optimizer, fnn.losses.mean_squared_error, policy=policy,
                                   donate=False)(state, (batch[0] / 30, batch[1]))
    old = fnn.checkpoint.Checkpoints(tmp_path / "old")  # as written before states carried the scale
    old.save(state._replace(loss_scale=None))
    template = fnn.init_train_state(model, optimizer, jax.random.key(0), batch[0], policy=policy)
    restored, _ = old.restore(template)
    assert float(restored.loss_scale.scale) == 2.0**12 and int(restored.step) == 1
    for a, b in zip(jax.tree.leaves(saved(restored._replace(loss_scale=None))),
                    jax.tree.leaves(saved(state._replace(loss_scale=None)))):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(fnn.checkpoint.CheckpointError, match="holds no loss scale .* an abstract template"):
        old.restore(jax.eval_shape(lambda: template))
    new = fnn.checkpoint.Checkpoints(tmp_path / "new")
    new.save(state)
    with pytest.raises(fnn.checkpoint.CheckpointError, match=r"holds a float16 run's loss scale .* policy=\.\.\."):
        new.restore(template._replace(loss_scale=None))
