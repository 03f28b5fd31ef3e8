"""Proximal policy optimisation (PPO) on CartPole-v1 and a MinAtar game, the whole loop in one jit.

PPO (Schulman, Wolski, Dhariwal, Radford and Klimov, "Proximal Policy Optimization
Algorithms", 2017) alternates two phases. It first runs the current stochastic policy
for ``rollout_steps`` steps in each of ``num_envs`` environments, then takes several
``epochs`` of minibatch gradient steps on the clipped surrogate objective

    L = -E[min(r A, clip(r, 1 - eps, 1 + eps) A)] + c_v E[(V - V_target)^2] / 2 - c_e E[H(pi)],

where ``r = pi(a | s) / pi_old(a | s)`` is the probability ratio of the action taken
under the new and the rollout policy and ``A`` its advantage. The clip removes the
incentive to move ``r`` out of ``[1 - eps, 1 + eps]``, so many steps on one rollout do
not push the policy far from the one that collected it. Advantages are generalised
advantage estimates (Schulman et al., 2016; ``fnn.rl.gae``), normalised per minibatch;
the value head regresses on ``A + V``; an entropy bonus keeps the policy exploring.
When an episode is cut by a time limit rather than ended, the discounted value
(``gamma * V``) of the state it was cut off in is added to the last reward, so the agent
is not taught that a time limit is a failure.

Here one call of ``iterate(state)`` is a whole PPO iteration, one XLA program: the
rollout is a ``lax.scan`` over time of the policy and gymnax's ``env.step`` under
``vmap`` (gymnax resets an environment when its episode ends), then the update is a
``lax.scan`` over epochs of a ``lax.scan`` over shuffled minibatches. The environments'
states, their observations and each one's running episode return are carried in the
``fnn.rl.AgentState``, so a run checkpoints and resumes bit for bit, and each
iteration logs the mean return of the episodes that ended in it. Adam's steps are
clipped to a global gradient norm and its learning rate falls linearly to 0 over the
run (``anneal_lr``). Evaluation plays ``eval_episodes`` fresh episodes, one per
environment under ``vmap`` in one ``lax.while_loop``, with the greedy (most probable)
action or actions sampled from the policy, and the same with uniformly random actions
as a baseline.

- ``cartpole``: gymnax's ``CartPole-v1`` (episodes end when the pole falls, the cart
  leaves the track, or after 500 steps; +1 per step, so 500 is the most). Separate
  actor and critic MLPs (two tanh layers of 64), orthogonal initialisation. Gym counts
  the task solved at a mean return of 475.
- ``minatar``: a MinAtar game (Young and Tian, 2019: Atari games on a 10x10 grid with a
  few binary channels), by default ``Breakout-MinAtar`` (3 actions; +1 per brick; the
  episode ends when the ball is missed, or after 1,000 steps). A 3x3 convolution with
  16 channels (computed as a dense layer over 3x3 patches; see ``conv_actor_critic``), a
  dense layer of 128 and the two heads, all ReLU. ``env`` picks another MinAtar game.

Measured with ``/usr/bin/time`` on a 2-core CPU that other jobs were loading heavily (load
average 8-15), so wall times are several times what an idle machine takes; the CPU time
is the steadier figure:

- cartpole, defaults (32 environments x 128 steps x 120 iterations = 491,520 steps):
  the greedy policy returns 500 in every one of 128 evaluation episodes for seeds 0-5
  (a random policy: 21-24). A whole run takes about 35-45 s of CPU time, 75-90 s wall under
  that load, most of it compiling (the iterations themselves take 0.05-0.15 s each); further
  seeds in the same process reuse the compiled programs and take 13-18 s. With 80
  iterations one seed in six stopped at 246, with 40 one in five at 473.
- minatar, defaults (Breakout-MinAtar, 64 environments x 128 steps x 60 iterations =
  491,520 steps, seed 0): sampled-policy return 5.9 (min 2, max 6) over 128 episodes,
  against 0.5 for a random policy; training episodes went 4.0 -> 5.5 -> 5.8 at 20, 40 and
  60 iterations. 160 s of CPU time, 645 s wall under that load (about 2 s of CPU per
  iteration). A longer run, e.g. ``iterations=250`` (about 2M steps, roughly four times
  the default's time), was not measured.

Run: fnn run cartpole [iterations=120] [num_envs=32] [seed=0] [eval_policy=greedy]
     fnn run minatar [env=Breakout-MinAtar] [iterations=60] [seed=0] [eval_policy=sample]
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fnn
from fnn.config import ConfigError, check_at_least, check_seeds, check_that
from fnn.pipeline import Experiment, Pipeline

CLASSIC_CONTROL = ("CartPole-v1", "Acrobot-v1")  # gymnax's discrete-action tasks with vector observations
MINATAR_GAMES = ("Asterix-MinAtar", "Breakout-MinAtar", "Freeway-MinAtar", "Seaquest-MinAtar",
                 "SpaceInvaders-MinAtar")  # gymnax's MinAtar games
EVAL_POLICIES = ("greedy", "sample")
SOLVED = {"CartPole-v1": 475.0}  # gym's reward_threshold: the mean return that counts as solved


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """What both experiments share; each sets its own defaults. Intervals are in iterations."""

    env: str = "CartPole-v1"
    num_envs: int = 32  # environments stepped together under vmap
    rollout_steps: int = 128  # steps per environment per iteration
    iterations: int = 120
    epochs: int = 4  # passes over each rollout
    minibatches: int = 4  # per epoch; must divide num_envs * rollout_steps
    gamma: float = 0.99  # discount
    lam: float = 0.95  # GAE's bias-variance trade-off
    clip: float = 0.2  # the ratio's clip range, eps
    value_coef: float = 0.5
    entropy_coef: float = 0.01
    learning_rate: float = 2.5e-3
    anneal_lr: bool = True  # linearly to 0 over the run
    max_grad_norm: float = 0.5
    hidden: int = 64  # units of each dense hidden layer
    seed: int = 0  # initial weights, environments, actions, minibatches, evaluation
    eval_episodes: int = 128
    eval_policy: str = dataclasses.field(default="greedy", metadata={"choices": EVAL_POLICIES})
    eval_every: int = 0  # 0: only at the end
    log_every: int = 5
    checkpoint_every: int = 0  # 0: only at the end (and on SIGINT/SIGTERM)

    def __post_init__(self):
        choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(self)}
        if choices["env"] is None:  # the shared base, which names no environments of its own
            raise ConfigError(f"{type(self).__name__} is the configs' shared base: use CartPoleConfig "
                              "(classic control) or MinAtarConfig, which name their env choices")
        for key in ("env", "eval_policy"):
            if getattr(self, key) not in choices[key]:
                raise ConfigError(f"{key}: {getattr(self, key)!r} is not one of {', '.join(choices[key])}")
        check_at_least(self, (("num_envs", 1), ("rollout_steps", 1), ("iterations", 1), ("epochs", 1),
                              ("minibatches", 1), ("hidden", 1), ("eval_episodes", 1), ("eval_every", 0),
                              ("log_every", 1), ("checkpoint_every", 0)))
        check_seeds(self, ["seed"])
        if (self.num_envs * self.rollout_steps) % self.minibatches:
            raise ConfigError(f"minibatches ({self.minibatches}) must divide num_envs * rollout_steps "
                              f"({self.num_envs * self.rollout_steps})")
        check_that(self, (("gamma", 0 < self.gamma <= 1, "in (0, 1]"),
                          ("lam", 0 <= self.lam <= 1, "in [0, 1]"),
                          ("clip", self.clip > 0, "positive"),
                          ("value_coef", self.value_coef > 0, "positive"),
                          ("entropy_coef", self.entropy_coef >= 0, "at least 0"),
                          ("learning_rate", self.learning_rate > 0, "positive"),
                          ("max_grad_norm", self.max_grad_norm > 0, "positive")))


@dataclasses.dataclass(frozen=True)
class CartPoleConfig(PPOConfig):
    env: str = dataclasses.field(default="CartPole-v1", metadata={"choices": CLASSIC_CONTROL})


@dataclasses.dataclass(frozen=True)
class MinAtarConfig(PPOConfig):
    env: str = dataclasses.field(default="Breakout-MinAtar", metadata={"choices": MINATAR_GAMES})
    num_envs: int = 64
    iterations: int = 60
    minibatches: int = 8
    learning_rate: float = 5e-4
    hidden: int = 128
    channels: int = 16  # of the 3x3 convolution
    eval_policy: str = dataclasses.field(default="sample", metadata={"choices": EVAL_POLICIES})
    eval_every: int = 20
    log_every: int = 5
    checkpoint_every: int = 20

    def __post_init__(self):
        super().__post_init__()
        if self.channels < 1:
            raise ConfigError(f"channels must be at least 1, got {self.channels}")


# -- the agent -------------------------------------------------------------------------


class Transition(NamedTuple):
    """One rollout step of every environment; each field ``[num_envs, ...]`` (``[time, num_envs, ...]``
    when stacked by the rollout's scan)."""

    obs: jax.Array
    action: jax.Array  # int32
    log_prob: jax.Array  # of the action under the rollout's policy
    value: jax.Array
    reward: jax.Array  # with the bootstrapped value of a state cut off by a time limit added
    done: jax.Array  # the episode ended (or was cut) at this step


class Batch(NamedTuple):
    """What the update learns from, each field ``[examples, ...]``."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array
    advantage: jax.Array
    target: jax.Array  # the value target, advantage + value


def mlp_actor_critic(actions: int, hidden: int) -> fnn.Layer:
    """Separate policy and value MLPs: ``obs [b, d] -> (logits [b, actions], value [b, 1])``."""

    def mlp(out: int, scale: float) -> fnn.Layer:
        return fnn.serial(fnn.Dense(hidden, w_init=_orthogonal(math.sqrt(2))), fnn.tanh,
                          fnn.Dense(hidden, w_init=_orthogonal(math.sqrt(2))), fnn.tanh,
                          fnn.Dense(out, w_init=_orthogonal(scale)))

    return fnn.serial(fnn.fan_out(2), fnn.parallel(policy=mlp(actions, 0.01), value=mlp(1, 1.0)))


def conv_actor_critic(actions: int, channels: int, hidden: int) -> fnn.Layer:
    """A shared convolutional torso and two heads: ``obs [b, h, w, c] -> (logits, value [b, 1])``.

    The 3x3 convolution (no padding) is written as a dense layer over each cell's 3x3
    patch, the same function with the kernel reshaped: XLA's CPU backend computes the
    gradient of a convolution's kernel about five times slower inside a loop (the update
    epochs are one) than outside, while a dense layer's gradient is a matrix product in both.
    """
    return fnn.serial(
        torso=fnn.serial(patches_3x3, fnn.Dense(channels, w_init=_orthogonal(math.sqrt(2))), fnn.relu,
                         fnn.Flatten(), fnn.Dense(hidden, w_init=_orthogonal(math.sqrt(2))), fnn.relu),
        heads=fnn.serial(fnn.fan_out(2), fnn.parallel(policy=fnn.Dense(actions, w_init=_orthogonal(0.01)),
                                                      value=fnn.Dense(1, w_init=_orthogonal(1.0)))),
    )


def patches_3x3(x: jax.Array) -> jax.Array:
    """``[b, h, w, c] -> [b, h - 2, w - 2, 9 c]``: the 3x3 neighbourhood of each inner cell."""
    return jax.lax.conv_general_dilated_patches(x, (3, 3), (1, 1), "VALID",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _orthogonal(scale: float):
    return jax.nn.initializers.orthogonal(scale)


def make_model(config: PPOConfig, actions: int) -> fnn.Layer:
    if isinstance(config, MinAtarConfig):
        return conv_actor_critic(actions, config.channels, config.hidden)
    return mlp_actor_critic(actions, config.hidden)


def make_optimizer(config: PPOConfig) -> optax.GradientTransformation:
    """Adam (eps 1e-5) on gradients clipped to ``max_grad_norm``; with ``anneal_lr`` the rate
    falls linearly to 0 over the run's updates."""
    updates = config.iterations * config.epochs * config.minibatches
    rate = config.learning_rate
    if config.anneal_lr:
        rate = optax.linear_schedule(config.learning_rate, 0.0, updates)
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(rate, eps=1e-5))


def log_prob_of(logits: jax.Array, action: jax.Array) -> jax.Array:
    return jnp.take_along_axis(jax.nn.log_softmax(logits), action[..., None], axis=-1)[..., 0]


def ppo_loss(logits: jax.Array, value: jax.Array, batch: Batch, *, clip: float, value_coef: float,
             entropy_coef: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The clipped surrogate loss of a minibatch: ``logits [b, actions]``, ``value [b]`` from the
    network being trained; returns ``(loss, metrics)``. Advantages are normalised over the minibatch."""
    log_probs = jax.nn.log_softmax(logits)
    log_ratio = log_prob_of(logits, batch.action) - batch.log_prob
    ratio = jnp.exp(log_ratio)
    advantage = (batch.advantage - batch.advantage.mean()) / (batch.advantage.std() + 1e-8)
    policy_loss = -jnp.minimum(ratio * advantage, jnp.clip(ratio, 1 - clip, 1 + clip) * advantage).mean()
    value_loss = 0.5 * jnp.square(value - batch.target).mean()
    entropy = -(jnp.exp(log_probs) * log_probs).sum(-1).mean()
    loss = policy_loss + value_coef * value_loss - entropy_coef * entropy
    return loss, {
        "loss": loss, "policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy,
        "approx_kl": ((ratio - 1) - log_ratio).mean(),  # Schulman's low-variance estimator of KL(old, new)
        "clip_fraction": (jnp.abs(ratio - 1) > clip).mean(),
    }


def make_iterate(model: fnn.Layer, optimizer, env, env_params, config: PPOConfig) -> fnn.rl.Iterate:
    """``iterate(state) -> (state, metrics)``: one rollout and its update epochs."""
    n, horizon, gamma = config.num_envs, config.rollout_steps, config.gamma
    step_envs = jax.vmap(env.step, (0, 0, 0, None))

    def policy_value(params, obs):
        logits, value = model(params, obs)
        return logits, value[..., 0]

    def act(carry, key):
        params, env_state, obs, running, ended_sum, ended_count = carry
        action_key, env_key = jax.random.split(key)
        logits, value = policy_value(params, obs)
        action = jax.random.categorical(action_key, logits).astype(jnp.int32)
        next_obs, env_state, reward, terminated, truncated, info = step_envs(
            jax.random.split(env_key, n), env_state, action, env_params)
        cut = truncated & ~terminated  # a time limit, not an end: bootstrap from the state it cut off
        tail = jax.lax.cond(jnp.any(cut), lambda: policy_value(params, info["final_observation"])[1],
                            lambda: jnp.zeros_like(value))
        done = terminated | truncated
        running = running + reward
        ended_sum = ended_sum + jnp.where(done, running, 0.0).sum()
        ended_count = ended_count + done.sum()
        transition = Transition(obs, action, log_prob_of(logits, action), value,
                                reward + gamma * jnp.where(cut, tail, 0.0), done)
        running = jnp.where(done, 0.0, running)
        return (params, env_state, next_obs, running, ended_sum, ended_count), transition

    def update(carry, batch: Batch):
        params, opt_state = carry

        def loss(params):
            logits, value = policy_value(params, batch.obs)
            return ppo_loss(logits, value, batch, clip=config.clip, value_coef=config.value_coef,
                            entropy_coef=config.entropy_coef)

        grads, metrics = jax.grad(loss, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), metrics

    def epoch(carry, key, batch: Batch):
        order = jax.random.permutation(key, n * horizon).reshape(config.minibatches, -1)
        return jax.lax.scan(update, carry, jax.tree.map(lambda a: a[order], batch))

    def iterate(state: fnn.rl.AgentState):
        rollout_key, update_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
        carry = (state.params, state.env["state"], state.env["obs"], state.memory["episode_return"],
                 jnp.zeros(()), jnp.zeros((), jnp.int32))
        (_, env_state, obs, running, ended_sum, ended_count), rollout = jax.lax.scan(
            act, carry, jax.random.split(rollout_key, horizon))
        last_value = policy_value(state.params, obs)[1]
        advantage, target = fnn.rl.gae(rollout.reward, rollout.value, rollout.done, last_value,
                                       gamma=gamma, lam=config.lam)
        batch = jax.tree.map(lambda a: a.reshape(n * horizon, *a.shape[2:]),
                             Batch(rollout.obs, rollout.action, rollout.log_prob, advantage, target))
        (params, opt_state), metrics = jax.lax.scan(
            lambda carry, key: epoch(carry, key, batch), (state.params, state.opt_state),
            jax.random.split(update_key, config.epochs))
        last_return = jnp.where(ended_count > 0, ended_sum / jnp.maximum(ended_count, 1),
                                state.memory["last_return"])
        metrics = {k: v.mean() for k, v in metrics.items()}
        metrics.update(episode_return=last_return, episodes=ended_count.astype(jnp.float32))
        new = state._replace(params=params, opt_state=opt_state, env={"state": env_state, "obs": obs},
                             memory={"episode_return": running, "last_return": last_return})
        return new, metrics

    return iterate


def make_play(model: fnn.Layer, env, env_params, episodes: int) -> Callable:
    """``play(params, key, policy) -> (returns [episodes], lengths [episodes])``: one fresh episode
    per environment, all under vmap until the last one ends. ``policy`` is ``"greedy"`` (the most
    probable action), ``"sample"`` or ``"random"`` (uniform actions); one compiled program
    serves all three."""
    step_envs = jax.vmap(env.step, (0, 0, 0, None))
    policies = ("greedy", "sample", "random")

    @jax.jit
    def play(params, key, policy):
        reset_key, key = jax.random.split(key)
        obs, env_state = jax.vmap(env.reset, (0, None))(jax.random.split(reset_key, episodes), env_params)

        def body(carry):
            obs, env_state, total, length, alive, key = carry
            key, sample_key, random_key, env_key = jax.random.split(key, 4)
            logits = model(params, obs)[0]
            action = jnp.stack([jnp.argmax(logits, -1), jax.random.categorical(sample_key, logits),
                                jax.random.randint(random_key, (episodes,), 0, env.num_actions)])[policy]
            obs, env_state, reward, terminated, truncated, _ = step_envs(
                jax.random.split(env_key, episodes), env_state, action.astype(jnp.int32), env_params)
            total = total + jnp.where(alive, reward, 0.0)
            length = length + alive
            return obs, env_state, total, length, alive & ~(terminated | truncated), key

        start = (obs, env_state, jnp.zeros(episodes), jnp.zeros(episodes, jnp.int32),
                 jnp.ones(episodes, bool), key)
        _, _, total, length, _, _ = jax.lax.while_loop(lambda c: c[4].any(), body, start)
        return total, length

    def run(params, key: jax.Array, policy: str) -> tuple[np.ndarray, np.ndarray]:
        if policy not in policies:
            raise ValueError(f"play: policy must be one of {', '.join(policies)}, got {policy!r}")
        params, key = jax.device_put((params, key), jax.devices()[0])  # as committed as a restored state
        return tuple(map(np.asarray, play(params, key, policies.index(policy))))

    return run


# -- compiled once per setting ---------------------------------------------------------


class Agent(NamedTuple):
    """An environment and the compiled functions of a PPO agent in it."""

    env: Any  # a gymnax environment
    env_params: Any
    model: fnn.Layer
    optimizer: optax.GradientTransformation
    init: Callable[[jax.Array], fnn.rl.AgentState]  # jitted: key -> a fresh state
    iterate: fnn.rl.Iterate  # jitted
    play: Callable  # see make_play


def make_init(model: fnn.Layer, optimizer, env, env_params, config: PPOConfig) -> Callable:
    """``init(key)``, jitted: fresh weights, ``num_envs`` reset environments (``state.env``: their
    states and observations) and zero episode returns (``state.memory``)."""

    @jax.jit  # one program, rather than one per operation of the initialisers and the resets
    def init(key: jax.Array) -> fnn.rl.AgentState:
        init_key, env_key = jax.random.split(key)
        env_keys = jax.random.split(env_key, config.num_envs)
        obs, env_state = jax.vmap(env.reset, (0, None))(env_keys, env_params)
        memory = {"episode_return": jnp.zeros(config.num_envs),  # of each environment's episode so far
                  "last_return": jnp.zeros(())}  # the mean return of the last episodes that ended (0 before)
        # typed strictly, as a restored checkpoint is, so that both share one compiled iteration
        env_state = jax.tree.map(lambda x: jnp.asarray(x, x.dtype), env_state)
        return fnn.rl.AgentState.create(model, optimizer, init_key, obs, env={"state": env_state, "obs": obs},
                                        memory=memory)

    return init


@functools.lru_cache(maxsize=4)
def _compiled(config: PPOConfig) -> Agent:
    import gymnax  # imported here: it is slow to import, and `fnn list` loads every experiment

    env, env_params = gymnax.make(config.env)
    model = make_model(config, env.num_actions)
    optimizer = make_optimizer(config)
    return Agent(env, env_params, model, optimizer, make_init(model, optimizer, env, env_params, config),
                 jax.jit(make_iterate(model, optimizer, env, env_params, config)),
                 make_play(model, env, env_params, config.eval_episodes))


def make_agent(config: PPOConfig) -> Agent:
    """The agent of ``config``. Runs whose settings differ only in the seed or in how often they
    log, evaluate and checkpoint share one (a loop over seeds compiles once)."""
    return _compiled(dataclasses.replace(config, seed=0, eval_policy="greedy", eval_every=0, log_every=1,
                                         checkpoint_every=0))


# -- the stages ------------------------------------------------------------------------


def agent(config: PPOConfig) -> dict:
    """The environment, the network, the compiled iteration and the initial state of ``config.seed``."""
    made = make_agent(config)
    # placed on the device as a state restored from a checkpoint is, so that both share one compiled program
    state = jax.device_put(made.init(jax.random.key(config.seed)), jax.devices()[0])
    return {"agent": made, "state": state}


def eval_key(config: PPOConfig, policy: str = "trained") -> jax.Array:
    """The evaluations' key (folded with the step evaluated), apart from those of training."""
    return jax.random.fold_in(jax.random.key(config.seed), 1 if policy == "trained" else 2)


def train(agent: Agent, state, config: PPOConfig, run=None, progress: bool = False) -> dict:
    """Run ``config.iterations`` iterations, evaluating every ``eval_every`` and at the end."""

    def evaluate(state) -> dict:
        key = jax.random.fold_in(eval_key(config), state.step)
        returns, _ = agent.play(state.params, key, config.eval_policy)
        return {"episode_return": float(returns.mean()), "episode_return_min": float(returns.min())}

    state, history = fnn.rl.train(agent.iterate, state, config.iterations, run=run,
                                  log_every=config.log_every, evaluate=evaluate, eval_every=config.eval_every,
                                  checkpoint_every=config.checkpoint_every, progress=progress,
                                  jit=False)  # agent.iterate is compiled already, once per setting
    return {"state": state, "history": history}


def report(agent: Agent, state, history, config: PPOConfig, run=None) -> dict:
    """Evaluate the trained policy and a random one; the final metrics, report lines and ``returns.png``."""
    key = jax.random.fold_in(eval_key(config), int(state.step))  # the key of the last evaluation
    returns, lengths = agent.play(state.params, key, config.eval_policy)
    random_returns, _ = agent.play(state.params, eval_key(config, "random"), "random")
    per_iteration = config.num_envs * config.rollout_steps
    train_records = [r for r in history if r["split"] == "train"]
    final = {
        "eval_return_mean": float(returns.mean()), "eval_return_min": float(returns.min()),
        "eval_return_max": float(returns.max()), "eval_return_std": float(returns.std()),
        "eval_length_mean": float(lengths.mean()), "eval_episodes": config.eval_episodes,
        "random_return_mean": float(random_returns.mean()),
        "train_return": train_records[-1]["episode_return"] if train_records else float("nan"),
        "env_steps": int(state.step) * per_iteration,
    }
    lines = [
        f"{config.env}: {config.num_envs} environments x {config.rollout_steps} steps x {int(state.step)} "
        f"iterations = {final['env_steps']:,} environment steps",
        "iteration  env steps  train return  eval return (mean, min)",
        *(f"{r['step']:9d}  {r['step'] * per_iteration:9,d}  {_train_return(history, r['step']):12.1f}  "
          f"{r['episode_return']:8.1f} {r['episode_return_min']:6.1f}"
          for r in history if r["split"] == "eval"),
        f"trained policy ({config.eval_policy}), {config.eval_episodes} episodes: return mean "
        f"{final['eval_return_mean']:.1f}, min {final['eval_return_min']:.1f}, "
        f"max {final['eval_return_max']:.1f}, "
        f"std {final['eval_return_std']:.1f}; mean length {final['eval_length_mean']:.1f} steps",
        f"random policy, {config.eval_episodes} episodes: return mean {final['random_return_mean']:.1f}",
    ]
    if config.env in SOLVED:
        final["solved"] = bool(final["eval_return_mean"] >= SOLVED[config.env])
        lines.append(f"solved (mean return >= {SOLVED[config.env]:g}): {'yes' if final['solved'] else 'no'}")
    if run is not None and train_records:
        evals = [(r["step"] * per_iteration, r["episode_return"]) for r in history if r["split"] == "eval"]
        span = (0, final["env_steps"])
        trained = [(r["step"] * per_iteration, r["episode_return"]) for r in train_records]
        fnn.plots.curves({"episode return": {
            "training episodes (sampled)": trained,
            f"evaluation ({config.eval_policy})": evals,
            "random policy": [(s, final["random_return_mean"]) for s in span],
        }}, run.directory / "returns.png", xlabel="environment steps", title=f"PPO on {config.env}")
    return {"final": final, "report": lines}


def _train_return(history: list[dict], step: int) -> float:
    """The training episodes' return logged last at or before ``step``."""
    before = [r["episode_return"] for r in history if r["split"] == "train" and r["step"] <= step]
    return before[-1] if before else float("nan")


PIPELINE = Pipeline(agent, train, report)
CARTPOLE = Experiment("cartpole", "PPO balances a pole on a cart (gymnax CartPole-v1), whole loop in one jit",
                      CartPoleConfig(), PIPELINE)
MINATAR = Experiment("minatar", "PPO with a small convnet plays a MinAtar game (gymnax; Breakout by default)",
                     MinAtarConfig(), PIPELINE)


def run(config: PPOConfig = CartPoleConfig(), **options) -> dict:
    """Train and evaluate PPO; the experiment follows the config (``CartPoleConfig`` or ``MinAtarConfig``)."""
    return (MINATAR if isinstance(config, MinAtarConfig) else CARTPOLE)(config, **options)


if __name__ == "__main__":  # python -m experiments.ppo [cartpole | minatar] KEY=VALUE ...
    import sys

    name = sys.argv[1] if sys.argv[1:2] in (["cartpole"], ["minatar"]) else "cartpole"
    fnn.cli.experiment_main(name, sys.argv[2:] if sys.argv[1:2] == [name] else sys.argv[1:], program=True)
