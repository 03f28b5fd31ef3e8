"""``fnn.summary``: a model's layers, output shapes, parameter counts and FLOPs."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax

from fnn.core import Layer, Node, shape_str


def _count(tree: Any) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _own_shapes(params: Any) -> str:
    """``w[64,32] b[32]`` for a layer that holds its arrays directly, else empty."""
    if not params or any(isinstance(v, dict) for v in params.values()):
        return ""
    return " ".join(f"{k}[{','.join(str(d) for d in v.shape)}]" for k, v in params.items())


@dataclasses.dataclass(frozen=True)
class Summary:
    """The layers of a model on a given input. ``print`` it for a table.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> s = fnn.summary(fnn.serial(fnn.Dense(4), fnn.relu), jnp.zeros((1, 3)))
        >>> [node.path for node in s.nodes], s.total_params
        ([(), ('dense_0',), ('relu_0',)], 16)
        >>> s.rows()[1]
        ('dense_0', 'Dense', 'float32[1,4]', 'b[4] w[3,4]', '16')
    """

    nodes: list[Node]
    total_params: int
    flops_per_example: float | None

    def rows(self) -> list[tuple[str, str, str, str, str]]:
        """One ``(path, layer, output, params, count)`` row per layer, as strings."""
        return [
            (
                "/".join(node.path) or "(model)",
                type(node.layer).__name__ if type(node.layer).__name__ != "Fn" else node.layer.name,
                shape_str(node.output),
                _own_shapes(node.params),
                f"{_count(node.params):,}",
            )
            for node in self.nodes
        ]

    def __str__(self) -> str:
        header = ("path", "layer", "output", "params", "count")
        rows = [header, *self.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        flops = "unknown" if self.flops_per_example is None else f"{self.flops_per_example:,.0f}"
        lines += ["", f"total parameters: {self.total_params:,}", f"FLOPs per example: {flops}"]
        return "\n".join(lines)


def _one_example(x: Any) -> Any:
    return jax.tree.map(lambda v: jax.ShapeDtypeStruct((1, *v.shape[1:]), v.dtype), x)


def summary(model: Layer, x: Any, *, key: jax.Array | None = None) -> Summary:
    """Every layer's path, output shape and parameters, the total parameter count, and the
    forward-pass FLOPs per example from XLA's cost analysis. Nothing is computed: it
    works on specs. The FLOPs are ``None`` ("unknown") for a model whose program runs a
    loop (a ``Recurrent`` layer's scan over time), whose body XLA counts only once.

    Args:
        model: any layer.
        x: the input, or its spec (``jax.ShapeDtypeStruct``), with a leading batch axis.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> s = fnn.summary(fnn.serial(fnn.Dense(32), fnn.relu, fnn.Dense(10)),
        ...                 jax.ShapeDtypeStruct((1, 64), jnp.float32))
        >>> s.total_params, s.flops_per_example >= 2 * (64 * 32 + 32 * 10)
        (2410, True)
    """
    key = jax.random.key(0) if key is None else key
    params, state = jax.eval_shape(model.init, key, x)
    nodes = model.trace(params, state, x)
    compiled = jax.jit(lambda p, s, v: model.apply(p, s, v)[0]).lower(
        params, state, _one_example(x)
    ).compile()
    costs = compiled.cost_analysis()
    costs = costs[0] if isinstance(costs, list) else costs
    flops = costs.get("flops") if costs else None
    if has_loop(compiled):
        flops = None  # XLA counts a loop's body once, not once per step
    return Summary(nodes, _count(params), flops)


def has_loop(compiled: Any) -> bool:
    """Whether a compiled program (``jax.jit(f).lower(...).compile()``) runs a loop (a
    ``Recurrent``'s scan, a ``lax.map``), whose body XLA's cost analysis counts once."""
    return " while(" in compiled.as_text()
