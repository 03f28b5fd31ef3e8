"""The digits experiment meets its accuracy bars with the default budget (seconds on CPU)."""

import numpy as np
import pytest

from experiments import digits


def test_cnn_reaches_98_percent():
    result = digits.run(digits.Config(model="cnn"))
    assert result["test_accuracy"] >= 0.98
    assert result["test_examples"] == 360
    confusion = result["confusion_matrix"]
    assert confusion.shape == (10, 10) and confusion.sum() == 360
    assert np.trace(confusion) / 360 == pytest.approx(result["test_accuracy"], abs=1e-6)
    assert len(result["history"]) == 20  # one record per epoch
    assert result["history"][-1]["loss"] < result["history"][0]["loss"]


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop"])
def test_mlp_reaches_96_percent_with_each_optimizer(optimizer):
    result = digits.run(digits.Config(model="mlp", optimizer=optimizer, activation="tanh" if optimizer == "sgd" else "relu"))
    assert result["test_accuracy"] >= 0.96


def test_sigmoid_units_learn():
    result = digits.run(digits.Config(model="mlp", activation="sigmoid", epochs=10))
    assert result["test_accuracy"] >= 0.8  # slower than relu, far above the 10% of chance


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
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'"):
        digits.make_optimizer(digits.Config(optimizer="lbfgs"))


def test_main_prints_summary_accuracy_and_confusion_matrix(capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["digits", "--model", "mlp", "--epochs", "3", "--print-every", "1"])
    digits.main()
    out = capsys.readouterr().out
    assert "total parameters:" in out
    assert "epoch   3  train loss" in out
    assert "test accuracy" in out and "/360)" in out
    assert "confusion matrix" in out
