"""Poker by neural self-play: Kuhn poker to near-equilibrium, Leduc hold'em against random play.

Both games are pgx environments (``kuhn_poker``, ``leduc_holdem``) played thousands of
games at a time under ``vmap``. One network plays both seats of every game: it reads
the pgx observation of the player to act and answers, from three heads, with the current
policy over the legal actions, an estimate of each action's value (chips won by the end
of the game) and the average policy.

The learner is magnetic mirror descent (MMD; Sokota et al., "A Unified Approach to
Reinforcement Learning, Quantal Response Equilibria, and Two-Player Zero-Sum Games",
ICLR 2023). Each iteration plays ``games`` games, each action drawn from the current
policy ``pi`` (with a share ``explore`` of uniformly random ones, so that every action's
value keeps being measured), and then, at every decision in them, moves the policy towards::

    pi'(a) ∝ exp((log pi(a) + eta * Q(a) + eta * alpha * log rho(a)) / (1 + eta * alpha))

where ``Q`` is the value head's estimate of each action's value, ``eta`` the step size,
and ``rho`` the "magnet", a copy of the policy refreshed every ``magnet_every``
iterations, towards which ``alpha`` pulls. With exact values this is a proximal-point
method whose policy itself converges to an equilibrium; plain self-play (``alpha = 0``)
circles around one instead. The network is fitted to ``pi'`` by cross-entropy, a few
Adam steps per iteration, so it moves only part of the way; a large ``eta`` makes up for
that. The value head is fitted to the games' outcomes by squared error, each outcome
weighted by the importance ratios of the later actions (the policy's probability over
the exploring one's), so it estimates the values under the policy itself.

Sampled games leave the values noisy, and the current policy jitters around the
equilibrium (0.05 to 0.13 exploitability at the end of a Kuhn run). A third head keeps
the mean of the policies from iteration ``average_from`` on: at each decision it is
fitted to ``(1 - 1/n) * average + (1/n) * pi`` for the ``n``-th policy averaged. The
average policy is what is scored, and what plays. The whole iteration (games and
updates) is one compiled function run by ``fnn.rl.train``.

pgx's observation is one-hot: the player's card (and, in Leduc, the public card once
dealt) and the chips each player has put in. It leaves out whose turn it was first:
in Kuhn poker, the first player's opening decision and the second player's reply to a
check both see no bets, and the second player facing a bet and the first player facing
a bet after checking both see one. No equilibrium plays alike at both members of both
pairs (the first pair agree only when ``alpha = 1/3`` in Kuhn's family below, the second
only when ``alpha = 0``), so the network also reads one bit, whether the player to act
opened the betting (of the round, in Leduc). With it a Kuhn observation names its information set
exactly (:func:`kuhn_features`).

Kuhn poker is then scored exactly on its game tree (``experiments/poker_tree.py``, which
also gives Kuhn's family of equilibria): the network's probabilities at the 12
information sets give the exploitability (half the NashConv: the mean of what the two
best responses win) and the first player's expected value, -1/18 at equilibrium. Leduc hold'em
(six cards, two betting rounds, a public card) is scored by playing the trained policy
against a uniformly random player in both positions.

Measured with the defaults for seeds 0, 1 and 2 on a 2-core CPU heavily shared with
other jobs (so wall times vary; CPU times are steadier):

- Kuhn poker, 300 iterations of 2,048 games: the average policy's exploitability is
  0.030, 0.028 and 0.025 chips per game (uniform play: 11/24 = 0.458; the current
  policy's: 0.108, 0.046, 0.131), and the first player's value -0.052, -0.054 and
  -0.054 (-1/18 = -0.0556); a whole run takes 126-224 s of wall time, 40-42 s of CPU
  time.
- Leduc hold'em, 200 iterations of 1,024 games: against the uniformly random player
  the average policy wins +0.69, +1.01 and +0.46 chips per game (standard error 0.02
  over 40,000 games; +0.46, +0.86, +0.38 acting first, +0.91, +1.16, +0.53 acting
  second), winning 43-51% of the games; a whole run takes 147-283 s of wall time,
  49-56 s of CPU time. The seeds differ by far more than the standard errors: they
  learn different strategies, and how close each is to an equilibrium is not measured
  (Leduc's exploitability is not computed here).

Run: fnn run kuhn-poker [iterations=300] [games=2048] [seed=0]
     fnn run leduc-holdem [iterations=200] [eval_games=20000] [seed=0]
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pgx

import fnn
from experiments import poker_tree
from fnn.config import ConfigError, check_seeds, check_that
from fnn.pipeline import Experiment, Pipeline


@dataclasses.dataclass(frozen=True)
class Config:
    iterations: int = 300
    games: int = 2048  # self-play games per iteration
    hidden: int = 32  # units in each hidden layer of the three heads
    layers: int = 1  # hidden layers
    learning_rate: float = 0.01  # Adam
    updates: int = 8  # Adam steps on each iteration's games
    step_size: float = 10.0  # eta: how far one mirror-descent step moves, per chip of value
    temperature: float = 0.5  # alpha: the pull towards the magnet
    magnet_every: int = 10  # iterations between moves of the magnet to the current policy
    explore: float = 0.1  # the share of uniformly random actions in self-play
    average_from: int = 100  # the average policy is the mean of the policies from this iteration on
    eval_every: int = 25  # iterations between evaluations (and training records)
    checkpoint_every: int = 100  # iterations between checkpoints; 0: only at the end
    seed: int = 0

    def __post_init__(self):
        for key, low in (("iterations", 1), ("games", 2), ("hidden", 1), ("layers", 1), ("updates", 1),
                         ("magnet_every", 1), ("average_from", 0), ("eval_every", 1),
                         ("checkpoint_every", 0), ("seed", 0)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{key} must be an int >= {low}, got {value!r}")
        check_seeds(self, ["seed"])
        check_that(self, (("learning_rate", self.learning_rate > 0, "positive"),
                          ("step_size", self.step_size > 0, "positive"),
                          ("explore", 0 <= self.explore < 1, "in [0, 1)"),
                          ("temperature", self.temperature >= 0, ">= 0"),
                          # else the average head is fitted to each policy in turn, and the last is scored
                          ("average_from", self.average_from < self.iterations,
                           f"less than iterations ({self.iterations}) for any policy to be averaged")))


@dataclasses.dataclass(frozen=True)
class LeducConfig(Config):
    iterations: int = 200
    games: int = 1024
    hidden: int = 64
    updates: int = 4
    temperature: float = 1.0
    average_from: int = 60
    eval_games: int = 20_000  # in each position, against the random player

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.eval_games, int) or self.eval_games < 2:
            raise ConfigError(f"eval_games must be an int >= 2, got {self.eval_games!r}")


# -- the games -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Game:
    env_id: str
    max_actions: int  # the longest game, in actions


KUHN_POKER = Game("kuhn_poker", 3)
LEDUC_HOLDEM = Game("leduc_holdem", 8)  # at most four actions in each of the two rounds


def opened(state: pgx.State) -> jax.Array:
    """Whether the player to act opened the betting (of this round, in Leduc)."""
    if state.env_id == "kuhn_poker":
        return state._step_count % 2 == 0
    return state.current_player == state._first_player


def features(state: pgx.State) -> jax.Array:
    """The network's input: pgx's observation of the player to act and the bit :func:`opened`."""
    return jnp.concatenate([state.observation, opened(state)[..., None]], -1).astype(jnp.float32)


def kuhn_features(card: int, history: str) -> np.ndarray:
    """:func:`features` at the Kuhn information set ``(card, history)`` of ``poker_tree``:
    pgx's card one-hot, the player's and the opponent's chips bet (0 or 1, one-hot), and
    whether the player opened."""
    mine, theirs = 0, int(history.endswith("b"))
    x = np.zeros(8, np.float32)
    x[[card, 3 + mine, 5 + theirs]] = 1
    x[7] = poker_tree.player_of(history) == 0
    return x


KUHN_INFOSETS = np.stack([kuhn_features(i // 4, poker_tree.HISTORIES[i % 4]) for i in range(12)])
# pgx's Kuhn actions: 0 bets or calls, 1 checks or folds
BET = 0


# -- the network and the learner ---------------------------------------------------------


def make_model(config: Config, actions: int) -> fnn.Layer:
    """Three heads on the features, each an MLP: the current policy's logits, each action's
    value, and the average policy's logits."""

    def mlp():
        hidden = [layer for _ in range(config.layers) for layer in (fnn.Dense(config.hidden), jax.nn.relu)]
        return fnn.serial(*hidden, fnn.Dense(actions))

    return fnn.serial(fnn.fan_out(3), fnn.parallel(policy=mlp(), value=mlp(), average=mlp()))


def masked_log_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Log-probabilities over the legal actions (illegal ones get a large negative, not ``-inf``)."""
    return jax.nn.log_softmax(jnp.where(mask, logits, -1e9), axis=-1)


def play(model, params, env, game: Game, key: jax.Array, games: int, explore: float
         ) -> tuple[dict, jax.Array]:
    """``games`` games of self-play, each action drawn from the policy with probability
    ``1 - explore`` and uniformly otherwise; returns every turn's decisions ``[turn, games, ...]``
    (``ratio``: the policy's probability of the action over the one it was drawn with) and
    the outcome for each player ``[games, 2]``."""
    init_key, act_key = jax.random.split(key)
    states = jax.vmap(env.init)(jax.random.split(init_key, games))

    def turn(carry, key):
        states, outcome = carry
        x = features(states)
        logits, _, _ = model(params, x)
        mask = states.legal_action_mask
        policy = jnp.exp(masked_log_softmax(logits, mask))
        behaviour = (1 - explore) * policy + explore * mask / mask.sum(-1, keepdims=True)
        action = jax.random.categorical(key, jnp.log(behaviour))
        ratio = jnp.take_along_axis(policy / behaviour, action[:, None], -1)[:, 0]
        live = ~states.terminated
        decision = {"x": x, "mask": mask, "action": action, "player": states.current_player,
                    "live": live, "ratio": jnp.where(live, ratio, 1.0)}
        states = jax.vmap(env.step)(states, action)
        return (states, outcome + states.rewards), decision

    (states, outcome), decisions = jax.lax.scan(
        turn, (states, jnp.zeros((games, 2))), jax.random.split(act_key, game.max_actions)
    )
    return decisions, outcome


def action_values(decisions: dict, outcome: jax.Array) -> jax.Array:
    """An unbiased sample of each decision's value under the policy ``[turn, games]``: the
    acting player's outcome times the importance ratios of all later actions (of both players)."""
    later = jnp.cumprod(decisions["ratio"][::-1], 0)[::-1]
    later = jnp.concatenate([later[1:], jnp.ones_like(later[:1])])
    own = jnp.take_along_axis(outcome[None], decisions["player"][..., None], -1)[..., 0]
    return own * later


def targets(model, params, magnet, batch: dict, step: jax.Array, config: Config) -> dict:
    """What the three heads are fitted to at each decision: the mirror-descent step of the
    policy, and the running mean of the policies for the average head."""
    eta, alpha = config.step_size, config.temperature
    mask = batch["mask"]
    logits, q, average = model(params, batch["x"])
    log_magnet = masked_log_softmax(model(magnet, batch["x"])[0], mask)
    z = (masked_log_softmax(logits, mask) + eta * q + eta * alpha * log_magnet) / (1 + eta * alpha)
    weight = 1.0 / jnp.maximum(step - config.average_from + 1, 1).astype(jnp.float32)
    mean = (1 - weight) * jax.nn.softmax(jnp.where(mask, average, -1e9)) + weight * jax.nn.softmax(
        jnp.where(mask, logits, -1e9))
    return {"policy": jax.nn.softmax(jnp.where(mask, z, -1e9)), "average": mean}


def loss_fn(model, params, batch: dict) -> tuple[jax.Array, dict]:
    logits, q, average = model(params, batch["x"])
    mask, live = batch["mask"], batch["live"].astype(jnp.float32)
    n = jnp.maximum(live.sum(), 1.0)

    def cross_entropy(target, logits):
        return jnp.sum(live * -jnp.sum(jnp.where(mask, target * masked_log_softmax(logits, mask), 0), -1)) / n

    q_taken = jnp.take_along_axis(q, batch["action"][:, None], -1)[:, 0]
    parts = {
        "policy_loss": cross_entropy(batch["target"]["policy"], logits),
        "value_loss": jnp.sum(live * (q_taken - batch["value"]) ** 2) / n,
        "average_loss": cross_entropy(batch["target"]["average"], average),
    }
    return sum(parts.values()), parts


def make_iterate(model, optimizer, env, game: Game, config: Config):
    """One iteration: ``config.games`` games of self-play, then ``config.updates`` Adam steps of
    all three heads on them; every ``magnet_every`` iterations the magnet moves to the policy."""

    def iterate(state: fnn.rl.AgentState):
        key = jax.random.fold_in(state.rng, state.step)
        decisions, outcome = play(model, state.params, env, game, key, config.games, config.explore)
        decisions["value"] = action_values(decisions, outcome)
        batch = jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), decisions)
        batch["target"] = targets(model, state.params, state.memory["magnet"], batch, state.step, config)

        def update(carry, _):
            params, opt_state = carry
            (loss, parts), grads = jax.value_and_grad(functools.partial(loss_fn, model), has_aux=True)(
                params, batch)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), {"loss": loss, **parts}

        (params, opt_state), losses = jax.lax.scan(
            update, (state.params, state.opt_state), None, length=config.updates)
        moved = (state.step + 1) % config.magnet_every == 0
        magnet = jax.tree.map(lambda new, old: jnp.where(moved, new, old), params, state.memory["magnet"])
        first = decisions["player"][0][:, None]  # who acted first in each game
        metrics = {**jax.tree.map(lambda v: v[-1], losses),
                   "first_player_return": jnp.mean(jnp.take_along_axis(outcome, first, -1))}
        return state._replace(params=params, opt_state=opt_state, memory={"magnet": magnet}), metrics

    return iterate


def init_state(model, optimizer, config: Config, features_size: int) -> fnn.rl.AgentState:
    x = jax.ShapeDtypeStruct((1, features_size), jnp.float32)
    state = fnn.rl.AgentState.create(model, optimizer, jax.random.key(config.seed), x)
    return state._replace(memory={"magnet": state.params})


def probabilities(model, params, x: np.ndarray, head: str = "average") -> np.ndarray:
    """The ``head`` policy's (``"average"`` or ``"policy"``) action probabilities at feature rows ``x``."""
    logits, _, average = jax.jit(model)(params, jnp.asarray(x))
    return np.asarray(jax.nn.softmax(average if head == "average" else logits, -1), np.float64)


def kuhn_strategy(model, params, head: str = "average") -> np.ndarray:
    """The network's probability of betting or calling at each of ``poker_tree.INFOSETS``."""
    return probabilities(model, params, KUHN_INFOSETS, head)[:, BET]


# -- playing against a uniformly random player -------------------------------------------


@functools.cache
def match_against_random(model, env, game: Game, games: int):
    """A compiled ``match(params, key) -> (won, acts_first, finished)``: ``games`` games of the
    average policy against uniformly random play, the policy acting first in the first half
    of them; ``won`` is its winnings in chips, ``finished`` whether each game ended."""

    @jax.jit
    def match(params, key):
        init_key, act_key = jax.random.split(key)
        states = jax.vmap(env.init)(jax.random.split(init_key, games))
        acts_first = jnp.arange(games) < games // 2
        learner = jnp.where(acts_first, states.current_player, 1 - states.current_player)

        def turn(carry, key):
            states, won = carry
            mask = states.legal_action_mask
            _, _, average = model(params, features(states))
            ours, theirs = jax.random.split(key)
            action = jnp.where(
                states.current_player == learner,
                jax.random.categorical(ours, masked_log_softmax(average, mask)),
                jax.random.categorical(theirs, jnp.where(mask, 0.0, -1e9)),
            )
            states = jax.vmap(env.step)(states, action)
            return (states, won + jnp.take_along_axis(states.rewards, learner[:, None], -1)[:, 0]), None

        keys = jax.random.split(act_key, game.max_actions)
        (states, won), _ = jax.lax.scan(turn, (states, jnp.zeros(games)), keys)
        return won, acts_first, states.terminated

    return match


def mean_and_error(x: np.ndarray) -> tuple[float, float]:
    """The mean and its standard error."""
    return float(np.mean(x)), float(np.std(x, ddof=1) / np.sqrt(len(x)))


# -- the stages ------------------------------------------------------------------------


def kuhn() -> dict:
    """Stage: the game, Kuhn poker."""
    return {"game": KUHN_POKER, "env": pgx.make(KUHN_POKER.env_id)}


def leduc() -> dict:
    """Stage: the game, Leduc hold'em."""
    return {"game": LEDUC_HOLDEM, "env": pgx.make(LEDUC_HOLDEM.env_id)}


def learner(config: Config, game: Game, env) -> dict:
    """Stage: the network, its optimizer, the initial state and the iteration."""
    features_size = jax.eval_shape(lambda: features(env.init(jax.random.key(0)))).shape[-1]
    model = make_model(config, env.num_actions)
    optimizer = optax.adam(config.learning_rate)
    state = init_state(model, optimizer, config, features_size)
    return {"model": model, "optimizer": optimizer, "state": state,
            "iterate": make_iterate(model, optimizer, env, game, config)}


def kuhn_scores(model, params) -> dict[str, float]:
    """Exploitability of the average and the current policy, and the first player's value."""
    average = kuhn_strategy(model, params)
    return {"exploitability": poker_tree.exploitability(average),
            "current_exploitability": poker_tree.exploitability(kuhn_strategy(model, params, "policy")),
            "first_player_value": poker_tree.expected_value(average)}


def train(model, state, iterate, config: Config, game: Game, env, run=None, progress: bool = False) -> dict:
    """Stage: self-play for ``config.iterations`` iterations, evaluated every ``eval_every``
    (Kuhn: exploitability; Leduc: winnings against random play, the same games each time)."""
    if game == KUHN_POKER:
        def evaluate(state):
            return kuhn_scores(model, state.params)
    else:
        match = match_against_random(model, env, game, 2 * config.eval_games)

        def evaluate(state):
            won, _, _ = match(state.params, jax.random.key(config.seed + 1))
            return {"payoff_vs_random": float(np.mean(won))}

    state, history = fnn.rl.train(iterate, state, config.iterations, run=run, log_every=config.eval_every,
                                  evaluate=evaluate, eval_every=config.eval_every,
                                  checkpoint_every=config.checkpoint_every, progress=progress)
    return {"state": state, "history": history}


def kuhn_report(model, state, history, run=None) -> dict:
    """Stage: the learned strategy next to Kuhn's equilibrium family, its exploitability and value
    (and, in a run, ``exploitability.png``)."""
    scores = kuhn_scores(model, state.params)
    strategy = kuhn_strategy(model, state.params)
    alpha = float(np.clip(strategy[poker_tree.INFOSETS.index("J")], 0, 1 / 3))
    nash = poker_tree.equilibrium(alpha)
    lines = [f"information set   action       learned  equilibrium (alpha = {alpha:.3f}, the learned J bet)"]
    for name, p, q in zip(poker_tree.INFOSETS, strategy, nash):
        action = "call" if name.endswith("b") else "bet"
        seat = "first " if len(name) in (1, 3) else "second"
        lines.append(f"{name:<5} ({seat})  P({action:<4})    {p:7.3f}  {q:7.3f}")
    lines.append(f"exploitability (NashConv / 2) of the average policy {scores['exploitability']:.4f}, "
                 f"of the current policy {scores['current_exploitability']:.4f} chips per game")
    lines.append(f"first player's value {scores['first_player_value']:+.4f} "
                 f"(at equilibrium -1/18 = {-1 / 18:+.4f})")
    evals = [r for r in history if r["split"] == "eval"]
    if run is not None and evals:
        fnn.plots.curves({"exploitability": {
            "average policy": [(r["step"], r["exploitability"]) for r in evals],
            "current policy": [(r["step"], r["current_exploitability"]) for r in evals]}},
            run.directory / "exploitability.png", title="Kuhn poker", xlabel="iteration")
    final = {**scores, "equilibrium_value": -1 / 18, "alpha": alpha,
             "strategy": dict(zip(poker_tree.INFOSETS, strategy.round(4).tolist()))}
    return {"final": final, "report": lines}


def leduc_report(model, state, env, game: Game, config: LeducConfig) -> dict:
    """Stage: the average policy's winnings against uniformly random play, by position."""
    match = match_against_random(model, env, game, 2 * config.eval_games)
    won, acts_first, finished = (np.asarray(a) for a in match(state.params, jax.random.key(config.seed + 2)))
    if not finished.all():
        raise RuntimeError(f"{int((~finished).sum())} games did not end within {game.max_actions} actions")
    rows = {"first": won[acts_first], "second": won[~acts_first], "both": won}
    lines = [f"against a uniformly random player, {config.eval_games:,} games in each position:",
             "position          chips per game   standard error   won   lost"]
    final = {}
    for position, w in rows.items():
        mean, error = mean_and_error(w)
        lines.append(f"{'acting ' + position if position != 'both' else 'both':<17} {mean:+14.3f}   "
                     f"{error:14.3f}   {np.mean(w > 0):.3f}  {np.mean(w < 0):.3f}")
        final[f"payoff_{position}"], final[f"payoff_{position}_error"] = mean, error
        final[f"win_rate_{position}"] = float(np.mean(w > 0))
    return {"final": final, "report": lines}


KUHN_PIPELINE = Pipeline(kuhn, learner, train, report=kuhn_report)
LEDUC_PIPELINE = Pipeline(leduc, learner, train, report=leduc_report)
KUHN = Experiment(
    "kuhn-poker", "Kuhn poker by neural self-play (magnetic mirror descent), scored by exact exploitability",
    Config(), KUHN_PIPELINE)
LEDUC = Experiment(
    "leduc-holdem", "Leduc hold'em by neural self-play, scored against a uniformly random player",
    LeducConfig(), LEDUC_PIPELINE)


def run(config: Config = Config(), **options) -> dict:
    """Kuhn poker (no run directory unless ``run=`` is given); returns the pipeline's values."""
    return KUHN(config, **options)


def run_leduc(config: LeducConfig = LeducConfig(), **options) -> dict:
    """Leduc hold'em (no run directory unless ``run=`` is given); returns the pipeline's values."""
    return LEDUC(config, **options)


if __name__ == "__main__":  # python -m experiments.poker [leduc-holdem] [KEY=VALUE ...]
    import sys

    name = sys.argv.pop(1) if sys.argv[1:2] == ["leduc-holdem"] else "kuhn-poker"
    fnn.cli.experiment_main(name, program=True)
