"""One convolution layer's gradient at the sizes of an image network, in one process,
interleaved rounds: what fnn's convolution rules (``fnn.autodiff.conv`` and
``conv_transpose``) do on CPU outside the small models of the suite and of
``benchmarks.strided_conv``.

Each call is the loss ``mean(y ** 2) / 2`` of the layer's output ``y`` and its gradient
with respect to the input and the weights (a layer in the middle of a network needs
both). Cases, batch 16, 3x3 kernels unless named, "SAME" padding:

- ``downsample-56``: 56 x 56 x 64 -> 128 channels, stride 2 (a ResNet's first
  downsampling convolution);
- ``downsample-28``: 28 x 28 x 128 -> 256, stride 2;
- ``projection-56``: 56 x 56 x 64 -> 128, 1 x 1, stride 2 (a residual projection);
- ``same-56``: 56 x 56 x 64 -> 64, stride 1;
- ``dilated-32``: 32 x 32 x 64 -> 64, dilation 2;
- ``upsample-28``: a transposed convolution, 28 x 28 x 64 -> 32, stride 2;

and the few-channel layers where fnn's rule takes part: ``lenet-first`` (28 x 28 x 1 ->
6, 5x5, batch 128), ``one-channel-64`` (64 x 64 x 1 -> 32), ``one-channel-128`` (128 x 128
x 1 -> 16, batch 8), ``stem-64`` (64 x 64 x 3 -> 16), ``stem-7x7`` (64 x 64 x 3 -> 64, 7x7,
stride 2), ``audio-1d`` (8 sequences of 1000 samples, one channel -> 16, a kernel of 9) and
``audio-1d-up`` (a 1-D transposed convolution, 500 x 32 -> 1, a kernel of 4, stride 2).

Variants: ``raw jax`` (``lax.conv_general_dilated`` or ``lax.conv_transpose`` and
``jax.value_and_grad``), ``fnn`` (the ``fnn.Conv`` or ``fnn.ConvTranspose`` layer, traced
inside ``fnn.reverse_mode_only()`` as ``make_train_step`` traces it) and ``pytorch (eager)``
when installed (``conv1d``, ``conv2d`` or the transposed ones and ``backward``). Flax's Linen
convolution is ``lax.conv_general_dilated``, the raw JAX row. MiB is XLA's plan for the
call (arguments, outputs and temporaries).

    .venv/bin/python -m benchmarks.conv_layers
    .venv/bin/python -m benchmarks.conv_layers --cases downsample-56 dilated-32 --rounds 11
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import types
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import fnn
from benchmarks.models import Bench
from benchmarks.suite import analyse, time_variants
from fnn import hostmem
from fnn.layers.conv import _transpose_pads

BATCH = 16


@dataclasses.dataclass(frozen=True)
class Case:
    """One layer: its input ``[batch, *spatial, in]`` (one or two spatial axes) and its
    convolution."""

    x: tuple[int, ...]
    features: int
    kernel: tuple[int, ...] = (3, 3)
    strides: tuple[int, ...] | None = None  # default 1 per spatial axis
    dilation: tuple[int, ...] | None = None
    transpose: bool = False

    def __post_init__(self):
        ones = (1,) * len(self.kernel)
        object.__setattr__(self, "strides", self.strides or ones)
        object.__setattr__(self, "dilation", self.dilation or ones)

    def layer(self) -> fnn.Layer:
        kind = fnn.ConvTranspose if self.transpose else fnn.Conv
        return kind(self.features, self.kernel, strides=self.strides, dilation=self.dilation)

    def data(self, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The input and the layer's parameters (fnn's initialisation)."""
        x = np.random.default_rng(seed).normal(size=self.x).astype(np.float32)
        params, _ = self.layer().init(jax.random.key(seed), x)
        return x, jax.tree.map(np.asarray, params)


CASES = {
    "downsample-56": Case((BATCH, 56, 56, 64), 128, strides=(2, 2)),
    "downsample-28": Case((BATCH, 28, 28, 128), 256, strides=(2, 2)),
    "projection-56": Case((BATCH, 56, 56, 64), 128, kernel=(1, 1), strides=(2, 2)),
    "same-56": Case((BATCH, 56, 56, 64), 64),
    "dilated-32": Case((BATCH, 32, 32, 64), 64, dilation=(2, 2)),
    "upsample-28": Case((BATCH, 28, 28, 64), 32, strides=(2, 2), transpose=True),
    "lenet-first": Case((128, 28, 28, 1), 6, kernel=(5, 5)),
    "one-channel-64": Case((BATCH, 64, 64, 1), 32),
    "one-channel-128": Case((8, 128, 128, 1), 16),
    "stem-64": Case((BATCH, 64, 64, 3), 16),
    "stem-7x7": Case((BATCH, 64, 64, 3), 64, kernel=(7, 7), strides=(2, 2)),
    "audio-1d": Case((8, 1000, 1), 16, kernel=(9,)),
    "audio-1d-up": Case((8, 500, 32), 1, kernel=(4,), strides=(2,), transpose=True),
}


def _loss(y: jax.Array) -> jax.Array:
    return 0.5 * jnp.mean(y**2)


def jax_bench(apply: Callable, data: tuple, context: Callable | None = None) -> Bench:
    """``value_and_grad`` of ``_loss(apply(params, x))`` for the params and the input
    (``data``: ``(x, params)``),
    compiled (inside ``context()``, when given) before the first call."""
    x, params = jax.device_put(data)
    grad = jax.jit(jax.value_and_grad(lambda p, v: _loss(apply(p, v)), argnums=(0, 1)))
    if context is None:
        compiled = grad.lower(params, x).compile()
    else:
        with context():
            compiled = grad.lower(params, x).compile()
    count = sum(a.size for a in jax.tree.leaves(params))
    lowered = types.SimpleNamespace(compile=lambda: compiled)  # for suite.analyse
    return Bench(lambda p, v: (p, compiled(p, v)), params, x, count,
                 lambda out: jax.block_until_ready(out)[0], lambda p, v: lowered)


def raw_apply(case: Case) -> Callable:
    """``lax``'s convolution of the case, with the bias."""
    spatial = "HW"[2 - len(case.kernel) :]
    lhs, rhs = f"N{spatial}C", f"{spatial}IO"
    window = [d * (k - 1) + 1 for k, d in zip(case.kernel, case.dilation)]
    if case.transpose:
        def conv(x, w):
            return lax.conv_transpose(x, w, case.strides, "SAME", rhs_dilation=case.dilation,
                                      dimension_numbers=(lhs, rhs, lhs))
    else:
        def conv(x, w):
            pads = lax.padtype_to_pads(x.shape[1:-1], window, case.strides, "SAME")
            return lax.conv_general_dilated(x, w, case.strides, pads, rhs_dilation=case.dilation,
                                            dimension_numbers=(lhs, rhs, lhs))
    return lambda p, x: conv(x, p["w"]) + p["b"]


def raw_bench(case: Case) -> Callable[[tuple], Bench]:
    return lambda data: jax_bench(raw_apply(case), data)


def fnn_bench(case: Case) -> Callable[[tuple], Bench]:
    layer = case.layer()
    # the layer's gradient as a training step takes it (see fnn.reverse_mode_only)
    return lambda data: jax_bench(lambda p, x: layer(p, x), data, fnn.reverse_mode_only)


def torch_bench(case: Case) -> Callable[[tuple], Bench]:
    def make(data: tuple) -> Bench:
        import torch
        from torch.nn import functional

        from benchmarks.frameworks.torch_models import THREADS

        torch.set_num_threads(THREADS)
        x, params = data
        n = len(case.kernel)
        spatial = tuple(range(1, n + 1))
        # channels first: input [N, C, *spatial]; weights [out, in, *kernel] (a transposed
        # convolution's [in, out, *kernel], flipped)
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, n + 1, *spatial))).requires_grad_()
        w = params["w"].transpose(n + 1, n, *range(n))
        if case.transpose:
            w = np.flip(w.swapaxes(0, 1), tuple(range(2, n + 2)))
        conv = getattr(functional, f"conv{n}d")
        conv_transpose = getattr(functional, f"conv_transpose{n}d")
        wt = torch.from_numpy(np.ascontiguousarray(w)).requires_grad_()
        bt = torch.from_numpy(np.array(params["b"])).requires_grad_()

        window = [d * (k - 1) + 1 for k, d in zip(case.kernel, case.dilation)]
        pads = lax.padtype_to_pads(x.shape[1:-1], window, case.strides, "SAME")
        # PyTorch's transposed convolution pads the stride-dilated input by k - 1 on both
        # sides, lax's "SAME" by (low, high) <= k - 1: the difference is cropped off the output
        crops = [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in
                 zip(window, (_transpose_pads(k, s, "SAME") for k, s in zip(window, case.strides)))]

        def apply(v):
            if case.transpose:
                y = conv_transpose(v, wt, bt, case.strides, dilation=case.dilation)
                return y[(slice(None), slice(None), *(slice(lo, y.shape[2 + i] - hi) for i, (lo, hi) in enumerate(crops)))]
            if all(lo == hi for lo, hi in pads):
                return conv(v, wt, bt, case.strides, [lo for lo, _ in pads], case.dilation)
            # "SAME" at a stride puts the odd pad at the end; PyTorch's pads both sides alike
            v = functional.pad(v, [side for lo_hi in reversed(pads) for side in lo_hi])
            return conv(v, wt, bt, case.strides, 0, case.dilation)

        return torch_grad_bench(apply, xt, (wt, bt))

    return make


def torch_grad_bench(apply: Callable, x, params: tuple) -> Bench:
    """PyTorch's eager call of the loss ``mean(apply(x) ** 2) / 2`` and its gradients with
    respect to the input tensor ``x`` and the parameter tensors ``params``."""

    def step(state, batch):
        for t in (batch, *params):
            t.grad = None
        y = apply(batch)
        loss = 0.5 * (y**2).mean()
        loss.backward()
        return state, (loss, y.shape)

    return Bench(step, None, x, sum(t.numel() for t in params), lambda out: out[0].item())


def variants(case: Case) -> dict[str, Callable[[tuple], Bench]]:
    found = {"raw jax": raw_bench(case), "fnn": fnn_bench(case)}
    if importlib.util.find_spec("torch") is not None:
        found["pytorch (eager)"] = torch_bench(case)
    return found


def run_case(name: str, case, rounds: int, calls: int, make_variants: Callable = variants) -> list[str]:
    """The markdown rows of one case (its ``data()``, timed as ``make_variants(case)``)."""
    data = case.data()
    measured = time_variants(make_variants(case), data, rounds, calls)
    reference = measured["raw jax"]
    rows = []
    for variant, v in measured.items():
        if abs(v.first_loss - reference.first_loss) > 1e-4 * abs(reference.first_loss):
            raise AssertionError(f"{name}: {variant}'s loss {v.first_loss} is not raw JAX's {reference.first_loss}")
        mib = f"{analyse(v.bench)[0]:.1f}" if v.bench.lower is not None else "-"
        rows.append(f"| {name} | {variant} | {1e3 / v.rate:.1f} | {v.rate / reference.rate:.2f} | {mib} |")
    return rows


def main(argv: list[str] | None = None, cases: dict | None = None, make_variants: Callable = variants,
         doc: str = __doc__) -> None:
    """The command line of this module, and of another one's ``cases`` and ``make_variants``."""
    cases = CASES if cases is None else cases
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=list(cases), default=list(cases))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3, help="calls per timed round")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.calls < 1:
        parser.error(f"--rounds and --calls must be at least 1, got {args.rounds} and {args.calls}")
    malloc = "huge pages" if hostmem.huge_pages_set() else "system settings"
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; malloc: {malloc}; "
          f"{args.rounds} rounds of {args.calls} calls", flush=True)
    print("| case | variant | ms per call | vs raw jax (speed) | MiB |")
    print("| --- | --- | --- | --- | --- |", flush=True)
    for name in args.cases:
        for row in run_case(name, cases[name], args.rounds, args.calls, make_variants):
            print(row, flush=True)


if __name__ == "__main__":
    hostmem.exec_with_huge_pages()  # as the suite and the fnn command do (FNN_SYSTEM_MALLOC=1 to not)
    main()
