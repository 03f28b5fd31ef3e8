"""Kuhn poker's exact game tree, pgx's Kuhn states mapped to its information sets, and the
self-play learner on small budgets (Kuhn and Leduc hold'em)."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pgx
import pytest

import fnn
from experiments import poker, poker_tree
from fnn.config import ConfigError

# -- the exact tree ------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.2, 1 / 3])
def test_equilibrium_family_has_the_game_value_and_no_exploitability(alpha):
    nash = poker_tree.equilibrium(alpha)
    assert poker_tree.expected_value(nash) == pytest.approx(-1 / 18, abs=1e-12)
    assert poker_tree.best_response_value(nash, 0) == pytest.approx(-1 / 18, abs=1e-12)
    assert poker_tree.best_response_value(nash, 1) == pytest.approx(1 / 18, abs=1e-12)
    assert abs(poker_tree.exploitability(nash)) < 1e-9


def test_exploitability_of_simple_strategies_matches_hand_computation():
    # Uniform play: BR_0 = (-1/2 + 1/2 + 3/2) / 3 = 1/2 (bet J: 1/2 - 1; bet Q: 1/2; K either:
    # 3/2) and BR_1 = (-3/4 + 1/4 + 7/4) / 3 = 5/12, so exploitability (1/2 + 5/12) / 2 = 11/24.
    uniform = np.full(12, 0.5)
    assert poker_tree.best_response_value(uniform, 0) == pytest.approx(1 / 2)
    assert poker_tree.best_response_value(uniform, 1) == pytest.approx(5 / 12)
    assert poker_tree.exploitability(uniform) == pytest.approx(11 / 24)
    # Always check, always call: either best response checks a J (-1), ties with a Q (0) and
    # bets a K, which is called (+2): BR_0 = BR_1 = 1/3; the profile's own value is 0.
    passive = np.array([float(h in ("b", "pb")) for _, h in (_split(n) for n in poker_tree.INFOSETS)])
    assert poker_tree.expected_value(passive) == pytest.approx(0.0)
    assert poker_tree.nash_conv(passive) == pytest.approx(2 / 3)
    assert poker_tree.exploitability(passive) == pytest.approx(1 / 3)


def _split(name):
    return poker_tree.CARDS.index(name[0]), name[1:]


def test_tree_rejects_bad_input():
    with pytest.raises(ValueError, match="12"):
        poker_tree.exploitability(np.full(11, 0.5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        poker_tree.expected_value(np.full(12, 1.5))
    with pytest.raises(ValueError, match="alpha"):
        poker_tree.equilibrium(0.5)


# -- pgx's Kuhn poker and the information sets ---------------------------------------------


def test_pgx_states_map_to_the_tree_infosets_and_payoffs():
    """Play every deal down every history in pgx; at each decision the network's features are
    those of the tree's information set, and each terminal pays what the tree pays."""
    env = pgx.make("kuhn_poker")
    step, features = jax.jit(env.step), jax.jit(poker.features)

    @jax.jit
    def deal(first, cards):  # pgx's state with ``first`` to act and ``cards`` by pgx player id
        state = env.init(jax.random.key(0)).replace(current_player=first, _cards=cards)
        return state.replace(observation=env.observe(state))

    actions = {"b": poker.BET, "p": 1 - poker.BET}
    seen = set()
    for first in (0, 1):  # pgx's id of the player who acts first
        for cards in [(a, b) for a in range(3) for b in range(3) if a != b]:
            for terminal in poker_tree.TERMINALS:
                state = deal(jnp.int32(first), jnp.int32(cards if first == 0 else cards[::-1]))
                for t, a in enumerate(terminal):
                    history = terminal[:t]
                    actor = poker_tree.player_of(history)
                    assert int(state.current_player) == (first if actor == 0 else 1 - first)
                    expected = poker.kuhn_features(cards[actor], history)
                    chex.assert_trees_all_equal(np.asarray(features(state)), expected)
                    index = poker_tree.infoset_index(cards[actor], history)
                    chex.assert_trees_all_equal(poker.KUHN_INFOSETS[index], expected)
                    seen.add(index)
                    assert not state.terminated
                    state = step(state, actions[a])
                assert state.terminated
                assert float(state.rewards[first]) == poker_tree.payoff(terminal, cards)
    assert seen == set(range(12))
    # the twelve information sets have twelve different feature vectors
    assert len({tuple(x) for x in poker.KUHN_INFOSETS}) == 12


# -- the learner ---------------------------------------------------------------------------

# average_from below the 20 iterations of the run stopped halfway, which needs a policy to average
SMALL = poker.Config(iterations=40, games=512, updates=8, average_from=19, eval_every=20,
                     checkpoint_every=20)


def test_kuhn_self_play_learns_and_resumes_exactly(tmp_path):
    """A short run brings exploitability far below uniform play's; a run stopped after 20
    iterations and continued to 40 in the same directory equals the uninterrupted run."""
    whole = poker.run(SMALL)
    fresh = poker.learner(SMALL, poker.KUHN_POKER, pgx.make("kuhn_poker"))["state"]
    assert poker.kuhn_scores(whole["model"], fresh.params)["exploitability"] > 0.35  # near 11/24
    final = whole["final"]
    assert final["exploitability"] < 0.15
    assert final["exploitability"] == pytest.approx(poker_tree.exploitability(
        np.array([final["strategy"][n] for n in poker_tree.INFOSETS])), abs=1e-3)
    assert abs(final["first_player_value"] + 1 / 18) < 0.05
    assert [r["step"] for r in whole["history"] if r["split"] == "eval"] == [20, 40]
    assert {"loss", "policy_loss", "value_loss", "average_loss"} <= set(whole["history"][0])
    assert any("-1/18" in line for line in whole["report"])

    directory = tmp_path / "run"
    fnn.pipeline.start(poker.KUHN, dataclasses.replace(SMALL, iterations=20), str(directory), progress=False)
    resumed = fnn.pipeline.run_in(poker.KUHN, SMALL, fnn.runs.Run(directory), progress=False)
    chex.assert_trees_all_equal(resumed["state"].params, whole["state"].params)
    chex.assert_trees_all_equal(resumed["state"].memory, whole["state"].memory)
    assert resumed["final"] == final  # the same seed gives the same run, bit for bit
    assert resumed["history"] == whole["history"] == fnn.runs.Run(directory).records()
    assert (directory / "exploitability.png").stat().st_size > 0


def test_leduc_smoke():
    config = poker.LeducConfig(iterations=4, games=64, updates=1, average_from=2, eval_every=2, eval_games=500)
    values = poker.run_leduc(config)
    final = values["final"]
    for position in ("first", "second", "both"):
        assert np.isfinite(final[f"payoff_{position}"])
        assert 0 < final[f"payoff_{position}_error"] < 2
        assert 0 <= final[f"win_rate_{position}"] <= 1
    assert final["payoff_both"] == pytest.approx((final["payoff_first"] + final["payoff_second"]) / 2)
    assert [r["step"] for r in values["history"] if r["split"] == "eval"] == [2, 4]
    assert any("acting first" in line for line in values["report"])


def test_action_values_weight_the_outcome_by_later_importance_ratios():
    decisions = {"ratio": jnp.array([[0.5, 1.0], [2.0, 1.0], [1.5, 1.0]]),  # [turn, game]
                 "player": jnp.array([[0, 1], [1, 0], [0, 1]])}
    outcome = jnp.array([[1.0, -1.0], [-2.0, 2.0]])
    chex.assert_trees_all_close(poker.action_values(decisions, outcome),
                                jnp.array([[3.0, 2.0], [-1.5, -2.0], [1.0, 2.0]]))


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda: poker.Config(iterations=0), "iterations"),
        (lambda: poker.Config(games=1), "games"),
        (lambda: poker.Config(learning_rate=0.0), "learning_rate"),
        (lambda: poker.Config(step_size=-1.0), "step_size"),
        (lambda: poker.Config(temperature=-0.1), "temperature"),
        (lambda: poker.Config(explore=1.0), "explore"),
        (lambda: poker.Config(magnet_every=0), "magnet_every"),
        (lambda: poker.Config(average_from=-1), "average_from"),
        # the scored policy would be the last one, not an average
        (lambda: poker.Config(iterations=50, average_from=1000), r"average_from must be less than iterations \(50\)"),
        (lambda: poker.Config(iterations=50, average_from=50), "average_from"),
        (lambda: poker.LeducConfig(iterations=60), "average_from"),
        (lambda: poker.LeducConfig(eval_games=1), "eval_games"),
        (lambda: fnn.config.override(poker.Config(), ["updates=0"]), "updates"),
    ],
)
def test_bad_config_values_are_named(make, key):
    with pytest.raises(ConfigError, match=key):
        make()
