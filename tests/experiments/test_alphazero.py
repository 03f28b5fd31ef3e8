"""AlphaZero self-play: exact minimax, the baselines, learning, determinism, resumption."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pgx
import pytest

import fnn
from experiments import alphazero, board_search
from fnn.config import ConfigError

E = -1  # an empty cell; 0 is X (who moves first), 1 is O


def board(text: str) -> tuple[int, ...]:
    return tuple({"x": 0, "o": 1, ".": E}[c] for c in text.replace(" ", ""))


# -- exact minimax --------------------------------------------------------------------------


def test_minimax_values_of_hand_checked_positions():
    assert board_search.tictactoe_value(board_search.EMPTY) == 0  # tic-tac-toe is a draw
    assert set(board_search.optimal_moves(board_search.EMPTY)) == set(range(9))  # every opening draws
    win_in_one = board("xx. oo. ...")  # X to move completes the top row
    assert board_search.tictactoe_value(win_in_one) == 1
    assert board_search.optimal_moves(win_in_one) == [2]
    forced_block = board("xx. .o. ...")  # O to move must take 2; anything else loses
    assert board_search.mover(forced_block) == 1
    assert board_search.tictactoe_value(forced_block) == 0
    assert board_search.optimal_moves(forced_block) == [2]
    fork = board("x.. .o. ..x")  # O to move: a corner lets X fork, an edge draws
    assert board_search.optimal_moves(fork) == [1, 3, 5, 7]
    forks = board("x.o .o. ..x")  # after O's corner: X must block at 6, which forks (3 and 7)
    assert board_search.tictactoe_value(forks) == 1
    assert board_search.optimal_moves(forks) == [6]
    assert board_search.tictactoe_value(board("xox oxo ...")) == 1  # X to move wins at 6 or 8
    assert board_search.tictactoe_value(board("xox xoo ox.")) == 0  # X to move, the last cell draws


def test_reachable_positions_and_minimax_games():
    positions = board_search.reachable_positions()
    assert len(positions) == 4520  # 5,478 legal positions, 958 of them final
    perfect = {b: board_search.optimal_moves(b)[0] for b in positions}
    for first in (True, False):
        results = board_search.games_against_minimax(perfect, first)
        assert results and all(r == 0 for r in results)  # perfect play against minimax draws
    careless = {b: next(c for c in range(9) if b[c] == E) for b in positions}  # the first empty cell
    assert min(board_search.games_against_minimax(careless, True)) == -1


def test_pgx_states_of_boards():
    boards = [board_search.EMPTY, board("x.. .o. ..x"), board("xox oxo ...")]
    states = board_search.pgx_states(pgx.make("tic_tac_toe"), boards)
    assert np.asarray(states._x.board).tolist() == [list(b) for b in boards]
    assert not np.asarray(states.terminated).any()
    np.testing.assert_array_equal(states.legal_action_mask, np.array(boards) == E)
    obs = np.asarray(states.observation)  # planes: the mover's marks, then the other player's
    for b, o in zip(boards, obs):
        me = board_search.mover(b)
        np.testing.assert_array_equal(o[..., 0].ravel(), np.array(b) == me)
        np.testing.assert_array_equal(o[..., 1].ravel(), np.array(b) == 1 - me)


# -- the baselines -----------------------------------------------------------------------------


def test_rollout_mcts_beats_random():
    env = pgx.make("connect_four")
    mcts = board_search.rollout_mcts_player(env, 16)
    play = jax.jit(lambda key: board_search.play(env, mcts, board_search.random_player, key, 16, 42))
    table = board_search.match_table(play(jax.random.key(0)))
    # random against random wins about half its games; 16 simulations of rollouts win far more
    assert table["win"] >= 0.75 and table["first_win"] >= 0.75, table


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"game": "chess"}, "game"),
        ({"simulations": 1}, "simulations"),
        ({"buffer": 10, "games": 20}, "buffer"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"eval_simulations": 1}, "eval_simulations"),
        ({"batch_size": 0}, "batch_size"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"anneal": -1}, "anneal"),
        ({"random_moves": 5}, "random_moves"),  # a tic-tac-toe game can end after 5 moves
        ({"pass_from": 10}, "pass_from"),  # tic-tac-toe has no pass
        ({"game": "go_9x9", "random_moves": 0, "pass_from": -1}, "pass_from"),
    ],
)
def test_bad_config_values_name_the_key(change, key):
    with pytest.raises(ConfigError, match=key):
        dataclasses.replace(alphazero.Config(), **change)


def test_bad_config_override_names_the_key():
    with pytest.raises(ConfigError, match="game"):
        fnn.config.override(alphazero.TICTACTOE.config, ["game=chess"])


# -- self-play and learning -------------------------------------------------------------------

TINY_TICTACTOE = alphazero.Config(
    channels=8, blocks=1, games=32, moves=3, simulations=8, random_moves=2, buffer=1024, batch_size=64,
    sgd_steps=4, learning_rate=2e-3, iterations=40, anneal=40, eval_simulations=0, eval_games=100, log_every=10,
    eval_every=20,
)


@pytest.fixture(scope="module")
def tictactoe_run(tmp_path_factory):
    """Tic-tac-toe for 40 iterations in a run directory."""
    return fnn.pipeline.start(alphazero.TICTACTOE, TINY_TICTACTOE, tmp_path_factory.mktemp("straight"),
                              progress=False)


def test_tictactoe_learns_to_beat_random(tictactoe_run):
    run, values = tictactoe_run
    evals = [r for r in values["history"] if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [20, 40]
    final = values["final"]
    # a random player wins and loses about 44% against random (58% / 29% wins moving first / second)
    assert final["random_win"] >= 0.55 and final["random_loss"] <= 0.3, final
    assert final["minimax_first_games"] >= 1 and final["minimax_second_games"] >= 9
    train = [r for r in values["history"] if r["split"] == "train"]
    assert train[-1]["policy_loss"] < train[0]["policy_loss"]
    for name in ("curves.png", "results.png", "final.json", "summary.md"):
        assert (run.directory / name).exists(), name
    assert any("minimax" in line for line in values["report"])


def test_resumed_run_equals_uninterrupted(tmp_path, tictactoe_run):
    """8 iterations straight through, and stopped at 4 and resumed (the programs are the
    fixture's: the length and the intervals do not change what is compiled)."""
    config = dataclasses.replace(TINY_TICTACTOE, iterations=8, log_every=2, eval_every=4)
    _, straight = fnn.pipeline.start(alphazero.TICTACTOE, config, tmp_path / "straight", progress=False)
    fnn.pipeline.start(alphazero.TICTACTOE, dataclasses.replace(config, iterations=4), tmp_path / "resumed",
                       progress=False)
    resumed = fnn.pipeline.run_in(alphazero.TICTACTOE, config, fnn.runs.Run(tmp_path / "resumed"), False)
    assert [r["step"] for r in resumed["history"] if r["split"] == "eval"] == [4, 8]
    chex.assert_trees_all_equal(straight["state"].params, resumed["state"].params)
    chex.assert_trees_all_equal(straight["state"].memory, resumed["state"].memory)
    chex.assert_trees_all_equal(straight["state"].env, resumed["state"].env)
    assert straight["history"] == resumed["history"]
    assert straight["final"] == resumed["final"]


def test_self_play_is_deterministic():
    programs = alphazero.programs(TINY_TICTACTOE)
    runs = []
    for _ in range(2):
        state = programs.initial_state(jax.random.key(3))
        for _ in range(2):
            state, metrics = programs.iterate(state)
            state = state._replace(step=state.step + 1)
        runs.append((state, metrics))
    chex.assert_trees_all_equal(runs[0], runs[1])
    buffer = runs[0][0].memory
    assert int(buffer["count"]) == 2 * TINY_TICTACTOE.moves * TINY_TICTACTOE.games
    np.testing.assert_allclose(np.asarray(buffer["policy"][: int(buffer["count"])]).sum(-1), 1.0, atol=1e-5)
    other = programs.initial_state(jax.random.key(4))
    assert not np.array_equal(jax.tree.leaves(other.params)[0], jax.tree.leaves(runs[0][0].params)[0])


def test_buffer_settles_values_when_games_end():
    env = pgx.make("tic_tac_toe")
    states = jax.vmap(env.init)(jax.random.split(jax.random.key(0), 2))
    buffer = alphazero.empty_buffer(env, 8)
    buffer = alphazero.record(buffer, states, jnp.full((2, 9), 1 / 9))
    rewards = jnp.array([[1.0, -1.0], [0.0, 0.0]])
    buffer = alphazero.settle(buffer, jnp.array([True, False]), rewards)
    player = np.asarray(states.current_player)
    assert np.asarray(buffer["ended"]).tolist() == [True, False, False, False, False, False, False, False]
    assert float(buffer["value"][0]) == (1.0 if player[0] == 0 else -1.0)


def test_connect_four_learns_something():
    config = dataclasses.replace(
        alphazero.CONNECT_FOUR.config, channels=8, blocks=1, games=32, moves=8, simulations=8, buffer=2048,
        batch_size=64, sgd_steps=4, iterations=12, eval_simulations=0, eval_games=64, baseline_games=0,
        log_every=4, eval_every=0,
    )
    values = alphazero.run(config)
    train = [r for r in values["history"] if r["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]
    assert values["final"]["random_win"] >= 0.6, values["final"]


def test_go_agent_does_not_pass_before_pass_from_unless_nothing_else_is_legal():
    env = pgx.make("go_9x9")
    agent = alphazero.Agent(env, alphazero.make_network(alphazero.GO.config, env.num_actions), 4, pass_from=3)
    states = jax.jit(jax.vmap(env.init))(jax.random.split(jax.random.key(0), 2))
    pass_move = env.num_actions - 1
    assert np.asarray(states.legal_action_mask[:, pass_move]).all()  # the game allows it
    assert not np.asarray(agent.legal(states)[:, pass_move]).any()
    np.testing.assert_array_equal(agent.legal(states)[:, :pass_move], states.legal_action_mask[:, :pass_move])
    only_pass = states.replace(legal_action_mask=jnp.zeros_like(states.legal_action_mask).at[:, -1].set(True))
    assert np.asarray(agent.legal(only_pass)[:, pass_move]).all()
    step = jax.jit(jax.vmap(env.step))
    for move in (0, 1, 2):
        states = step(states, jnp.array([move, move + 10]))
    assert np.asarray(agent.legal(states)[:, pass_move]).all()  # move 3 of the game: passing is allowed


def test_go_smoke_loss_falls():
    config = dataclasses.replace(
        alphazero.GO.config, channels=4, blocks=1, games=4, moves=4, simulations=2, considered=4,
        buffer=64, batch_size=16, sgd_steps=8, iterations=4, eval_games=2, log_every=1, eval_every=0,
    )
    programs = alphazero.programs(config)
    state = programs.initial_state(jax.random.key(0))
    losses = []
    for _ in range(config.iterations):
        state, metrics = programs.iterate(state)
        state = state._replace(step=state.step + 1)
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0], losses
    # 16 moves into games that pass only from move 40: no search target puts weight on pass
    written = int(state.memory["count"])
    assert written == config.iterations * config.moves * config.games
    assert not np.asarray(state.memory["policy"][:written, -1]).any()
