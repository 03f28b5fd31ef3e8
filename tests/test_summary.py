"""``fnn.summary``."""

import jax
import jax.numpy as jnp

import fnn


def test_summary_lists_paths_shapes_counts_and_flops():
    model = fnn.serial(
        features=fnn.serial(fnn.Conv(8, (3, 3), padding="VALID"), fnn.relu, fnn.MaxPool((2, 2)), fnn.Flatten()),
        head=fnn.Dense(10),
    )
    report = fnn.summary(model, jax.ShapeDtypeStruct((32, 8, 8, 1), jnp.float32))
    rows = {row[0]: row for row in report.rows()}
    assert list(rows) == ["(model)", "features", "features/conv_0", "features/relu_0",
                          "features/max_pool_0", "features/flatten_0", "head"]
    assert rows["features/conv_0"][1:] == ("Conv", "float32[32,6,6,8]", "b[8] w[3,3,1,8]", "80")
    assert rows["features/max_pool_0"][2] == "float32[32,3,3,8]"
    assert rows["head"][1:] == ("Dense", "float32[32,10]", "b[10] w[72,10]", "730")
    assert report.total_params == 80 + 730
    # Multiply-adds: conv 36 positions * 9 taps * 8 filters, dense 72 * 10; XLA adds element-wise ops.
    macs = 36 * 9 * 8 + 72 * 10
    assert 2 * macs <= report.flops_per_example < 1.5 * 2 * macs
    text = str(report)
    assert "total parameters: 810" in text and "features/conv_0" in text


def test_summary_flops_are_per_example_whatever_the_batch():
    model = fnn.serial(fnn.Dense(64), fnn.relu, fnn.Dense(10))
    small = fnn.summary(model, jax.ShapeDtypeStruct((1, 32), jnp.float32))
    large = fnn.summary(model, jax.ShapeDtypeStruct((256, 32), jnp.float32))
    assert small.flops_per_example == large.flops_per_example


def test_summary_flops_of_a_model_with_a_loop_are_unknown():
    """XLA counts a scan's body once: 7 LSTM steps gave the FLOPs of one."""
    report = fnn.summary(fnn.Recurrent(fnn.LSTM(16)), jax.ShapeDtypeStruct((1, 7, 4), jnp.float32))
    assert report.total_params == 4 * 16 * (4 + 16 + 1)
    assert report.flops_per_example is None
    assert str(report).endswith("FLOPs per example: unknown")


def test_summary_of_residual_and_parallel_models():
    model = fnn.serial(
        fnn.Dense(4),
        fnn.residual(fnn.Dense(4), fnn.relu, fnn.Dense(4)),
        fnn.fan_out(2), fnn.parallel(fnn.Dense(2), fnn.Dense(3)), fnn.fan_in_concat(),
    )
    report = fnn.summary(model, jax.ShapeDtypeStruct((1, 3), jnp.float32))
    paths = [row[0] for row in report.rows()]
    assert "residual_0/dense_1" in paths and "parallel_0/dense_1" in paths
    assert report.nodes[-1].output.shape == (1, 5)
