"""The weight product of fnn's layers, and the gradient it takes in a training step.

Every layer with a weight matrix (``Dense``, the projections of ``MultiHeadAttention``,
the recurrent cells, ``Embedding.attend``) computes ``x @ w`` with ``matmul`` below.

Outside ``reverse_mode_only()`` it is ``jnp.matmul``: every JAX transformation applies,
forward-mode ones (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``) included.

Inside it (``make_train_step`` takes its gradient inside it), ``matmul`` has a
custom VJP that computes the weight's gradient as ``x^T @ g`` for ``x: [..., in]`` and the
output's cotangent ``g: [..., out]``. JAX's own rule for ``dot_general`` computes
``(g^T @ x)^T``: the cotangent comes first, contracted over its leading (batch) axis, so
XLA's CPU backend lays ``g`` out transposed before the product. When ``g`` is the end of
a long elementwise chain (the residual stream of a transformer, through every layer
norm's backward pass), XLA fuses that whole chain into the transposing copy and computes
it a second time there, in transposed order. With ``x^T @ g`` the transposed operand is
``x``, an activation already in memory. The numbers are the same up to float summation
order; the transformer's training step in ``benchmarks/`` runs faster on CPU (see
``BENCHMARKS.md``).

Inside it, ``fnn.Recurrent`` also takes the weight gradients of the built-in cells
(``SimpleRNN``, ``LSTM``, ``GRU``) as one product each over all time steps, after the
backward loop, where JAX's scan computes a small product and adds it to an accumulator
at every step. The loop hands out each step's cotangent of the two products instead
(``[time, batch, gates * hidden]`` each, kept for the one product).

A custom VJP cannot be differentiated in forward mode, so a loss that applies
``jax.jvp`` (or ``jacfwd``) to a model inside a training step turns the fast rule off
around that call with ``reverse_mode_only(False)``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jax import lax

_REVERSE_ONLY = contextvars.ContextVar("fnn_reverse_mode_only", default=False)


@contextlib.contextmanager
def reverse_mode_only(enabled: bool = True) -> Iterator[None]:
    """While tracing inside it, fnn's weight products assume reverse-mode differentiation
    only and take their weight gradient as ``x^T @ g``, and ``fnn.Recurrent`` takes its
    weight gradients after the loop (see the module docstring).

    ``fnn.make_train_step`` traces its loss and gradient inside it; a hand-written step
    can do the same. ``reverse_mode_only(False)`` turns it off again, for a loss that
    applies ``jax.jvp`` to the model. It acts at trace time: a function already compiled
    keeps the rule it was traced with.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> model = fnn.Dense(3)
        >>> params, _ = model.init(jax.random.key(0), jnp.ones((2, 4)))
        >>> loss = lambda p: (model(p, jnp.ones((2, 4))) ** 2).sum()
        >>> with fnn.reverse_mode_only():
        ...     fast = jax.grad(loss)(params)
        >>> bool(jnp.allclose(fast["w"], jax.grad(loss)(params)["w"]))
        True
    """
    token = _REVERSE_ONLY.set(bool(enabled))
    try:
        yield
    finally:
        _REVERSE_ONLY.reset(token)


def reverse_only() -> bool:
    """Whether the trace is inside ``reverse_mode_only()``."""
    return _REVERSE_ONLY.get()


def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` for ``x: [..., in]`` and ``w: [in, out]``; inside ``reverse_mode_only()``
    with the weight gradient ``x^T @ g``."""
    if reverse_only():
        return _matmul_reverse(x, w)
    return jnp.matmul(x, w)


@jax.custom_vjp
def _matmul_reverse(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.matmul(x, w)


def _matmul_forward(x, w):
    return jnp.matmul(x, w), (x, w)


def _matmul_backward(residuals, g):
    x, w = residuals
    return jnp.matmul(g, w.T).astype(x.dtype), weight_grad(x, g).astype(w.dtype)


def weight_grad(x: jax.Array, g: jax.Array) -> jax.Array:
    """``x^T @ g`` summed over every leading axis: ``[..., in], [..., out] -> [in, out]``,
    as one product of rows (the leading axes merged; the batch axis, which may be split
    among devices, comes first)."""
    rows = x.reshape(-1, x.shape[-1]).astype(g.dtype)
    return lax.dot_general(rows, g.reshape(-1, g.shape[-1]), (((0,), (0,)), ((), ())))


_matmul_reverse.defvjp(_matmul_forward, _matmul_backward)
