"""Data parallelism and FSDP on 8 simulated CPU devices against single-device training.

Run as a script (the device count must be set before JAX starts):
``python -m tests.multidevice.data_parallel``; exits non-zero with the failing check.
"""

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import fnn  # noqa: E402
from fnn.distributed import DataParallel, ParallelError  # noqa: E402
from tests.multidevice import common  # noqa: E402


def train(parallel, steps_per_call=1):
    step = fnn.make_train_step(common.MODEL, common.OPTIMIZER, common.LOSS, parallel=parallel,
                               steps_per_call=steps_per_call)
    state = parallel.put_state(common.initial_state())
    losses = []
    data = common.batches()
    if steps_per_call > 1:
        data = fnn.data.stack_batches(data, steps_per_call, device=False)
    for batch in data:
        state, metrics = step(state, parallel.put_batch(batch, stacked=steps_per_call > 1))
        losses.extend(np.ravel(metrics["loss"]).tolist())
    return state, losses


def check_close(state, losses, expected_params, expected_losses, what):
    np.testing.assert_allclose(losses, expected_losses[: len(losses)], rtol=1e-5, err_msg=what)
    for path, got in jax.tree_util.tree_leaves_with_path(jax.device_get(state.params)):
        want = expected_params
        for key in path:
            want = want[key.key]
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6, err_msg=f"{what}: {path}")


def main():
    assert jax.device_count() == 8, jax.devices()
    expected_params, expected_losses = common.reference()

    # data parallel: parameters and optimizer state replicated, the batch split in 8
    dp = DataParallel.over()
    state, losses = train(dp)
    check_close(state, losses, expected_params, expected_losses, "data parallel")
    for leaf in jax.tree.leaves((state.params, state.opt_state)):
        assert leaf.sharding.is_fully_replicated, leaf.sharding
    batch = dp.put_batch(common.batches()[0])
    assert batch[0].sharding.spec == P("data") and len(batch[0].addressable_shards) == 8
    assert {s.data.shape for s in batch[0].addressable_shards} == {(8, 16)}

    # FSDP: every array of >= 512 elements split along its first dimension divisible by 8
    fsdp = DataParallel.over(fsdp=True, min_size=512)
    state, losses = train(fsdp)
    check_close(state, losses, expected_params, expected_losses, "fsdp")
    w0 = state.params["dense_0"]["w"]  # [16, 64]
    assert w0.sharding.spec == P("data"), w0.sharding
    assert {s.data.shape for s in w0.addressable_shards} == {(2, 64)}
    assert state.params["dense_0"]["b"].sharding.is_fully_replicated  # 64 elements: replicated
    mu = state.opt_state[0].mu["dense_0"]["w"]  # adam's first moment follows its parameter
    assert mu.sharding.spec == P("data"), mu.sharding
    assert state.params["dense_1"]["w"].sharding.spec == P("data")  # [64, 32]
    assert state.params["dense_2"]["w"].sharding.is_fully_replicated  # [32, 10]: 320 elements
    # K steps per call under the same layout
    state, losses = train(fsdp, steps_per_call=2)  # 5 batches: two calls of 2, the last one dropped
    assert len(losses) == 4
    np.testing.assert_allclose(losses, expected_losses[:4], rtol=1e-5)
    assert state.params["dense_0"]["w"].sharding.spec == P("data")

    # a batch that does not divide among the devices is refused, naming the fix
    try:
        dp.put_batch((np.zeros((60, 16), np.float32),))
    except ParallelError as error:
        assert "does not divide among this process's 8 devices" in str(error), error
    else:
        raise AssertionError("a batch of 60 rows on 8 devices was accepted")
    # so is one handed to the step without put_batch, inside the compiled step
    step = fnn.make_train_step(common.MODEL, common.OPTIMIZER, common.LOSS, parallel=dp)
    for rows in (60, 63):
        try:
            step(dp.put_state(common.initial_state()), (np.zeros((rows, 16), np.float32), np.zeros(rows, np.int32)))
        except ParallelError as error:
            assert f"a batch of {rows} rows" in str(error) and "the layout's 8 devices" in str(error), error
        else:
            raise AssertionError(f"a batch of {rows} rows on 8 devices was accepted by the step")
    check_keys_stay_replicated()
    check_checkpoints_follow_the_template()
    check_pipeline()
    check_fnn_rules()
    print("data parallel and fsdp match single-device training")


def check_keys_stay_replicated():
    """FSDP splitting even the smallest arrays (``min_size=0``) leaves the rng key whole: its
    raw data's trailing axis must stay replicated."""
    for devices in (jax.devices()[:2], jax.devices()):
        parallel = DataParallel.over(devices, fsdp=True, min_size=0)
        state = parallel.put_state(common.initial_state())
        assert state.rng.sharding.is_fully_replicated, state.rng.sharding
        step = fnn.make_train_step(common.MODEL, common.OPTIMIZER, common.LOSS, parallel=parallel)
        state, _ = step(state, parallel.put_batch(common.batches()[0]))
        assert state.params["dense_0"]["w"].sharding.spec == P("data")


def check_checkpoints_follow_the_template():
    """A checkpoint of an 8-device FSDP state restores into a fresh state on one device, an
    abstract one, or one laid out on 2 of the devices: placed as each template is, the same
    values."""
    import tempfile

    from fnn.checkpoint import Checkpoints

    fsdp = DataParallel.over(fsdp=True, min_size=512)
    state, _ = train(fsdp)
    two = DataParallel.over(jax.devices()[:2], fsdp=True, min_size=512)
    start = common.initial_state()
    with tempfile.TemporaryDirectory() as directory:
        checkpoints = Checkpoints(directory)
        checkpoints.save(state)
        on_two = two.put_state(start)
        abstract_on_two = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), on_two)
        for template, devices in ((start, 1), (jax.eval_shape(lambda: start), 1), (on_two, 2), (abstract_on_two, 2)):
            restored, _ = checkpoints.restore(template)
            for got, want in zip(jax.tree.leaves((restored.params, restored.opt_state)),
                                 jax.tree.leaves((state.params, state.opt_state))):
                assert len(got.sharding.device_set) == devices, got.sharding
                np.testing.assert_array_equal(jax.device_get(got), jax.device_get(want))
            assert len(restored.rng.sharding.device_set) == devices, restored.rng.sharding
        assert restored.params["dense_0"]["w"].sharding.spec == P("data")  # laid out as `two`'s


def check_pipeline():
    """`train.devices` in a pipeline experiment: the same parameters on 1 and 8 devices, and a
    restored checkpoint laid out again on the 8."""
    import dataclasses
    import tempfile

    from fnn.pipeline import Pipeline, TrainConfig
    from fnn.runs import Run

    @dataclasses.dataclass(frozen=True)
    class Config:
        train: TrainConfig = TrainConfig(epochs=2, batch_size=64)

    rng = np.random.default_rng(1)
    train_set = (rng.normal(size=(256, 16)).astype(np.float32), rng.integers(0, 10, 256).astype(np.int32))
    stages = Pipeline(fnn.pipeline.optimizer, fnn.pipeline.batches, fnn.pipeline.train)

    def run(devices, run=None):
        config = Config(TrainConfig(epochs=2, batch_size=64, devices=devices))
        return stages.run(config=config, model=common.MODEL, loss=common.LOSS, train_set=train_set, run=run)

    one = jax.device_get(run("one")["state"].params)
    for devices in ("data", "fsdp"):
        with tempfile.TemporaryDirectory() as directory:
            state = run(devices, Run.create(directory, "check", {}))["state"]
            for got, want in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(one)):
                np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6, err_msg=devices)
            restored = run(devices, Run(directory))["state"]  # the checkpoint at the end: nothing left to do
            w = restored.params["dense_0"]["w"]
            assert len(w.sharding.device_set) == 8, w.sharding
            assert (w.sharding.spec == P("data")) == (devices == "fsdp"), w.sharding
            np.testing.assert_array_equal(jax.device_get(w), jax.device_get(state.params["dense_0"]["w"]))
    try:
        stages.run(config=Config(TrainConfig(batch_size=60, devices="data")), model=common.MODEL,
                   loss=common.LOSS, train_set=train_set)
    except fnn.config.ConfigError as error:
        assert "train.batch_size 60 does not divide among 8 devices" in str(error), error
    else:
        raise AssertionError("a batch of 60 on 8 devices was accepted")


def check_fnn_rules():
    """The layers whose gradients take fnn's own rules in a training step (``fnn.autodiff``:
    a convolution of one input channel and one of several, with and without a stride, a
    strided transposed convolution, an LSTM's weight and input gradients after its loop,
    causal attention, and ``fnn.remat``'s recomputation) train on 8 devices as on one, the
    batch split and, under FSDP, the weights. With SGD, not Adam: the attention's key bias has a
    gradient of zero up to rounding (the softmax ignores a constant added to a query's
    scores), which Adam would scale up to a full step in a direction that rounding picks."""
    optimizer = optax.sgd(0.1)
    model = fnn.serial(fnn.Conv(4, (3,), strides=2), fnn.relu, fnn.remat(fnn.Conv(6, (3,), padding="VALID"), fnn.relu),
                       fnn.Conv(6, (3,), strides=2, dilation=2), fnn.ConvTranspose(6, (3,), strides=2),
                       fnn.Recurrent(fnn.LSTM(8)), fnn.MultiHeadAttention(2, causal=True),
                       fnn.Flatten(), fnn.Dense(10))
    rng = np.random.default_rng(2)
    data = [(rng.normal(size=(32, 24, 1)).astype(np.float32), rng.integers(0, 10, 32).astype(np.int32))
            for _ in range(3)]
    start = fnn.init_train_state(model, optimizer, jax.random.key(0), data[0][0])

    def train(parallel=None):
        step = fnn.make_train_step(model, optimizer, common.LOSS, parallel=parallel, donate=False)
        state = parallel.put_state(start) if parallel else start
        losses = []
        for batch in data:
            state, metrics = step(state, parallel.put_batch(batch) if parallel else batch)
            losses.append(float(metrics["loss"]))
        return state, losses

    one, one_losses = train()
    for parallel in (DataParallel.over(), DataParallel.over(fsdp=True, min_size=64)):
        state, losses = train(parallel)
        check_close(state, losses, jax.device_get(one.params), one_losses, f"fnn rules, fsdp={parallel.fsdp}")


if __name__ == "__main__":
    main()
