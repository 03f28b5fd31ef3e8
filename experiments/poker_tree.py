"""Kuhn poker solved exactly on its game tree: expected values, best responses, exploitability.

Kuhn poker (H. W. Kuhn, 1950) is played with three cards, J < Q < K. Each player antes
one chip and is dealt one card; the first player checks or bets one chip; a player
facing a bet calls or folds; after a check the second player may check (showdown for
the antes) or bet, and the first player then calls or folds. The higher card wins the
pot at a showdown. The action sequences are therefore ``pp``, ``bp``, ``bb``, ``pbp``
and ``pbb`` (``p``: check or fold, ``b``: bet or call).

A player decides at 12 information sets: a card and the actions seen so far, ``""`` or
``"pb"`` for the first player and ``"p"`` or ``"b"`` for the second. A behaviour
strategy profile is one number per information set, the probability of ``b`` there,
in the order of :data:`INFOSETS` (``J``, ``Jp``, ``Jb``, ``Jpb``, ``Q``, ... ).

The game's value for the first player is -1/18. Kuhn found every equilibrium: the first
player bets a J with a probability ``alpha`` in [0, 1/3], always checks a Q, bets a K
with probability ``3 alpha``, and after check-bet folds a J, calls with a Q with
probability ``alpha + 1/3`` and calls with a K; the second player's strategy is unique:
facing a bet, call with a K, with a Q one time in three, never with a J; after a check,
bet a K, bet a J one time in three, check a Q (:func:`equilibrium`).

**Exploitability** here is half the NashConv: with ``BR_i`` the value that player ``i``
gets by a best response to the other player's strategy,
``exploitability = (BR_0 + BR_1) / 2``. Because the game is zero-sum this is the mean
gain of the two best responses over the profile's own values; it is 0 exactly at an
equilibrium, 11/24 for uniformly random play and 1/3 for always checking and calling.

    >>> round(expected_value(equilibrium(0.2)), 6) == round(-1 / 18, 6)
    True
    >>> round(exploitability(np.full(12, 0.5)), 6) == round(11 / 24, 6)
    True
"""

from __future__ import annotations

import numpy as np

CARDS = "JQK"
HISTORIES = ("", "p", "b", "pb")  # the decision points, in the order of INFOSETS within a card
INFOSETS = tuple(card + history for card in CARDS for history in HISTORIES)
TERMINALS = ("pp", "bp", "bb", "pbp", "pbb")


def infoset_index(card: int, history: str) -> int:
    """The position in :data:`INFOSETS` of holding ``card`` (0: J, 1: Q, 2: K) after ``history``."""
    return 4 * card + HISTORIES.index(history)


def player_of(history: str) -> int:
    """Who acts after ``history``: 0, the first player, or 1."""
    return len(history) % 2


def payoff(history: str, cards: tuple[int, int]) -> float:
    """The first player's winnings at a terminal ``history`` with ``cards`` = (first's, second's)."""
    if history == "bp":
        return 1.0  # the second player folded
    if history == "pbp":
        return -1.0  # the first player folded
    stake = 2.0 if history.endswith("bb") else 1.0
    return stake if cards[0] > cards[1] else -stake


def _check(strategy: np.ndarray) -> np.ndarray:
    strategy = np.asarray(strategy, np.float64)
    if strategy.shape != (len(INFOSETS),):
        raise ValueError(f"a Kuhn strategy profile is P(b) at {len(INFOSETS)} infosets, got {strategy.shape}")
    if not np.all((strategy >= 0) & (strategy <= 1)):
        raise ValueError(f"probabilities must lie in [0, 1], got {strategy}")
    return strategy


def _deals():
    """The six deals (first player's card, second player's card), each with probability 1/6."""
    return [(a, b) for a in range(3) for b in range(3) if a != b]


def _value(history: str, cards: tuple[int, int], strategy: np.ndarray) -> float:
    if history in TERMINALS:
        return payoff(history, cards)
    actor = player_of(history)
    bet = strategy[infoset_index(cards[actor], history)]
    return bet * _value(history + "b", cards, strategy) + (1 - bet) * _value(history + "p", cards, strategy)


def expected_value(strategy: np.ndarray) -> float:
    """The first player's expected winnings (chips per game) when both play ``strategy``."""
    strategy = _check(strategy)
    return float(np.mean([_value("", deal, strategy) for deal in _deals()]))


def _best(history: str, card: int, weights: np.ndarray, player: int, strategy: np.ndarray) -> float:
    """The best-responding ``player``'s value holding ``card`` from ``history`` on, with
    ``weights[c]`` the probability (chance times the opponent's reach) that the opponent holds ``c``."""
    sign = 1.0 if player == 0 else -1.0
    if history in TERMINALS:
        return sum(
            w * sign * payoff(history, (card, c) if player == 0 else (c, card))
            for c, w in enumerate(weights)
            if w > 0
        )
    if player_of(history) == player:  # one choice for every card the opponent may hold
        return max(_best(history + a, card, weights, player, strategy) for a in "bp")
    bet = np.array([strategy[infoset_index(c, history)] for c in range(3)])
    return _best(history + "b", card, weights * bet, player, strategy) + _best(
        history + "p", card, weights * (1 - bet), player, strategy
    )


def best_response_value(strategy: np.ndarray, player: int) -> float:
    """What ``player`` (0: first, 1: second) wins per game by a best response to the other
    player's part of ``strategy``."""
    strategy = _check(strategy)
    if player not in (0, 1):
        raise ValueError(f"player must be 0 or 1, got {player!r}")
    total = 0.0
    for card in range(3):
        weights = np.where(np.arange(3) == card, 0.0, 1 / 6)  # P(this card, that card)
        total += _best("", card, weights, player, strategy)
    return float(total)


def nash_conv(strategy: np.ndarray) -> float:
    """``BR_0 + BR_1``: the sum of the two best-response values, 0 exactly at an equilibrium."""
    return best_response_value(strategy, 0) + best_response_value(strategy, 1)


def exploitability(strategy: np.ndarray) -> float:
    """Half the NashConv, ``(BR_0 + BR_1) / 2``, in chips per game."""
    return nash_conv(strategy) / 2


def equilibrium(alpha: float) -> np.ndarray:
    """Kuhn's equilibrium with the first player betting a J with probability ``alpha`` in [0, 1/3]."""
    if not 0 <= alpha <= 1 / 3:
        raise ValueError(f"alpha must lie in [0, 1/3], got {alpha}")
    table = {
        "J": alpha, "Jp": 1 / 3, "Jb": 0.0, "Jpb": 0.0,
        "Q": 0.0, "Qp": 0.0, "Qb": 1 / 3, "Qpb": alpha + 1 / 3,
        "K": 3 * alpha, "Kp": 1.0, "Kb": 1.0, "Kpb": 1.0,
    }  # fmt: skip
    return np.array([table[name] for name in INFOSETS])
