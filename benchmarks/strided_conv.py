"""Strided convolutions in a training step, in one process, interleaved rounds, on two
models:

- ``spoken-commands``: the spoken-commands model (``experiments/spoken_commands.py``:
  three 3x3 convolutions, the first with stride 2 over a one-channel log-mel
  spectrogram, max pooling, a max over time and frequency, a dense classifier) on a batch
  of 64 spectrograms of 118 frames and 40 bands, without its dropout;
- ``segmenter``: an encoder-decoder that labels every pixel of a 28 x 28 one-channel
  image with one of 4 classes: two 3x3 convolutions with stride 2 (16 and 32 channels)
  and two 3x3 transposed convolutions with stride 2 back up (16 and 4), batch 64.

Variants:

- ``fnn``: the model as shipped; on CPU a convolution takes fnn's rule where a part of it
  applies (``fnn.autodiff.conv`` and ``conv_transpose``), the strided ones included;
- ``fnn, XLA's strided convolution``: the same model with XLA's convolution and JAX's
  gradient of it for every strided convolution and transposed convolution, as fnn had
  it before its rule covered strides (the stride-1 ones keep the rule);
- ``raw jax``: the hand-written step (a params dict, ``lax.conv_general_dilated``,
  ``lax.conv_transpose``, ``lax.reduce_window``, ``jax.jit(value_and_grad)`` and optax's
  adam);
- ``flax linen`` and ``pytorch (eager)`` (when installed): the same network.

Ratios are to ``raw jax``; the first call is building, tracing, compiling and one step.

    .venv/bin/python -m benchmarks.strided_conv
    .venv/bin/python -m benchmarks.strided_conv --models segmenter --rounds 15
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
from collections.abc import Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import fnn
from benchmarks.frameworks.fnn_models import traced_under
from benchmarks.frameworks.raw_jax import adam_bench
from benchmarks.models import LEARNING_RATE, Bench
from benchmarks.suite import analyse, time_variants
from experiments import spoken_commands
from fnn import autodiff, hostmem

STEPS = 20  # steps per timed round
SPOKEN = spoken_commands.Config(dropout=0.0)
_NHWC = ("NHWC", "HWIO", "NHWC")


@dataclasses.dataclass(frozen=True)
class Model:
    """One benchmark model: its batch and its network in each framework."""

    batch: Callable[[int], tuple[np.ndarray, np.ndarray]]  # seed -> (x, labels)
    fnn: Callable[[], fnn.Layer]
    raw_init: Callable[[jax.Array], dict]
    raw_apply: Callable[[dict, jax.Array], jax.Array]
    linen: Callable[[], nn.Module]
    torch: Callable[[], object]  # -> a torch.nn.Module taking channels-first input
    channels_first: Callable[[np.ndarray], np.ndarray]  # the batch's x as the torch module takes it
    params: int


def _lecun(key, shape):
    return jax.nn.initializers.lecun_normal()(key, shape)


def _pool(x: jax.Array) -> jax.Array:
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


# -- spoken commands --------------------------------------------------------------------

FRAMES, MELS = 118, 40  # 1.2 s of 16 kHz audio in 25 ms frames every 10 ms
WORDS = len(SPOKEN.words)
_SPOKEN_CHANNELS = (SPOKEN.channels, 2 * SPOKEN.channels, 4 * SPOKEN.channels)


def spoken_batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((64, FRAMES, MELS)).astype(np.float32)
    return x, rng.integers(0, WORDS, 64).astype(np.int32)


def spoken_raw_init(key: jax.Array) -> dict:
    keys = jax.random.split(key, 4)
    params, cin = {}, 1
    for i, (k, c) in enumerate(zip(keys, _SPOKEN_CHANNELS)):
        params[f"conv{i}"] = {"w": _lecun(k, (3, 3, cin, c)), "b": jnp.zeros(c)}
        cin = c
    params["dense"] = {"w": _lecun(keys[3], (cin, WORDS)), "b": jnp.zeros(WORDS)}
    return params


def spoken_raw_apply(params: dict, x: jax.Array) -> jax.Array:
    x = x[..., None]
    for i, stride in enumerate((2, 1, 1)):
        p = params[f"conv{i}"]
        x = jax.nn.relu(lax.conv_general_dilated(x, p["w"], (stride,) * 2, "SAME", dimension_numbers=_NHWC) + p["b"])
        if i < 2:
            x = _pool(x)
    x = x.max(axis=(1, 2))
    return x @ params["dense"]["w"] + params["dense"]["b"]


class SpokenLinen(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x[..., None]
        for i, (stride, c) in enumerate(zip((2, 1, 1), _SPOKEN_CHANNELS)):
            x = nn.relu(nn.Conv(c, (3, 3), strides=stride, padding="SAME")(x))
            if i < 2:
                x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.Dense(WORDS)(x.max(axis=(1, 2)))


def spoken_torch():
    import torch

    class Spoken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            layers, cin = [], 1
            for i, (stride, c) in enumerate(zip((2, 1, 1), _SPOKEN_CHANNELS)):
                layers += [torch.nn.Conv2d(cin, c, 3, stride=stride, padding=1), torch.nn.ReLU()]
                if i < 2:
                    layers.append(torch.nn.MaxPool2d(2))
                cin = c
            self.body = torch.nn.Sequential(*layers)
            self.head = torch.nn.Linear(cin, WORDS)

        def forward(self, x):
            return self.head(self.body(x).amax(dim=(2, 3)))

    return Spoken()


# -- segmenter --------------------------------------------------------------------------

SIZE, CLASSES = 28, 4
_DOWN, _UP = (16, 32), (16, CLASSES)


def segmenter_batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((64, SIZE, SIZE, 1)).astype(np.float32)
    return x, rng.integers(0, CLASSES, (64, SIZE, SIZE)).astype(np.int32)


def segmenter_fnn() -> fnn.Layer:
    return fnn.serial(
        fnn.Conv(_DOWN[0], (3, 3), strides=2), fnn.relu,  # 28 -> 14
        fnn.Conv(_DOWN[1], (3, 3), strides=2), fnn.relu,  # 14 -> 7
        fnn.ConvTranspose(_UP[0], (3, 3), strides=2), fnn.relu,  # 7 -> 14
        fnn.ConvTranspose(_UP[1], (3, 3), strides=2),  # 14 -> 28, a class's logit per pixel
    )


def segmenter_raw_init(key: jax.Array) -> dict:
    keys = jax.random.split(key, 4)
    shapes = [(3, 3, 1, _DOWN[0]), (3, 3, _DOWN[0], _DOWN[1]), (3, 3, _DOWN[1], _UP[0]), (3, 3, _UP[0], _UP[1])]
    return {f"layer{i}": {"w": _lecun(k, shape), "b": jnp.zeros(shape[-1])}
            for i, (k, shape) in enumerate(zip(keys, shapes))}


def segmenter_raw_apply(params: dict, x: jax.Array) -> jax.Array:
    for i in range(4):
        p = params[f"layer{i}"]
        if i < 2:
            x = lax.conv_general_dilated(x, p["w"], (2, 2), "SAME", dimension_numbers=_NHWC)
        else:
            x = lax.conv_transpose(x, p["w"], (2, 2), "SAME", dimension_numbers=_NHWC)
        x = x + p["b"]
        if i < 3:
            x = jax.nn.relu(x)
    return x


class SegmenterLinen(nn.Module):
    @nn.compact
    def __call__(self, x):
        for c in _DOWN:
            x = nn.relu(nn.Conv(c, (3, 3), strides=2, padding="SAME")(x))
        x = nn.relu(nn.ConvTranspose(_UP[0], (3, 3), strides=(2, 2), padding="SAME")(x))
        return nn.ConvTranspose(_UP[1], (3, 3), strides=(2, 2), padding="SAME")(x)


def segmenter_torch():
    import torch

    class Segmenter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            t = torch.nn
            self.net = t.Sequential(
                t.Conv2d(1, _DOWN[0], 3, stride=2, padding=1), t.ReLU(),
                t.Conv2d(_DOWN[0], _DOWN[1], 3, stride=2, padding=1), t.ReLU(),
                t.ConvTranspose2d(_DOWN[1], _UP[0], 3, stride=2, padding=1, output_padding=1), t.ReLU(),
                t.ConvTranspose2d(_UP[0], _UP[1], 3, stride=2, padding=1, output_padding=1),
            )

        def forward(self, x):
            return self.net(x).permute(0, 2, 3, 1)  # channels last, as the labels' pixels are

    return Segmenter()


MODELS = {
    "spoken-commands": Model(
        spoken_batch, lambda: spoken_commands.make_model(SPOKEN), spoken_raw_init, spoken_raw_apply,
        SpokenLinen, spoken_torch, lambda x: x[:, None], 24_596,
    ),
    "segmenter": Model(
        segmenter_batch, segmenter_fnn, segmenter_raw_init, segmenter_raw_apply,
        SegmenterLinen, segmenter_torch, lambda x: np.moveaxis(x, -1, 1), 10_004,
    ),
}


# -- the variants -----------------------------------------------------------------------


def _xla_conv_transpose(x, w, padding, strides, dilation):
    n = x.ndim - 2
    lhs, rhs = "N" + "DHW"[3 - n :] + "C", "DHW"[3 - n :] + "IO"
    return lax.conv_transpose(x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=(lhs, rhs, lhs))


@contextlib.contextmanager
def _xla_strided(enabled: bool) -> Iterator[None]:
    """While a step is traced: XLA's convolution (and JAX's gradient of it) for every
    convolution whose stride or dilation is not 1, and for every transposed convolution."""
    rule, transpose = autodiff._conv_reverse, autodiff.conv_transpose

    def patched(shape, x, w):
        if set(shape.strides) | set(shape.dilation) != {1}:
            return autodiff._xla_conv(shape, x, w)
        return rule(shape, x, w)

    if enabled:
        autodiff._conv_reverse, autodiff.conv_transpose = patched, _xla_conv_transpose
    try:
        yield
    finally:
        autodiff._conv_reverse, autodiff.conv_transpose = rule, transpose


def fnn_bench(model: Model, xla_strided: bool = False) -> Callable[[tuple], Bench]:
    return lambda data: traced_under(model.fnn(), data, _xla_strided(xla_strided))


def raw_bench(model: Model) -> Callable[[tuple], Bench]:
    return lambda data: adam_bench(model.raw_apply, model.raw_init(jax.random.key(0)), data)


def linen_bench(model: Model) -> Callable[[tuple], Bench]:
    def make(data: tuple) -> Bench:
        module = model.linen()
        return adam_bench(module.apply, module.init(jax.random.key(0), jnp.asarray(data[0][:1])), data)

    return make


def torch_bench(model: Model) -> Callable[[tuple], Bench]:
    def make(data: tuple) -> Bench:
        import torch
        from torch.nn import functional

        from benchmarks.frameworks.torch_models import THREADS

        torch.set_num_threads(THREADS)
        torch.manual_seed(0)
        net = model.torch()
        optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
        x = torch.from_numpy(np.ascontiguousarray(model.channels_first(data[0])))
        y = torch.from_numpy(data[1]).long()

        def step(state, b):
            optimizer.zero_grad(set_to_none=True)
            logits = net(b[0])
            loss = functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[1].reshape(-1))
            loss.backward()
            optimizer.step()
            return state, loss

        return Bench(step, None, (x, y), sum(p.numel() for p in net.parameters()), lambda loss: loss.item())

    return make


def frameworks(model: Model) -> dict[str, Callable[[tuple], Bench]]:
    found = {
        "raw jax": raw_bench(model),
        "fnn": fnn_bench(model),
        "fnn, XLA's strided convolution": fnn_bench(model, xla_strided=True),
        "flax linen": linen_bench(model),
    }
    if importlib.util.find_spec("torch") is not None:
        found["pytorch (eager)"] = torch_bench(model)
    return found


def run_model(name: str, rounds: int, steps: int) -> None:
    model = MODELS[name]
    data = model.batch(0)
    print(f"{name}: batch {data[0].shape}, {rounds} rounds of {steps} steps", flush=True)
    raw_bench(model)(data)  # the process's first compilation pays for more than its own program
    variants = time_variants(frameworks(model), data, rounds, steps)
    wrong = {variant: v.bench.params for variant, v in variants.items() if v.bench.params != model.params}
    if wrong:
        raise AssertionError(f"{name}: parameter counts differ from the model's {model.params}: {wrong}")
    reference = variants["raw jax"].rate
    print("| variant | params | first loss | steps/s | vs raw jax | first call s | MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for variant, v in variants.items():
        mib = f"{analyse(v.bench)[0]:.1f}" if v.bench.lower is not None else "-"
        print(f"| {variant} | {v.bench.params:,} | {v.first_loss:.4f} | {v.rate:.1f} | {v.rate / reference:.3f} | "
              f"{v.first_call:.2f} | {mib} |", flush=True)

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=STEPS, help="steps per timed round")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        parser.error(f"--rounds and --steps must be at least 1, got {args.rounds} and {args.steps}")
    malloc = "huge pages" if hostmem.huge_pages_set() else "system settings"
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; malloc: {malloc}", flush=True)
    for name in args.models:
        run_model(name, args.rounds, args.steps)


if __name__ == "__main__":
    hostmem.exec_with_huge_pages()  # as the suite and the fnn command do (FNN_SYSTEM_MALLOC=1 to not)
    main()
