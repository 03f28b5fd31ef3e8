"""Reinforcement learning and self-play on fnn's training loop.

An agent's whole iteration -- acting in many environments at once under ``vmap``,
searching, learning from what it saw -- is one pure function ``iterate(state) ->
(state, metrics)``. :func:`train` compiles it and runs it through
:func:`fnn.loop.train_loop`, so an agent's run logs, evaluates, checkpoints and resumes
exactly as a supervised one does (``fnn run``, ``fnn resume``)::

    state = fnn.rl.AgentState.create(model, optimizer, key, obs_spec, env=env_states)
    state, history = fnn.rl.train(iterate, state, iterations=200, run=run, log_every=10)

The state is an :class:`AgentState`: a :class:`fnn.TrainState` (parameters, model state,
optimizer state, step, rng) plus ``env`` (the environments' states, carried from one
iteration to the next) and ``memory`` (anything else the agent keeps: a replay buffer,
an average policy). Everything in it is an array, so a checkpoint holds all of it and a
resumed run continues bit for bit. Random keys other than ``rng`` are stored as raw key
data (``jax.random.key_data``), which checkpoints can hold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn.core import Layer, is_count
from fnn.loop import Evaluate, train_loop
from fnn.train import TrainState, init_train_state

Iterate = Callable[["AgentState"], tuple["AgentState", dict[str, jax.Array]]]


class AgentState(NamedTuple):
    """What an agent carries from one iteration to the next; a pytree of arrays.

    Example:
        >>> import jax, jax.numpy as jnp, optax, fnn
        >>> state = fnn.rl.AgentState.create(
        ...     fnn.Dense(2), optax.adam(1e-2), jax.random.key(0), jnp.zeros((1, 4)),
        ...     env={"position": jnp.zeros(8)}, memory={"returns": jnp.zeros(100)})
        >>> state._fields
        ('params', 'model_state', 'opt_state', 'step', 'rng', 'env', 'memory')
        >>> state.params["w"].shape, state.env["position"].shape, int(state.step)
        ((4, 2), (8,), 0)
        >>> type(state.train_state()).__name__
        'TrainState'
    """

    params: Any
    model_state: Any
    opt_state: Any
    step: jax.Array  # iterations done
    rng: jax.Array  # a typed key
    env: Any = {}  # the environments' states
    memory: Any = {}  # replay buffers, average policies, ...

    @classmethod
    def create(
        cls,
        model: Layer,
        optimizer: optax.GradientTransformation,
        key: jax.Array,
        x: Any,
        *,
        env: Any = None,
        memory: Any = None,
    ) -> AgentState:
        """A fresh state for ``model`` on observations like ``x`` (an array or a spec); ``env``
        and ``memory`` default to empty dicts."""
        t = init_train_state(model, optimizer, key, x)
        return cls(t.params, t.model_state, t.opt_state, t.step, t.rng,
                   {} if env is None else env, {} if memory is None else memory)

    def train_state(self) -> TrainState:
        """The network's part as a :class:`fnn.TrainState` (for ``fnn.pipeline.predict`` and friends)."""
        return TrainState(self.params, self.model_state, self.opt_state, self.step, self.rng)


def iteration_batches(n: int):
    """``n`` placeholder batches (one int each: the iteration's index) for ``train_loop``.

    An agent makes its own data, so ``train`` gives the loop these to count iterations.

    Example:
        >>> from fnn.rl import iteration_batches
        >>> batches = iteration_batches(3)
        >>> len(batches), [b.tolist() for b in batches]
        (3, [[0], [1], [2]])
    """
    import grain

    if not is_count(n):
        raise ValueError(f"iteration_batches: n must be a positive int, got {n!r}")
    return grain.MapDataset.range(int(n)).map(lambda k: np.full((1,), k, np.int32))


def train(
    iterate: Iterate,
    state: AgentState,
    iterations: int,
    *,
    run: Any = None,
    log_every: int = 1,
    evaluate: Evaluate | None = None,
    eval_every: int = 0,
    checkpoint_every: int = 0,
    progress: bool = False,
    jit: bool = True,
) -> tuple[AgentState, list[dict[str, Any]]]:
    """Run ``iterate`` ``iterations`` times from ``state``; returns the final state and the records.

    ``iterate(state) -> (state, metrics)`` is one iteration; ``train`` counts the
    iterations in ``state.step`` (``iterate`` must leave ``step`` alone) and compiles it
    unless ``jit=False``. With ``run`` (an ``fnn.runs.Run``), records go to its
    ``metrics.jsonl``, checkpoints are saved every ``checkpoint_every`` iterations (0:
    only at the end and on SIGINT/SIGTERM), and a run that holds a checkpoint continues
    from it. ``evaluate(state) -> metrics`` runs every ``eval_every`` iterations and at
    the end.

    Example: a two-armed bandit (arm 1 pays 1, arm 0 pays 0) learned by policy gradient,
    64 pulls per iteration.

        >>> import jax, jax.numpy as jnp, optax, fnn
        >>> policy, opt = fnn.Dense(2, w_init="zeros"), optax.adam(0.1)
        >>> obs = jnp.ones((64, 1))
        >>> def iterate(state):
        ...     key = jax.random.fold_in(state.rng, state.step)
        ...     def loss(params):
        ...         logits, _ = policy.apply(params, state.model_state, obs)
        ...         arms = jax.random.categorical(key, logits)
        ...         reward = (arms == 1).astype(jnp.float32)
        ...         logp = jax.nn.log_softmax(logits)[jnp.arange(64), arms]
        ...         return -jnp.mean(logp * (reward - reward.mean())), reward.mean()
        ...     (value, reward), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
        ...     updates, opt_state = opt.update(grads, state.opt_state, state.params)
        ...     params = optax.apply_updates(state.params, updates)
        ...     return state._replace(params=params, opt_state=opt_state), {"reward": reward}
        >>> state = fnn.rl.AgentState.create(policy, opt, jax.random.key(0), obs)
        >>> state, records = fnn.rl.train(iterate, state, iterations=30, log_every=10)
        >>> int(state.step), [r["step"] for r in records]
        (30, [10, 20, 30])
        >>> records[0]["reward"] < 0.9 < records[-1]["reward"]
        True
    """
    if not isinstance(state, AgentState):
        raise TypeError(f"train: state must be an fnn.rl.AgentState, got {type(state).__name__}")

    def step(state: AgentState, batch: Any) -> tuple[AgentState, dict[str, jax.Array]]:
        del batch
        new, metrics = iterate(state)
        if not isinstance(new, AgentState):
            raise TypeError(f"train: iterate must return (AgentState, metrics), got {type(new).__name__}")
        return new._replace(step=state.step + 1), metrics

    return train_loop(
        jax.jit(step) if jit else step,
        state,
        iteration_batches(iterations),
        run=run,
        log_every=log_every,
        evaluate=evaluate,
        eval_every=eval_every,
        checkpoint_every=checkpoint_every,
        progress=progress,
    )


def gae(
    rewards: jax.Array,
    values: jax.Array,
    dones: jax.Array,
    last_value: jax.Array,
    *,
    gamma: float,
    lam: float,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimates and value targets of a rollout.

    Args:
        rewards, values, dones: ``[time, ...]``; ``dones[t]`` says the episode ended at
            step ``t`` (so ``values[t + 1]`` belongs to a new episode and is not bootstrapped).
        last_value: ``[...]``, the value of the state after the last step.
        gamma: the discount; lam: the GAE trade-off between bias (0) and variance (1).

    Returns ``(advantages, targets)``, both ``[time, ...]``, with ``targets = advantages + values``.

    Example:
        >>> import jax.numpy as jnp
        >>> adv, target = gae(jnp.array([1.0, 1.0]), jnp.array([0.0, 0.0]), jnp.array([False, True]),
        ...                   jnp.array(5.0), gamma=0.5, lam=1.0)
        >>> adv.tolist(), target.tolist()
        ([1.5, 1.0], [1.5, 1.0])
    """
    if rewards.shape != values.shape or rewards.shape != dones.shape:
        raise ValueError(
            f"gae: rewards, values and dones must share a shape, got {rewards.shape}, "
            f"{values.shape} and {dones.shape}"
        )
    if last_value.shape != rewards.shape[1:]:
        raise ValueError(f"gae: last_value must have shape {rewards.shape[1:]}, got {last_value.shape}")
    dtype = jnp.result_type(float, rewards, values, last_value)  # integer rewards: a float carry
    rewards, values, last_value = (jnp.asarray(a, dtype) for a in (rewards, values, last_value))
    next_values = jnp.concatenate([values[1:], last_value[None]])
    live = 1.0 - dones.astype(values.dtype)
    deltas = rewards + gamma * next_values * live - values

    def back(carry, x):
        delta, alive = x
        carry = delta + gamma * lam * alive * carry
        return carry, carry

    _, advantages = jax.lax.scan(back, jnp.zeros_like(last_value), (deltas, live), reverse=True)
    return advantages, advantages + values
