"""One softmax attention's gradient at several numbers of keys and head sizes, in one
process, interleaved rounds: where fnn's attention rule (``fnn.autodiff.attention``) is
faster on CPU than JAX's gradient of ``jax.nn.dot_product_attention``, and where it is not.

Each call is the loss ``mean(o ** 2) / 2`` of the attention's output ``o`` and its gradient
with respect to the queries, keys and values. Cases ``[batch, queries, keys, heads, head
dimension]``:

- ``suite``: 16 x 128 x 128 x 4 x 32, causal (the benchmark transformer's attention);
- ``long``: 1 x 1024 x 1024 x 4 x 64;
- ``few-keys``: 16 x 8 x 8 x 4 x 64;
- ``cross-8``: 1 x 512 x 8 x 4 x 64 (many queries over few keys);
- ``keys-64-d-64``, ``keys-128-d-64``: 1 x 512 x 64 (or 128) x 4 x 64, either side of
  the rule's limit of twice as many keys as the head dimension;
- ``keys-256-d-128``: 4 x 128 x 256 x 8 x 128, at the limit.

Variants: ``raw jax`` (``jax.nn.dot_product_attention`` and ``jax.value_and_grad``),
``fnn`` (``fnn.dot_product_attention``, traced inside ``fnn.reverse_mode_only()`` as
``make_train_step`` traces it: the rule where it applies), ``fnn's rule`` (the rule's
custom VJP called over every score whatever the sizes, as fnn did before it checked
the number of keys; no causal blocks) and ``pytorch (eager)`` when installed
(``scaled_dot_product_attention`` and ``backward``). MiB is XLA's plan for the call.

    .venv/bin/python -m benchmarks.attention_layers
    .venv/bin/python -m benchmarks.attention_layers --cases few-keys suite --rounds 11

A call under 2 ms (``few-keys``, ``cross-8``) needs ``--calls 100`` for its time to rise
above this timer's noise.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from benchmarks import conv_layers
from benchmarks.models import Bench
from fnn import autodiff, hostmem


@dataclasses.dataclass(frozen=True)
class Case:
    """Queries ``[batch, tq, heads, d]`` over keys and values ``[batch, tk, heads, d]``."""

    batch: int
    tq: int
    tk: int
    heads: int
    d: int
    causal: bool = False

    def data(self, seed: int = 0) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """``(q, (k, v))``, normal in float32."""
        rng = np.random.default_rng(seed)
        q, k, v = (rng.normal(size=(self.batch, t, self.heads, self.d)).astype(np.float32)
                   for t in (self.tq, self.tk, self.tk))
        return q, (k, v)

    def visible(self) -> jax.Array:
        """Which scores count, ``[1, 1, tq, tk]`` (a causal query sees the keys up to its
        own position, the last query the last key)."""
        keys, queries = jnp.arange(self.tk)[None, :], jnp.arange(self.tq)[:, None]
        shown = keys <= queries + (self.tk - self.tq) if self.causal else jnp.ones((self.tq, self.tk), bool)
        return shown[None, None]


CASES = {
    "suite": Case(16, 128, 128, 4, 32, causal=True),
    "long": Case(1, 1024, 1024, 4, 64),
    "few-keys": Case(16, 8, 8, 4, 64),
    "cross-8": Case(1, 512, 8, 4, 64),
    "keys-64-d-64": Case(1, 512, 64, 4, 64),
    "keys-128-d-64": Case(1, 512, 128, 4, 64),
    "keys-256-d-128": Case(4, 128, 256, 8, 128),
}


def raw_bench(case: Case) -> Callable[[tuple], Bench]:
    apply = lambda kv, q: jax.nn.dot_product_attention(q, *kv, is_causal=case.causal)  # noqa: E731
    return lambda data: conv_layers.jax_bench(apply, data)


def fnn_bench(case: Case) -> Callable[[tuple], Bench]:
    apply = lambda kv, q: fnn.dot_product_attention(q, *kv, causal=case.causal)  # noqa: E731
    return lambda data: conv_layers.jax_bench(apply, data, fnn.reverse_mode_only)


def rule_bench(case: Case) -> Callable[[tuple], Bench]:
    apply = lambda kv, q: autodiff._attention_reverse(q, *kv, case.visible())  # noqa: E731
    return lambda data: conv_layers.jax_bench(apply, data)


def torch_bench(case: Case) -> Callable[[tuple], Bench]:
    def make(data: tuple) -> Bench:
        import torch
        from torch.nn import functional

        from benchmarks.frameworks.torch_models import THREADS

        torch.set_num_threads(THREADS)
        q, (k, v) = data
        # [batch, heads, time, d]; queries and keys of one length, so PyTorch's causal mask
        # (aligned at the first key) is fnn's (aligned at the last)
        qt, kt, vt = (torch.from_numpy(np.ascontiguousarray(a.swapaxes(1, 2))).requires_grad_() for a in (q, k, v))

        def apply(queries):
            return functional.scaled_dot_product_attention(queries, kt, vt, is_causal=case.causal)

        return conv_layers.torch_grad_bench(apply, qt, (kt, vt))

    return make


def variants(case: Case) -> dict[str, Callable[[tuple], Bench]]:
    found = {"raw jax": raw_bench(case), "fnn": fnn_bench(case), "fnn's rule": rule_bench(case)}
    if importlib.util.find_spec("torch") is not None and case.tq == case.tk:
        found["pytorch (eager)"] = torch_bench(case)
    return found


def main(argv: list[str] | None = None) -> None:
    conv_layers.main(argv, CASES, variants, __doc__)


if __name__ == "__main__":
    hostmem.exec_with_huge_pages()  # as the suite and the fnn command do (FNN_SYSTEM_MALLOC=1 to not)
    main()
