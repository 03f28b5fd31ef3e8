"""benchmarks.device_check: fnn's gradients against JAX's on the CPU, and a few steps that
must lower the loss; here (a CPU) it checks fnn's CPU rules."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from benchmarks import device_check


def test_the_models_agree_with_jaxs_gradients_and_train(capsys):
    assert device_check.main(["--models", "lstm", "transformer", "--steps", "2"])
    out = capsys.readouterr().out
    assert out.count("on the CPU with JAX's gradients") == 2 and "FAILED" not in out


def test_a_gradient_that_differs_fails_the_check(monkeypatch, capsys):
    real = device_check.loss_and_grads

    def off(net, params, batch, device, rules=True):
        loss, grads = real(net, params, batch, device, rules)
        return loss, jax.tree.map(lambda g: g * (1.01 if rules else 1.0), grads)

    monkeypatch.setattr(device_check, "loss_and_grads", off)
    assert not device_check.main(["--models", "mlp-small", "--steps", "2"])
    out = capsys.readouterr().out
    assert "<-- FAILED" in out and out.rstrip().endswith("FAILED")


def test_differences_are_relative_to_each_parameter_with_a_floor():
    b = {"big": np.array([100.0, -50.0]), "zero": np.array([1e-9, 0.0])}
    a = {"big": np.array([100.5, -50.0]), "zero": np.array([-1e-8, 0.0])}
    where, diff = device_check.worst_difference(a, b)
    # "zero" differs by 1.1e-8 against a floor of 0.1 (1e-3 of 100): "big" is the worst
    assert where == "['big']" and diff == pytest.approx(0.005)


def test_steps_must_be_at_least_two(capsys):
    with pytest.raises(SystemExit):
        device_check.main(["--steps", "1"])
    assert "--steps must be at least 2" in capsys.readouterr().err
