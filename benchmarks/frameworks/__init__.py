"""The frameworks the suite compares, in the order of its table: each entry builds a
``benchmarks.models.Bench`` for a model name and a batch. PyTorch rows appear when
``torch`` is installed."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from benchmarks.frameworks import eqx, fnn_models, hk, linen, nnx, raw_jax
from benchmarks.models import Bench

JAX_FRAMEWORKS: dict[str, Callable[[str, tuple], Bench]] = {
    "raw jax": raw_jax.make,
    "fnn": fnn_models.make,
    f"fnn K={fnn_models.STEPS_PER_CALL}": fnn_models.make_scan,
    "flax linen": linen.make,
    "flax nnx (nnx.jit)": nnx.make_jit,
    "flax nnx (split/merge)": nnx.make_split,
    "equinox": eqx.make,
    "haiku": hk.make,
}
# rows that run only when --frameworks names them: fnn's step with a variant, to measure
# what one of its choices gains
VARIANTS: dict[str, Callable[[str, tuple], Bench]] = {
    "fnn (jax rules)": fnn_models.make_jax_rules,
}
# the parameter count of a model in each framework, from shapes alone (no computation)
PARAM_COUNTS: dict[str, Callable[[str, tuple], int]] = {
    "raw jax": raw_jax.count_params,
    "fnn": fnn_models.count_params,
    "flax linen": linen.count_params,
    "flax nnx": nnx.count_params,
    "equinox": eqx.count_params,
    "haiku": hk.count_params,
}
TORCH_AVAILABLE = importlib.util.find_spec("torch") is not None


def torch_frameworks(compiled: bool = False) -> dict[str, Callable[[str, tuple], Bench]]:
    """The PyTorch rows (empty without torch); ``torch.compile``'s only when asked."""
    if not TORCH_AVAILABLE:
        return {}
    from benchmarks.frameworks import torch_models

    rows = {"pytorch (eager)": torch_models.make}
    if compiled:
        rows["pytorch (torch.compile)"] = torch_models.make_compiled
    return rows
