"""PPO (experiments/ppo.py): the loss by hand, learning CartPole, determinism, exact resumption,
a MinAtar smoke run and the configuration checks."""

import dataclasses
import json
import math
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from experiments import ppo

# small but enough to learn; iterations are a multiple of log_every and eval_every, so a run
# stopped at CUT logs what an uninterrupted one logs
CONFIG = ppo.CartPoleConfig(iterations=16, eval_episodes=32, log_every=4, eval_every=8)
CUT = 8


@pytest.fixture(scope="module")
def cartpole(tmp_path_factory):
    """One CartPole run in a run directory; the other tests compare against it."""
    directory = tmp_path_factory.mktemp("ppo") / "cartpole"
    run, values = fnn.pipeline.start(ppo.CARTPOLE, CONFIG, str(directory), progress=False)
    return run, values


def test_ppo_loss_matches_a_hand_computation():
    logits = jnp.log(jnp.array([[1.0, 3.0], [2.0, 1.0]]))  # probabilities [1/4, 3/4] and [2/3, 1/3]
    batch = ppo.Batch(obs=jnp.zeros((2, 1)), action=jnp.array([1, 0]), log_prob=jnp.log(jnp.array([0.5, 0.5])),
                      advantage=jnp.array([3.0, 1.0]), target=jnp.array([2.0, 2.0]))
    loss, metrics = ppo.ppo_loss(logits, jnp.array([1.0, 2.0]), batch, clip=0.2, value_coef=0.5,
                                 entropy_coef=0.01)
    ratio = np.array([0.75 / 0.5, (2 / 3) / 0.5])  # 1.5 and 4/3, both beyond 1 + 0.2
    advantage = np.array([1.0, -1.0])  # [3, 1] normalised
    policy_loss = -np.mean(np.minimum(ratio * advantage, np.clip(ratio, 0.8, 1.2) * advantage))
    assert policy_loss == pytest.approx(-(1.2 - 4 / 3) / 2)
    value_loss = 0.5 * np.mean([1.0, 0.0])
    entropy = np.mean([-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)),
                       -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))])
    np.testing.assert_allclose(metrics["policy_loss"], policy_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["value_loss"], value_loss, rtol=1e-6)
    np.testing.assert_allclose(metrics["entropy"], entropy, rtol=1e-5)
    np.testing.assert_allclose(loss, policy_loss + 0.5 * value_loss - 0.01 * entropy, rtol=1e-5)
    np.testing.assert_allclose(metrics["clip_fraction"], 1.0)
    np.testing.assert_allclose(metrics["approx_kl"], np.mean(ratio - 1 - np.log(ratio)), rtol=1e-5)


def test_iteration_uses_fnn_rl_gae_on_the_whole_rollout():
    agent = ppo.make_agent(CONFIG)
    state = jax.eval_shape(agent.init, jax.random.key(0))
    iterate = ppo.make_iterate(agent.model, agent.optimizer, agent.env, agent.env_params, CONFIG)
    with mock.patch.object(fnn.rl, "gae", wraps=fnn.rl.gae) as gae:
        new, metrics = jax.eval_shape(iterate, state)
    gae.assert_called_once()
    rewards, values, dones, last_value = gae.call_args.args
    assert rewards.shape == values.shape == dones.shape == (CONFIG.rollout_steps, CONFIG.num_envs)
    assert last_value.shape == (CONFIG.num_envs,)
    assert gae.call_args.kwargs == {"gamma": CONFIG.gamma, "lam": CONFIG.lam}
    chex.assert_trees_all_equal_shapes_and_dtypes(new, state)
    assert {"loss", "policy_loss", "value_loss", "entropy", "episode_return", "episodes"} <= set(metrics)


def test_cartpole_learns_and_writes_its_run(cartpole):
    run, values = cartpole
    final = values["final"]
    assert final["random_return_mean"] < 40  # a random policy holds the pole ~22 steps
    assert final["eval_return_mean"] > 150
    assert final["eval_return_mean"] > 5 * final["random_return_mean"]
    assert final["env_steps"] == CONFIG.iterations * CONFIG.num_envs * CONFIG.rollout_steps
    train = run.records("train")
    assert [r["step"] for r in train] == [4, 8, 12, 16]
    assert [r["step"] for r in run.records("eval")] == [8, 16]
    assert train[-1]["episode_return"] > train[0]["episode_return"]
    assert all(np.isfinite(r[k]) for r in train for k in ("loss", "value_loss", "entropy", "approx_kl"))
    assert run.records("eval")[-1]["episode_return"] == final["eval_return_mean"]
    assert json.loads((run.directory / "final.json").read_text())["eval_return_mean"] == final["eval_return_mean"]
    for name in ("curves.png", "returns.png", "summary.md"):
        assert (run.directory / name).stat().st_size > 0
    assert any("random policy" in line for line in values["report"])


def test_same_seed_same_run(cartpole):
    _, first = cartpole
    again = ppo.run(CONFIG)
    chex.assert_trees_all_equal(again["state"].params, first["state"].params)
    chex.assert_trees_all_equal(again["state"].env, first["state"].env)
    assert again["final"] == {k: v for k, v in first["final"].items() if k != "seconds"}
    other = again["agent"].init(jax.random.key(1))
    assert not np.array_equal(other.params["parallel_0"]["policy"]["dense_0"]["w"],
                              first["state"].params["parallel_0"]["policy"]["dense_0"]["w"])


def test_a_run_stopped_at_a_checkpoint_resumes_exactly(cartpole, tmp_path):
    whole_run, whole = cartpole
    run = fnn.runs.Run.create(tmp_path / "cut", "cartpole", fnn.config.to_dict(CONFIG))
    values = ppo.agent(CONFIG)
    # the run of CONFIG (its learning-rate schedule) stopped after CUT iterations
    ppo.train(values["agent"], values["state"], dataclasses.replace(CONFIG, iterations=CUT), run=run)
    run.close()
    assert run.checkpoints.latest() == CUT
    resumed = fnn.pipeline.run_in(ppo.CARTPOLE, CONFIG, fnn.runs.Run(tmp_path / "cut"), progress=False)
    for part in ("params", "opt_state", "env", "memory", "step"):
        chex.assert_trees_all_equal(getattr(resumed["state"], part), getattr(whole["state"], part))
    assert fnn.runs.Run(tmp_path / "cut").records() == whole_run.records()


def test_minatar_runs_a_few_iterations():
    config = ppo.MinAtarConfig(num_envs=8, rollout_steps=16, iterations=2, epochs=1, minibatches=2, hidden=32,
                               channels=8, eval_episodes=4)
    agent = ppo.make_agent(config)
    state, history = fnn.rl.train(agent.iterate, agent.init(jax.random.key(0)), 2, jit=False)
    assert state.env["obs"].shape == (8, 10, 10, 4)  # Breakout: 10x10 cells, 4 channels
    assert state.params["torso"]["dense_0"]["w"].shape == (3 * 3 * 4, 8)  # the 3x3 patches
    logits, value = agent.model(state.params, state.env["obs"])
    assert logits.shape == (8, 3) and value.shape == (8, 1)
    assert [r["step"] for r in history] == [1, 2]
    assert all(np.isfinite(r["loss"]) and r["entropy"] > 0 for r in history)


def test_the_minatar_games_are_gymnax_s():
    import gymnax

    assert set(ppo.MINATAR_GAMES) == {n for n in gymnax.registered_envs if n.endswith("-MinAtar")}
    assert set(ppo.CLASSIC_CONTROL) <= set(gymnax.registered_envs)


@pytest.mark.parametrize("override, key", [
    ("num_envs=0", "num_envs"), ("rollout_steps=0", "rollout_steps"), ("iterations=0", "iterations"),
    ("minibatches=3", "minibatches"), ("gamma=1.5", "gamma"), ("lam=-0.1", "lam"), ("clip=0", "clip"),
    ("value_coef=0", "value_coef"), ("entropy_coef=-0.01", "entropy_coef"), ("learning_rate=0", "learning_rate"),
    ("max_grad_norm=0", "max_grad_norm"), ("eval_episodes=0", "eval_episodes"), ("env=Pong-misc", "env"),
    ("eval_policy=best", "eval_policy"), ("log_every=0", "log_every"),
])
def test_bad_config_values_name_their_key(override, key):
    with pytest.raises(fnn.config.ConfigError, match=key):
        fnn.config.override(ppo.CartPoleConfig(), [override])


def test_bad_minatar_config_values_name_their_key():
    with pytest.raises(fnn.config.ConfigError, match="env"):
        ppo.MinAtarConfig(env="CartPole-v1")
    with pytest.raises(fnn.config.ConfigError, match="channels"):
        ppo.MinAtarConfig(channels=0)
    with pytest.raises(fnn.config.ConfigError, match="env"):
        ppo.CartPoleConfig(env="Breakout-MinAtar")


def test_the_shared_base_config_says_which_configs_to_use():
    with pytest.raises(fnn.config.ConfigError, match="CartPoleConfig .* MinAtarConfig"):
        ppo.PPOConfig()
