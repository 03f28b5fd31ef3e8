"""Strided convolutions in a training step: the spoken-commands model (``experiments/
spoken_commands.py``: three 3x3 convolutions, the first with stride 2 over a one-channel
log-mel spectrogram, max pooling, a max over time and frequency, a dense classifier) on a
batch of 64 spectrograms of 118 frames and 40 bands, without its dropout, in one process,
interleaved rounds.

- ``fnn``: the model as shipped; every convolution takes fnn's gradient rule on CPU
  (``fnn.autodiff.conv``), the strided one included;
- ``fnn, XLA's strided convolution``: the same model with XLA's convolution and its
  gradient for the strided convolution, as fnn had it before the rule covered strides
  (the stride-1 ones keep the rule);
- ``raw jax``: the hand-written step (a params dict, ``lax.conv_general_dilated``,
  ``lax.reduce_window``, ``jax.jit(value_and_grad)`` and optax's adam);
- ``flax linen`` and ``pytorch (eager)`` (when installed): the same network.

Ratios are to ``raw jax``; the first call is building, tracing, compiling and one step.

    .venv/bin/python -m benchmarks.strided_conv
    .venv/bin/python -m benchmarks.strided_conv --rounds 15
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import time
import types
from collections.abc import Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import fnn
from benchmarks.frameworks.raw_jax import adam_bench
from benchmarks.models import LEARNING_RATE, Bench
from benchmarks.suite import analyse, time_calls
from experiments import spoken_commands
from fnn import autodiff, hostmem

BATCH, FRAMES, MELS = 64, 118, 40  # 1.2 s of 16 kHz audio in 25 ms frames every 10 ms
CONFIG = spoken_commands.Config(dropout=0.0)
CLASSES = len(CONFIG.words)
STEPS = 20  # steps per timed round


def batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, FRAMES, MELS)).astype(np.float32)
    return x, rng.integers(0, CLASSES, BATCH).astype(np.int32)


@contextlib.contextmanager
def _xla_strided(enabled: bool) -> Iterator[None]:
    """While a step is traced: XLA's convolution (and JAX's gradient of it) for every
    convolution whose stride or dilation is not 1."""
    rule = autodiff._conv_reverse

    def patched(shape, x, w):
        if set(shape.strides) | set(shape.dilation) != {1}:
            return autodiff._xla_conv(shape, x, w)
        return rule(shape, x, w)

    if enabled:
        autodiff._conv_reverse = patched
    try:
        yield
    finally:
        autodiff._conv_reverse = rule


def fnn_bench(xla_strided: bool = False) -> Callable[[tuple], Bench]:
    def make(data: tuple) -> Bench:
        net = spoken_commands.make_model(CONFIG)
        optimizer = optax.adam(LEARNING_RATE)
        data = jax.device_put(data)
        state = fnn.init_train_state(net, optimizer, jax.random.key(0), data[0])
        step = fnn.make_train_step(net, optimizer, fnn.losses.softmax_cross_entropy)
        with _xla_strided(xla_strided):
            compiled = step.lower(state, data).compile()  # traced under the patch

        def run(s, b):
            s, metrics = compiled(s, b)
            return s, metrics["loss"]

        params = sum(x.size for x in jax.tree.leaves(state.params))
        lowered = types.SimpleNamespace(compile=lambda: compiled)  # for suite.analyse
        return Bench(run, state, data, params, jax.block_until_ready, lambda s, b: lowered)

    return make


# -- raw JAX ----------------------------------------------------------------------------

_NHWC = ("NHWC", "HWIO", "NHWC")
_CHANNELS = (CONFIG.channels, 2 * CONFIG.channels, 4 * CONFIG.channels)


def raw_init(key: jax.Array) -> dict:
    keys = jax.random.split(key, 4)
    params, cin = {}, 1
    for i, (k, c) in enumerate(zip(keys, _CHANNELS)):
        w = jax.nn.initializers.lecun_normal()(k, (3, 3, cin, c))
        params[f"conv{i}"] = {"w": w, "b": jnp.zeros(c)}
        cin = c
    params["dense"] = {"w": jax.nn.initializers.lecun_normal()(keys[3], (cin, CLASSES)), "b": jnp.zeros(CLASSES)}
    return params


def _pool(x: jax.Array) -> jax.Array:
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def raw_apply(params: dict, x: jax.Array) -> jax.Array:
    x = x[..., None]
    for i, stride in enumerate((2, 1, 1)):
        p = params[f"conv{i}"]
        x = jax.nn.relu(lax.conv_general_dilated(x, p["w"], (stride,) * 2, "SAME", dimension_numbers=_NHWC) + p["b"])
        if i < 2:
            x = _pool(x)
    x = x.max(axis=(1, 2))
    return x @ params["dense"]["w"] + params["dense"]["b"]


def raw_bench(data: tuple) -> Bench:
    return adam_bench(raw_apply, raw_init(jax.random.key(0)), data)


# -- Flax Linen -------------------------------------------------------------------------


class LinenModel(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x[..., None]
        for i, (stride, c) in enumerate(zip((2, 1, 1), _CHANNELS)):
            x = nn.relu(nn.Conv(c, (3, 3), strides=stride, padding="SAME")(x))
            if i < 2:
                x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.Dense(CLASSES)(x.max(axis=(1, 2)))


def linen_bench(data: tuple) -> Bench:
    model = LinenModel()
    params = model.init(jax.random.key(0), jnp.asarray(data[0][:1]))
    return adam_bench(model.apply, params, data)


# -- PyTorch ----------------------------------------------------------------------------


def torch_bench(data: tuple) -> Bench:
    import torch
    from torch.nn import functional

    from benchmarks.frameworks.torch_models import THREADS

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    layers, cin = [], 1
    for i, (stride, c) in enumerate(zip((2, 1, 1), _CHANNELS)):
        layers += [torch.nn.Conv2d(cin, c, 3, stride=stride, padding=1), torch.nn.ReLU()]
        if i < 2:
            layers.append(torch.nn.MaxPool2d(2))
        cin = c
    body = torch.nn.Sequential(*layers)
    head = torch.nn.Linear(cin, CLASSES)
    model = torch.nn.ModuleList([body, head])
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    x = torch.from_numpy(np.ascontiguousarray(data[0][:, None]))  # [batch, 1, frames, mels]
    y = torch.from_numpy(data[1]).long()

    def step(state, b):
        optimizer.zero_grad(set_to_none=True)
        logits = head(body(b[0]).amax(dim=(2, 3)))
        loss = functional.cross_entropy(logits, b[1])
        loss.backward()
        optimizer.step()
        return state, loss

    return Bench(step, None, (x, y), sum(p.numel() for p in model.parameters()), lambda loss: loss.item())


def frameworks() -> dict[str, Callable[[tuple], Bench]]:
    found = {
        "raw jax": raw_bench,
        "fnn": fnn_bench(),
        "fnn, XLA's strided convolution": fnn_bench(xla_strided=True),
        "flax linen": linen_bench,
    }
    if importlib.util.find_spec("torch") is not None:
        found["pytorch (eager)"] = torch_bench
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=STEPS, help="steps per timed round")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        parser.error(f"--rounds and --steps must be at least 1, got {args.rounds} and {args.steps}")
    data = batch()
    malloc = "huge pages" if hostmem.huge_pages_set() else "system settings"
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; spoken-commands CNN, batch {BATCH} of "
          f"[{FRAMES}, {MELS}], {args.rounds} rounds of {args.steps} steps; malloc: {malloc}", flush=True)
    raw_bench(data)  # the process's first compilation pays for more than its own program
    benches, firsts, losses = {}, {}, {}
    for name, make in frameworks().items():
        start = time.perf_counter()
        bench = benches[name] = make(data)
        bench.state, loss = bench.step(bench.state, bench.batch)
        losses[name] = float(bench.sync(loss))
        firsts[name] = time.perf_counter() - start
    rates: dict[str, list[float]] = {name: [] for name in benches}
    for _ in range(args.rounds):
        for name, bench in benches.items():
            rates[name].append(time_calls(bench, args.steps))
    reference = statistics.median(rates["raw jax"])
    print("| variant | params | first loss | steps/s | vs raw jax | first call s | MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, bench in benches.items():
        rate = statistics.median(rates[name])
        mib = f"{analyse(bench)[0]:.1f}" if bench.lower is not None else "-"
        print(f"| {name} | {bench.params:,} | {losses[name]:.4f} | {rate:.1f} | {rate / reference:.3f} | "
              f"{firsts[name]:.2f} | {mib} |")


if __name__ == "__main__":
    hostmem.exec_with_huge_pages()  # as the suite and the fnn command do (FNN_SYSTEM_MALLOC=1 to not)
    main()
