"""The perceptron and XOR experiments reach what their docstrings claim."""

import json

import jax
import numpy as np
import optax
import pytest

import fnn
from experiments import perceptron, xor


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_perceptron_converges_within_novikoffs_bound(seed):
    result = perceptron.run(perceptron.Config(seed=seed))["final"]
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
    values = xor.run(xor.Config(seed=seed))
    result = values["final"]
    assert result["all_correct"]
    assert result["predictions"] == [0, 1, 1, 0]
    assert result["loss"] < 0.05
    losses = [record["loss"] for record in values["history"]]
    assert len(losses) == 5
    assert losses[-1] < losses[0]


def test_xor_is_beyond_a_network_without_hidden_units():
    model = fnn.Dense(1)
    optimizer = optax.sgd(0.5, momentum=0.9)
    state = fnn.init_train_state(model, optimizer, jax.random.key(0), xor.X)
    step = fnn.make_train_step(model, optimizer, fnn.losses.sigmoid_binary_cross_entropy)
    state, _ = fnn.fit(step, state, [(xor.X, xor.Y)] * 1000)
    predictions = np.asarray(model(state.params, xor.X)[:, 0] > 0)
    assert (predictions == xor.Y[:, 0]).sum() <= 3  # no line separates XOR's classes


def test_classic_experiments_run_through_the_fnn_command(capsys, tmp_path):
    assert fnn.cli.main(["run", "perceptron", "points=50", "--dir", str(tmp_path / "p"), "-q"]) == 0
    assert fnn.cli.main(["run", "xor", "steps=600", "--dir", str(tmp_path / "x"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "converged after" in out and "training accuracy 1.0000" in out
    assert "all four right" in out
    mistakes = [json.loads(line)["mistakes"] for line in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()]
    assert mistakes[-1] == 0 and sum(mistakes) > 0  # one record per pass; the last pass is clean
    assert (tmp_path / "x" / "checkpoints").is_dir() and (tmp_path / "x" / "curves.png").exists()
