"""Classification metrics. Each is a pure function of outputs and integer labels.

``accuracy`` and ``top_k_accuracy`` also take a masked sequence ``(logits [batch, time,
..., classes], mask bool[batch, time])`` and count its real steps alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fnn.core import is_count, shape_str
from fnn.layers.sequence import real_mean, split_outputs


def _check_labels(name: str, logits: jax.Array, labels: jax.Array) -> None:
    if labels.shape != logits.shape[:-1] or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"{name}: expected integer labels of shape logits.shape[:-1], got logits "
            f"{shape_str(logits)} and labels {shape_str(labels)}"
        )


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of examples whose highest-scoring class is the label.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.metrics.accuracy(jnp.array([[2.0, 1.0], [0.0, 1.0]]), jnp.array([0, 0]))
        Array(0.5, dtype=float32)
    """
    logits, mask = split_outputs("accuracy", logits)
    _check_labels("accuracy", logits, labels)
    return real_mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32), mask)


def top_k_accuracy(logits: jax.Array, labels: jax.Array, k: int = 5) -> jax.Array:
    """Fraction of examples whose label is among the ``k`` highest-scoring classes.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.metrics.top_k_accuracy(jnp.array([[3.0, 2.0, 1.0]]), jnp.array([1]), k=2)
        Array(1., dtype=float32)
    """
    logits, mask = split_outputs("top_k_accuracy", logits)
    _check_labels("top_k_accuracy", logits, labels)
    if not 1 <= k <= logits.shape[-1]:
        raise ValueError(f"top_k_accuracy: k must be in [1, {logits.shape[-1]}], got {k}")
    _, top = jax.lax.top_k(logits, k)
    return real_mean(jnp.any(top == labels[..., None], axis=-1).astype(jnp.float32), mask)


def confusion_matrix(predictions: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
    """``m[i, j]`` = number of examples of true class ``i`` predicted as class ``j``.

    An example whose label or prediction lies outside ``[0, num_classes)`` (a padding
    label of -1, say) is not counted.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.metrics.confusion_matrix(jnp.array([0, 1, 1]), jnp.array([0, 0, 1]), 2)
        Array([[1, 1],
               [0, 1]], dtype=int32)
    """
    if predictions.shape != labels.shape:
        raise ValueError(
            f"confusion_matrix: predictions {shape_str(predictions)} and labels "
            f"{shape_str(labels)} must have one shape"
        )
    if not is_count(num_classes):
        raise ValueError(f"confusion_matrix: num_classes must be a positive int, got {num_classes!r}")
    # int32 before the cell index: labels * num_classes overflows a uint8 or int16 label
    labels, predictions = labels.reshape(-1).astype(jnp.int32), predictions.reshape(-1).astype(jnp.int32)
    valid = (labels >= 0) & (labels < num_classes) & (predictions >= 0) & (predictions < num_classes)
    index = jnp.where(valid, labels * num_classes + predictions, 0)
    counts = jnp.bincount(index, weights=valid.astype(jnp.int32), length=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(jnp.int32)
