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

from fnn.core import Layer
from fnn.loop import Evaluate, train_loop
from fnn.train import TrainState, init_train_state

Iterate = Callable[["AgentState"], tuple["AgentState", dict[str, jax.Array]]]


class AgentState(NamedTuple):
    """What an agent carries from one iteration to the next; a pytree of arrays."""

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
        """A fresh state for ``model`` on observations like ``x`` (an array or a spec)."""
        t = init_train_state(model, optimizer, key, x)
        return cls(t.params, t.model_state, t.opt_state, t.step, t.rng,
                   {} if env is None else env, {} if memory is None else memory)

    def train_state(self) -> TrainState:
        """The network's part as a :class:`fnn.TrainState` (for ``fnn.pipeline.predict`` and friends)."""
        return TrainState(self.params, self.model_state, self.opt_state, self.step, self.rng)


def iteration_batches(n: int):
    """``n`` placeholder batches (one int each: the iteration's index) for ``train_loop``."""
    import grain

    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"iteration_batches: n must be a positive int, got {n!r}")
    return grain.MapDataset.range(n).map(lambda k: np.full((1,), k, np.int32))


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
    next_values = jnp.concatenate([values[1:], last_value[None]])
    live = 1.0 - dones.astype(values.dtype)
    deltas = rewards + gamma * next_values * live - values

    def back(carry, x):
        delta, alive = x
        carry = delta + gamma * lam * alive * carry
        return carry, carry

    _, advantages = jax.lax.scan(back, jnp.zeros_like(last_value), (deltas, live), reverse=True)
    return advantages, advantages + values
