"""Activation functions from ``jax.nn`` as layers, and a look-up by name for configs.

Any function works as a layer inside a combinator (``fnn.serial(fnn.Dense(8), jax.nn.relu)``);
these named instances read well in models and can be chosen by a string.

Example:
    >>> import jax.numpy as jnp, fnn
    >>> fnn.activation("tanh")({}, jnp.zeros(2))
    Array([0., 0.], dtype=float32)
"""

from __future__ import annotations

import jax

from fnn.core import Fn

sigmoid = Fn(jax.nn.sigmoid)
relu = Fn(jax.nn.relu)
tanh = Fn(jax.nn.tanh)
gelu = Fn(jax.nn.gelu)
silu = Fn(jax.nn.silu)
leaky_relu = Fn(jax.nn.leaky_relu)
elu = Fn(jax.nn.elu)
softplus = Fn(jax.nn.softplus)
softmax = Fn(jax.nn.softmax)
log_softmax = Fn(jax.nn.log_softmax)

ACTIVATIONS = {
    fn.name: fn
    for fn in (sigmoid, relu, tanh, gelu, silu, leaky_relu, elu, softplus, softmax, log_softmax)
}


def activation(name: str) -> Fn:
    """The activation layer called ``name`` (``"relu"``, ``"tanh"``, ...; ``ACTIVATIONS`` has
    them all); it keeps the shape of its input.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> relu = fnn.activation("relu")
        >>> relu({}, jnp.array([-1.0, 2.0]))
        Array([0., 2.], dtype=float32)
        >>> relu is fnn.relu
        True
    """
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]
