"""The model, data and reference training shared by the multi-device checks (which run in
subprocesses with their own device count) and the test process."""

import jax
import numpy as np
import optax

import fnn

MODEL = fnn.serial(fnn.Dense(64), fnn.relu, fnn.LayerNorm(), fnn.Dense(32), fnn.relu, fnn.Dense(10))
OPTIMIZER = optax.adam(1e-2)
LOSS = fnn.losses.softmax_cross_entropy
BATCH = 64
STEPS = 5


def batches(seed: int = 0):
    """STEPS global batches of BATCH rows: 16 features, 10 classes."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(STEPS, BATCH, 16)).astype(np.float32)
    y = rng.integers(0, 10, size=(STEPS, BATCH)).astype(np.int32)
    return [(x[i], y[i]) for i in range(STEPS)]


def initial_state():
    return fnn.init_train_state(MODEL, OPTIMIZER, jax.random.key(0), jax.ShapeDtypeStruct((BATCH, 16), np.float32))


def reference():
    """Single-device training: the final params and each step's loss."""
    step = fnn.make_train_step(MODEL, OPTIMIZER, LOSS)
    state, losses = initial_state(), []
    for batch in batches():
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return jax.device_get(state.params), losses
