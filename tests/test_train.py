"""The train state, the compiled train and evaluation steps, fit, and per-example gradients."""

import collections
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn

KEY = jax.random.key(0)


def regression_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]], np.float32) + 0.3).astype(np.float32)
    return x, y


MLP = fnn.serial(fnn.Dense(16), fnn.tanh, fnn.Dense(1))


@pytest.mark.parametrize(
    "optimizer", [optax.sgd(0.05, momentum=0.9), optax.adam(1e-2), optax.rmsprop(1e-2)],
    ids=["sgd", "adam", "rmsprop"],
)
def test_train_step_lowers_the_loss_with_each_optimizer(optimizer):
    x, y = regression_data()
    state = fnn.init_train_state(MLP, optimizer, KEY, x)
    step = fnn.make_train_step(MLP, optimizer, fnn.losses.mean_squared_error)
    first = None
    for _ in range(150):
        state, metrics = step(state, (x, y))
        first = float(metrics["loss"]) if first is None else first
    assert int(state.step) == 150
    assert float(metrics["loss"]) < 0.1 * first


def test_train_step_equals_a_hand_written_jax_step():
    x, y = regression_data()
    optimizer = optax.adam(1e-2)
    state = fnn.init_train_state(MLP, optimizer, KEY, x)
    params, opt_state = state.params, state.opt_state

    def loss(p):
        h = jnp.tanh(x @ p["dense_0"]["w"] + p["dense_0"]["b"])
        return jnp.mean((h @ p["dense_1"]["w"] + p["dense_1"]["b"] - y) ** 2)

    value, grads = jax.value_and_grad(loss)(params)
    updates, _ = optimizer.update(grads, opt_state, params)
    expected = optax.apply_updates(params, updates)
    step = fnn.make_train_step(MLP, optimizer, fnn.losses.mean_squared_error, donate=False)
    new_state, metrics = step(state, (x, y))
    np.testing.assert_allclose(metrics["loss"], value, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), new_state.params, expected)


def test_train_step_donates_the_old_state_and_makes_no_host_transfer():
    x, y = regression_data()
    optimizer = optax.adam(1e-3)
    state = fnn.init_train_state(MLP, optimizer, KEY, x)
    step = fnn.make_train_step(MLP, optimizer, fnn.losses.mean_squared_error)
    batch = jax.device_put((x, y))
    state, _ = step(state, batch)  # compile
    old = state
    with jax.transfer_guard("disallow"):
        state, metrics = step(state, batch)
    assert old.params["dense_0"]["w"].is_deleted()
    assert isinstance(metrics["loss"], jax.Array)


def test_model_state_and_dropout_keys_flow_through_the_step():
    model = fnn.serial(fnn.Dense(8), fnn.BatchNorm(momentum=0.5), fnn.relu, fnn.Dropout(0.5), fnn.Dense(1))
    x, y = regression_data()
    optimizer = optax.sgd(0.01)
    state = fnn.init_train_state(model, optimizer, KEY, x)
    step = fnn.make_train_step(model, optimizer, fnn.losses.mean_squared_error, donate=False)
    s1, m1 = step(state, (x, y))
    s2, m2 = step(s1, (x, y))
    assert not np.allclose(s1.model_state["batch_norm_0"]["mean"], 0.0)
    # Each step draws a fresh dropout key from (rng, step); re-running a step reproduces it.
    again, m1_again = step(state, (x, y))
    assert float(m1["loss"]) == float(m1_again["loss"])
    assert float(m1["loss"]) != float(m2["loss"])


def test_eval_step_uses_evaluation_mode_and_evaluate_weights_batches():
    model = fnn.serial(fnn.Dense(4), fnn.Dropout(0.9), fnn.Dense(2))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 3)).astype(np.float32)
    y = rng.integers(0, 2, 10).astype(np.int32)
    state = fnn.init_train_state(model, optax.sgd(0.1), KEY, x)
    eval_step = fnn.make_eval_step(model, fnn.losses.softmax_cross_entropy,
                                   metrics={"accuracy": fnn.metrics.accuracy})
    whole = eval_step(state, (x, y))
    logits = model(state.params, x)
    np.testing.assert_allclose(whole["accuracy"], fnn.metrics.accuracy(logits, y))
    batched = fnn.evaluate(eval_step, state, fnn.data.batches((x, y), 4, drop_remainder=False))
    np.testing.assert_allclose(batched["accuracy"], float(whole["accuracy"]), rtol=1e-6)
    np.testing.assert_allclose(batched["loss"], float(whole["loss"]), rtol=1e-5)
    with pytest.raises(ValueError, match="no batches"):
        fnn.evaluate(eval_step, state, [])


def test_fit_logs_means_and_stops_on_a_non_finite_loss():
    x, y = regression_data()
    optimizer = optax.sgd(0.01)
    state = fnn.init_train_state(MLP, optimizer, KEY, x)
    step = fnn.make_train_step(MLP, optimizer, fnn.losses.mean_squared_error)
    seen = []
    state, history = fnn.fit(step, state, [(x, y)] * 25, log_every=10, log=seen.append)
    assert [r["step"] for r in history] == [10, 20, 25] and seen == history
    assert history[-1]["loss"] < history[0]["loss"]
    bad_y = y.copy()
    bad_y[3] = np.nan
    state = fnn.init_train_state(MLP, optimizer, KEY, x)
    with pytest.raises(FloatingPointError, match="loss became nan at step 1 .* up to step 5"):
        fnn.fit(step, state, [(x, bad_y)] * 5, log_every=5)
    state = fnn.init_train_state(MLP, optimizer, KEY, x)  # the step donated the last one
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 4 \(the first non-finite one of the 5 "):
        fnn.fit(step, state, [(x, y)] * 3 + [(x, bad_y)] * 2, log_every=5)


def test_fit_counts_the_steps_of_a_several_step_call():
    x, y = regression_data()
    optimizer = optax.sgd(0.01)
    state = fnn.init_train_state(MLP, optimizer, KEY, x)
    one = fnn.make_train_step(MLP, optimizer, fnn.losses.mean_squared_error, donate=False)
    four = fnn.make_train_step(MLP, optimizer, fnn.losses.mean_squared_error, donate=False, steps_per_call=4)
    _, single = fnn.fit(one, state, [(x, y)] * 12, log_every=8)
    stacked = (np.stack([x] * 4), np.stack([y] * 4))
    _, several = fnn.fit(four, state, [stacked] * 3, log_every=8)
    assert [r["step"] for r in several] == [r["step"] for r in single] == [8, 12]
    for a, b in zip(several, single):
        assert isinstance(a["loss"], float)
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
    # a metric with a shape of its own keeps it; a population's records hold one value per member
    columns = {"columns": lambda out, y: out.mean(0)}
    one = fnn.make_train_step(MLP, optimizer, fnn.losses.mean_squared_error, donate=False, metrics=columns)
    four = fnn.make_train_step(MLP, optimizer, fnn.losses.mean_squared_error, donate=False, metrics=columns,
                               steps_per_call=4)
    _, single = fnn.fit(one, state, [(x, y)] * 8, log_every=8)
    _, several = fnn.fit(four, state, [stacked] * 2, log_every=8)
    np.testing.assert_allclose(several[0]["columns"], single[0]["columns"], rtol=1e-5)
    assert len(single[0]["columns"]) == y.shape[1]
    members = jax.tree.map(lambda a: np.stack([a, a]), fnn.checkpoint.to_saved(state))
    members = fnn.checkpoint.from_saved(members, state)._replace(rng=jax.random.split(KEY, 2))
    population = fnn.make_train_step(MLP, optimizer, fnn.losses.mean_squared_error, donate=False,
                                     steps_per_call=4, population=True)
    _, records = fnn.fit(population, members, [jax.tree.map(lambda a: np.stack([a, a]), stacked)] * 2, log_every=8)
    assert records[0]["step"] == 8
    np.testing.assert_allclose(records[0]["loss"], [single[0]["loss"]] * 2, rtol=1e-5)
    bad_y = y.copy()
    bad_y[0] = np.nan
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 7 \(the first non-finite one of the 8 "):
        fnn.fit(four, state, [stacked, (stacked[0], np.stack([y, y, bad_y, y]))], log_every=8)


PER_EXAMPLE_MODELS = {  # name: (model, input shape, input kind, labels per example)
    "conv": (fnn.serial(fnn.Conv(3, (3, 3)), fnn.relu, fnn.Flatten(), fnn.Dense(4)), (5, 6, 6, 2), "float", ()),
    "strided one-channel conv": (
        fnn.serial(fnn.Conv(3, (3, 3), strides=2), fnn.relu, fnn.Flatten(), fnn.Dense(4)), (5, 9, 8, 1), "float", ()
    ),
    "lstm": (fnn.serial(fnn.Embedding(7, 5), fnn.Recurrent(fnn.LSTM(6)), fnn.Dense(4)), (5, 4), "ids", (4,)),
}


@pytest.mark.parametrize("name", list(PER_EXAMPLE_MODELS))
def test_per_example_grads_equal_a_loop_over_single_examples(name):
    """Per-example gradients (taken with fnn's rules) against JAX's gradient of each
    example alone, and their mean against the batch's gradient."""
    model, shape, kind, label_shape = PER_EXAMPLE_MODELS[name]
    rng = np.random.default_rng(0)
    if kind == "ids":
        x = rng.integers(0, 7, shape).astype(np.int32)
    else:
        x = rng.normal(size=shape).astype(np.float32)
    y = rng.integers(0, 4, (shape[0], *label_shape)).astype(np.int32)
    params, state = model.init(KEY, x)
    loss = fnn.losses.softmax_cross_entropy

    def primitives(f):  # the primitives of a fresh trace of f, counted
        return collections.Counter(re.findall(r"= (\w+)\[", str(jax.make_jaxpr(lambda p: f(p))(params))))

    def by_hand(p):
        return jax.vmap(jax.grad(lambda p, x, y: loss(model(p, x[None]), y[None])), (None, 0, 0))(p, x, y)

    with fnn.reverse_mode_only():
        with_rules = primitives(by_hand)
    assert with_rules != primitives(by_hand)  # the model takes fnn's rules inside the context
    # per_example_grads compiles the same computation: the same primitives, in a jit of their own
    compiled = with_rules + collections.Counter(jit=1)
    assert primitives(lambda p: fnn.per_example_grads(model, loss, p, state, (x, y))) == compiled
    grads = fnn.per_example_grads(model, loss, params, state, (x, y))
    grad = jax.jit(jax.grad(lambda p, x, y: loss(model(p, x), y)))  # one program for every example
    for i in range(len(x)):
        single = grad(params, x[i : i + 1], y[i : i + 1])
        per_example = jax.tree.map(lambda g, i=i: g[i], grads)
        jax.tree.map(lambda g, s: np.testing.assert_allclose(g, s, rtol=1e-4, atol=1e-6), per_example, single)
    mean = grad(params, x, y)
    jax.tree.map(lambda g, m: np.testing.assert_allclose(g.mean(0), m, rtol=1e-4, atol=1e-6), grads, mean)


def test_per_example_grads_take_pytree_batches_a_key_per_example_and_refuse_batch_statistics():
    loss = fnn.losses.softmax_cross_entropy
    masked = fnn.serial(fnn.KeepMask(fnn.Embedding(7, 4)), fnn.SequencePool("mean"), fnn.Dense(2))
    ids = jnp.arange(15).reshape(3, 5) % 7
    mask = fnn.lengths_to_mask(jnp.array([1, 3, 5]), 5)
    y = jnp.array([0, 1, 0])
    params, state = masked.init(KEY, (ids, mask))
    grads = fnn.per_example_grads(masked, loss, params, state, ((ids, mask), y))
    for i in range(3):  # each example's gradient is that of its own (ids, mask) pair
        single = jax.grad(lambda p, i=i: loss(masked(p, (ids[i : i + 1], mask[i : i + 1])), y[i : i + 1]))(params)
        jax.tree.map(lambda g, s, i=i: np.testing.assert_allclose(g[i], s, rtol=1e-5, atol=1e-7), grads, single)
    with pytest.raises(ValueError, match=r"one leading batch axis, got x/0: 3, x/1: 3, y: 2"):
        fnn.per_example_grads(masked, loss, params, state, ((ids, mask), y[:2]))

    dropout = fnn.serial(fnn.Dense(8), fnn.Dropout(0.5), fnn.Dense(2))
    x, labels = jnp.ones((16, 3)), jnp.zeros(16, jnp.int32)
    params, state = dropout.init(KEY, x)
    grads = fnn.per_example_grads(dropout, loss, params, state, (x, labels), key=KEY)
    dropped = {tuple(np.asarray(g).ravel() != 0) for g in grads["dense_1"]["w"]}
    assert len(dropped) > 8  # the same input, but each example drops its own units
    keys = jax.random.split(KEY, 16)
    first = jax.grad(lambda p: loss(dropout.apply(p, {}, x[:1], key=keys[0], train=True)[0], labels[:1]))(params)
    jax.tree.map(lambda g, s: np.testing.assert_allclose(g[0], s, rtol=1e-5), grads, first)

    normed = fnn.serial(fnn.Dense(8), fnn.BatchNorm(), fnn.Dense(2))
    params, state = normed.init(KEY, x)
    with pytest.raises(ValueError, match=r"keeps state \(batch_norm_0\).*the example itself.*train=False"):
        fnn.per_example_grads(normed, loss, params, state, (x, labels))
    grads = fnn.per_example_grads(normed, loss, params, state, (x, labels), train=False)
    running = jax.grad(lambda p: loss(normed.apply(p, state, x[:1])[0], labels[:1]))(params)
    jax.tree.map(lambda g, s: np.testing.assert_allclose(g[0], s, rtol=1e-5), grads, running)
    assert float(jnp.abs(grads["dense_0"]["w"]).max()) > 0


def test_per_example_grads_compile_once_and_run_an_unhashable_model_op_by_op():
    import dataclasses

    from fnn.train import _compiled_per_example_grads

    loss = fnn.losses.softmax_cross_entropy
    model = fnn.serial(fnn.Dense(8), fnn.relu, fnn.Dense(3))
    x, y = np.ones((6, 4), np.float32), np.arange(6, dtype=np.int32) % 3
    params, state = model.init(KEY, x)
    first = fnn.per_example_grads(model, loss, params, state, (x, y))
    compiled_programs = _compiled_per_example_grads._cache_size()
    assert compiled_programs >= 1
    again = fnn.per_example_grads(fnn.serial(fnn.Dense(8), fnn.relu, fnn.Dense(3)), loss, params, state, (x + 1, y))
    assert _compiled_per_example_grads._cache_size() == compiled_programs  # an equal model, the same shapes
    assert not np.allclose(first["dense_0"]["w"], again["dense_0"]["w"])  # the new input, not a stale one

    @dataclasses.dataclass(frozen=True)
    class Scaled(fnn.Layer):
        factors: list  # unhashable

        def forward(self, params, x, *, key=None, train=False):
            return x * self.factors[0]

    scaled = fnn.serial(model, Scaled([2.0]))
    op_by_op = fnn.per_example_grads(scaled, loss, {"serial_0": params}, {}, (x, y))
    assert _compiled_per_example_grads._cache_size() == compiled_programs  # not compiled
    compiled = fnn.per_example_grads(fnn.serial(model, lambda z: z * 2.0), loss, {"serial_0": params}, {}, (x, y))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), op_by_op, compiled)
    with pytest.raises(ValueError, match="one leading batch axis"):
        fnn.per_example_grads(scaled, loss, {"serial_0": params}, {}, (x, y[:2]))


def test_evaluate_weights_batches_whose_inputs_are_masked_pairs():
    model = fnn.serial(fnn.KeepMask(fnn.Embedding(7, 4)), fnn.SequencePool("mean"), fnn.Dense(2))
    ids = jax.random.randint(jax.random.key(1), (10, 5), 0, 7)
    mask = fnn.lengths_to_mask(jnp.arange(10) % 5 + 1, 5)
    y = jnp.arange(10) % 2
    state = fnn.init_train_state(model, optax.sgd(0.1), jax.random.key(0), (ids, mask))
    eval_step = fnn.make_eval_step(model, fnn.losses.softmax_cross_entropy)
    whole = eval_step(state, ((ids, mask), y))["loss"]
    parts = [((ids[:7], mask[:7]), y[:7]), ((ids[7:], mask[7:]), y[7:])]  # sizes 7 and 3, not 2 and 2
    np.testing.assert_allclose(fnn.evaluate(eval_step, state, parts)["loss"], whole, rtol=1e-6)


def test_steps_per_call_equals_single_steps_and_checks_its_batches():
    model = fnn.serial(fnn.Dense(16), jax.nn.relu, fnn.Dropout(0.2), fnn.Dense(3))
    opt = optax.adam(1e-2)
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(48, 5)).astype(np.float32), rng.integers(0, 3, 48).astype(np.int32))
    groups = list(fnn.data.stack_batches(fnn.data.batches(data, 8), 3))
    assert len(groups) == 2 and groups[0][0].shape == (3, 8, 5)  # 6 batches in groups of 3
    x_spec = jax.ShapeDtypeStruct((8, 5), jnp.float32)
    single = fnn.make_train_step(model, opt, fnn.losses.softmax_cross_entropy)
    many = fnn.make_train_step(model, opt, fnn.losses.softmax_cross_entropy, steps_per_call=3)
    a = fnn.init_train_state(model, opt, jax.random.key(1), x_spec)
    b = fnn.init_train_state(model, opt, jax.random.key(1), x_spec)
    losses = []
    for batch in fnn.data.batches(data, 8):
        a, m = single(a, batch)
        losses.append(float(m["loss"]))
    for group in groups:
        b, m = many(b, group)
        assert m["loss"].shape == (3,)
    assert int(b.step) == int(a.step) == 6  # the dropout keys follow the step: the same draws
    chex.assert_trees_all_close(b.params, a.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(m["loss"]), losses[3:], rtol=1e-5)
    with pytest.raises(ValueError, match=r"expected 3 batches stacked on the leading axis, got leading sizes \[2\]"):
        many(b, jax.tree.map(lambda v: v[:2], groups[0]))
    with pytest.raises(ValueError, match="steps_per_call must be a positive int, got 0"):
        fnn.make_train_step(model, opt, fnn.losses.softmax_cross_entropy, steps_per_call=0)


@pytest.mark.parametrize("unroll", [True, 2])
def test_unrolled_steps_per_call_equal_the_loop_and_have_no_loop_when_fully_unrolled(unroll):
    model = fnn.serial(fnn.Conv(4, (3, 3)), jax.nn.relu, fnn.Flatten(), fnn.Dropout(0.2), fnn.Dense(3))
    opt = optax.adam(1e-2)
    rng = np.random.default_rng(0)
    group = (rng.normal(size=(4, 8, 6, 6, 1)).astype(np.float32), rng.integers(0, 3, (4, 8)).astype(np.int32))
    x_spec = jax.ShapeDtypeStruct((8, 6, 6, 1), jnp.float32)
    looped = fnn.make_train_step(model, opt, fnn.losses.softmax_cross_entropy, steps_per_call=4)
    unrolled = fnn.make_train_step(model, opt, fnn.losses.softmax_cross_entropy, steps_per_call=4, unroll=unroll)
    a, ma = looped(fnn.init_train_state(model, opt, jax.random.key(1), x_spec), group)
    b, mb = unrolled(fnn.init_train_state(model, opt, jax.random.key(1), x_spec), group)
    chex.assert_trees_all_close(b.params, a.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(mb["loss"]), np.asarray(ma["loss"]), rtol=1e-5)
    state = fnn.init_train_state(model, opt, jax.random.key(1), x_spec)
    hlo = unrolled.lower(state, group).compile().as_text().splitlines()
    # the loop over steps carries the kernel (the random-bit generator's own loops do not)
    step_loops = [line for line in hlo if " while(" in line and "f32[3,3,1,4]" in line.split(" while(")[0]]
    assert bool(step_loops) == (unroll is not True)
    with pytest.raises(ValueError, match="unroll must be a positive int or a bool, got 0"):
        fnn.make_train_step(model, opt, fnn.losses.softmax_cross_entropy, steps_per_call=4, unroll=0)


def test_a_batch_that_is_not_an_inputs_targets_pair_is_named_clearly():
    model = fnn.Dense(3)
    x, y = jnp.ones((4, 5)), jnp.zeros(4, jnp.int32)
    state = fnn.init_train_state(model, optax.sgd(0.1), jax.random.key(0), x)
    step = fnn.make_train_step(model, optax.sgd(0.1), fnn.losses.softmax_cross_entropy, donate=False)
    eval_step = fnn.make_eval_step(model, fnn.losses.softmax_cross_entropy)
    for where, call in (("the train step", lambda b: step(state, b)), ("the eval step", lambda b: eval_step(state, b)),
                        ("evaluate", lambda b: fnn.evaluate(eval_step, state, [b]))):
        # a dict fed its key strings to the model (AttributeError: 'str' object has no attribute 'dtype')
        with pytest.raises(ValueError, match=f"{where} takes a batch as a pair \\(inputs, targets\\), got a "
                                             r"dict with keys \['image', 'label'\]"):
            call({"image": x, "label": y})
        with pytest.raises(ValueError, match=f"{where} takes a batch as a pair .* got a tuple of 3"):
            call((x, y, y))


def test_an_unstacked_batch_is_refused_when_its_size_equals_steps_per_call():
    model = fnn.Dense(3)
    x, y = jnp.ones((8, 5)), jnp.zeros(8, jnp.int32)
    state = fnn.init_train_state(model, optax.sgd(0.1), jax.random.key(0), x)
    step = fnn.make_train_step(model, optax.sgd(0.1), fnn.losses.softmax_cross_entropy, steps_per_call=8)
    # it trained 8 steps on single examples, x[5] and a scalar label
    with pytest.raises(ValueError, match=r"expected 8 batches stacked on a leading axis \(fnn.data.stack_batches\)"):
        step(state, (x, y))


def test_fit_checks_log_every():
    model = fnn.Dense(3)
    x, y = jnp.ones((4, 5)), jnp.zeros(4, jnp.int32)
    state = fnn.init_train_state(model, optax.sgd(0.1), jax.random.key(0), x)
    step = fnn.make_train_step(model, optax.sgd(0.1), fnn.losses.softmax_cross_entropy)
    for bad in (0, -5, 2.5, None):
        with pytest.raises(ValueError, match="fit: log_every must be an int >= 1"):
            fnn.fit(step, state, [(x, y)], log_every=bad)
