"""The frameworks the suite compares, in the order of its table: each entry builds a
``benchmarks.models.Bench`` for a model name and a batch. A peer whose package is not
installed (Haiku, say, on a machine that has only some of them) is left out of
``JAX_FRAMEWORKS`` and named in ``MISSING``; PyTorch rows appear when ``torch`` is installed."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable

from benchmarks.frameworks import fnn_models, raw_jax
from benchmarks.models import Bench

# each peer: (its module here, the package it needs), in the table's order
_PEERS = {
    "flax linen": ("linen", "flax"),
    "flax nnx (nnx.jit)": ("nnx", "flax"),
    "flax nnx (split/merge)": ("nnx", "flax"),
    "equinox": ("eqx", "equinox"),
    "haiku": ("hk", "haiku"),
}
_MAKERS = {"flax nnx (nnx.jit)": "make_jit", "flax nnx (split/merge)": "make_split"}
# the parameter counters: one per peer module, named without the row's variant ("flax nnx")
_COUNTED = {name.split(" (")[0]: peer for name, peer in _PEERS.items()}


def installed(package: str) -> bool:
    """Whether ``package`` can be imported here."""
    return importlib.util.find_spec(package) is not None


def _module(name: str):
    return importlib.import_module(f"benchmarks.frameworks.{name}")


# the peers' packages that are not installed here (their rows are left out)
MISSING = sorted({package for _, package in _PEERS.values() if not installed(package)})

JAX_FRAMEWORKS: dict[str, Callable[[str, tuple], Bench]] = {
    "raw jax": raw_jax.make,
    "fnn": fnn_models.make,
    f"fnn K={fnn_models.STEPS_PER_CALL}": fnn_models.make_scan,
    **{name: getattr(_module(module), _MAKERS.get(name, "make"))
       for name, (module, package) in _PEERS.items() if package not in MISSING},
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
    **{name: _module(module).count_params for name, (module, package) in _COUNTED.items()
       if package not in MISSING},
}
# every JAX row's name, those left out here too
KNOWN = ["raw jax", "fnn", f"fnn K={fnn_models.STEPS_PER_CALL}", *_PEERS]
TORCH_AVAILABLE = installed("torch")


def torch_frameworks(compiled: bool = False) -> dict[str, Callable[[str, tuple], Bench]]:
    """The PyTorch rows (empty without torch); ``torch.compile``'s only when asked."""
    if not TORCH_AVAILABLE:
        return {}
    from benchmarks.frameworks import torch_models

    rows = {"pytorch (eager)": torch_models.make}
    if compiled:
        rows["pytorch (torch.compile)"] = torch_models.make_compiled
    return rows
