"""Model FLOPs utilisation (MFU) of fnn's transformer language model in training.

MFU is the model's own floating-point work per step (``model_flops``) times the steps per
second, over the device's peak, measured here as the rate of a large square matrix
product in the computation's dtype (``benchmarks.suite.peak_gflops``; ``--peak-tflops``
takes a figure from elsewhere instead). The model is ``fnn.TransformerLM`` trained by
``fnn.make_train_step`` with adam: parameters and optimizer state in float32, the
computation in ``--dtype`` through ``fnn.precision.Policy`` (the final layer norm and the
head too), logits and loss in float32.

``model_flops`` counts the products of a forward and a backward pass (the backward does
twice the forward's work), as is usual for MFU: per token 6 x (the blocks' weights,
4 d^2 + 2 d mlp each, and the head's d x vocab), plus the attention's two products, which
for a causal model reach on average (seq + 1) / 2 keys per query: 6 x d x (seq + 1) per
token and block. Layer norms, softmax, GELU, the optimizer and recomputation (``--remat``)
are not counted. ``XLA GFLOP`` is XLA's own count of the compiled step's work (its cost
analysis, everything included) and ``HFU`` that count's share of the peak.

The default size fills a GPU (d_model 1024, 16 heads, 24 blocks, MLP 4096, vocabulary
32768, sequences of 1024, batch 16, bfloat16; 16,384 tokens a step). ``--attention cudnn``
runs the attention as cuDNN's fused kernel, which keeps no [seq, seq] scores. On a CPU,
take a small size:

    python -m benchmarks.mfu                                        # the GPU size
    python -m benchmarks.mfu --attention cudnn                      # with cuDNN's attention
    python -m benchmarks.mfu --d-model 256 --heads 4 --layers 2 --seq 256 --batch 4 \\
        --vocab 4096 --dtype float32                                # a CPU-sized run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fnn
from benchmarks.suite import peak_gflops, peak_size, plan_and_work
from fnn.precision import DTYPES, Policy


@dataclasses.dataclass(frozen=True)
class Size:
    """The transformer and the batch it trains on."""

    d_model: int = 1024
    heads: int = 16
    layers: int = 24
    mlp: int = 4096
    vocab: int = 32768
    seq: int = 1024
    batch: int = 16

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Size.{field.name} must be a positive int, got {value!r}")
        if self.d_model % self.heads:
            raise ValueError(f"Size: d_model {self.d_model} is not divisible by heads {self.heads}")

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    def model(self, remat: bool = False, attention: str | None = None) -> fnn.TransformerLM:
        return fnn.TransformerLM(vocab_size=self.vocab, d_model=self.d_model, num_heads=self.heads,
                                 num_layers=self.layers, mlp_dim=self.mlp, max_len=self.seq, remat=remat,
                                 attention_implementation=attention)


def model_flops(size: Size) -> float:
    """The model FLOPs of one training step (forward and backward) of ``size`` (see the
    module's docstring for what is counted)."""
    d = size.d_model
    weights = size.layers * (4 * d * d + 2 * d * size.mlp) + d * size.vocab
    attention = size.layers * d * (size.seq + 1)  # causal: (seq + 1) / 2 keys a query, two products
    return 6.0 * size.tokens * (weights + attention)


@dataclasses.dataclass
class Result:
    size: Size
    dtype: str
    remat: bool
    attention: str  # "fnn" or "cudnn"
    device: str
    params: int
    steps_per_s: float
    model_gflop: float  # per step
    xla_gflop: float  # per step, XLA's cost analysis
    peak_gflops: float
    peak_source: str
    mib: float  # XLA's memory plan: arguments + outputs + temporaries - aliased
    compile_s: float

    @property
    def model_gflops(self) -> float:
        return self.model_gflop * self.steps_per_s

    @property
    def mfu(self) -> float:
        return self.model_gflops / self.peak_gflops

    @property
    def hfu(self) -> float:
        return self.xla_gflop * self.steps_per_s / self.peak_gflops

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "model_gflops": self.model_gflops, "mfu": self.mfu, "hfu": self.hfu}

    def markdown(self) -> str:
        s = self.size
        head = ("| device | dtype | attention | d_model | heads | layers | mlp | vocab | seq | batch | remat | "
                "params | steps/s | tokens/s | model GFLOP | XLA GFLOP | peak GFLOP/s | MFU | HFU | MiB | compile s |")
        rule = "|" + "---|" * 3 + "---:|" * 18
        row = (f"| {self.device} | {self.dtype} | {self.attention} | {s.d_model} | {s.heads} | {s.layers} | "
               f"{s.mlp} | {s.vocab} | "
               f"{s.seq} | {s.batch} | {'yes' if self.remat else 'no'} | {self.params:,} | {self.steps_per_s:.2f} | "
               f"{self.steps_per_s * s.tokens:,.0f} | {self.model_gflop:,.0f} | {self.xla_gflop:,.0f} | "
               f"{self.peak_gflops:,.0f} | {self.mfu:.1%} | {self.hfu:.1%} | {self.mib:,.0f} | {self.compile_s:.1f} |")
        return "\n".join([head, rule, row])


def measure(size: Size, dtype: str = "bfloat16", remat: bool = False, rounds: int = 5, steps: int = 5,
            peak_tflops: float | None = None, attention: str | None = None, log=print) -> Result:
    """Train ``size`` for ``rounds`` timed rounds of ``steps`` steps (after one step that
    compiles) and return what it measured; steps/s is the median over rounds. ``attention``
    is the model's ``attention_implementation`` (``"cudnn"``: cuDNN's fused attention on a GPU)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if rounds < 1 or steps < 1:
        raise ValueError(f"rounds and steps must be at least 1, got {rounds} and {steps}")
    model = size.model(remat, attention)
    optimizer = optax.adam(1e-4)
    policy = None if dtype == "float32" else Policy(dtype, loss_scale=2.0**12 if dtype == "float16" else None)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, size.vocab, (size.batch, size.seq + 1)).astype(np.int32)
    batch = jax.device_put((ids[:, :-1], ids[:, 1:]))
    state = fnn.init_train_state(model, optimizer, jax.random.key(0), batch[0])
    params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
    step = fnn.make_train_step(model, optimizer, fnn.losses.softmax_cross_entropy, policy=policy)
    log(f"{params:,} parameters; compiling")
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    state, metrics = compiled(state, batch)
    loss = float(metrics["loss"])  # waits for the step
    compile_s = time.perf_counter() - start
    if not np.isfinite(loss):
        raise FloatingPointError(f"the first step's loss is {loss}")
    mib, xla_gflop = plan_and_work(compiled)
    log(f"first step {compile_s:.1f} s (loss {loss:.3f}); timing {rounds} rounds of {steps} steps")
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics["loss"])
        rates.append(steps / (time.perf_counter() - start))
    if peak_tflops is not None:
        peak, source = peak_tflops * 1e3, "given"
    else:
        np_dtype = np.float32 if dtype == "float32" else jnp.dtype(dtype).type
        peak, source = peak_gflops(dtype=np_dtype), f"{peak_size()}^2 {dtype} matmul"
    device = jax.devices()[0]
    return Result(size, dtype, remat, attention or "fnn", f"{device.platform} ({device.device_kind})", params,
                  statistics.median(rates), model_flops(size) / 1e9, xla_gflop, peak, source, mib, compile_s)


def main(argv: list[str] | None = None) -> Result:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Size()
    for field in dataclasses.fields(Size):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=int, default=getattr(defaults, field.name))
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES, help="what the model computes in")
    parser.add_argument("--remat", action="store_true", help="recompute each block in the backward pass")
    parser.add_argument("--attention", choices=["fnn", "cudnn"], default="fnn",
                        help="fnn's attention (the default) or cuDNN's fused attention (a GPU, 16-bit dtypes)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak, instead of measuring it")
    parser.add_argument("--markdown", help="also write the result as a markdown table to this file")
    parser.add_argument("--json", help="also write the result as JSON to this file")
    args = parser.parse_args(argv)
    try:
        size = Size(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Size)})
        if args.rounds < 1 or args.steps < 1:
            raise ValueError("--rounds and --steps must be at least 1")
    except ValueError as error:
        parser.error(str(error))
    device = jax.devices()[0]
    print(f"jax {jax.__version__} on {device.platform} ({device.device_kind}); {size}", flush=True)
    attention = None if args.attention == "fnn" else args.attention
    try:
        result = measure(size, args.dtype, args.remat, args.rounds, args.steps, args.peak_tflops, attention,
                         log=lambda line: print(line, flush=True))
    except fnn.LayerError as error:  # e.g. cuDNN's attention on a machine without a GPU
        parser.error(str(error))
    print(result.markdown())
    print(f"MFU {result.mfu:.1%} ({result.model_gflops:,.0f} of {result.peak_gflops:,.0f} GFLOP/s, "
          f"peak: {result.peak_source}); HFU {result.hfu:.1%}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(result.markdown() + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.as_dict(), f, indent=1)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
