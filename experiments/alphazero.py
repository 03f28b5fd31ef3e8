"""AlphaZero: a policy-value network learns a board game from self-play guided by tree search.

Silver et al. (2017, "Mastering the game of Go without human knowledge", AlphaGo Zero;
2018, "A general reinforcement learning algorithm that masters chess, shogi, and Go
through self-play", AlphaZero) trained one residual network ``f(s) = (p, v)`` -- move
probabilities and the expected result for the player to move -- from nothing but the
rules: the agent plays itself, choosing each move by a Monte Carlo tree search guided by
``f``, and ``f`` is trained to predict the search's move distribution and the game's
final result. Search makes the policy better than the network; training makes the
network as good as the search; the next searches start from there.

Here the games are pgx's (tic-tac-toe, connect four, Go 9x9) and the search is mctx's
Gumbel MuZero policy (Danihelka et al., 2022, "Policy improvement by planning with
Gumbel"), which improves the policy even with a handful of simulations. The search
steps the real game (the environment is the model), with rewards from the mover's view
and a discount of -1 between the two players' turns. One iteration, jitted whole:

- self-play: ``moves`` moves in each of ``games`` games at once, each move a search of
  ``simulations`` simulations; finished games restart. Each position enters a ring
  buffer of the last ``buffer`` positions with the search's move distribution; its value
  target, the final result for the player who was to move there, is filled in when the
  game ends.
- learning: ``sgd_steps`` steps of adamw (its learning rate falling by a cosine to a tenth
  over the first ``anneal`` iterations) on batches drawn uniformly from the buffer:
  cross-entropy to the search's distribution plus the squared error of ``v`` (on the
  positions whose game has ended).

Evaluation plays the trained agent against opponents from ``experiments/board_search.py``
(both seats, many games at once): uniformly random moves (during training too), exact
minimax (tic-tac-toe: every game against every way minimax breaks its ties) and plain
Monte Carlo tree search with random rollouts at the agent's simulation budget (connect
four). The agent plays greedily from its network (``eval_simulations=0``) or with a
search of ``eval_simulations`` simulations and no Gumbel noise (deterministic).

Measured on a 2-core CPU that other jobs oversubscribed (load average 10-19), so wall
times are several times what an idle machine takes; the user CPU time is given too:

- tictactoe (defaults: 400 iterations, 102,400 self-play moves of 32 simulations, the
  learning rate falling by a cosine to a tenth over the run): with its 32-simulation
  search the agent never loses to minimax -- every opening, every way minimax breaks its
  ties, both seats -- for each of seeds 0-4 (4 games as X and 93-129 as O, all drawn),
  and beats random in 99% of 100 games as X and 85-92% as O (seeds 3 and 4: no game lost,
  the rest drawn). About 2.5-4 minutes a seed (two runs at once on the 2 cores).
  Getting there took two changes, measured over seeds 0-2: with a constant learning rate
  and 16 self-play simulations the minimax losses came and went between evaluations
  (seed 1 ended with 4 of 113 games lost as O; at 800 iterations seeds 0 / 1 / 2 lost
  2 / 4 / 0); annealing the learning rate alone left seed 0 losing 3; annealing with 32
  self-play simulations left none. (Mixing the search's root value into the value target
  made it worse: 2 losses for seeds 0 and 2.)
- connect-four (defaults, seed 0; 150 iterations, 76,800 self-play moves): with its
  16-simulation search the agent beat random in 98% of 100 games (50 / 48 of 50 as first /
  second; 95-96% at every evaluation from iteration 50 on) and plain rollout MCTS with the
  same 16 simulations in 96% of 100 games (48 of 50 in each seat; a draw would count as
  not won, and there were none). That baseline is weak: against random it wins 8 of 8 games moving
  first but only 5 of 8 moving second. 2,126 s wall, 353 s user CPU. Seeds 1 and 2:
  98% and 97% of 100 games against random, 89% and 92% against rollout MCTS (330 s wall
  and about 325 s user CPU each, on a quieter machine).
- go-9x9 (defaults, seed 0; 200 iterations, 102,400 self-play moves of 16 simulations;
  2,988 s wall on the 2 cores, shared with other jobs): with its 16-simulation search the
  agent won 80% of 128 games against random (88% moving first, 73% second); the network
  alone, playing greedily, won only 32%. At the evaluations during the run (32 games
  each) the search won 50%, 69%, 72% and 84% at iterations 50, 100, 150 and 200. A
  strong Go player is far beyond this budget. Self-play may not pass before move 40
  (``pass_from``): without that rule the searches learned to pass early (most likely
  because two passes end the game, and on a near-empty board the 7.5 points of komi
  decide it for white), so pass was the favourite of 27% of the replayed search targets,
  and at iteration 50 the greedy network, passing in mid-game while the random player
  filled the board, lost 97% of its games.

Run: fnn run tictactoe | fnn run connect-four | fnn run go-9x9  [iterations=...] [seed=...]
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import mctx
import numpy as np
import optax
import pgx

import fnn
from experiments import board_search
from fnn.config import ConfigError, check_at_least, check_seeds, check_that
from fnn.pipeline import Experiment, Pipeline

GAMES = ("tic_tac_toe", "connect_four", "go_9x9")
MAX_MOVES = {"tic_tac_toe": 9, "connect_four": 42, "go_9x9": 162}  # go: pgx ends a game at 2 * 81 moves
SHORTEST = {"tic_tac_toe": 5, "connect_four": 7, "go_9x9": 2}  # moves in the shortest game (go: two passes)


@dataclasses.dataclass(frozen=True)
class Config:
    game: str = dataclasses.field(default="tic_tac_toe", metadata={"choices": GAMES})
    channels: int = 32  # of every convolution of the trunk
    blocks: int = 1  # residual blocks
    games: int = 64  # self-play games played at once
    moves: int = 4  # self-play moves per game per iteration
    simulations: int = 32  # per self-play move (16 left tic-tac-toe losing some games to minimax)
    considered: int = 9  # actions sampled at the root by the Gumbel search
    random_moves: int = 4  # each self-play game opens with 0 to this many random moves
    buffer: int = 4096  # positions kept for training
    batch_size: int = 128
    sgd_steps: int = 4  # per iteration
    learning_rate: float = 1e-3
    anneal: int = 400  # iterations over which the learning rate falls (cosine) to a tenth; 0: constant
    weight_decay: float = 1e-4
    iterations: int = 400
    seed: int = 0
    eval_simulations: int = 32  # the agent's search when evaluated; 0: greedy from the network
    pass_from: int = 0  # go: the agent may pass only from this move of the game on; 0: at any move
    eval_games: int = 200  # against the random player, half in each seat
    baseline_games: int = 0  # against rollout MCTS at the end (connect four); 0: none
    log_every: int = 25
    eval_every: int = 100  # 0: only at the end
    checkpoint_every: int = 0  # 0: only at the end (and on SIGINT/SIGTERM)

    def __post_init__(self):
        check_at_least(self, (
            ("channels", 1), ("blocks", 0), ("games", 1), ("moves", 1), ("simulations", 2),
            ("considered", 1), ("random_moves", 0), ("buffer", 1), ("batch_size", 1), ("sgd_steps", 1),
            ("iterations", 1), ("anneal", 0), ("eval_simulations", 0), ("eval_games", 2),
            ("baseline_games", 0), ("pass_from", 0),
            ("log_every", 1), ("eval_every", 0), ("checkpoint_every", 0),
        ))
        check_seeds(self, ["seed"])
        if self.baseline_games == 1:  # the baseline plays half its games in each seat
            raise ConfigError("baseline_games must be 0 or at least 2 (a game in each seat), got 1")
        if self.game not in GAMES:
            raise ConfigError(f"game: {self.game!r} is not one of {', '.join(GAMES)}")
        if self.random_moves >= SHORTEST[self.game]:
            raise ConfigError(
                f"random_moves must be below {SHORTEST[self.game]} (the shortest {self.game} game), "
                f"got {self.random_moves}"
            )
        if self.pass_from and self.game != "go_9x9":
            raise ConfigError(f"pass_from is a rule of Go's agent; {self.game} has no pass move")
        if self.buffer < self.games:
            raise ConfigError(
                f"buffer must hold at least one move of every game ({self.games}), got {self.buffer}"
            )
        check_that(self, (("eval_simulations", self.eval_simulations != 1, "0 (greedy) or at least 2"),
                          ("learning_rate", self.learning_rate > 0, "positive"),
                          ("weight_decay", self.weight_decay >= 0, "at least 0")))


# -- the network -------------------------------------------------------------------------


def make_network(config: Config, num_actions: int) -> fnn.Layer:
    """``bool[batch, *board, planes] -> (logits[batch, num_actions], value[batch])``, value in (-1, 1)."""
    c = config.channels

    def block():
        body = fnn.residual(
            fnn.Conv(c, (3, 3)), fnn.LayerNorm(), jax.nn.relu, fnn.Conv(c, (3, 3)), fnn.LayerNorm()
        )
        return fnn.serial(body, jax.nn.relu)

    return fnn.serial(
        fnn.Fn(lambda x: x.astype(jnp.float32), label="as_float"),
        fnn.Conv(c, (3, 3)), fnn.LayerNorm(), jax.nn.relu,
        *[block() for _ in range(config.blocks)],
        fnn.fan_out(2),
        fnn.parallel(
            policy=fnn.serial(fnn.Conv(2, (1, 1)), jax.nn.relu, fnn.Flatten(), fnn.Dense(num_actions)),
            value=fnn.serial(
                fnn.Conv(1, (1, 1)), jax.nn.relu, fnn.Flatten(), fnn.Dense(c), jax.nn.relu, fnn.Dense(1),
                jnp.tanh, fnn.Fn(lambda v: v[:, 0], label="squeeze"),
            ),
        ),
    )


def masked(logits: jax.Array, legal: jax.Array) -> jax.Array:
    return jnp.where(legal, logits - logits.max(-1, keepdims=True), jnp.finfo(logits.dtype).min)


# -- search ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Agent:
    """The game, the network and the search that guides self-play and play."""

    env: pgx.Env
    network: fnn.Layer
    considered: int
    pass_from: int = 0  # go: no pass (the last action) before this move while another move is legal

    def forward(self, params, obs):
        return self.network(params, obs)

    def legal(self, states) -> jax.Array:
        """The moves the agent considers: the game's legal moves, less Go's pass before move
        ``pass_from`` (the agent's own rule, kept by both sides inside its search)."""
        mask = states.legal_action_mask
        if not self.pass_from:
            return mask
        early = (states._step_count < self.pass_from) & mask[..., :-1].any(-1)
        return mask.at[..., -1].set(mask[..., -1] & ~early)

    def recurrent_fn(self, params, key, action, states):
        """One step of the real game inside the search: the reward of the mover, then -1 to turn
        values to the next mover's view, 0 once the game is over."""
        del key
        mover = states.current_player
        states = jax.vmap(self.env.step)(states, action)
        logits, value = self.forward(params, states.observation)
        over = states.terminated | states.truncated
        out = mctx.RecurrentFnOutput(
            reward=states.rewards[jnp.arange(action.shape[0]), mover],
            discount=jnp.where(over, 0.0, -1.0),
            prior_logits=masked(logits, self.legal(states)),
            value=jnp.where(over, 0.0, value),
        )
        return out, states

    def search(self, params, key, states, simulations: int, gumbel_scale: float) -> mctx.PolicyOutput:
        logits, value = self.forward(params, states.observation)
        legal = self.legal(states)
        root = mctx.RootFnOutput(prior_logits=masked(logits, legal), value=value, embedding=states)
        return mctx.gumbel_muzero_policy(
            params, key, root, self.recurrent_fn, simulations,
            invalid_actions=~legal,
            max_num_considered_actions=self.considered, gumbel_scale=gumbel_scale,
        )

    def player(self, params, simulations: int) -> board_search.Player:
        """Greedy from the network (``simulations=0``) or by a noiseless search: deterministic."""

        def play(key, states):
            if simulations == 0:
                logits, _ = self.forward(params, states.observation)
                return jnp.argmax(masked(logits, self.legal(states)), axis=-1)
            return self.search(params, key, states, simulations, 0.0).action

        return play


# -- self-play and learning ---------------------------------------------------------------


def empty_buffer(env: pgx.Env, size: int) -> dict:
    """The replay buffer: a ring of ``size`` positions, their search policies and value targets."""
    obs = jax.eval_shape(env.init, jax.random.key(0)).observation
    return {
        "obs": jnp.zeros((size, *obs.shape), obs.dtype),
        "policy": jnp.zeros((size, env.num_actions), jnp.float32),
        "value": jnp.zeros((size,), jnp.float32),  # the final result for `player`
        "player": jnp.zeros((size,), jnp.int32),  # who was to move
        "slot": jnp.zeros((size,), jnp.int32),  # which of the games it came from
        "ended": jnp.zeros((size,), bool),  # the game has ended: `value` is known
        "count": jnp.zeros((), jnp.int32),  # positions ever written
    }


def record(buffer: dict, states, policy: jax.Array) -> dict:
    """Append one position of every game (their values unknown yet)."""
    size, games = buffer["value"].shape[0], policy.shape[0]
    at = (buffer["count"] + jnp.arange(games)) % size
    return {
        "obs": buffer["obs"].at[at].set(states.observation),
        "policy": buffer["policy"].at[at].set(policy),
        "value": buffer["value"].at[at].set(0.0),
        "player": buffer["player"].at[at].set(states.current_player),
        "slot": buffer["slot"].at[at].set(jnp.arange(games)),
        "ended": buffer["ended"].at[at].set(False),
        "count": buffer["count"] + games,
    }


def settle(buffer: dict, over: jax.Array, rewards: jax.Array) -> dict:
    """Fill in the value targets of the positions of games that just ended (``over[slot]``)."""
    size = buffer["value"].shape[0]
    written = jnp.arange(size) < buffer["count"]
    hit = written & ~buffer["ended"] & over[buffer["slot"]]
    result = rewards[buffer["slot"], buffer["player"]]
    return {**buffer, "value": jnp.where(hit, result, buffer["value"]), "ended": buffer["ended"] | hit}


def select(mask: jax.Array, new, old):
    """``new`` where ``mask[game]``, else ``old``, leaf by leaf over batched game states."""
    def pick(a, b):
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, new, old)


def new_games(env: pgx.Env, key: jax.Array, config: Config) -> pgx.State:
    """``config.games`` new games, each opened with 0 to ``random_moves`` uniformly random moves
    (so that self-play meets every opening, not only those its own policy prefers)."""
    k_init, k_count, k_moves = jax.random.split(key, 3)
    states = jax.vmap(env.init)(jax.random.split(k_init, config.games))
    count = jax.random.randint(k_count, (config.games,), 0, config.random_moves + 1)

    def move(states, x):
        i, k = x
        random = jax.vmap(env.step)(states, board_search.random_player(k, states))
        return select(i < count, random, states), None

    steps = (jnp.arange(config.random_moves), jax.random.split(k_moves, config.random_moves))
    return jax.lax.scan(move, states, steps)[0]


def make_iterate(agent: Agent, optimizer: optax.GradientTransformation, config: Config):
    """``iterate(state) -> (state, metrics)``: self-play moves, then SGD steps on the buffer."""
    env = agent.env

    def self_play_move(params, carry, key):
        states, buffer = carry
        k_search, k_reset = jax.random.split(key)
        out = agent.search(params, k_search, states, config.simulations, 1.0)
        buffer = record(buffer, states, out.action_weights)
        states = jax.vmap(env.step)(states, out.action)
        over = states.terminated | states.truncated
        buffer = settle(buffer, over, states.rewards)
        stats = {
            "ended": over.sum(),
            "drawn": (over & jnp.all(states.rewards == 0, axis=-1)).sum(),
            "length": jnp.where(over, states._step_count, 0).sum(),
        }
        fresh = new_games(env, k_reset, config)
        return (select(over, fresh, states), buffer), stats

    def losses(params, batch):
        logits, value = agent.forward(params, batch["obs"])
        policy_loss = optax.softmax_cross_entropy(logits, batch["policy"]).mean()
        ended = batch["ended"].astype(jnp.float32)
        value_loss = jnp.sum(ended * (value - batch["value"]) ** 2) / jnp.maximum(ended.sum(), 1.0)
        log_p = jax.nn.log_softmax(logits)
        entropy = -jnp.sum(jnp.exp(log_p) * log_p, axis=-1).mean()
        loss = policy_loss + value_loss
        return loss, {"loss": loss, "policy_loss": policy_loss, "value_loss": value_loss,
                      "policy_entropy": entropy}

    def sgd_step(carry, key):
        params, opt_state, buffer = carry
        filled = jnp.minimum(buffer["count"], buffer["value"].shape[0])
        at = jax.random.randint(key, (config.batch_size,), 0, filled)
        batch = jax.tree.map(lambda a: a[at], {k: v for k, v in buffer.items() if k != "count"})
        grads, metrics = jax.grad(losses, has_aux=True)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, buffer), metrics

    def iterate(state: fnn.rl.AgentState):
        key = jax.random.fold_in(state.rng, state.step)
        k_play, k_learn = jax.random.split(key)
        (states, buffer), stats = jax.lax.scan(
            functools.partial(self_play_move, state.params), (state.env, state.memory),
            jax.random.split(k_play, config.moves),
        )
        (params, opt_state, buffer), metrics = jax.lax.scan(
            sgd_step, (state.params, state.opt_state, buffer), jax.random.split(k_learn, config.sgd_steps)
        )
        metrics = jax.tree.map(jnp.mean, metrics)
        ended = stats["ended"].sum()
        metrics["games_ended"] = ended
        metrics["selfplay_draws"] = stats["drawn"].sum() / jnp.maximum(ended, 1)
        metrics["game_length"] = stats["length"].sum() / jnp.maximum(ended, 1)
        return state._replace(params=params, opt_state=opt_state, env=states, memory=buffer), metrics

    return iterate


# -- evaluation ------------------------------------------------------------------------


@functools.cache
def tictactoe_positions() -> tuple[list[tuple[int, ...]], pgx.State]:
    """Every reachable tic-tac-toe position where the game goes on, and its pgx state (batched)."""
    boards = board_search.reachable_positions()
    return boards, board_search.pgx_states(pgx.make("tic_tac_toe"), boards)


def minimax_table(programs: Programs, params, key: jax.Array) -> dict[str, int]:
    """Games, wins and losses of the agent against minimax (every tie-break), by seat."""
    boards, states = tictactoe_positions()
    moves = dict(zip(boards, np.asarray(programs.act(params, key, states)).tolist()))
    table = {}
    for seat, first in (("first", True), ("second", False)):
        results = np.array(board_search.games_against_minimax(moves, first))
        table[f"minimax_{seat}_games"] = len(results)
        table[f"minimax_{seat}_wins"] = int((results > 0).sum())
        table[f"minimax_{seat}_losses"] = int((results < 0).sum())
    return table


# -- the compiled programs ---------------------------------------------------------------


class Programs(NamedTuple):
    """What a run of one configuration compiles; shared by runs that differ only in seed,
    length or logging (see :func:`programs`)."""

    agent: Agent
    optimizer: optax.GradientTransformation
    initial_state: Callable  # key -> AgentState
    iterate: Callable  # AgentState -> (AgentState, metrics)
    versus_random: Callable  # (params, key) -> outcome of eval_games games (board_search.play)
    act: Callable  # (params, key, states) -> the agent's moves when evaluated


def match(agent: Agent, opponent: board_search.Player, config: Config, games: int) -> Callable:
    """``match(params, key) -> outcome`` (see ``board_search.play``) of the agent, jitted."""

    def play(params, key):
        player = agent.player(params, config.eval_simulations)
        return board_search.play(agent.env, player, opponent, key, games, MAX_MOVES[config.game])

    return jax.jit(play)


@functools.cache
def _programs(config: Config) -> Programs:
    env = pgx.make(config.game)
    agent = Agent(env, make_network(config, env.num_actions), config.considered, config.pass_from)
    learning_rate = config.learning_rate
    if config.anneal:  # a function of the optimizer's own step: a resumed run follows it as it was
        learning_rate = optax.cosine_decay_schedule(
            learning_rate, config.anneal * config.sgd_steps, alpha=0.1
        )
    optimizer = optax.adamw(learning_rate, weight_decay=config.weight_decay)

    @jax.jit  # one compilation, where eager initialisation would compile every op of the game
    def initial_state(key):
        k_init, k_games = jax.random.split(key)
        games = new_games(env, k_games, config)
        return fnn.rl.AgentState.create(
            agent.network, optimizer, k_init, games.observation, env=games,
            memory=empty_buffer(env, config.buffer),
        )

    return Programs(
        agent, optimizer, initial_state, jax.jit(make_iterate(agent, optimizer, config)),
        match(agent, board_search.random_player, config, config.eval_games),
        jax.jit(lambda params, key, states: agent.player(params, config.eval_simulations)(key, states)),
    )


def programs(config: Config) -> Programs:
    """The compiled functions of ``config``, made once per process for the settings that shape
    them (not the seed, the number of iterations or how often to log, evaluate and checkpoint)."""
    return _programs(dataclasses.replace(
        config, seed=0, iterations=1, log_every=1, eval_every=0, checkpoint_every=0, baseline_games=0
    ))


def make_evaluate(programs: Programs, config: Config) -> Callable:
    """``evaluate(state) -> metrics``: results against the random player (and, for tic-tac-toe,
    the number of games lost to minimax)."""

    def evaluate(state):
        key = jax.random.fold_in(jax.random.key(config.seed + 1), state.step)
        table = board_search.match_table(programs.versus_random(state.params, key))
        metrics = {f"{k}_vs_random": v for k, v in table.items() if k in ("win", "draw", "loss")}
        if config.game == "tic_tac_toe":
            t = minimax_table(programs, state.params, key)
            metrics["losses_vs_minimax"] = t["minimax_first_losses"] + t["minimax_second_losses"]
        return metrics

    return evaluate


# -- the stages ------------------------------------------------------------------------


def setup(config: Config) -> dict:
    """The compiled programs and the initial state: self-play games started, the buffer empty."""
    p = programs(config)
    return {"programs": p, "state": p.initial_state(jax.random.key(config.seed))}


def train(programs: Programs, state, config: Config, run=None, progress: bool = False) -> dict:
    """Self-play and learning for ``config.iterations`` iterations (``iterate`` is compiled already)."""
    state, history = fnn.rl.train(
        programs.iterate, state, config.iterations, run=run, log_every=config.log_every,
        evaluate=make_evaluate(programs, config), eval_every=config.eval_every,
        checkpoint_every=config.checkpoint_every, progress=progress, jit=False,
    )
    return {"state": state, "history": history}


def report(programs: Programs, state, config: Config, run=None) -> dict:
    """The final tables: results by opponent and seat."""
    key = jax.random.key(config.seed + 2)
    results = {"random": board_search.match_table(programs.versus_random(state.params, key))}
    if config.baseline_games:
        sims = max(config.eval_simulations, 2)
        mcts = board_search.rollout_mcts_player(programs.agent.env, sims)
        outcome = match(programs.agent, mcts, config, config.baseline_games)(state.params, key)
        results[f"rollout MCTS, {sims} sims"] = board_search.match_table(outcome)
    final = {}
    for name, table in results.items():
        prefix = "random" if name == "random" else "mcts"
        final.update({f"{prefix}_{k}": v for k, v in table.items()})
    agent = "greedy network" if config.eval_simulations == 0 else f"search, {config.eval_simulations} sims"
    lines = [f"the agent plays: {agent}", f"{'opponent':28s} {'seat':6s}   win   draw   loss"]
    for name, table in results.items():
        for seat in ("first", "second"):
            lines.append(f"{name:28s} {seat:6s} {table[f'{seat}_win']:6.1%} {table[f'{seat}_draw']:6.1%} "
                         f"{table[f'{seat}_loss']:6.1%}")
    if config.game == "tic_tac_toe":
        t = minimax_table(programs, state.params, key)
        final.update(t)
        final["never_loses_to_minimax"] = t["minimax_first_losses"] + t["minimax_second_losses"] == 0
        for seat in ("first", "second"):
            lines.append(f"{'minimax, every tie-break':28s} {seat:6s} {t[f'minimax_{seat}_games']} games, "
                         f"{t[f'minimax_{seat}_wins']} won, "
                         f"{t[f'minimax_{seat}_losses']} lost")
    if run is not None:
        plot_results(results, run.directory / "results.png", config.game)
    return {"final": final, "report": lines, "notes": lines}


def plot_results(results: dict, path, title: str) -> None:
    """Stacked win/draw/loss bars, one per opponent and seat."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{name}\n{seat}" for name in results for seat in ("first", "second")]
    rates = {o: [results[n][f"{s}_{o}"] for n in results for s in ("first", "second")]
             for o in ("win", "draw", "loss")}
    fig, ax = plt.subplots(figsize=(1.8 * len(labels) + 1, 3.5))
    bottom = np.zeros(len(labels))
    for outcome, color in (("win", "tab:green"), ("draw", "tab:gray"), ("loss", "tab:red")):
        ax.bar(labels, rates[outcome], bottom=bottom, color=color, label=outcome)
        bottom += np.array(rates[outcome])
    ax.set_ylabel("fraction of games")
    ax.set_title(f"{title}: the agent's results")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


PIPELINE = Pipeline(setup, train, report)
TICTACTOE = Experiment(
    "tictactoe", "AlphaZero self-play (Gumbel search on pgx) learns tic-tac-toe; checked against minimax",
    Config(), PIPELINE,
)
CONNECT_FOUR = Experiment(
    "connect-four", "AlphaZero self-play learns connect four; played against random and rollout MCTS",
    Config(game="connect_four", channels=16, blocks=2, games=64, moves=8, simulations=16, considered=7,
           random_moves=2, buffer=16384, batch_size=128, sgd_steps=8, iterations=150, anneal=0,
           eval_simulations=16, eval_games=100, baseline_games=100, log_every=10, eval_every=50),
    PIPELINE,
)
GO = Experiment(
    "go-9x9", "AlphaZero self-play on 9x9 Go (a long run); played against random",
    Config(game="go_9x9", channels=32, blocks=2, games=32, moves=16, simulations=16, random_moves=0,
           buffer=32768, sgd_steps=8, iterations=200, anneal=0, pass_from=40,
           eval_simulations=16, eval_games=32, log_every=10, eval_every=50),
    PIPELINE,
)
EXPERIMENTS = {e.name: e for e in (TICTACTOE, CONNECT_FOUR, GO)}
BY_GAME = {e.config.game: e for e in EXPERIMENTS.values()}


def run(config: Config = Config(), **options) -> dict:
    """Run the experiment of ``config.game`` (no run directory unless ``run=`` is given); returns
    the pipeline's values."""
    return BY_GAME[config.game](config, **options)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in EXPERIMENTS:
        sys.exit(f"usage: python -m experiments.alphazero {{{'|'.join(EXPERIMENTS)}}} [KEY=VALUE ...]")
    fnn.cli.experiment_main(sys.argv[1], sys.argv[2:], program=True)
