"""Does fnn train the benchmark models on this machine's default device as it should? For
each model: the loss and the gradients of one batch as a train step takes them on the
default device (fnn's gradient rules, ``fnn.reverse_mode_only``) against JAX's own
gradients on the CPU (float32 with the products at full precision, so an accelerator's
faster, rounder products do not count as a difference), then ``--steps`` adam steps on the
default device, whose loss must fall. On a machine with only a CPU this checks fnn's CPU
rules against JAX's.

    python -m benchmarks.device_check                 # every model, 20 steps
    python -m benchmarks.device_check --models lstm --steps 5

Exit status 1 when a model's gradients differ beyond tolerance or its loss does not fall.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np
import optax

import fnn
from benchmarks.frameworks.fnn_models import model as benchmark_model
from benchmarks.models import LEARNING_RATE, SPECS, batch_for

RTOL = 2e-3  # relative to the largest gradient entry of each parameter


def loss_and_grads(net: fnn.Layer, params, batch, device, rules: bool = True) -> tuple[float, dict]:
    """The loss and the gradients of ``batch`` computed on ``device``, with fnn's gradient
    rules as a train step takes them (``fnn.reverse_mode_only``) or JAX's, brought back to
    the host."""
    params, batch = jax.device_put((params, batch), device)

    def loss(p, b):
        with fnn.reverse_mode_only(rules):
            return fnn.losses.softmax_cross_entropy(net(p, b[0]), b[1]).mean()

    with jax.default_matmul_precision("highest"):
        value, grads = jax.jit(jax.value_and_grad(loss))(params, batch)
    return float(value), jax.device_get(grads)


def worst_difference(a, b) -> tuple[str, float]:
    """The parameter whose gradients differ most, relative to its largest entry (or to a
    thousandth of the model's largest, for a gradient that is zero but for rounding, as a
    key bias's is), and by how much."""
    floor = 1e-3 * max(float(np.abs(y).max()) for y in jax.tree.leaves(b))
    worst = ("", 0.0)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        scale = max(float(np.abs(y).max()), floor, 1e-30)
        diff = float(np.abs(np.asarray(x) - np.asarray(y)).max()) / scale
        if diff > worst[1]:
            worst = (jax.tree_util.keystr(path), diff)
    return worst


def check(name: str, steps: int, log=print) -> bool:
    """Whether ``name``'s gradients on the default device are JAX's on the CPU, and it trains there."""
    net, batch = benchmark_model(name), batch_for(name)
    params, _ = net.init(jax.random.key(0), batch[0])
    cpu, here = jax.devices("cpu")[0], jax.devices()[0]
    loss_here, grads_here = loss_and_grads(net, params, batch, here)
    loss_cpu, grads_cpu = loss_and_grads(net, params, batch, cpu, rules=False)
    where, diff = worst_difference(grads_here, grads_cpu)
    same = abs(loss_here - loss_cpu) <= RTOL * abs(loss_cpu) and diff <= RTOL
    optimizer = optax.adam(LEARNING_RATE)
    state = fnn.init_train_state(net, optimizer, jax.random.key(0), batch[0])
    step = fnn.make_train_step(net, optimizer, fnn.losses.softmax_cross_entropy)
    batch = jax.device_put(batch)
    start = time.perf_counter()
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    falls = bool(np.isfinite(losses).all()) and losses[-1] < losses[0]
    log(f"{name}: loss {loss_here:.6f} here, {loss_cpu:.6f} on the CPU with JAX's gradients; they differ by "
        f"at most {diff:.2e} of a parameter's largest ({where or '-'}); {steps} steps on {here.platform}: "
        f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in {time.perf_counter() - start:.1f} s"
        f"{'' if same and falls else '  <-- FAILED'}")
    return same and falls


def main(argv: list[str] | None = None) -> bool:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--steps", type=int, default=20, help="adam steps on the default device (default 20)")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the loss must fall from the first to the last)")
    device = jax.devices()[0]
    print(f"jax {jax.__version__}: default device {device.platform} ({device.device_kind}), "
          f"{len(jax.devices())} of them", flush=True)
    results = [check(name, args.steps, log=lambda line: print(line, flush=True)) for name in args.models]
    print("every model agrees with JAX's gradients on the CPU and trains" if all(results) else "FAILED", flush=True)
    return all(results)


if __name__ == "__main__":
    sys.exit(0 if main(sys.argv[1:]) else 1)
