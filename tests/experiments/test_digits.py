"""The digits experiment meets its accuracy bars with the default budget (seconds on CPU)."""

import re

import numpy as np
import pytest

import fnn
from experiments import comparisons, digits
from fnn.pipeline import TrainConfig


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_cnn_reaches_98_percent(precision):
    result = digits.run(digits.Config(model="cnn", train=TrainConfig(precision=precision)))
    final = result["final"]
    assert final["test_accuracy"] >= 0.98
    assert final["test_examples"] == 360
    confusion = result["confusion_matrix"]
    assert confusion.shape == (10, 10) and confusion.sum() == 360
    assert np.trace(confusion) / 360 == pytest.approx(final["test_accuracy"], abs=1e-6)
    train = [r for r in result["history"] if r["split"] == "train"]
    assert len(train) == 20  # one record per epoch
    assert train[-1]["loss"] < train[0]["loss"]


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop"])
def test_mlp_reaches_96_percent_with_each_optimizer(optimizer):
    config = digits.Config(model="mlp", activation="tanh" if optimizer == "sgd" else "relu",
                           train=TrainConfig(optimizer=optimizer))
    assert digits.run(config)["final"]["test_accuracy"] >= 0.96


def test_sigmoid_units_learn():
    result = digits.run(digits.Config(model="mlp", activation="sigmoid", train=TrainConfig(epochs=10)))
    assert result["final"]["test_accuracy"] >= 0.8  # slower than relu, far above the 10% of chance


def test_random_shifts_move_each_image_by_at_most_one_pixel():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(50, 8, 8, 1)).astype(np.float32)
    shifted = digits.random_shifts(images, rng)
    assert shifted.shape == images.shape
    for original, moved in zip(images, shifted):
        padded = np.pad(original, ((1, 1), (1, 1), (0, 0)))
        windows = [padded[dy : dy + 8, dx : dx + 8] for dy in range(3) for dx in range(3)]
        assert any(np.array_equal(moved, w) for w in windows)


def test_bad_choices_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model 'rnn'; choose cnn or mlp"):
        digits.make_model(digits.Config(model="rnn"))
    with pytest.raises(ValueError, match="train.optimizer: 'lbfgs' is not one of 'adam', 'sgd', 'rmsprop'"):
        fnn.pipeline.make_optimizer(TrainConfig(optimizer="lbfgs"))
    with pytest.raises(ValueError, match="train.learning_rate must be positive, got -1.0"):
        fnn.pipeline.make_optimizer(TrainConfig(learning_rate=-1.0))


@pytest.mark.parametrize("key, fraction, leaves", [
    ("test_fraction", 0.001, "of 1797 examples leaves 2 held out and 1795 kept"),
    ("test_fraction", 0.999, "of 1797 examples leaves 1796 held out and 1 kept"),
    ("valid_fraction", 0.001, "of 1437 examples leaves 2 held out and 1435 kept"),
    ("valid_fraction", 0.995, "of 1437 examples leaves 1430 held out and 7 kept"),
])
def test_fractions_that_leave_a_set_without_every_digit_are_config_errors(key, fraction, leaves):
    """In (0, 1), so the config takes them; the split stage refuses them by name (scikit-learn
    refused them with its own parameter names)."""
    images, labels = digits.load().values()
    says = f"{key}={fraction}: split: holding out {fraction} {leaves}, but each part needs one of each of the 10"
    for experiment in (digits, comparisons):
        with pytest.raises(fnn.config.ConfigError, match=re.escape(says)):
            experiment.split(images, labels, experiment.Config(**{key: fraction}))


def test_main_prints_accuracy_and_confusion_matrix(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["digits", "model=mlp", "train.epochs=3", "-q"])
    fnn.cli.experiment_main("digits")
    out = capsys.readouterr().out
    assert "test accuracy" in out and "/360)" in out
    assert "confusion matrix" in out
