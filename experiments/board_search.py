"""Opponents and referees for the board-game agents of ``experiments/alphazero.py``.

- :func:`tictactoe_value`, :func:`optimal_moves`: exact minimax for tic-tac-toe by memoised
  search over the positions reachable from the empty board (5,478 of them), in plain Python.
  A board is a tuple of nine cells read row by row, ``-1`` empty, ``0`` X (who moves first),
  ``1`` O -- pgx's own encoding -- and values are from the view of the player to move:
  ``+1`` a win, ``0`` a draw, ``-1`` a loss with best play. The empty board is a draw.
- :func:`games_against_minimax`: every game an agent that plays one fixed move per position
  can have against a minimax player that breaks its ties in every possible way;
  :func:`pgx_states` gives the pgx states of the positions, to ask a batched agent its moves.
- :func:`random_player`, :func:`rollout_mcts_player`: batched JAX players over pgx states.
  The rollout player is plain Monte Carlo tree search: uniform priors, and as the value of
  each new leaf the result of one game played on from it with uniformly random legal moves
  (pgx steps under ``lax.while_loop``); the tree and its PUCT selection are ``mctx``'s.
- :func:`play`: a match of many games at once between two players, both seats.

A player is ``player(key, states) -> actions`` over a batch of pgx states.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import mctx
import numpy as np
import pgx

Player = Callable[[jax.Array, pgx.State], jax.Array]

# -- exact tic-tac-toe ----------------------------------------------------------------

LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))
EMPTY = (-1,) * 9


def mover(board: tuple[int, ...]) -> int:
    """Whose turn it is: 0 (X) when both have placed as many marks, else 1 (O)."""
    return 0 if board.count(0) == board.count(1) else 1


def winner(board: tuple[int, ...]) -> int:
    """The player with three in a line, or -1."""
    for a, b, c in LINES:
        if board[a] != -1 and board[a] == board[b] == board[c]:
            return board[a]
    return -1


def is_over(board: tuple[int, ...]) -> bool:
    return winner(board) != -1 or -1 not in board


def play_move(board: tuple[int, ...], cell: int) -> tuple[int, ...]:
    if board[cell] != -1:
        raise ValueError(f"cell {cell} of {board} is taken")
    return board[:cell] + (mover(board),) + board[cell + 1 :]


@functools.cache
def tictactoe_value(board: tuple[int, ...]) -> int:
    """The minimax value of ``board`` for the player to move (+1 win, 0 draw, -1 loss)."""
    if winner(board) != -1:
        return -1  # the previous move won
    if -1 not in board:
        return 0
    return max(-tictactoe_value(play_move(board, c)) for c in range(9) if board[c] == -1)


def optimal_moves(board: tuple[int, ...]) -> list[int]:
    """Every move that keeps the minimax value of ``board`` for the player to move."""
    value = tictactoe_value(board)
    return [c for c in range(9) if board[c] == -1 and -tictactoe_value(play_move(board, c)) == value]


def reachable_positions() -> list[tuple[int, ...]]:
    """Every position reachable from the empty board where the game is not over, in a fixed order."""
    seen, frontier = {EMPTY}, [EMPTY]
    while frontier:
        board = frontier.pop()
        for c in range(9):
            if board[c] == -1 and not is_over(board):
                child = play_move(board, c)
                if child not in seen:
                    seen.add(child)
                    frontier.append(child)
    return sorted(b for b in seen if not is_over(b))


def pgx_states(env: pgx.Env, boards: list[tuple[int, ...]]) -> pgx.State:
    """pgx tic-tac-toe states (batched) of ``boards`` (positions reachable from the empty
    board, not over), reached by playing X's and O's marks alternately in cell order."""
    plies = np.full((len(boards), 9), -1, np.int32)
    for i, b in enumerate(boards):
        xs, os = [c for c in range(9) if b[c] == 0], [c for c in range(9) if b[c] == 1]
        order = [m for pair in zip(xs, os + [None]) for m in pair if m is not None]
        plies[i, : len(order)] = order

    def replay(key, plies):
        def ply(state, cell):
            return jax.lax.cond(cell >= 0, lambda: env.step(state, cell), lambda: state), None

        return jax.lax.scan(ply, env.init(key), plies)[0]

    keys = jax.random.split(jax.random.key(0), len(boards))
    return jax.jit(jax.vmap(replay))(keys, jnp.asarray(plies))


def games_against_minimax(agent_move: dict[tuple[int, ...], int], agent_first: bool) -> list[int]:
    """The results (+1 win, 0 draw, -1 loss, for the agent) of every game between the agent and
    a minimax player that may pick any of its optimal moves; with ``agent_first=False`` minimax
    opens with any of the nine moves (each is optimal: they all draw).

    ``agent_move`` maps each position where the agent is to move to its move.
    """
    agent = 0 if agent_first else 1
    results = []

    def walk(board: tuple[int, ...]) -> None:
        if is_over(board):
            w = winner(board)
            results.append(0 if w == -1 else (1 if w == agent else -1))
        elif mover(board) == agent:
            walk(play_move(board, agent_move[board]))
        else:
            for c in optimal_moves(board):
                walk(play_move(board, c))

    walk(EMPTY)
    return results


# -- batched players --------------------------------------------------------------------


def random_player(key: jax.Array, states: pgx.State) -> jax.Array:
    """A uniformly random legal move in each game."""
    logits = jnp.where(states.legal_action_mask, 0.0, -jnp.inf)
    return jax.random.categorical(key, logits)


def rollout_value(env: pgx.Env, key: jax.Array, state: pgx.State) -> jax.Array:
    """The result, for the player to move in ``state``, of one game finished with random moves
    (0 when ``state`` is already over: pgx's terminal rewards belong to the move that ended it)."""
    player = state.current_player

    def unfinished(carry):
        s, _, _ = carry
        return ~(s.terminated | s.truncated)

    def move(carry):
        s, total, k = carry
        k, k_move = jax.random.split(k)
        action = jax.random.categorical(k_move, jnp.where(s.legal_action_mask, 0.0, -jnp.inf))
        s = env.step(s, action)
        return s, total + s.rewards[player], k

    _, total, _ = jax.lax.while_loop(unfinished, move, (state, jnp.float32(0.0), key))
    return total


def rollout_mcts_player(env: pgx.Env, simulations: int) -> Player:
    """Plain MCTS: ``simulations`` simulations per move, each adding one leaf valued by one random
    rollout, PUCT selection with uniform priors (``mctx.muzero_policy`` without noise); plays the
    most visited move."""

    def recurrent_fn(params, key, action, states):
        del params
        mover_ = states.current_player
        states = jax.vmap(env.step)(states, action)
        reward = states.rewards[jnp.arange(action.shape[0]), mover_]
        keys = jax.random.split(key, action.shape[0])
        value = jax.vmap(functools.partial(rollout_value, env))(keys, states)
        discount = jnp.where(states.terminated, 0.0, -1.0)
        prior = jnp.zeros(states.legal_action_mask.shape)
        out = mctx.RecurrentFnOutput(reward=reward, discount=discount, prior_logits=prior, value=value)
        return out, states

    def player(key: jax.Array, states: pgx.State) -> jax.Array:
        k_root, k_search, k_tie = jax.random.split(key, 3)
        n = states.legal_action_mask.shape[0]
        value = jax.vmap(functools.partial(rollout_value, env))(jax.random.split(k_root, n), states)
        root = mctx.RootFnOutput(
            prior_logits=jnp.zeros(states.legal_action_mask.shape), value=value, embedding=states
        )
        out = mctx.muzero_policy(
            None, k_search, root, recurrent_fn, simulations,
            invalid_actions=~states.legal_action_mask, dirichlet_fraction=0.0,
        )
        visits = out.action_weights + 1e-3 * jax.random.uniform(k_tie, out.action_weights.shape)
        return jnp.argmax(jnp.where(states.legal_action_mask, visits, -1.0), axis=-1)

    return player


def play(
    env: pgx.Env, player: Player, opponent: Player, key: jax.Array, games: int, max_moves: int
) -> dict[str, jax.Array]:
    """``games`` games of ``player`` against ``opponent``, ``player`` moving first in the first
    half and second in the rest; returns ``first`` (bool[games]: ``player`` moved first) and
    ``result`` (float[games]: ``player``'s reward, +1 win, 0 draw, -1 loss). Every game stops
    after at most ``max_moves`` moves (a game cut short counts as a draw). Jit it."""
    k_init, k_play = jax.random.split(key)
    states = jax.vmap(env.init)(jax.random.split(k_init, games))
    first = jnp.arange(games) < (games + 1) // 2
    seat = jnp.where(first, states.current_player, 1 - states.current_player)

    def unfinished(carry):
        s, _, _, moves = carry
        return jnp.any(~(s.terminated | s.truncated)) & (moves < max_moves)

    def move(carry):
        s, total, k, moves = carry
        k, k_a, k_b = jax.random.split(k, 3)
        action = jnp.where(s.current_player == seat, player(k_a, s), opponent(k_b, s))
        s = jax.vmap(env.step)(s, action)
        return s, total + s.rewards[jnp.arange(games), seat], k, moves + 1

    _, result, _, _ = jax.lax.while_loop(
        unfinished, move, (states, jnp.zeros(games), k_play, jnp.int32(0))
    )
    return {"first": first, "result": result}


def match_table(outcome: dict[str, jax.Array]) -> dict[str, float]:
    """Win, draw and loss rates of a :func:`play` match, overall and by seat."""
    first = np.asarray(outcome["first"])
    result = np.asarray(outcome["result"])
    table = {}
    for seat, mask in (("", np.ones_like(first)), ("first_", first), ("second_", ~first)):
        r = result[mask]
        table[f"{seat}win"] = float(np.mean(r > 0))
        table[f"{seat}draw"] = float(np.mean(r == 0))
        table[f"{seat}loss"] = float(np.mean(r < 0))
    return table
