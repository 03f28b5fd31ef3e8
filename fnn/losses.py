"""Losses: each takes the model's outputs and the targets and returns the batch mean.

They are thin wrappers over ``optax.losses`` that check shapes first, so a mismatch
between outputs and labels is a clear error instead of a silent broadcast.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fnn.core import shape_str


def _mismatch(name: str, expected: str, outputs: jax.Array, targets: jax.Array) -> ValueError:
    return ValueError(
        f"{name}: expected {expected}, got outputs {shape_str(outputs)} and targets {shape_str(targets)}"
    )


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of ``softmax(logits)`` against integer or one-hot labels.

    Shapes: ``logits: [..., classes]``; ``labels: int[...]`` (class ids) or
    ``[..., classes]`` (one-hot, of any dtype, or any distribution). A class id outside
    ``[0, classes)`` (a padding id of -1, say) makes the loss NaN, which a train loop
    reports as a non-finite loss at that step. A logit of ``-inf`` (a class ruled out)
    is allowed where its label is 0, in either form.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.losses.softmax_cross_entropy(jnp.array([[0.0, 0.0]]), jnp.array([1]))
        Array(0.6931472, dtype=float32)
    """
    if labels.shape == logits.shape:  # one-hot or a distribution, whatever its dtype
        log_p = jax.nn.log_softmax(logits)
        if jnp.issubdtype(labels.dtype, jnp.floating):  # float32 labels: a float32 loss of bf16 logits
            log_p = log_p.astype(jnp.result_type(log_p, labels))
        terms = jnp.where(labels != 0, labels.astype(log_p.dtype) * log_p, 0)
        return -terms.sum(-1).mean()
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise _mismatch("softmax_cross_entropy", "one-hot labels of the logits' shape", logits, labels)
    if labels.shape != logits.shape[:-1]:
        raise _mismatch("softmax_cross_entropy", "labels of shape logits.shape[:-1]", logits, labels)
    losses = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
    in_range = (labels >= 0) & (labels < logits.shape[-1])
    return jnp.where(in_range, losses, jnp.nan).mean()


def sigmoid_binary_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean binary cross-entropy of ``sigmoid(logits)`` against labels in [0, 1].

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.losses.sigmoid_binary_cross_entropy(jnp.array([0.0]), jnp.array([1.0]))
        Array(0.6931472, dtype=float32)
    """
    if labels.shape != logits.shape:
        raise _mismatch("sigmoid_binary_cross_entropy", "labels of the logits' shape", logits, labels)
    return optax.losses.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype)).mean()


def mean_squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean of ``(predictions - targets) ** 2`` over every entry.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.losses.mean_squared_error(jnp.array([1.0, 3.0]), jnp.array([0.0, 1.0]))
        Array(2.5, dtype=float32)
    """
    if predictions.shape != targets.shape:
        raise _mismatch("mean_squared_error", "targets of the predictions' shape", predictions, targets)
    return optax.losses.squared_error(predictions, targets).mean()
