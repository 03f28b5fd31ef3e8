"""Every experiment's config refuses values it cannot run with when it is made or overridden:
a ``ConfigError`` naming the key, never a crash deep inside a run."""

import dataclasses
import math
import re

import pytest

import fnn
from experiments import (
    char_lm,
    comparisons,
    digits,
    perceptron,
    spoken_commands,
    spoken_digits,
    text_classify,
    xor,
)


@pytest.mark.parametrize("config, assignment, says", [
    (comparisons.Config(), "seeds=0", "seeds must be at least 1, got 0"),
    (comparisons.Config(), "width=0", "width must be at least 1, got 0"),
    (comparisons.Config(), "test_fraction=1", "test_fraction must be in (0, 1), got 1.0"),
    (comparisons.Config(), "valid_fraction=0", "valid_fraction must be in (0, 1), got 0.0"),
    (comparisons.Config(), "data_seed=-1", "data_seed must be an int in [0, 2**32), got -1"),
    (digits.Config(), "width=0", "width must be at least 1, got 0"),
    (digits.Config(), "dropout=1", "dropout must be in [0, 1), got 1.0"),
    (digits.Config(), "test_fraction=0", "test_fraction must be in (0, 1), got 0.0"),
    (digits.Config(), "train.seed=-3", "train.seed must be an int in [0, 2**32), got -3"),
    # jax.random.key(2**32) is jax.random.key(0): the run would repeat seed 0's
    (digits.Config(), "train.seed=4294967296", "train.seed must be an int in [0, 2**32), got 4294967296"),
    (xor.Config(), "seed=4294967296", "seed must be an int in [0, 2**32), got 4294967296"),
    (char_lm.Config(), "seed=4294967296", "seed must be an int in [0, 2**32), got 4294967296"),
    (perceptron.Config(), "seed=4294967296", "seed must be an int in [0, 2**32), got 4294967296"),
    (perceptron.Config(), "points=1", "points must be at least 2, got 1"),
    (perceptron.Config(), "margin=-0.1", "margin must be at least 0, got -0.1"),
    (perceptron.Config(), "learning_rate=0", "learning_rate must be positive, got 0.0"),
    (perceptron.Config(), "max_epochs=0", "max_epochs must be at least 1, got 0"),
    # the float32 weights overflowed to inf and NaN
    (perceptron.Config(), "learning_rate=1e38", "learning_rate must be at most 1e30 (float32 weights would overflow)"),
    # seeds that scikit-learn's train_test_split refused, in the data stage
    (digits.Config(), "data_seed=4294967296", "data_seed must be an int in [0, 2**32), got 4294967296"),
    (comparisons.Config(), "data_seed=4294967296", "data_seed must be an int in [0, 2**32)"),
    (spoken_commands.Config(), "data.seed=4294967296", "data.seed must be an int in [0, 2**32)"),
    (xor.Config(), "hidden=0", "hidden must be at least 1, got 0"),
    (xor.Config(), "steps=0", "steps must be at least 1, got 0"),
    (xor.Config(), "learning_rate=-0.5", "learning_rate must be positive, got -0.5"),
    (xor.Config(), "momentum=1", "momentum must be in [0, 1), got 1.0"),
    (text_classify.Config(), "min_words=0", "min_words must be at least 1, got 0"),
    (text_classify.Config(), "max_words=10", "max_words must be at least 20, got 10"),
    (text_classify.Config(), "vocab_size=2", "vocab_size must be at least 3, got 2"),
    (text_classify.Config(), "held_out_every=1", "held_out_every must be at least 2, got 1"),
    (text_classify.Config(), "embedding=0", "embedding must be at least 1, got 0"),
    (spoken_commands.Config(), "max_seconds=0.05", "max_seconds must be at least 0.1, got 0.05"),
    (spoken_commands.Config(), "n_mels=6", "n_mels must be at least 7, got 6"),
    (spoken_commands.Config(), "words=yes,yes", "words must be two or more distinct words"),
    (spoken_commands.Config(), "valid_fraction=1.5", "valid_fraction must be in (0, 1), got 1.5"),
    (spoken_commands.Config(), "data.copies=0", "data.copies must be at least 1, got 0"),
    (spoken_digits.Config(), "max_digits=0", "max_digits must be at least 1, got 0"),
    (spoken_digits.Config(), "beam_width=0", "beam_width must be at least 1, got 0"),
    (spoken_digits.Config(), "stack=0", "stack must be at least 1, got 0"),
    (spoken_digits.Config(), "data.test_copies=0", "data.test_copies must be at least 1, got 0"),
    (spoken_digits.Config(), "data.seed=-1", "data.seed must be an int in [0, 2**32), got -1"),
    (spoken_digits.Config(), "data.accents=", "data.accents must list at least one"),
    (spoken_digits.Config(), "n_mels=128", "n_mels=128: mel_filterbank: 128 mel filters over 257 FFT bins"),
    (spoken_commands.Config(), "n_mels=200", "n_mels=200: mel_filterbank: 200 mel filters"),
    (char_lm.Config(), "length=6", "prompt must be 1 to length // 2 = 3 characters, got The"),
    (char_lm.Config(), "prompt=", "prompt must be 1 to length // 2 = 32 characters, got"),
    (char_lm.Config(), "heads=3", "heads must be a divisor of width 128 (the transformer's d_model), got 3"),
    (xor.Config(), "seed=99999999999999999999", "seed: 99999999999999999999 does not fit in 64 bits"),
])
def test_bad_values_are_config_errors_naming_the_key(config, assignment, says):
    with pytest.raises(fnn.config.ConfigError, match=re.escape(says)):
        fnn.config.override(config, [assignment])


def test_keys_that_must_agree_are_checked_once_all_are_set_whatever_their_order():
    import itertools

    cartpole = fnn.pipeline.find("cartpole").config  # minibatches must divide num_envs * rollout_steps
    for order in itertools.permutations(["num_envs=3", "rollout_steps=5", "minibatches=15"]):
        assert fnn.config.override(cartpole, list(order)).minibatches == 15  # every order failed
    with pytest.raises(fnn.config.ConfigError, match=re.escape("minibatches (7) must divide")):
        fnn.config.override(cartpole, ["num_envs=3", "minibatches=7"])
    tictactoe = fnn.pipeline.find("tictactoe").config
    assert fnn.config.override(tictactoe, ["pass_from=40", "random_moves=1", "game=go_9x9"]).pass_from == 40
    with pytest.raises(fnn.config.ConfigError, match=re.escape("baseline_games must be 0 or at least 2")):
        fnn.config.override(tictactoe, ["baseline_games=1"])  # wrote NaN rates for the empty seat


def _numeric_keys(config, prefix=""):
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            yield from _numeric_keys(value, f"{prefix}{field.name}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield f"{prefix}{field.name}", value


@pytest.mark.parametrize("name", sorted(fnn.pipeline.experiments()))
def test_no_experiment_takes_nan_or_a_negative_count(name):
    """A sweep over every number of every installed experiment's config: NaN is never a
    value, and neither is -1 (seeds, sizes, intervals and rates are all at least 0)."""
    config = fnn.pipeline.experiments()[name].config
    checked = 0
    for key, value in _numeric_keys(config):
        for bad in (["nan", "-1"] if isinstance(value, float) else ["-1"]):
            with pytest.raises(fnn.config.ConfigError, match=re.escape(key)):
                fnn.config.override(config, [f"{key}={bad}"])
            checked += 1
    assert checked >= 5, f"{name}: only {checked} numeric keys"
    assert not any(isinstance(v, float) and math.isnan(v) for _, v in _numeric_keys(config))


@pytest.mark.parametrize("name", sorted(fnn.pipeline.experiments()))
def test_every_seed_is_below_2_to_the_32(name):
    """Generators read 32 bits of a seed (``jax.random.key(2**32)`` is ``jax.random.key(0)``),
    so a larger seed would repeat a smaller one's run: every experiment's seeds refuse it."""
    config = fnn.pipeline.experiments()[name].config
    seeds = [key for key, _ in _numeric_keys(config) if key.split(".")[-1].endswith("seed")]
    assert seeds, f"{name} has no seed"
    for key in seeds:
        fnn.config.override(config, [f"{key}={2**32 - 1}"])
        with pytest.raises(fnn.config.ConfigError, match=re.escape(f"{key} must be an int in [0, 2**32)")):
            fnn.config.override(config, [f"{key}={2**32}"])


def test_nan_given_in_code_is_refused_too():
    """``--set`` refuses ``nan`` as text; a config made in code is checked by its own rules."""
    with pytest.raises(fnn.config.ConfigError, match=re.escape("margin must be at least 0, got nan")):
        perceptron.Config(margin=math.nan)
    with pytest.raises(fnn.config.ConfigError, match=re.escape("max_seconds must be at least 0.1, got nan")):
        spoken_commands.Config(max_seconds=math.nan)


def test_perceptron_s_margin_too_wide_for_its_square_is_a_config_error():
    with pytest.raises(fnn.config.ConfigError, match="margin 1.5 leaves too few points"):
        perceptron.run(perceptron.Config(margin=1.5))


def test_the_fnn_command_prints_the_bad_key_and_exits_2(capsys, tmp_path):
    assert fnn.cli.main(["run", "xor", "hidden=0", "--dir", str(tmp_path / "x"), "-q"]) == 2
    assert "fnn run: hidden must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before a run directory was made
