"""Populations: many models trained in one compiled program with jax.vmap."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from experiments import comparisons, digits
from fnn import sweep
from fnn.config import ConfigError
from fnn.pipeline import TrainConfig

TINY = digits.Config(model="mlp", width=32, train=TrainConfig(epochs=2, learning_rate=3e-3))


def test_member_i_equals_the_model_trained_alone_with_seed_i():
    members = sweep.members(2, {"train.learning_rate": [1e-3, 3e-3]})
    assert members == [{"seed": 0, "train.learning_rate": 1e-3}, {"seed": 1, "train.learning_rate": 1e-3},
                       {"seed": 0, "train.learning_rate": 3e-3}, {"seed": 1, "train.learning_rate": 3e-3}]
    population = sweep.population_pipeline(digits.EXPERIMENT).run(config=TINY, members=members, progress=False)
    assert population["state"].params["dense_0"]["w"].shape == (4, 64, 32)
    for i, member in enumerate(members):
        alone = digits.run(sweep.member_config(TINY, member))
        member_params = jax.tree.map(lambda a, i=i: np.asarray(a[i]), population["state"].params)
        for got, want in zip(jax.tree.leaves(member_params), jax.tree.leaves(alone["state"].params)):
            np.testing.assert_allclose(got, np.asarray(want), rtol=2e-5, atol=2e-6)
        assert population["test"]["accuracy"][i] == pytest.approx(alone["final"]["test_accuracy"], abs=1 / 360 + 1e-9)
        evals = [r for r in population["history"] if r["split"] == "eval"]
        alone_evals = [r for r in alone["history"] if r["split"] == "eval"]
        assert evals[-1]["step"] == alone_evals[-1]["step"]
        assert evals[-1]["accuracy"][i] == pytest.approx(alone_evals[-1]["accuracy"], abs=1 / 130 + 1e-9)


def test_grid_accepts_only_what_a_population_can_vary():
    assert sweep.parse_grid(TINY, ["train.learning_rate=1e-3,0.01"]) == [("train.learning_rate", [1e-3, 0.01])]
    with pytest.raises(ConfigError, match="a population varies only what lives in the optimizer state"):
        sweep.parse_grid(TINY, ["width=16,32"])
    with pytest.raises(ConfigError, match="train.learning_rate: expected float or none, got 'fast'"):
        sweep.parse_grid(TINY, ["train.learning_rate=fast"])
    with pytest.raises(ConfigError, match="--seeds must be a positive int"):
        sweep.members(0, {})
    with pytest.raises(ConfigError, match=r"--seeds 1000000000 times 2 grid point\(s\) is 2,000,000,000 members; .*"
                                          r"at most 10,000: run several sweeps"):  # before any list is made
        sweep.members(10**9, {"train.learning_rate": [1e-3, 3e-3]})
    assert len(sweep.members(5_000, {"train.learning_rate": [1e-3, 3e-3]})) == sweep.MAX_MEMBERS
    train_set = (np.zeros((8, 3), np.float32), np.zeros(8, np.int32))
    with pytest.raises(ConfigError, match=r"train.batch_size=64 is larger than the training set \(8 examples\)"):
        sweep.population_batches(train_set, TINY.__class__(train=TrainConfig(batch_size=64)), sweep.members(2, {}))
    with pytest.raises(ConfigError, match="--grid train.learning_rate is given twice"):  # the first was dropped
        sweep.parse_grid(TINY, ["train.learning_rate=1e-3", "train.learning_rate=2e-3,3e-3"])
    with pytest.raises(ConfigError, match="--grid train.learning_rate: each value must be a number"):
        sweep.parse_grid(TINY, ["train.learning_rate=none,1e-3"])


def test_a_sweep_that_cannot_run_is_refused_before_its_directory_is_made(tmp_path, capsys, monkeypatch):
    directory = tmp_path / "sweep"
    assert fnn.cli.main(["sweep", "xor", "--seeds", "2", "--dir", str(directory), "-q"]) == 2
    assert "xor cannot be swept: fnn sweep trains a population through the stages" in capsys.readouterr().err
    assert fnn.cli.main(["sweep", "digits", "train.devices=data", "--dir", str(directory), "-q"]) == 2
    assert "cannot be combined with a population" in capsys.readouterr().err
    assert not directory.exists()
    monkeypatch.chdir(tmp_path)  # without --dir: no default directory is made either
    assert fnn.cli.main(["sweep", "xor", "--seeds", "2", "-q"]) == 2
    assert not (tmp_path / "runs").exists()
    directory.mkdir()
    (directory / "sweep.json").write_text("{bad")
    with pytest.raises(fnn.runs.RunError, match="sweep.json is not valid JSON"):
        sweep.resume_members(str(directory))
    (directory / "sweep.json").write_text("{}")
    with pytest.raises(fnn.runs.RunError, match="sweep.json does not list the sweep's members"):
        sweep.resume_members(str(directory))


def test_a_sweeps_members_are_written_with_its_config(tmp_path):
    """They were written to sweep.json after config.json: a full disk between the two left a
    directory that `fnn resume` then trained as one plain run, the population gone."""
    population = sweep.members(2, {"train.learning_rate": [1e-3, 3e-3]})
    fnn.runs.Run.create(tmp_path / "sweep", "digits", {}, members=population)
    assert json.loads((tmp_path / "sweep" / "config.json").read_text())["members"] == population
    assert sweep.resume_members(str(tmp_path / "sweep")) == population
    (tmp_path / "sweep" / "sweep.json").write_text(json.dumps({"members": population[:1]}))
    assert sweep.resume_members(str(tmp_path / "sweep")) == population  # config.json's, not an old file's
    fnn.runs.Run.create(tmp_path / "plain", "digits", {})
    assert sweep.resume_members(str(tmp_path / "plain")) == []
    (tmp_path / "plain" / "config.json").write_text(json.dumps({"experiment": "digits", "config": {},
                                                                "members": []}))
    with pytest.raises(fnn.runs.RunError, match="config.json does not list the sweep's members"):
        sweep.resume_members(str(tmp_path / "plain"))


def test_a_grid_over_a_hyperparameter_the_optimizer_lacks_is_refused_before_anything_is_written(
    tmp_path, capsys
):
    directory = tmp_path / "sweep"
    args = ["sweep", "digits", "--grid", "train.momentum=0.5,0.9", "--dir", str(directory), "-q"]
    assert fnn.cli.main(args) != 0  # digits trains with adam, which has b1 and b2, not momentum
    assert "train.momentum=0.5: adam has no momentum" in capsys.readouterr().err
    assert not directory.exists()
    sgd = TINY.__class__(train=TrainConfig(optimizer="sgd"))
    assert sweep.parse_grid(sgd, ["train.momentum=0.5,0.9"]) == [("train.momentum", [0.5, 0.9])]
    rmsprop = TINY.__class__(train=TrainConfig(optimizer="rmsprop"))  # momentum once given
    with pytest.raises(ConfigError, match=r"the rmsprop optimizer has no momentum .* or give rmsprop one "
                                          r"\(train.momentum=0.9\)"):  # was a traceback after the dir was made
        sweep.parse_grid(rmsprop, ["train.momentum=0.5,0.9"])
    rmsprop = TINY.__class__(train=TrainConfig(optimizer="rmsprop", momentum=0.9))
    assert sweep.parse_grid(rmsprop, ["train.momentum=0.5,0.9"]) == [("train.momentum", [0.5, 0.9])]


def test_a_population_keeps_fractional_learning_rates_of_an_integer_config():
    config = TINY.__class__(train=TrainConfig(optimizer="sgd", learning_rate=1, momentum=0))
    hyper = fnn.pipeline.make_optimizer(config.train).init({}).hyperparams
    assert all(jnp.issubdtype(v.dtype, jnp.floating) for v in hyper.values())
    state = sweep.init_population(fnn.Dense(2), fnn.pipeline.make_optimizer(config.train), [0, 1],
                                  np.zeros((1, 3), np.float32),
                                  hyperparams={"learning_rate": [0.5, 0.25], "momentum": [0.9, 0.5]})
    np.testing.assert_allclose(state.opt_state.hyperparams["learning_rate"], [0.5, 0.25])
    np.testing.assert_allclose(state.opt_state.hyperparams["momentum"], [0.9, 0.5])
    import optax

    ints = optax.inject_hyperparams(optax.sgd)(learning_rate=1)  # an int-held rate cannot take 0.5
    with pytest.raises(ValueError, match=r"holds 'learning_rate' as int32 .* cannot be stored; give "
                                         "inject_hyperparams a float learning_rate"):
        sweep.init_population(fnn.Dense(2), ints, [0, 1], np.zeros((1, 3), np.float32),
                              hyperparams={"learning_rate": [0.5, 0.25]})


def test_set_hyperparam_needs_an_injected_optimizer():
    import optax

    state = fnn.init_train_state(fnn.Dense(2), optax.adam(1e-3), jax.random.key(0), np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="build the optimizer with optax.inject_hyperparams"):
        sweep.set_hyperparam(state, "learning_rate", np.ones(()))


def test_fnn_sweep_writes_a_table_and_a_plot_and_resumes(tmp_path, capsys):
    directory = tmp_path / "sweep"
    args = ["sweep", "digits", "model=mlp", "width=32", "train.epochs=2", "--seeds", "2",
            "--grid", "train.learning_rate=1e-3,3e-3", "--dir", str(directory), "-q"]
    assert fnn.cli.main(args) == 0
    out = capsys.readouterr().out
    assert "| seed | train.learning_rate | test_accuracy | test_loss |" in out
    rows = json.loads((directory / "members.json").read_text())
    assert [(r["seed"], r["train.learning_rate"]) for r in rows] == [(0, 1e-3), (1, 1e-3), (0, 3e-3), (1, 3e-3)]
    assert all(0.25 < r["test_accuracy"] <= 1 for r in rows)  # chance is 0.1
    assert rows[2]["test_accuracy"] + rows[3]["test_accuracy"] > rows[0]["test_accuracy"] + rows[1]["test_accuracy"]
    assert (directory / "sweep.png").stat().st_size > 0
    final = json.loads((directory / "final.json").read_text())
    assert final["test_accuracy_mean"] == pytest.approx(np.mean([r["test_accuracy"] for r in rows]))
    # a finished sweep resumes to the same table (its last checkpoint is the end)
    assert fnn.cli.main(["resume", str(directory), "-q"]) == 0
    assert json.loads((directory / "members.json").read_text()) == rows


def test_comparisons_experiment_writes_its_table_and_plot(tmp_path):
    run, values = fnn.pipeline.start(comparisons.EXPERIMENT, comparisons.Config(seeds=2, epochs=2, width=32),
                                     str(tmp_path / "cmp"), progress=False)
    assert set(values["final"]) == {"optimizer=sgd", "optimizer=adam", "optimizer=rmsprop",
                                    "activation=sigmoid", "activation=relu", "activation=tanh"}
    assert all(0.1 < v <= 1 for v in values["final"].values())
    assert "| optimizer=adam |" in (tmp_path / "cmp" / "comparison.md").read_text()
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 0
    variant = tmp_path / "cmp" / "variants" / "activation=tanh"
    assert (variant / "metrics.jsonl").exists() and (variant / "checkpoints").is_dir()
    # resuming the finished comparison restores each variant's last checkpoint: same figures
    _, again = fnn.pipeline.resume(str(tmp_path / "cmp"), progress=False)
    assert again["final"] == values["final"]


def test_a_float16_population_carries_a_loss_scale_per_member():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Config:
        train: TrainConfig = TrainConfig(optimizer="sgd", batch_size=4, epochs=4, precision="float16", log_every=1)

    config, population = Config(), sweep.members(2, {})
    x, y = np.ones((8, 3), np.float32), np.full((8, 1), 1000.0, np.float32)  # overflows at the first scale
    made = sweep.population_train(fnn.Dense(1), fnn.pipeline.make_optimizer(config.train),
                                  sweep.population_batches((x, y), config, population)["batches"],
                                  fnn.losses.mean_squared_error, config, population)
    scale = made["state"].loss_scale.scale
    assert scale.shape == (2,) and np.all(scale < 2.0**12)  # halved until the gradients fit
    skipped = [r["skipped"] for r in made["history"] if r["split"] == "train"]
    assert skipped[0] == [1.0, 1.0] and skipped[-1] == [0.0, 0.0]


def test_a_diverged_member_does_not_stop_the_sweep(tmp_path, capsys):
    common = ["model=mlp", "width=32", "train.optimizer=sgd", "train.epochs=2", "--seeds", "1", "-q"]
    directory = tmp_path / "sweep"
    assert fnn.cli.main(["sweep", "digits", *common, "--grid", "train.learning_rate=0.05,1e30",
                         "--dir", str(directory)]) == 0  # the whole sweep stopped with a FloatingPointError
    assert "| seed | train.learning_rate | test_accuracy | test_loss | diverged at step |" in capsys.readouterr().out
    rows = json.loads((directory / "members.json").read_text())
    assert rows[0]["diverged at step"] is None and 0.25 < rows[0]["test_accuracy"] <= 1
    assert rows[1]["diverged at step"] == 20 and rows[1]["test_accuracy"] == "NaN"  # JSON's name for NaN
    final = json.loads((directory / "final.json").read_text())
    assert final["members_diverged"] == 1 and final["test_accuracy_mean"] == rows[0]["test_accuracy"]
    records = fnn.runs.Run(directory).records()
    assert all(np.isnan(r["accuracy"][1]) for r in records if r["step"] >= 20)  # its NaN outputs: no accuracy
    # the diverged member leaves the other's training as it was
    alone = tmp_path / "alone"
    assert fnn.cli.main(["sweep", "digits", *common, "--grid", "train.learning_rate=0.05", "--dir", str(alone)]) == 0
    row = json.loads((alone / "members.json").read_text())[0]
    assert rows[0]["test_accuracy"] == pytest.approx(row["test_accuracy"], abs=1e-6)
    assert rows[0]["test_loss"] == pytest.approx(row["test_loss"], rel=1e-4)
    # and the sweep resumes to the same table
    assert fnn.cli.main(["resume", str(directory), "-q"]) == 0
    assert json.loads((directory / "members.json").read_text()) == rows
