"""Train-step throughput of fnn against hand-written raw JAX and Flax Linen, in one process.

``fnn K=10`` is fnn with ``make_train_step(..., steps_per_call=10)``: ten steps per
compiled call (``lax.scan`` over ten batches already on the device), against the others'
one step per call.

Every framework trains the same architecture with the same optimizer (adam), batch size
and data. Rounds are interleaved (each round times every framework once, in turn) so
that machine drift hits all alike; the table reports medians over rounds, the ratio to
raw JAX, and the first call's time (trace + compile + one step).

    .venv/bin/python -m benchmarks.train_step            # all models
    .venv/bin/python -m benchmarks.train_step --models mlp-small --rounds 9
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import fnn

MODELS = {
    # name: (input shape per example, batch size, steps per timed round)
    "mlp-small": ((64,), 128, 400),
    "mlp-large": ((784,), 256, 20),
    "lenet": ((28, 28, 1), 128, 10),
}
LEARNING_RATE = 1e-3


def batch_for(name: str) -> tuple[jax.Array, jax.Array]:
    shape, batch, _ = MODELS[name]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, *shape)).astype(np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    return jax.device_put(x), jax.device_put(y)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


# --- fnn -------------------------------------------------------------------------------

def fnn_model(name: str) -> fnn.Layer:
    if name == "lenet":
        return fnn.serial(
            fnn.Conv(6, (5, 5)), fnn.relu, fnn.MaxPool((2, 2)),
            fnn.Conv(16, (5, 5), padding="VALID"), fnn.relu, fnn.MaxPool((2, 2)),
            fnn.Flatten(), fnn.Dense(120), fnn.relu, fnn.Dense(84), fnn.relu, fnn.Dense(10),
        )
    hidden = {"mlp-small": (128, 128), "mlp-large": (1024, 1024)}[name]
    layers = []
    for width in hidden:
        layers += [fnn.Dense(width), fnn.relu]
    return fnn.serial(*layers, fnn.Dense(10))


def make_fnn(name: str, batch: tuple) -> tuple[Callable, object]:
    model = fnn_model(name)
    optimizer = optax.adam(LEARNING_RATE)
    state = fnn.init_train_state(model, optimizer, jax.random.key(0), batch[0])
    step = fnn.make_train_step(model, optimizer, fnn.losses.softmax_cross_entropy)
    return (lambda s, b: step(s, b)), state


STEPS_PER_CALL = 10


def make_fnn_scan(name: str, batch: tuple) -> tuple[Callable, object]:
    """fnn taking STEPS_PER_CALL steps per call (``steps_per_call``: ``lax.scan`` over batches
    staged on the device); each call is counted as that many steps."""
    model = fnn_model(name)
    optimizer = optax.adam(LEARNING_RATE)
    state = fnn.init_train_state(model, optimizer, jax.random.key(0), batch[0])
    step = fnn.make_train_step(model, optimizer, fnn.losses.softmax_cross_entropy,
                               steps_per_call=STEPS_PER_CALL)
    stacked = jax.device_put(jax.tree.map(lambda a: jnp.stack([a] * STEPS_PER_CALL), batch))
    return (lambda s, _: step(s, stacked)), state


# --- raw JAX: a params dict, jax.jit(value_and_grad), optax ------------------------------

def raw_init(name: str, key: jax.Array) -> dict:
    init = jax.nn.initializers.lecun_normal()
    if name == "lenet":
        shapes = {"c1": (5, 5, 1, 6), "c2": (5, 5, 6, 16), "d1": (400, 120), "d2": (120, 84), "d3": (84, 10)}
    else:
        d_in = MODELS[name][0][0]
        h = {"mlp-small": 128, "mlp-large": 1024}[name]
        shapes = {"d1": (d_in, h), "d2": (h, h), "d3": (h, 10)}
    keys = jax.random.split(key, len(shapes))
    return {k: {"w": init(kk, s), "b": jnp.zeros(s[-1])} for (k, s), kk in zip(shapes.items(), keys)}


def raw_apply(name: str, p: dict, x: jax.Array) -> jax.Array:
    def pool(v):
        return jax.lax.reduce_window(v, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    def conv(v, q, padding):
        dn = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(v, q["w"], (1, 1), padding, dimension_numbers=dn) + q["b"]

    if name == "lenet":
        x = pool(jax.nn.relu(conv(x, p["c1"], "SAME")))
        x = pool(jax.nn.relu(conv(x, p["c2"], "VALID")))
        x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu(x @ p["d1"]["w"] + p["d1"]["b"])
    x = jax.nn.relu(x @ p["d2"]["w"] + p["d2"]["b"])
    return x @ p["d3"]["w"] + p["d3"]["b"]


def make_raw(name: str, batch: tuple) -> tuple[Callable, object]:
    optimizer = optax.adam(LEARNING_RATE)
    params = raw_init(name, jax.random.key(0))

    def step(state, batch):
        params, opt_state = state
        x, y = batch
        loss, grads = jax.value_and_grad(lambda q: cross_entropy(raw_apply(name, q, x), y))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), {"loss": loss}

    return jax.jit(step, donate_argnums=0), (params, optimizer.init(params))


# --- Flax Linen ----------------------------------------------------------------------------

class LinenModel(nn.Module):
    name_: str

    @nn.compact
    def __call__(self, x):
        if self.name_ == "lenet":
            x = nn.max_pool(nn.relu(nn.Conv(6, (5, 5))(x)), (2, 2), (2, 2))
            x = nn.max_pool(nn.relu(nn.Conv(16, (5, 5), padding="VALID")(x)), (2, 2), (2, 2))
            x = x.reshape(x.shape[0], -1)
            widths = (120, 84)
        else:
            widths = {"mlp-small": (128, 128), "mlp-large": (1024, 1024)}[self.name_]
        for width in widths:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(10)(x)


def make_linen(name: str, batch: tuple) -> tuple[Callable, object]:
    model = LinenModel(name)
    optimizer = optax.adam(LEARNING_RATE)
    params = model.init(jax.random.key(0), batch[0])

    def step(state, batch):
        params, opt_state = state
        x, y = batch
        loss, grads = jax.value_and_grad(lambda q: cross_entropy(model.apply(q, x), y))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), {"loss": loss}

    return jax.jit(step, donate_argnums=0), (params, optimizer.init(params))


FRAMEWORKS = {"raw jax": make_raw, "fnn": make_fnn, "flax linen": make_linen, f"fnn K={STEPS_PER_CALL}": make_fnn_scan}
PER_CALL = {f"fnn K={STEPS_PER_CALL}": STEPS_PER_CALL}  # steps a call takes, where not one


def time_steps(step: Callable, state: object, batch: tuple, n: int) -> tuple[object, float]:
    start = time.perf_counter()
    for _ in range(n):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics["loss"])
    return state, n / (time.perf_counter() - start)


def bench_model(name: str, rounds: int) -> list[tuple[str, float, float]]:
    batch = batch_for(name)
    steps = MODELS[name][2]
    runs = {}
    for framework, make in FRAMEWORKS.items():
        step, state = make(name, batch)
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics["loss"])
        runs[framework] = [step, state, time.perf_counter() - start, []]
    for _ in range(rounds):
        for framework, run in runs.items():
            k = PER_CALL.get(framework, 1)
            run[1], rate = time_steps(run[0], run[1], batch, max(1, steps // k))
            run[3].append(rate * k)
    return [(framework, statistics.median(r[3]), r[2]) for framework, r in runs.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.devices()[0].device_kind}), "
          f"medians of {args.rounds} interleaved rounds")
    print(f"{'model':<10} {'framework':<11} {'steps/s':>9} {'vs raw jax':>10} {'first call s':>12}")
    print(f"(fnn K={STEPS_PER_CALL}: {STEPS_PER_CALL} steps per call with steps_per_call; its first call "
          f"compiles and runs {STEPS_PER_CALL} steps)")
    for name in args.models:
        rows = bench_model(name, args.rounds)
        raw = dict((f, r) for f, r, _ in rows)["raw jax"]
        for framework, rate, first in rows:
            print(f"{name:<10} {framework:<11} {rate:>9.1f} {rate / raw:>10.3f} {first:>12.3f}")


if __name__ == "__main__":
    main()
