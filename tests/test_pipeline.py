"""Pipelines, configuration overrides, run directories, the training loop's resumption,
checkpoints and the fnn command."""

import dataclasses
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn import checkpoint, config, loop, pipeline, runs
from fnn.pipeline import Pipeline, PipelineError
from tests.compiles import counting_compiles

# -- configuration ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Train:
    learning_rate: float | None = None
    epochs: int = 10
    augment: bool = True
    sizes: tuple[int, ...] = (64, 64)


@dataclasses.dataclass(frozen=True)
class Config:
    model: str = dataclasses.field(default="cnn", metadata={"choices": ("cnn", "mlp")})
    train: Train = Train()


def test_overrides_parse_each_field_by_its_type():
    c = config.override(Config(), ["model=mlp", "train.learning_rate=3e-4", "train.epochs=2",
                                   "train.augment=false", "train.sizes=8,16,32"])
    assert c == Config("mlp", Train(3e-4, 2, False, (8, 16, 32)))
    assert config.override(c, ["train.learning_rate=none"]).train.learning_rate is None
    # a tuple as --keys shows it, and with spaces (the brackets and quotes stayed in the items)
    for text in ("(8, 16)", "[8, 16]", "8, 16", "'8','16'"):
        assert config.override(c, [f"train.sizes={text}"]).train.sizes == (8, 16)
    assert config.parse_value("('yes', \"no\")", tuple[str, ...], "words") == ("yes", "no")


@pytest.mark.parametrize("assignment, message", [
    ("train.lr=1", "unknown key 'train.lr'; valid keys: model, train.learning_rate, train.epochs"),
    ("optimizer=adam", "unknown key 'optimizer'"),
    ("train.epochs=ten", "train.epochs: expected int, got 'ten'"),
    ("train.epochs=1.5", "train.epochs: expected int"),
    ("train.augment=maybe", "train.augment: expected bool"),
    ("train.learning_rate=nan", "train.learning_rate: expected float or none"),
    ("model=rnn", "model: 'rnn' is not one of 'cnn', 'mlp'"),
    ("train=3", "'train' is a group of settings; set one of: train.learning_rate"),
    ("model.depth=3", "'model' has no sub-keys"),
    ("model", "expected key=value"),
])
def test_bad_overrides_are_clear_errors(assignment, message):
    with pytest.raises(config.ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        config.override(Config(), [assignment])


@pytest.mark.parametrize("assignment, message", [
    ("train.batch_size=0", "train.batch_size must be at least 1, got 0"),
    ("train.epochs=-2", "train.epochs must be at least 1, got -2"),
    ("train.checkpoint_every=-1", "train.checkpoint_every must be at least 0, got -1"),
    ("train.learning_rate=-0.1", "train.learning_rate must be positive, got -0.1"),
    ("train.momentum=1.5", r"train.momentum must be in \[0, 1\), got 1.5"),
    ("train.optimizer=lbfgs", "train.optimizer: 'lbfgs' is not one of 'adam', 'sgd', 'rmsprop'"),
    ("train.momentum=0.5", "train.momentum=0.5: adam has no momentum"),
])
def test_train_config_values_are_checked_when_overridden(assignment, message):
    from experiments import digits

    with pytest.raises(config.ConfigError, match=message):
        config.override(digits.Config(), [assignment])


def test_momentum_is_sgds_and_rmsprops_and_each_uses_it():
    sgd = pipeline.make_optimizer(pipeline.TrainConfig(optimizer="sgd")).init({}).hyperparams
    assert float(sgd["momentum"]) == pytest.approx(0.9)  # sgd's default
    assert "momentum" not in pipeline.make_optimizer(pipeline.TrainConfig(optimizer="rmsprop")).init({}).hyperparams
    train = pipeline.TrainConfig(optimizer="rmsprop", learning_rate=0.1, momentum=0.5)
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.array([1.0, -2.0, 0.5])}
    mine = pipeline.make_optimizer(train)
    reference = optax.rmsprop(0.1, momentum=0.5)
    ours, theirs = mine.init(params), reference.init(params)
    for _ in range(3):
        step, ours = mine.update(grads, ours, params)
        expected, theirs = reference.update(grads, theirs, params)
        np.testing.assert_allclose(step["w"], expected["w"], rtol=1e-6)


def test_config_round_trips_through_json_with_checks():
    c = Config("mlp", Train(0.1, 3, False, (1, 2)))
    assert config.from_dict(Config, json.loads(json.dumps(config.to_dict(c)))) == c
    with pytest.raises(config.ConfigError, match="unknown key 'train.lr'"):
        config.from_dict(Config, {"train": {"lr": 1}})
    with pytest.raises(config.ConfigError, match="train.epochs: expected int, got '3'"):
        config.from_dict(Config, {"train": {"epochs": "3"}})
    with pytest.raises(config.ConfigError, match="model: 'rnn' is not one of"):
        config.from_dict(Config, {"model": "rnn"})
    # what the command line refuses, a run's config.json is refused too: a tuple's items, nan, 2**64
    for values, message in (({"sizes": [8, "16"]}, "train.sizes: expected int, got '16'"),
                            ({"sizes": [[8]]}, r"train.sizes: expected int, got \[8\]"),
                            ({"sizes": 8}, "train.sizes: expected a list, got 8"),
                            ({"learning_rate": float("nan")}, "train.learning_rate: expected a finite float"),
                            ({"epochs": 2**64}, "train.epochs: 18446744073709551616 does not fit in 64 bits")):
        with pytest.raises(config.ConfigError, match=message):
            config.from_dict(Config, {"train": values})
    assert config.from_dict(Config, {"train": {"learning_rate": None, "sizes": [8]}}).train == Train(None, sizes=(8,))


# -- pipelines -----------------------------------------------------------------------------


def load(config):
    return {"xs": list(range(config))}


def double(xs):
    return {"xs": [2 * x for x in xs]}


def total(xs, offset=0):
    return {"final": {"total": sum(xs) + offset}}


def test_stages_read_by_name_and_can_be_replaced_inserted_and_removed():
    p = Pipeline(load, total)
    assert p.names == ["load", "total"]
    assert p.run(config=4)["final"] == {"total": 6}
    assert p.run(config=4, offset=10)["final"] == {"total": 16}  # optional inputs come from the caller
    assert p.insert(after="load", double=double).run(config=4)["final"] == {"total": 12}
    assert p.insert(before="total", double=double).names == ["load", "double", "total"]
    assert p.replace(load=lambda config: {"xs": [config]}).run(config=7)["final"] == {"total": 7}
    values = p.without("total").run(config=2)
    assert set(values.pop("stage_seconds")) == {"load"}  # each stage's wall time
    assert values == {"config": 2, "xs": [0, 1]}


def test_pipeline_errors_name_the_stage():
    with pytest.raises(PipelineError, match="stage 'total' needs 'xs', which neither the caller nor an earlier stage provides; available: config"):
        Pipeline(total).run(config=1)
    with pytest.raises(PipelineError, match="no stage named 'train'; the stages are load, total"):
        Pipeline(load, total).replace(train=load)
    with pytest.raises(PipelineError, match="two stages are named 'load'"):
        Pipeline(load, load)
    with pytest.raises(PipelineError, match="stage 'bad' returned int"):
        Pipeline(bad=lambda: 3).run()
    with pytest.raises(PipelineError, match="has no name"):
        Pipeline(lambda: {})
    # a new stage named like an old one (the old one was dropped or replaced in silence)
    with pytest.raises(PipelineError, match="insert: a stage is already named 'total'"):
        Pipeline(load, total).insert(after="load", total=double)
    with pytest.raises(PipelineError, match="insert: a stage is already named 'load'"):
        Pipeline(load, total).insert(before="total", load=double)


def test_a_stop_inside_a_sub_run_names_the_run_to_resume_and_own_experiments_resume(tmp_path):
    """An experiment whose stage trains in a sub-run of its run (as comparisons' variants
    do): a stop there says to resume the run itself, and resume takes the experiment."""
    step, _, data, _ = _problem()
    stop = [True]

    @dataclasses.dataclass(frozen=True)
    class Config:
        every: int = 4

    def train(config, run, progress):
        path = run.directory / "sub"
        sub = runs.Run(path) if (path / "config.json").exists() else runs.Run.create(path, "mine/sub", {})
        _, state, _, _ = _problem()
        state, _ = loop.train_loop(_interrupt_at(step, 5) if stop[0] else step, state, data, run=sub,
                                   checkpoint_every=config.every, progress=False)
        return {"final": {"step": int(state.step)}}

    mine = pipeline.Experiment("mine", "trains in a sub-run", Config(), Pipeline(train))
    directory = tmp_path / "run"
    with pytest.raises(loop.Interrupted, match=f"continue with `fnn resume {directory}`$"):
        pipeline.start(mine, Config(), str(directory), progress=False)  # named {directory}/sub before
    with pytest.raises(PipelineError, match=r"no experiment named 'mine'.*resume\(directory, experiment=...\)"):
        pipeline.resume(str(directory), progress=False)
    with pytest.raises(PipelineError, match="is a run of 'mine', not of 'xor'"):
        pipeline.resume(str(directory), experiment=pipeline.find("xor"), progress=False)
    stop[0] = False
    run, values = pipeline.resume(str(directory), experiment=mine, progress=False)
    assert values["final"] == {"step": 24} and run.final()["step"] == 24


def test_experiments_are_found_through_entry_points():
    known = pipeline.experiments()
    assert "digits" in known and known["digits"].description
    with pytest.raises(PipelineError, match="no experiment named 'nope'; the experiments are .*digits"):
        pipeline.find("nope")


# -- the training loop: logging, checkpoints, resumption -----------------------------------


def _problem(steps=24, batch=8):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = (x @ rng.normal(size=(5, 3))).argmax(-1).astype(np.int32)
    model = fnn.serial(fnn.Dense(16), fnn.relu, fnn.Dropout(0.2), fnn.Dense(3))
    opt = optax.adam(1e-2)
    data = fnn.data.loader((x, y), batch, seed=0, epochs=steps * batch // 64)
    state = fnn.init_train_state(model, opt, jax.random.key(0), x[:batch])
    step = fnn.make_train_step(model, opt, fnn.losses.softmax_cross_entropy,
                               metrics={"accuracy": fnn.metrics.accuracy})
    eval_step = fnn.make_eval_step(model, fnn.losses.softmax_cross_entropy)
    return step, state, data, lambda s: fnn.evaluate(eval_step, s, [(x, y)])


def _new_run(path):
    return runs.Run.create(path, "test", {"lr": 0.01})


def test_loop_logs_evaluates_and_checkpoints(tmp_path):
    step, state, data, evaluate = _problem()
    run = _new_run(tmp_path / "run")
    state, history = loop.train_loop(step, state, data, run=run, log_every=5, evaluate=evaluate,
                                     eval_every=12, checkpoint_every=10, progress=False)
    assert fnn.train.step_of(state) == len(data) == 24
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines == history
    assert [(r["step"], r["split"]) for r in lines] == [
        (5, "train"), (10, "train"), (12, "eval"), (15, "train"), (20, "train"), (24, "train"), (24, "eval")]
    assert set(lines[0]) == {"step", "split", "loss", "accuracy"}
    assert run.checkpoints.steps() == [10, 20, 24]  # keep=3 keeps the last three
    run.finish({"accuracy": lines[-1]["loss"]})
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
    assert "| accuracy |" in (tmp_path / "run" / "summary.md").read_text()
    events = os.listdir(tmp_path / "run" / "tensorboard")
    assert events and events[0].startswith("events.out.tfevents")


def test_loop_reports_the_time_it_waited_for_input():
    step, state, data, _ = _problem()
    stats = {}
    loop.train_loop(step, state, data, log_every=24, progress=False, stats=stats)
    assert set(stats) == {"seconds", "training_seconds", "input_wait_seconds", "input_wait_fraction"}
    assert 0 < stats["input_wait_seconds"] < stats["training_seconds"] <= stats["seconds"]
    assert stats["input_wait_fraction"] == pytest.approx(stats["input_wait_seconds"] / stats["training_seconds"])

    class Slow:  # a data source that takes 20 ms per batch: the wait must show it
        def __init__(self, data):
            self.data = data

        def __len__(self):
            return len(self.data)

        def __getitem__(self, i):
            import time

            time.sleep(0.02)
            return self.data[i]

    step, state, data, _ = _problem()  # the first loop donated its state's buffers
    stats = {}
    loop.train_loop(step, state, Slow(data), log_every=24, progress=False, stats=stats)
    assert stats["input_wait_seconds"] > 0.3  # 24 batches of 20 ms, two of them fetched ahead of the loop


def read_tensorboard(directory):
    """``{(tag, step): value}`` of every scalar in the TFRecord event files of ``directory``,
    read with the crc checks of the format (what TensorBoard itself reads)."""
    import struct

    from tensorboardX.crc32c import crc32c
    from tensorboardX.proto.event_pb2 import Event

    def masked(data):
        crc = crc32c(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    scalars = {}
    for name in sorted(os.listdir(directory)):
        raw = (directory / name).read_bytes()
        at = 0
        while at < len(raw):
            header = raw[at : at + 8]
            (length,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", raw[at + 8 : at + 12])[0] == masked(header)
            data = raw[at + 12 : at + 12 + length]
            assert struct.unpack("<I", raw[at + 12 + length : at + 16 + length])[0] == masked(data)
            at += 16 + length
            event = Event.FromString(data)
            for value in event.summary.value:
                scalars[(value.tag, event.step)] = value.simple_value
    return scalars


def test_tensorboard_files_hold_the_logged_metrics(tmp_path):
    step, state, data, evaluate = _problem()
    run = _new_run(tmp_path / "run")
    loop.train_loop(step, state, data, run=run, log_every=6, evaluate=evaluate, progress=False)
    run.close()
    scalars = read_tensorboard(tmp_path / "run" / "tensorboard")
    for record in run.records():
        for key, value in record.items():
            if key not in ("step", "split"):
                assert scalars[(f"{record['split']}/{key}", record["step"])] == pytest.approx(value, rel=1e-6)
    assert ("eval/loss", 24) in scalars and ("train/accuracy", 6) in scalars


def _interrupt_at(step, k):
    """A step function that sends this process SIGTERM during step ``k``."""
    calls = {"n": 0}

    def interrupting(state, batch):
        calls["n"] += 1
        if calls["n"] == k:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(state, batch)

    return interrupting


@pytest.mark.parametrize("k", [3, 7, 12, 24])  # 24: the last step (the signal was dropped there)
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, k):
    step, state0, data, evaluate = _problem()
    kwargs = dict(log_every=5, evaluate=evaluate, eval_every=12, checkpoint_every=10, progress=False)
    whole = _new_run(tmp_path / "whole")
    final, _ = loop.train_loop(step, state0, data, run=whole, **kwargs)

    _, state0, _, _ = _problem()  # the first state's buffers were donated
    parted = _new_run(tmp_path / "parted")
    with pytest.raises(loop.Interrupted, match=f"SIGTERM: stopped after step {k} and saved a checkpoint; "
                                               f"continue with `fnn resume {tmp_path / 'parted'}`"):
        loop.train_loop(_interrupt_at(step, k), state0, data, run=parted, **kwargs)
    assert parted.checkpoints.latest() == k
    _, template, _, _ = _problem()
    resumed, _ = loop.train_loop(step, template, data, run=runs.Run(tmp_path / "parted"), **kwargs)

    chex_equal = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                              jax.device_get(final.params), jax.device_get(resumed.params))
    assert all(jax.tree.leaves(chex_equal))
    assert np.array_equal(jax.random.key_data(final.rng), jax.random.key_data(resumed.rng))
    assert (tmp_path / "whole" / "metrics.jsonl").read_text() == (tmp_path / "parted" / "metrics.jsonl").read_text()


def test_resume_forgets_records_logged_after_the_checkpoint(tmp_path):
    step, state, data, _ = _problem()
    run = _new_run(tmp_path / "run")
    loop.train_loop(step, state, data, run=run, log_every=4, checkpoint_every=8, progress=False)
    # pretend the process died after logging step 24 but the checkpoints after 8 were lost
    for s in run.checkpoints.steps():
        if s > 8:
            import shutil
            shutil.rmtree(tmp_path / "run" / "checkpoints" / str(s))
    run = runs.Run(tmp_path / "run")
    _, template, _, _ = _problem()
    _, history = loop.train_loop(step, template, data, run=run, log_every=4, checkpoint_every=8, progress=False)
    assert [r["step"] for r in history] == [4, 8, 12, 16, 20, 24]
    assert [r["step"] for r in run.records()] == [4, 8, 12, 16, 20, 24]


def test_a_run_stopped_before_its_first_checkpoint_logs_each_record_once(tmp_path):
    step, state, data, _ = _problem()
    run = _new_run(tmp_path / "run")

    def crashing(s, batch):
        if fnn.train.step_of(s) == 5:
            raise RuntimeError("the machine went away")
        return step(s, batch)

    with pytest.raises(RuntimeError):
        loop.train_loop(crashing, state, data, run=run, log_every=2, checkpoint_every=8, progress=False)
    assert [r["step"] for r in run.records()] == [2, 4]
    _, template, _, _ = _problem()
    _, history = loop.train_loop(step, template, data, run=runs.Run(tmp_path / "run"), log_every=2,
                                 checkpoint_every=8, progress=False)
    assert [r["step"] for r in history] == list(range(2, 25, 2))
    assert [r["step"] for r in runs.Run(tmp_path / "run").records()] == list(range(2, 25, 2))


def test_the_loop_refuses_a_several_step_call_and_shows_a_populations_loss(capsys):
    _, state, data, _ = _problem()
    model = fnn.Dense(3)
    four = fnn.make_train_step(model, optax.sgd(0.1), fnn.losses.softmax_cross_entropy, steps_per_call=4)
    with pytest.raises(ValueError, match="train_loop: the step takes 4 steps a call .* fnn.fit"):
        loop.train_loop(four, state, data, progress=False)
    from fnn.sweep import init_population

    members = init_population(model, optax.sgd(0.1), [0, 1], jax.ShapeDtypeStruct((8, 5), jnp.float32))
    population = fnn.make_train_step(model, optax.sgd(0.1), fnn.losses.softmax_cross_entropy, population=True)
    both = data.map(lambda batch: jax.tree.map(lambda a: np.stack([a, a]), batch))  # the same batch each
    _, history = loop.train_loop(population, members, both, log_every=2, progress=True)
    assert len(history[-1]["loss"]) == 2 and history[-1]["step"] == len(data)


def test_nan_loss_stops_with_the_step(tmp_path):
    step, state, data, _ = _problem()
    x = np.full((64, 5), np.nan, np.float32)
    with pytest.raises(ValueError, match=r"loader\[0\] holds 320 NaN or infinite values"):
        fnn.data.loader((x, np.zeros(64, np.int32)), 8, seed=0)  # the loader checks what it is given
    import grain

    bad = grain.MapDataset.range(8).map(lambda k: (x[:8], np.zeros(8, np.int32)))
    with pytest.raises(FloatingPointError, match=r"training loss became nan at step 1 \(the first non-finite one of the 4 steps up to step 4\)"):
        loop.train_loop(step, state, bad, log_every=4, progress=False)


def test_a_diverged_state_is_never_checkpointed_over_good_ones(tmp_path):
    _, state, _, _ = _problem()
    x = np.ones((8, 5), np.float32)
    batches = [(x * (np.nan if k >= 6 else 1.0), np.zeros(8, np.int32)) for k in range(20)]  # step 7 on: NaN
    import grain

    data = grain.MapDataset.source(batches)
    model = fnn.serial(fnn.Dense(16), fnn.relu, fnn.Dropout(0.2), fnn.Dense(3))
    step = fnn.make_train_step(model, optax.adam(1e-2), fnn.losses.softmax_cross_entropy)
    run = _new_run(tmp_path / "run")  # logs every 20 steps, checkpoints every 2, keeps 3
    with pytest.raises(FloatingPointError, match=r"training loss became nan at step 7 \(the first "
                                                 r"non-finite one of the 8 steps up to step 8\)"):
        loop.train_loop(step, state, data, run=run, log_every=20, checkpoint_every=2, progress=False)
    run.close()
    kept = runs.Run(tmp_path / "run").checkpoints
    assert kept.steps() == [2, 4, 6]  # before, steps 8-18 saved NaN states and these three were deleted
    restored, _ = kept.restore(state)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(restored.params))


def test_a_population_trains_on_past_a_diverged_member_and_stops_when_every_member_has():
    window = fnn.train.MetricsWindow(log_every=2, population=True)
    window.add({"loss": jnp.array([1.0, 2.0, 3.0]), "accuracy": jnp.array([0.5, 0.5, 0.5])})
    window.add({"loss": jnp.array([1.0, jnp.inf, 3.0]), "accuracy": jnp.array([0.5, 0.1, 0.5])})
    record = window.flush(2)  # member 1 diverged: the others go on, and it has no accuracy
    assert record["loss"] == [1.0, np.inf, 3.0]
    assert record["accuracy"][0] == record["accuracy"][2] == 0.5 and np.isnan(record["accuracy"][1])
    window.add({"loss": jnp.array([1.0, jnp.nan, 3.0])})
    window.check(3)  # one member still finite: nothing to raise
    window.add({"loss": jnp.array([jnp.nan, jnp.nan, jnp.inf])})
    with pytest.raises(FloatingPointError, match=r"loss became \[nan, nan, inf\] \(every member\) at step 4 "
                                                 r"\(the first non-finite one of the 2 steps up to step 4\)"):
        window.flush(4)
    # float16: a member that diverged is stuck at loss scale 1, skipping its steps; the others go on
    window = fnn.train.MetricsWindow(log_every=2, population=True)
    lost = {"loss": jnp.array([0.5, jnp.nan]), "skipped": jnp.array([0, 1]), "loss_scale": jnp.array([2.0**15, 1])}
    window.add(lost), window.add(lost)
    assert window.flush(2)["loss_scale"][0] == 2.0**15
    window.add({"loss": jnp.array([0.5, jnp.nan]), "skipped": jnp.array([1, 1]), "loss_scale": jnp.array([1.0, 1])})
    with pytest.raises(FloatingPointError, match=r"^at step 3 every member's float16 gradients overflowed at loss "
                                                 r"scale 1, the smallest, or its loss was not finite"):
        window.flush(3)
    # a population's evaluation: a member whose loss is not finite has NaN metrics
    step = lambda state, batch: {"loss": jnp.array([0.5, jnp.nan]), "accuracy": jnp.array([0.75, 0.1])}
    got = fnn.evaluate(step, None, [(np.zeros((3, 2)), np.zeros(3))])
    assert got["loss"][0] == 0.5 and np.isnan(got["loss"][1])
    assert got["accuracy"][0] == 0.75 and np.isnan(got["accuracy"][1])


def test_a_long_metrics_window_keeps_few_arrays_on_the_device_and_compiles_nothing_to_log():
    """A record every 20,000 steps took 96 s to write: the window stacked 20,000 device scalars,
    a program of its own for every length, and kept them all."""
    window = fnn.train.MetricsWindow(log_every=10_000)
    window.ON_DEVICE = 4
    losses = np.linspace(0.5, 2.0, 30, dtype=np.float32)
    for k, loss in enumerate(losses):
        window.add({"loss": jnp.asarray(loss), "accuracy": jnp.asarray(k % 2, jnp.int32)})
        assert len(window.pending) < 8 and len(window) == k + 1
    saved = window.to_json()
    assert [m["loss"] for m in saved] == losses.tolist()  # every step, in order, bit for bit
    with counting_compiles() as compiled:
        record = window.flush(30)
    assert compiled == [] and len(window) == 0
    assert record["loss"] == pytest.approx(float(losses.mean()), rel=1e-7) and record["accuracy"] == 0.5
    window.load(saved)  # a resumed run's pending steps
    assert window.to_json() == saved and len(window) == 30
    window.add({"loss": jnp.asarray(1.0), "accuracy": jnp.asarray(0, jnp.int32)})
    saved[2] = {"loss": float("nan"), "accuracy": 0}  # a bad step among those fetched to the host
    window.load(saved)
    with pytest.raises(FloatingPointError, match=r"became nan at step 3 \(the first non-finite one of the 30"):
        window.flush(30)


def test_a_run_is_closed_by_its_with_block_or_when_it_is_dropped(tmp_path):
    """A run dropped unclosed (a notebook cell that raised) kept a TensorBoard thread and open
    files for the rest of the process."""
    with _new_run(tmp_path / "a") as run:
        run.log({"step": 1, "split": "train", "loss": 0.5})
        held = run._open
        assert held.writer is not None and run.checkpoints is held.checkpoints
    assert held.writer is None and held.checkpoints is None
    run = _new_run(tmp_path / "b")
    run.log({"step": 1, "split": "train", "loss": 0.5})
    held, writer = run._open, run._open.writer
    del run
    import gc

    gc.collect()
    assert held.writer is None and writer.file_writer is None  # closed: its thread and files are gone
    assert read_tensorboard(tmp_path / "b" / "tensorboard") == {("train/loss", 1): 0.5}


def test_loop_rejects_bad_intervals():
    step, state, data, _ = _problem()
    with pytest.raises(ValueError, match="log_every must be an int >= 1, got 0"):
        loop.train_loop(step, state, data, log_every=0, progress=False)
    with pytest.raises(ValueError, match="checkpoint_every must be an int >= 0, got -1"):
        loop.train_loop(step, state, data, checkpoint_every=-1, progress=False)
    # no batches: it returned with nothing trained, evaluated ("at the end") or saved
    with pytest.raises(ValueError, match="train_loop: the data hold no batches"):
        loop.train_loop(step, state, data[:0], evaluate=lambda s: {"loss": 0.0}, progress=False)


# -- checkpoints: bad files are clear errors --------------------------------------------------


def _saved(tmp_path):
    step, state, data, _ = _problem()
    state, _ = step(state, data[0])
    ckpts = checkpoint.Checkpoints(tmp_path / "ckpts")
    ckpts.save(state, {"data": {"next_index": 1}})
    return ckpts, state


def test_checkpoint_round_trip_is_exact(tmp_path):
    ckpts, state = _saved(tmp_path)
    _, template, _, _ = _problem()
    restored, extra = ckpts.restore(template)
    assert extra == {"data": {"next_index": 1}}
    for a, b in zip(jax.tree.leaves(to_host(state)), jax.tree.leaves(to_host(restored))):
        assert np.array_equal(a, b)


def test_a_checkpoint_leaves_whole_and_a_half_removed_one_is_not_listed(tmp_path, monkeypatch):
    """A process killed while orbax deleted an old checkpoint file by file left a step folder
    listed as complete for ever; ``fnn show`` beside a training run failed when a step went
    while it was listed."""
    _, state, _, _ = _problem()
    at = lambda k: state._replace(step=jnp.array(k, jnp.int32))  # noqa: E731
    ckpts = checkpoint.Checkpoints(tmp_path / "ckpts", keep=2)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", lambda *a, **k: None)  # keep what orbax removed
    for k in (1, 2, 3):
        ckpts.save(at(k))
    assert ckpts.steps() == [2, 3] and sorted(os.listdir(tmp_path / "ckpts")) == ["2", "3", "deleted"]
    assert (tmp_path / "ckpts" / "deleted" / "1" / "_CHECKPOINT_METADATA").is_file()  # moved whole
    monkeypatch.undo()
    ckpts.save(at(4))  # fnn deletes what orbax moved aside
    assert sorted(os.listdir(tmp_path / "ckpts")) == ["3", "4"]
    # what a removal stopped half-way left (before removals were renames): not a checkpoint
    shutil.rmtree(tmp_path / "ckpts" / "3" / "state")
    (tmp_path / "ckpts" / "3" / "_CHECKPOINT_METADATA").unlink()
    assert ckpts.steps() == [4] and checkpoint.Checkpoints(tmp_path / "ckpts").steps() == [4]
    ckpts.save(at(5))  # and the next save removes it: it counted against keep
    assert ckpts.steps() == [4, 5] and sorted(os.listdir(tmp_path / "ckpts")) == ["4", "5"]
    shutil.copytree(tmp_path / "ckpts" / "5", tmp_path / "ckpts" / "6")
    (tmp_path / "ckpts" / "6" / "_CHECKPOINT_METADATA").unlink()
    ckpts.save(at(6))  # such a folder at the step saved: orbax skipped the save, and said nothing
    assert ckpts.steps() == [5, 6] and int(ckpts.restore(state)[0].step) == 6
    # a step removed while it was listed: listed again
    reload, failures = ckpts._manager.reload, [FileNotFoundError(2, "No such file", "ckpts/3")] * 2

    def racing():
        if failures:
            raise failures.pop()
        reload()

    monkeypatch.setattr(ckpts._manager, "reload", racing)
    assert ckpts.steps() == [5, 6] and failures == []


def test_a_look_at_whether_a_run_is_in_use_never_keeps_its_trainer_out(tmp_path):
    """`fnn run --dir D` looked at D's lock by taking it for a moment: a `fnn resume D` at that
    moment was refused as in use (173 times in 3,000)."""
    import threading

    _new_run(tmp_path / "run").close()
    stop = threading.Event()

    said = set()

    def looks():  # `fnn run --dir run`, again and again
        while not stop.is_set():
            try:
                _new_run(tmp_path / "run")
            except runs.RunError as error:
                said.add(re.sub(r".*/run ", "", str(error))[:20])

    looker = threading.Thread(target=looks)
    looker.start()
    try:
        for _ in range(1000):
            with runs.Run(tmp_path / "run").held():
                pass
    finally:
        stop.set()
        looker.join()
    assert said <= {"already holds a run;", "is in use: another p"} and said  # it is, while held


def test_config_json_is_whole_or_absent(tmp_path, monkeypatch):
    """A process killed as it made a run left an empty config.json: `fnn run` said to resume it,
    and `fnn resume` that it was not valid JSON."""

    def killed(*args):
        raise KeyboardInterrupt  # stands for the process ending between writing and linking

    monkeypatch.setattr(runs.os, "link", killed)
    with pytest.raises(KeyboardInterrupt):
        _new_run(tmp_path / "a")
    assert os.listdir(tmp_path / "a") == []
    monkeypatch.setattr(runs.os, "link", lambda *a: (_ for _ in ()).throw(OSError(1, "Operation not permitted")))
    assert _new_run(tmp_path / "a").config == {"lr": 0.01}  # no hard links here: written in place
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path / "a")) == ["config.json"]
    with pytest.raises(runs.RunError, match="already holds a run"):
        _new_run(tmp_path / "a")
    # what a run made by an older fnn and killed at that moment left
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text("")
    with pytest.raises(runs.RunError, match=r"b holds nothing but an empty config.json \(a process stopped "
                                            r"while making the run, before it began\); remove the directory"):
        _new_run(tmp_path / "b")
    with pytest.raises(runs.RunError, match=r"config.json is empty: the process writing it stopped"):
        runs.Run(tmp_path / "b")


def to_host(state):
    return jax.device_get(checkpoint.to_saved(state))


def test_a_checkpoint_restores_into_an_abstract_template(tmp_path):
    ckpts, state = _saved(tmp_path)
    _, template, _, _ = _problem()
    restored, _ = ckpts.restore(jax.eval_shape(lambda: template))
    assert jax.dtypes.issubdtype(restored.rng.dtype, jax.dtypes.prng_key)
    assert jax.random.key_impl(restored.rng) == jax.random.key_impl(state.rng)
    for a, b in zip(jax.tree.leaves(to_host(state)), jax.tree.leaves(to_host(restored))):
        assert np.array_equal(a, b)


def test_a_restored_state_is_placed_like_a_fresh_one_so_nothing_compiles_again(tmp_path):
    ckpts, _ = _saved(tmp_path)
    step, template, data, _ = _problem()
    restored, _ = ckpts.restore(template)
    committed = {leaf.committed for leaf in jax.tree.leaves(checkpoint.to_saved(restored))}
    assert committed == {leaf.committed for leaf in jax.tree.leaves(checkpoint.to_saved(template))} == {False}
    step(template, data[0])  # compiled for the fresh state; `template` is donated
    with counting_compiles() as compiled:
        step(restored, data[0])
    assert compiled == []


def test_a_checkpoint_of_another_model_names_the_first_mismatching_path(tmp_path):
    ckpts, _ = _saved(tmp_path)
    wider = fnn.serial(fnn.Dense(32), fnn.relu, fnn.Dropout(0.2), fnn.Dense(3))
    template = fnn.init_train_state(wider, optax.adam(1e-2), jax.random.key(0), jnp.zeros((8, 5)))
    with pytest.raises(checkpoint.CheckpointError, match=r"does not fit this model at params/dense_0/b: the "
                       r"checkpoint holds float32\[16\], the model expects float32\[32\]"):
        ckpts.restore(template)
    deeper = fnn.serial(fnn.Dense(16), fnn.relu, fnn.Dense(16), fnn.Dense(3))
    template = fnn.init_train_state(deeper, optax.adam(1e-2), jax.random.key(0), jnp.zeros((8, 5)))
    with pytest.raises(checkpoint.CheckpointError, match=r"does not fit this model at params/dense_1/b: the checkpoint holds float32\[3\], the model expects float32\[16\]"):
        ckpts.restore(template)
    sgd = fnn.init_train_state(fnn.serial(fnn.Dense(16), fnn.relu, fnn.Dropout(0.2), fnn.Dense(3)),
                               optax.sgd(0.1), jax.random.key(0), jnp.zeros((8, 5)))
    with pytest.raises(checkpoint.CheckpointError, match="it holds opt_state/0/count, which the model does not have"):
        ckpts.restore(sgd)


def test_a_checkpoint_of_another_optimizer_with_the_same_arrays_does_not_fit_and_is_not_called_damaged(tmp_path):
    ckpts, _ = _saved(tmp_path)  # trained with adam
    model = fnn.serial(fnn.Dense(16), fnn.relu, fnn.Dropout(0.2), fnn.Dense(3))
    adamw = fnn.init_train_state(model, optax.adamw(1e-2), jax.random.key(0), jnp.zeros((8, 5)))
    with pytest.raises(checkpoint.CheckpointError, match=r"does not fit this model at opt_state: the checkpoint "
                       r"holds a sequence of 2 parts there, the model expects a sequence of 3 parts"):
        ckpts.restore(adamw)  # was "is unreadable ... move this one aside", said of every checkpoint


def test_typed_keys_anywhere_in_a_state_are_saved_and_restored(tmp_path):
    _, state, _, _ = _problem()
    state = state._replace(model_state={"noise": jax.random.key(7), "keys": jax.random.split(jax.random.key(1), 3)})
    ckpts = checkpoint.Checkpoints(tmp_path / "ckpts")
    ckpts.save(state)
    restored, _ = ckpts.restore(jax.eval_shape(lambda: state))
    for name in ("noise", "keys"):
        assert jax.dtypes.issubdtype(restored.model_state[name].dtype, jax.dtypes.prng_key)
        assert np.array_equal(jax.random.key_data(restored.model_state[name]),
                              jax.random.key_data(state.model_state[name]))


def test_checkpoints_refuse_a_step_below_the_latest_and_empty_arrays(tmp_path):
    ckpts, state = _saved(tmp_path)
    latest = ckpts.latest()
    before = ckpts.steps()
    with pytest.raises(checkpoint.CheckpointError, match=f"cannot save step 0 in .*: it is below the latest "
                                                         f"checkpoint, step {latest}"):
        ckpts.save(state._replace(step=jnp.array(0, jnp.int32)))  # orbax skipped it, and save said it saved
    assert ckpts.steps() == before
    step, fresh, data, _ = _problem()
    empty = fresh._replace(model_state={"buffer": jnp.zeros((0, 4))})
    run = _new_run(tmp_path / "run")
    with pytest.raises(checkpoint.CheckpointError, match=r"cannot hold model_state/buffer, float32\[0, 4\]: "
                                                         "it has no elements"):
        loop.train_loop(step, empty, data, run=run, progress=False)  # before training, not at the end
    assert run.records() == [] and run.checkpoints.steps() == []


def test_a_corrupt_checkpoint_is_a_clear_error(tmp_path):
    ckpts, _ = _saved(tmp_path)
    _, template, _, _ = _problem()
    root = tmp_path / "ckpts" / "1" / "state"
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "r+b") as f:  # overwrite every file's bytes, keep their sizes
                size = os.path.getsize(path)
                f.write(b"\x00" * size)
    with pytest.raises(checkpoint.CheckpointError, match=r"checkpoint .*ckpts/1 is unreadable"):
        checkpoint.Checkpoints(tmp_path / "ckpts").restore(template)


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path):
    ckpts, state = _saved(tmp_path)
    step, template, data, _ = _problem()
    later, _ = step(state, data[1])
    ckpts.save(later, {})
    ckpts.close()
    for dirpath, _, files in os.walk(tmp_path / "ckpts" / "2" / "state"):
        for name in files:
            path = os.path.join(dirpath, name)
            os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(checkpoint.CheckpointError) as error:
        checkpoint.Checkpoints(tmp_path / "ckpts").restore(template)
    message = str(error.value)
    assert re.search(r"checkpoint .*ckpts/2 is unreadable: \w+: ", message), message
    assert "\n" not in message and len(message) < 600  # tensorstore's spec ran to 2,000 characters
    assert message.endswith("the checkpoints of steps [1] are kept as they were: move this one aside to "
                            "resume from the latest of them")
    shutil.move(tmp_path / "ckpts" / "2", tmp_path / "aside")
    restored, _ = checkpoint.Checkpoints(tmp_path / "ckpts").restore(template)
    assert int(restored.step) == 1


def test_missing_checkpoints_are_clear_errors(tmp_path):
    _, template, _, _ = _problem()
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint in"):
        checkpoint.Checkpoints(tmp_path / "empty").restore(template)
    ckpts, _ = _saved(tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint of step 5 .* it has steps \[1\]"):
        ckpts.restore(template, step=5)


def test_run_directory_errors(tmp_path):
    with pytest.raises(runs.RunError, match="is not a run directory"):
        runs.Run(tmp_path / "nothing")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(runs.RunError, match="config.json is not valid JSON"):
        runs.Run(tmp_path / "broken")
    _new_run(tmp_path / "taken")
    with pytest.raises(runs.RunError, match="already holds a run; continue it with `fnn resume.*"
                                            "holds nothing but its config.json: the run stopped before"):
        _new_run(tmp_path / "taken")
    (tmp_path / "taken" / "metrics.jsonl").write_text("")
    with pytest.raises(runs.RunError, match="or choose another directory$"):
        _new_run(tmp_path / "taken")
    # what is left of a run without its config.json: a new run there would have continued it
    (tmp_path / "left" / "checkpoints").mkdir(parents=True)
    (tmp_path / "left" / "metrics.jsonl").write_text("")
    with pytest.raises(runs.RunError, match="holds checkpoints, metrics.jsonl of an earlier run but no config.json"):
        _new_run(tmp_path / "left")
    assert sorted(os.listdir(tmp_path / "left")) == ["checkpoints", "metrics.jsonl"]
    (tmp_path / "afile").write_text("")
    with pytest.raises(runs.RunError, match=r"afile is not a run directory \(it is a file\)"):
        runs.Run(tmp_path / "afile")
    with pytest.raises(runs.RunError, match="afile: cannot make the run directory, a file has that name"):
        _new_run(tmp_path / "afile")
    with pytest.raises(runs.RunError, match=r"afile/sub: cannot create the run directory \(.*Not a directory"):
        _new_run(tmp_path / "afile" / "sub")


def test_a_bad_value_in_a_runs_config_json_names_the_file(tmp_path):
    config = pipeline.find("xor").config
    run = runs.Run.create(tmp_path / "run", "xor", {**fnn.config.to_dict(config), "steps": -3})
    with pytest.raises(fnn.config.ConfigError, match=r"run/config.json: steps must be at least 1"):
        pipeline.resume(run.directory, progress=False)


def test_a_last_metrics_line_cut_short_is_left_out_and_logged_again(tmp_path):
    run = _new_run(tmp_path / "run")
    run.log({"step": 1, "split": "train", "loss": 1.0})
    run.log({"step": 2, "split": "train", "loss": 0.5})
    text = run.metrics_path.read_text()
    run.metrics_path.write_text(text[:-12])  # the process stopped while writing step 2
    assert [r["step"] for r in run.records()] == [1]
    run.rewind(1)
    run.log({"step": 2, "split": "train", "loss": 0.5})
    assert run.metrics_path.read_text() == text
    run.metrics_path.write_text(text[:-12] + "\n" + text)  # a bad line inside the file is still an error
    with pytest.raises(runs.RunError, match=r"metrics.jsonl:2 is not valid JSON"):
        run.records()
    # the only line cut short, before any checkpoint (nothing to rewind): the next record
    # starts a line of its own instead of finishing the broken one
    run.metrics_path.write_text('{"step": 1, "split": "tr')
    reopened = runs.Run(run.directory)
    assert reopened.records() == []
    reopened.log({"step": 1, "split": "train", "loss": 1.0})
    assert reopened.records() == [{"step": 1, "split": "train", "loss": 1.0}]
    # a last line whole but for its newline is left out as well, since the next log cuts it:
    # records() returned it and the next log() deleted it
    run.metrics_path.write_text(text[:-1])
    reopened = runs.Run(run.directory)
    assert [r["step"] for r in reopened.records()] == [1]
    reopened.log({"step": 3, "split": "train", "loss": 0.25})
    assert [r["step"] for r in reopened.records()] == [1, 3]


def test_default_run_directories_started_in_one_second_get_their_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    moment = datetime.datetime(2026, 12, 6, 21, 0, 0)  # one second for both calls
    monkeypatch.setattr(fnn.cli, "datetime", types.SimpleNamespace(datetime=types.SimpleNamespace(now=lambda: moment)))
    first, second = fnn.cli._default_dir("xor"), fnn.cli._default_dir("xor")
    assert first == os.path.join("runs", "xor-20261206-210000")
    assert second == first + "-2" and os.path.isdir(first) and os.path.isdir(second)


# -- the fnn command ---------------------------------------------------------------------------

TINY = ["model=mlp", "width=32", "train.epochs=4"]
FNN = [sys.executable, "-m", "fnn.cli"]


class _Config:
    """A stand-in for ``jax.config``: what ``compilation_cache`` reads and sets."""

    def __init__(self, cache_dir=None):
        self.jax_compilation_cache_dir = cache_dir
        self.updates = {}

    def update(self, name, value):
        self.updates[name] = value


def test_compilation_cache_directory_switch_and_jax_settings_kept(monkeypatch, tmp_path):
    monkeypatch.setattr(jax, "config", config := _Config())
    assert fnn.cli.compilation_cache({"FNN_NO_COMPILATION_CACHE": "1", "FNN_CACHE": str(tmp_path)}) is None
    assert config.updates == {}
    assert fnn.cli.compilation_cache({"FNN_NO_COMPILATION_CACHE": "0", "FNN_CACHE": str(tmp_path)}) == str(
        tmp_path / "jax"
    )
    assert config.updates == {"jax_compilation_cache_dir": str(tmp_path / "jax"),
                              "jax_persistent_cache_min_compile_time_secs": 0.0,
                              "jax_compilation_cache_max_size": fnn.cli.CACHE_LIMIT}
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fnn.cli.compilation_cache({}) == str(tmp_path / "home" / ".cache" / "fnn" / "jax")
    monkeypatch.setattr(jax, "config", config := _Config("/given/to/jax"))
    assert fnn.cli.compilation_cache({"FNN_CACHE": str(tmp_path)}) == "/given/to/jax"
    assert config.updates == {}


def test_the_fnn_command_keeps_compiled_programs_for_the_next_run(tmp_path):
    """``fnn run`` in a process of its own writes every program it compiles to ``jax/`` in
    ``$FNN_CACHE``; a second run of the same configuration finds them all there and
    compiles nothing new. Entries that cannot be read (corrupt files) are compiled again,
    with a warning naming each, and the run ends as the others did."""
    cache = tmp_path / "jax"
    env = {**os.environ, "FNN_CACHE": str(tmp_path), "FNN_NO_COMPILATION_CACHE": "", "FNN_SYSTEM_MALLOC": "1"}

    def run(name):
        done = subprocess.run([*FNN, "run", "xor", "steps=20", "-q", "--dir", str(tmp_path / name)], env=env,
                              check=True, capture_output=True, text=True, timeout=300)
        loss = json.loads((tmp_path / name / "final.json").read_text())["loss"]
        return sorted(path.name for path in cache.iterdir()), loss, done.stderr

    first, loss, _ = run("a")
    assert len(first) > 2, first
    assert run("b")[:2] == (first, loss)
    for entry in cache.glob("*-cache"):
        entry.write_bytes(b"not a compiled program")
    names, again, err = run("c")
    assert (names, again) == (first, loss)
    assert "Error reading persistent compilation cache entry" in err, err


def test_cli_run_show_and_compare(tmp_path, capsys):
    assert fnn.cli.main(["run", "digits", *TINY, "--dir", str(tmp_path / "a"), "-q"]) == 0
    assert fnn.cli.main(["run", "digits", "-q", *TINY, "--set", "train.optimizer=sgd", "--dir", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "final: test_accuracy" in out
    for name in ("config.json", "metrics.jsonl", "final.json", "curves.png", "confusion.png", "summary.md"):
        assert (tmp_path / "a" / name).exists(), name
    assert json.loads((tmp_path / "b" / "config.json").read_text())["config"]["train"]["optimizer"] == "sgd"
    assert fnn.cli.main(["show", str(tmp_path / "a")]) == 0
    shown = capsys.readouterr().out
    assert "experiment: digits" in shown and "model = mlp" in shown and "test_accuracy:" in shown
    assert f"confusion.png: {tmp_path / 'a' / 'confusion.png'}" in shown  # not only curves.png
    assert fnn.cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--plot", str(tmp_path / "c.png")]) == 0
    table = capsys.readouterr().out
    assert "test_accuracy" in table and str(tmp_path / "b") in table
    assert (tmp_path / "c.png").stat().st_size > 0


def test_cli_list_and_keys(capsys):
    assert fnn.cli.main(["list"]) == 0
    assert "digits" in capsys.readouterr().out
    assert fnn.cli.main(["run", "digits", "--keys"]) == 0
    assert "train.learning_rate = None" in capsys.readouterr().out


def test_cli_bad_input_is_a_clear_error(tmp_path, capsys):
    assert fnn.cli.main(["run", "digits", "train.lr=1", "--dir", str(tmp_path / "x")]) == 2
    assert "unknown key 'train.lr'; valid keys: model, activation" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert fnn.cli.main(["run", "nope"]) == 2
    assert "no experiment named 'nope'" in capsys.readouterr().err
    assert fnn.cli.main(["resume", str(tmp_path / "missing")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    # --set and a plain override of one key: --set won whatever the order on the line
    assert fnn.cli.main(["run", "xor", "--set", "steps=30", "steps=20", "--dir", str(tmp_path / "y")]) == 2
    assert "steps is given as steps=20 and as --set steps=30; give it once" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    assert fnn.cli.main(["run", "digits", "train.batch_size=5000", "--dir", str(tmp_path / "b"), "-q"]) == 2
    assert "train.batch_size=5000 is larger than the training set (1293 examples)" in capsys.readouterr().err
    def synthesis_fails(args):  # eSpeak failing on an utterance: one line, not a traceback
        raise fnn.speech.SpeechError("eSpeak NG could not say utterance 7")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fnn.cli, "_dispatch", synthesis_fails)
        assert fnn.cli.main(["run", "spoken-commands"]) == 2
    assert capsys.readouterr().err == "fnn run: eSpeak NG could not say utterance 7\n"
    # a run that diverges: one line naming the step (it was a traceback), and no checkpoint of it
    diverge = ["model=mlp", "width=16", "train.optimizer=sgd", "train.learning_rate=1e30", "train.epochs=1"]
    assert fnn.cli.main(["run", "digits", *diverge, "--dir", str(tmp_path / "z"), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fnn run: training loss became nan at step 2") and "Traceback" not in err
    assert runs.Run(tmp_path / "z").checkpoints.steps() == []


def _wait_for_checkpoint(directory, proc, timeout=120):
    start = time.time()
    while time.time() - start < timeout:
        ckpts = directory / "checkpoints"
        if ckpts.exists() and any(name.isdigit() for name in os.listdir(ckpts)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before its first checkpoint: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


KILLED_CONFIG = [*TINY, "train.epochs=8", "train.checkpoint_every=4", "train.keep_checkpoints=2"]


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    """The run of ``KILLED_CONFIG`` that nothing stops."""
    directory = tmp_path_factory.mktemp("whole")
    fnn.cli.main(["run", "digits", *KILLED_CONFIG, "--dir", str(directory), "-q"])
    return directory


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_killed_run_resumes_to_the_same_result(tmp_path, how, whole_run):
    """SIGTERM: the run saves and says how to resume. SIGKILL (even mid-save, with a checkpoint
    every step): the last complete checkpoint loads. Either way the resumed run ends bit-identical."""
    proc = subprocess.Popen([*FNN, "run", "digits", *KILLED_CONFIG, "--dir", str(tmp_path / "cut"), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(tmp_path / "cut", proc)
    time.sleep(0.3)
    proc.send_signal(how)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")  # not expected: 8 epochs take seconds
    if how == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM
        assert f"continue with `fnn resume {tmp_path / 'cut'}`" in err
    assert not (tmp_path / "cut" / "final.json").exists()
    assert fnn.cli.main(["resume", str(tmp_path / "cut"), "-q"]) == 0
    whole = json.loads((whole_run / "final.json").read_text())
    cut = json.loads((tmp_path / "cut" / "final.json").read_text())
    whole.pop("seconds"), cut.pop("seconds")
    assert whole == cut
    assert (whole_run / "metrics.jsonl").read_text() == (tmp_path / "cut" / "metrics.jsonl").read_text()


def test_experiment_module_runs_with_overrides(tmp_path, monkeypatch, capsys):
    from experiments import digits

    monkeypatch.chdir(tmp_path)
    digits_main = fnn.cli.experiment_main
    digits_main("digits", [*TINY, "-q"])
    assert "test accuracy" in capsys.readouterr().out
    assert len(os.listdir(tmp_path / "runs")) == 1
    assert digits.EXPERIMENT.config == digits.Config()


def test_predict_and_loader_in_order_check_their_input():
    model = fnn.Dense(2)
    state = fnn.init_train_state(model, optax.sgd(0.1), jax.random.key(0), jnp.zeros((1, 3)))
    empty = pipeline.predict(model, state, jnp.zeros((0, 3)))  # a TypeError from tree.map before
    assert empty.shape == (0, 2) and empty.dtype == jnp.float32
    with pytest.raises(ValueError, match="predict: batch_size must be a positive int, got 0"):
        pipeline.predict(model, state, jnp.ones((4, 3)), batch_size=0)
    with pytest.raises(ValueError, match="loader_in_order: batch_size must be a positive int, got -1"):
        list(pipeline.loader_in_order((np.ones((4, 3)),), -1))  # yielded nothing before
    with pytest.raises(ValueError, match=r"loader_in_order: arrays differ in length: \[5, 3\]"):
        list(pipeline.loader_in_order((np.ones((5, 3)), np.ones(3)), 2))
    np.testing.assert_allclose(pipeline.predict(model, state, jnp.ones((5, 3)), batch_size=np.int64(2)),
                               model(state.params, jnp.ones((5, 3))), rtol=1e-6)


def test_predict_computes_in_the_precision_the_model_was_tested_in():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    y = rng.integers(0, 3, 64).astype(np.int32)
    model = fnn.serial(fnn.Dense(16), fnn.relu, fnn.Dense(3))
    state = fnn.init_train_state(model, optax.sgd(0.1), jax.random.key(0), x[:8])
    half = pipeline.predict(model, state, x, batch_size=24, policy="bfloat16")
    want, _ = fnn.precision.apply(fnn.precision.policy("bfloat16"), model, state.params, state.model_state, x)
    np.testing.assert_array_equal(half, want)
    assert half.dtype == jnp.float32 and not np.array_equal(half, pipeline.predict(model, state, x))
    # the test stage's accuracy and the predictions' agree (digits' report counted float32 ones)
    tested = pipeline.test(model, fnn.losses.softmax_cross_entropy, state, (x, y), {"accuracy": fnn.metrics.accuracy},
                           types.SimpleNamespace(train=pipeline.TrainConfig(precision="bfloat16")))
    assert float(tested["test"]["accuracy"]) == pytest.approx(float(np.mean(np.argmax(half, -1) == y)))


def test_a_folder_runs_that_cannot_be_made_is_a_run_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("")  # a file of that name: a FileExistsError traceback before
    with pytest.raises(runs.RunError, match=r"cannot make the folder runs/ here .*choose a run directory with --dir"):
        fnn.cli._default_dir("xor")


def test_ctrl_c_outside_the_loop_says_how_to_resume(tmp_path):
    def load(config):
        raise KeyboardInterrupt  # Ctrl-C while the data load, before the loop catches signals

    @dataclasses.dataclass(frozen=True)
    class Config:
        n: int = 1

    stopped = pipeline.Experiment("mine", "stops", Config(), Pipeline(load))
    with pytest.raises(loop.Interrupted, match=f"^SIGINT: stopped outside training; continue with "
                                               f"`fnn resume {tmp_path / 'run'}`$") as info:
        pipeline.start(stopped, Config(), str(tmp_path / "run"), progress=False)
    assert info.value.step is None and info.value.signum == signal.SIGINT


def _finished(path, records, final):
    run = runs.Run.create(path, "demo", {})
    for record in records:
        run.log(record)
    run.finish(final)
    return run


def test_compare_plots_populations_names_runs_apart_and_keeps_its_table(tmp_path):
    # a population logs a list per metric: the table was lost to "none of the runs has logged metrics"
    members = [{"step": s, "split": "train", "loss": [1.0 / s, 2.0 / s]} for s in (1, 2)]
    _finished(tmp_path / "a" / "run", members, {"accuracy_mean": 0.5})
    _finished(tmp_path / "b" / "run", [{"step": 1, "split": "train", "loss": 3.0}], {"accuracy_mean": 0.7})
    table = runs.compare([tmp_path / "a" / "run", tmp_path / "b" / "run"], tmp_path / "both")
    assert "0.5" in table and "0.7" in table
    assert table.endswith(f"plot: {tmp_path / 'both.png'}") and (tmp_path / "both.png").exists()  # named the file
    import matplotlib.pyplot as plt
    drawn = {}
    original = fnn.plots.curves
    fnn.plots.curves = lambda panels, path, **kw: drawn.update(panels) or original(panels, path, **kw)
    try:
        runs.compare([tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "b" / "run"], tmp_path / "c.png")
    finally:
        fnn.plots.curves = original
        plt.close("all")
    assert sorted(drawn["loss"]) == [f"{tmp_path / 'a' / 'run'} (train)", f"{tmp_path / 'b' / 'run'} #2 (train)",
                                     f"{tmp_path / 'b' / 'run'} #3 (train)"]  # one curve per run, not per name
    assert drawn["loss"][f"{tmp_path / 'a' / 'run'} (train)"] == [(1, 1.5), (2, 0.75)]  # the members' mean
    table = runs.compare([tmp_path / "b" / "run"], tmp_path / "x.foo")
    assert "0.7" in table and "plot: not written to" in table and "foo" in table


def test_run_files_of_the_wrong_shape_are_run_errors(tmp_path):
    run = _finished(tmp_path / "run", [{"step": 1, "split": "train", "loss": 1.0}], {"loss": 1.0})
    (run.directory / "final.json").write_text("[1, 2]")
    with pytest.raises(runs.RunError, match="final.json is not a mapping of metrics"):
        runs.show(run.directory)
    (run.directory / "final.json").write_bytes(b"\xff\xfe")
    with pytest.raises(runs.RunError, match="final.json is not valid JSON"):
        runs.show(run.directory)
    (run.directory / "final.json").write_text("{}")
    run.metrics_path.write_text('5\n')
    with pytest.raises(runs.RunError, match=r"metrics.jsonl:1 is not a record with a step: '5'"):
        runs.compare([run.directory], tmp_path / "c.png")
    (run.directory / "config.json").write_text('{"experiment": "xor", "config": [1, 2]}')
    with pytest.raises(runs.RunError, match="its 'config' is not a mapping of settings"):
        runs.show(run.directory)
    (run.directory / "config.json").unlink()
    (run.directory / "config.json").mkdir()
    with pytest.raises(runs.RunError, match="config.json cannot be read"):
        runs.show(run.directory)


def test_a_run_another_process_trains_in_is_refused_and_left_as_it_was(tmp_path):
    xor = pipeline.find("xor")
    directory = tmp_path / "run"
    pipeline.start(xor, dataclasses.replace(xor.config, steps=10), str(directory), progress=False)
    before = {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}
    holder = subprocess.Popen(  # another process training in it holds config.json's lock
        [sys.executable, "-c", "import fcntl, sys, time\n"
         f"f = open({str(directory / 'config.json')!r}, 'rb'); fcntl.flock(f, fcntl.LOCK_EX)\n"
         "print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(runs.RunError, match=r"run is in use: another process is training in it.*"
                                                r"continue with `fnn resume .*run`$"):
            pipeline.resume(str(directory), progress=False)
        # a new run given its directory: it told the user to resume it, or to remove the directory
        with pytest.raises(runs.RunError, match=r"run is in use: another process is training in it \(its "
                                                r"config.json is locked\); choose another directory$"):
            pipeline.start(xor, xor.config, str(directory), progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()} == before
    run, values = pipeline.resume(str(directory), progress=False)  # the lock went with the process
    assert int(values["state"].step) == 10


def test_resume_hints_quote_a_directory_for_the_shell(tmp_path):
    directory = tmp_path / "my runs" / "digits"
    stop = loop.Interrupted(str(directory), step=3, signum=signal.SIGTERM)
    assert str(stop).endswith(f"continue with `fnn resume '{directory}'`")
    runs.Run.create(directory, "demo", {})
    with pytest.raises(runs.RunError, match=re.escape(f"continue it with `fnn resume '{directory}'`")):
        runs.Run.create(directory, "demo", {})
    assert f"continue with `fnn resume '{directory}'`" in runs.show(directory)


def test_nan_in_the_validation_or_test_set_is_refused_as_in_the_training_set():
    _, state, data, _ = _problem()
    model = fnn.serial(fnn.Dense(16), fnn.relu, fnn.Dropout(0.2), fnn.Dense(3))
    x, y = np.ones((6, 5), np.float32), np.zeros(6, np.int32)
    x[4, 2] = np.nan

    @dataclasses.dataclass(frozen=True)
    class Config:
        train: pipeline.TrainConfig = pipeline.TrainConfig(epochs=1, batch_size=8)

    with pytest.raises(ValueError, match=r"eval_set\[0\] holds 1 NaN or infinite values \(first at \(4, 2\)\)"):
        pipeline.train_from(state, model, optax.adam(1e-2), data, fnn.losses.softmax_cross_entropy, Config(),
                            eval_set=(x, y))
    with pytest.raises(ValueError, match=r"test_set\[0\] holds 1 NaN or infinite values \(first at \(4, 2\)\)"):
        pipeline.test(model, fnn.losses.softmax_cross_entropy, state, (x, y))


def test_non_finite_metrics_are_written_as_strict_json_and_read_back(tmp_path):
    run = _new_run(tmp_path / "run")
    run.log({"step": 1, "split": "eval", "loss": float("nan"), "acc": [0.5, float("inf")]})
    run.finish({"test_loss": float("-inf"), "accuracy": 0.25})

    def strict(text):  # what a JSON parser that follows the standard does with NaN or Infinity
        return json.loads(text, parse_constant=lambda token: pytest.fail(f"bare {token} in {text!r}"))

    [line] = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert strict(line)["loss"] == "NaN"
    assert strict((tmp_path / "run" / "final.json").read_text())["test_loss"] == "-Infinity"
    again = runs.Run(tmp_path / "run")
    [record] = again.records()
    assert np.isnan(record["loss"]) and record["acc"] == [0.5, float("inf")]
    assert again.final()["test_loss"] == float("-inf")
    again.rewind(1)  # rewritten strictly too
    strict((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert "test_loss: -inf" in runs.show(tmp_path / "run")


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_a_run_recorded_before_momentum_was_optional_resumes_as_it_trained(tmp_path, optimizer):
    directory = tmp_path / "run"
    assert fnn.cli.main(["run", "digits", *TINY, "train.epochs=1", f"train.optimizer={optimizer}",
                         "--dir", str(directory), "-q"]) == 0
    meta = json.loads((directory / "config.json").read_text())
    assert meta.pop("format") == runs.FORMAT == 2
    meta["config"]["train"]["momentum"] = 0.9  # what format 1 recorded whatever the optimizer
    (directory / "config.json").write_text(json.dumps(meta))
    run, values = pipeline.resume(str(directory), progress=False)  # was refused, or did not fit (rmsprop)
    assert values["config"].train.momentum is None and run.format == 1


# -- writing fails: one clear error, nothing saved lost ----------------------------------------


def test_a_checkpoint_that_cannot_be_written_is_a_checkpoint_error_and_keeps_the_others(tmp_path, monkeypatch):
    ckpts, state = _saved(tmp_path)  # step 1 on disk
    step, _, data, _ = _problem()
    later, _ = step(state, data[1])

    def full(*args, **kwargs):
        raise ValueError('OUT_OF_RANGE: Error writing "params.dense_0.w/0" ... File too large\n(pages more)')

    monkeypatch.setattr(ckpts._manager, "save", full)  # was orbax's ValueError, pages of it
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(
            f"cannot save step 2 in {ckpts.directory}: ValueError: OUT_OF_RANGE: Error writing "
            '"params.dense_0.w/0" ... File too large ...; the checkpoints of steps [1] are kept as they were')):
        ckpts.save(later)
    monkeypatch.undo()
    assert ckpts.steps() == [1]


def test_a_metrics_file_that_cannot_grow_is_a_run_error_naming_it(tmp_path):
    """A real EFBIG from a file-size limit: the failed write named no file ("[Errno 27] File too
    large"), and the run's records up to it stay readable."""
    script = f"""
import resource, signal
from fnn import runs
run = runs.Run.create({str(tmp_path / 'run')!r}, "demo", {{}})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    for step in range(1, 100):
        run.log({{"step": step, "split": "train", "loss": 0.123456789}})
except runs.RunError as error:
    print(error)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.stdout.strip() == f"cannot write {tmp_path / 'run' / 'metrics.jsonl'}: File too large", out.stderr
    records = runs.Run(tmp_path / "run").records()  # a torn last line is left out
    assert records and [r["step"] for r in records] == list(range(1, len(records) + 1))


def test_an_unwritable_run_folder_is_refused_before_training(tmp_path, monkeypatch, capsys):
    run = _new_run(tmp_path / "run")
    (run.directory / "checkpoints").mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: real_access(path, mode) and "checkpoints" not in str(path))
    with pytest.raises(runs.RunError, match=re.escape(f"cannot write in {run.directory / 'checkpoints'} "
                                                      "(permission denied); nothing was changed")):
        run.check_writable()  # as root the test cannot chmod it: root writes anywhere

    @dataclasses.dataclass(frozen=True)
    class Config:
        n: int = 1

    trained = []
    experiment = pipeline.Experiment("mine", "trains", Config(), Pipeline(train=lambda: trained.append(1)))
    with pytest.raises(runs.RunError, match="checkpoints \\(permission denied\\)"):
        pipeline.run_in(experiment, Config(), run, progress=False)
    assert not trained  # it used to fail at the first save, after training


def test_a_failure_to_close_the_run_does_not_hide_the_error(tmp_path, monkeypatch):
    def broken():
        raise ValueError("the stage's own error")

    @dataclasses.dataclass(frozen=True)
    class Config:
        n: int = 1

    run = _new_run(tmp_path / "run")

    def close():
        raise OSError(28, "No space left on device")  # TensorBoard flushing to a full disk

    monkeypatch.setattr(run, "close", close)
    experiment = pipeline.Experiment("mine", "fails", Config(), Pipeline(broken))
    with pytest.raises(ValueError, match="the stage's own error") as info:  # was the OSError of close()
        pipeline.run_in(experiment, Config(), run, progress=False)
    assert info.value.__notes__ == ["(closing the run failed too: OSError: [Errno 28] No space left on device)"]


def test_a_ctrl_c_that_python_ignored_still_stops_the_run(tmp_path):
    """Python prints and ignores a KeyboardInterrupt raised in a garbage-collection callback: a
    Ctrl-C that landed there, just after the loop, let the run go on and exit 0."""

    def swallows():  # stands for the callback that ignored it
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            pass
        return {"final": {"loss": 0.0}}

    @dataclasses.dataclass(frozen=True)
    class Config:
        n: int = 1

    run = _new_run(tmp_path / "run")
    experiment = pipeline.Experiment("mine", "stops", Config(), Pipeline(swallows))
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own (a test worker may ignore it)
    try:
        with pytest.raises(loop.Interrupted, match="^SIGINT: stopped outside training"):
            pipeline.run_in(experiment, Config(), run, progress=False)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)
    assert not (run.directory / "final.json").exists()
    seen = []  # a process that ignores SIGINT (a shell's background job) keeps ignoring it
    ignores = pipeline.Experiment("mine", "sees", Config(), Pipeline(
        sees=lambda: seen.append(signal.getsignal(signal.SIGINT)) or {"final": {"loss": 0.0}}))
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        pipeline.run_in(ignores, Config(), _new_run(tmp_path / "ignores"), progress=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == [signal.SIG_IGN]


def test_the_fnn_command_prints_a_system_error_as_one_line(monkeypatch, capsys):
    def full(args):
        raise OSError(28, "No space left on device", "runs/x/confusion.png")

    monkeypatch.setattr(fnn.cli, "_dispatch", full)
    assert fnn.cli.main(["run", "xor"]) == 1
    assert capsys.readouterr().err == "fnn run: [Errno 28] No space left on device: 'runs/x/confusion.png'\n"
