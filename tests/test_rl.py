"""fnn.rl: the agent state, the agent loop (logging, checkpoints, resumption) and GAE."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn import rl
from fnn.runs import Run

MODEL = fnn.Dense(2)
OPTIMIZER = optax.adam(0.1)


def bandit_iteration(state):
    """One REINFORCE step on a two-armed bandit (arm 1 pays 1, arm 0 pays 0, plus noise),
    64 pulls at once; ``memory`` counts the pulls of arm 1 so far."""
    rng, key = jax.random.split(state.rng)
    pull, noise = jax.random.split(key)

    def loss(params):
        logits = MODEL(params, jnp.ones((64, 1)))
        arms = jax.random.categorical(pull, logits)
        rewards = (arms == 1).astype(jnp.float32) + 0.1 * jax.random.normal(noise, arms.shape)
        log_p = jax.nn.log_softmax(logits)[jnp.arange(64), arms]
        return -(log_p * (rewards - rewards.mean())).mean(), (rewards.mean(), (arms == 1).sum())

    (value, (reward, ones)), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
    updates, opt_state = OPTIMIZER.update(grads, state.opt_state, state.params)
    memory = {"arm_1_pulls": state.memory["arm_1_pulls"] + ones}
    state = state._replace(
        params=optax.apply_updates(state.params, updates), opt_state=opt_state, rng=rng, memory=memory
    )
    return state, {"loss": value, "reward": reward}


def fresh_state(seed=0):
    return rl.AgentState.create(
        MODEL, OPTIMIZER, jax.random.key(seed), jnp.ones((1, 1)),
        memory={"arm_1_pulls": jnp.zeros((), jnp.int32)},
    )


def test_the_agent_loop_learns_counts_iterations_and_logs():
    state, history = rl.train(bandit_iteration, fresh_state(), 30, log_every=10)
    assert int(state.step) == 30
    assert [r["step"] for r in history] == [10, 20, 30]
    assert history[-1]["reward"] > 0.95 > history[0]["reward"]
    assert 0 < int(state.memory["arm_1_pulls"]) <= 30 * 64
    assert isinstance(state.train_state(), fnn.TrainState)
    np.testing.assert_array_equal(state.train_state().params["w"], state.params["w"])


def test_a_resumed_agent_run_equals_an_uninterrupted_one(tmp_path):
    straight, straight_history = rl.train(bandit_iteration, fresh_state(), 20, log_every=5)

    run = Run.create(tmp_path / "run", "bandit", {})
    rl.train(bandit_iteration, fresh_state(), 10, run=run, log_every=5)  # stops at 10, checkpointed
    run.close()
    run = Run(tmp_path / "run")
    resumed, history = rl.train(
        bandit_iteration, fresh_state(seed=9), 20, run=run, log_every=5, checkpoint_every=5
    )  # the initial state's values are ignored: everything comes from the checkpoint
    run.close()

    assert int(resumed.step) == 20
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(a, b)
    assert history == straight_history
    assert [r["step"] for r in Run(tmp_path / "run").records()] == [5, 10, 15, 20]


def test_evaluation_runs_on_schedule():
    def evaluate(state):
        return {"p_arm_1": float(jax.nn.softmax(MODEL(state.params, jnp.ones((1, 1))))[0, 1])}

    _, history = rl.train(bandit_iteration, fresh_state(), 12, log_every=4, evaluate=evaluate, eval_every=6)
    evals = [r for r in history if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [6, 12]
    assert evals[-1]["p_arm_1"] > evals[0]["p_arm_1"]


def test_the_agent_loop_refuses_bad_input():
    with pytest.raises(TypeError, match="must be an fnn.rl.AgentState"):
        rl.train(bandit_iteration, fnn.init_train_state(MODEL, OPTIMIZER, jax.random.key(0), jnp.ones((1, 1))), 3)
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        rl.train(bandit_iteration, fresh_state(), 0)
    with pytest.raises(TypeError, match="iterate must return"):
        rl.train(lambda s: (s.train_state(), {}), fresh_state(), 2)


def gae_reference(rewards, values, dones, last_value, gamma, lam):
    """GAE by its definition: A_t = sum_k (gamma lam)^k delta_{t+k}, cut at episode ends."""
    T = len(rewards)
    values_next = np.append(values[1:], last_value)
    deltas = [rewards[t] + gamma * values_next[t] * (1 - dones[t]) - values[t] for t in range(T)]
    advantages = np.zeros(T)
    for t in range(T):
        total, factor = 0.0, 1.0
        for k in range(t, T):
            total += factor * deltas[k]
            if dones[k]:
                break
            factor *= gamma * lam
        advantages[t] = total
    return advantages


@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (0.9, 1.0), (0.5, 0.0)])
def test_gae_matches_its_definition(gamma, lam):
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(12, 3)).astype(np.float32)
    values = rng.normal(size=(12, 3)).astype(np.float32)
    dones = rng.random((12, 3)) < 0.25
    last = rng.normal(size=3).astype(np.float32)
    advantages, targets = rl.gae(
        jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(dones), jnp.asarray(last), gamma=gamma, lam=lam
    )
    for env in range(3):
        expected = gae_reference(rewards[:, env], values[:, env], dones[:, env], last[env], gamma, lam)
        np.testing.assert_allclose(advantages[:, env], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(targets, np.asarray(advantages) + values, rtol=1e-6)


def test_gae_of_integer_rewards_and_values():
    advantages, targets = rl.gae(jnp.array([1, 1]), jnp.array([0, 0]), jnp.array([False, True]), jnp.array(5),
                                 gamma=0.5, lam=1.0)
    assert advantages.dtype == jnp.float32 and advantages.tolist() == [1.5, 1.0] and targets.tolist() == [1.5, 1.0]
    assert len(rl.iteration_batches(np.int64(3))) == 3


def test_gae_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="must share a shape"):
        rl.gae(jnp.zeros((4, 2)), jnp.zeros((4, 3)), jnp.zeros((4, 2), bool), jnp.zeros(2), gamma=0.9, lam=0.9)
    with pytest.raises(ValueError, match=r"last_value must have shape \(2,\)"):
        rl.gae(jnp.zeros((4, 2)), jnp.zeros((4, 2)), jnp.zeros((4, 2), bool), jnp.zeros(3), gamma=0.9, lam=0.9)
