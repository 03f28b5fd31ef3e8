"""The perceptron and XOR experiments reach what their docstrings claim."""

import jax
import numpy as np
import optax
import pytest

import fnn
from experiments import perceptron, xor


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_perceptron_converges_within_novikoffs_bound(seed):
    result = perceptron.run(perceptron.Config(seed=seed))
    assert result["converged"]
    assert result["train_errors"] == 0 and result["accuracy"] == 1.0
    assert 0 < result["mistakes"] <= result["mistake_bound"]


def test_perceptron_data_keep_the_margin():
    x, y, line = perceptron.make_data(300, 0.2, seed=3)
    distance = np.abs(perceptron.with_bias_input(x) @ line) / np.linalg.norm(line[:2])
    assert x.shape == (300, 2) and y.shape == (300,)
    assert distance.min() >= 0.2 - 1e-6
    assert set(np.unique(y)) == {0.0, 1.0}


def test_perceptron_rejects_a_margin_that_leaves_no_points():
    with pytest.raises(ValueError, match="margin 1.5 leaves too few points"):
        perceptron.make_data(100, 1.5, seed=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_xor_hidden_layer_gets_all_four_points(seed):
    result = xor.run(xor.Config(seed=seed))
    assert result["all_correct"]
    assert result["predictions"] == [0, 1, 1, 0]
    assert result["loss"] < 0.05
    losses = [record["loss"] for record in result["history"]]
    assert losses[-1] < losses[0]


def test_xor_is_beyond_a_network_without_hidden_units():
    model = fnn.Dense(1)
    optimizer = optax.sgd(0.5, momentum=0.9)
    state = fnn.init_train_state(model, optimizer, jax.random.key(0), xor.X)
    step = fnn.make_train_step(model, optimizer, fnn.losses.sigmoid_binary_cross_entropy)
    state, _ = fnn.fit(step, state, [(xor.X, xor.Y)] * 1000)
    predictions = np.asarray(model(state.params, xor.X)[:, 0] > 0)
    assert (predictions == xor.Y[:, 0]).sum() <= 3  # no line separates XOR's classes


def test_classic_mains_print_their_results(capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["perceptron", "--points", "50"])
    perceptron.main()
    monkeypatch.setattr("sys.argv", ["xor", "--steps", "600"])
    xor.main()
    out = capsys.readouterr().out
    assert "converged after" in out and "training accuracy 1.0000" in out
    assert "all four right" in out
