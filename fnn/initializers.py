"""Parameter initializers, selectable per layer by name or as a function.

Every layer that owns weights takes ``w_init`` (and ``b_init`` for biases): either a
``jax.nn.initializers`` function or one of the names below, which is handy in
configuration files and on the command line.

Example:
    >>> import jax, fnn
    >>> fnn.initializers.get("he_normal")(jax.random.key(0), (3, 4)).shape
    (3, 4)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.nn import initializers as jinit

from fnn.core import LayerError, shape_str

Initializer = Callable  # (key, shape, dtype) -> array

_NAMED: dict[str, Callable[[], Initializer]] = {
    "glorot_uniform": jinit.glorot_uniform,
    "glorot_normal": jinit.glorot_normal,
    "xavier_uniform": jinit.glorot_uniform,
    "xavier_normal": jinit.glorot_normal,
    "he_uniform": jinit.he_uniform,
    "he_normal": jinit.he_normal,
    "kaiming_uniform": jinit.he_uniform,
    "kaiming_normal": jinit.he_normal,
    "lecun_uniform": jinit.lecun_uniform,
    "lecun_normal": jinit.lecun_normal,
    "orthogonal": jinit.orthogonal,
    "normal": jinit.normal,
    "uniform": jinit.uniform,
    "zeros": lambda: jinit.zeros,
    "ones": lambda: jinit.ones,
}

NAMES = tuple(sorted(_NAMED))


def get(init: str | Initializer) -> Initializer:
    """The initializer called ``init`` (one of ``NAMES``), or ``init`` itself when it is
    already a function ``(key, shape, dtype) -> array``.

    Example:
        >>> import jax, fnn
        >>> fnn.initializers.get("zeros")(jax.random.key(0), (2,))
        Array([0., 0.], dtype=float32)
        >>> fnn.initializers.get(jax.nn.initializers.ones)(jax.random.key(0), (2,))
        Array([1., 1.], dtype=float32)
    """
    if isinstance(init, str) and init in _NAMED:
        return functools.partial(_checked, _NAMED[init](), init)
    if callable(init):
        return functools.partial(_checked, init, getattr(init, "__name__", repr(init)))
    raise ValueError(f"unknown initializer {init!r}; choose a function or one of {', '.join(NAMES)}")


def _checked(
    init: Initializer, name: str, key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32
) -> jax.Array:
    """``init(key, shape, dtype)``, made in float32 and cast where ``init`` has no kernel for
    ``dtype`` (``orthogonal``'s QR in bfloat16), and checked to be an array of ``shape``."""
    try:
        value = init(key, shape, dtype)
    except NotImplementedError:
        if jnp.dtype(dtype) == jnp.float32:
            raise
        value = init(key, shape, jnp.float32).astype(dtype)
    except ZeroDivisionError:  # a variance scaled by a fan of 0
        raise LayerError(
            f"initializer {name} cannot scale a parameter of shape {tuple(shape)}: an axis of size 0 "
            "makes its fan 0 (a layer with no input features or channels?)"
        ) from None
    if not hasattr(value, "shape") or tuple(value.shape) != tuple(shape):
        raise LayerError(
            f"initializer {name} returned {shape_str(value)} for a parameter of shape {tuple(shape)}; "
            "an initializer is a function (key, shape, dtype) -> array, e.g. "
            "jax.nn.initializers.he_normal() (the factory called)"
        )
    return value
