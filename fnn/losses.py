"""Losses: each takes the model's outputs and the targets and returns the batch mean.

They are thin wrappers over ``optax.losses`` (the binary cross-entropy and the
cross-entropy of a distribution written out, for speed) that check shapes first, so a mismatch
between outputs and labels is a clear error instead of a silent broadcast. Outputs that
are a masked sequence ``(values [batch, time, ...], mask bool[batch, time])`` give the
mean over the real steps alone: what the padding holds, in the outputs or the targets
(a pad label of -1, NaN), reaches neither the loss nor its gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fnn.core import promoted, shape_str
from fnn.layers.sequence import real_mean, split_outputs, zero_padding


def _mismatch(name: str, expected: str, outputs: jax.Array, targets: jax.Array) -> ValueError:
    return ValueError(
        f"{name}: expected {expected}, got outputs {shape_str(outputs)} and targets {shape_str(targets)}"
    )


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy of ``softmax(logits)`` against integer or one-hot labels.

    Shapes: ``logits: [..., classes]``, or a masked sequence ``(logits [batch, time, ...,
    classes], mask)``; ``labels: int[...]`` (class ids) or ``[..., classes]`` (one-hot, of
    any dtype, or any distribution). A class id outside ``[0, classes)`` at a real step
    (a padding id of -1 where no mask says it is padding, say) makes the loss NaN, which a
    train loop reports as a non-finite loss at that step. A logit of ``-inf`` (a class
    ruled out) is allowed where its label is 0, in either form.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.losses.softmax_cross_entropy(jnp.array([[0.0, 0.0]]), jnp.array([1]))
        Array(0.6931472, dtype=float32)
        >>> logits, mask = jnp.zeros((1, 3, 2)), jnp.array([[True, True, False]])
        >>> fnn.losses.softmax_cross_entropy((logits, mask), jnp.array([[0, 1, -1]]))   # over 2 steps
        Array(0.6931472, dtype=float32)
    """
    logits, mask = split_outputs("softmax_cross_entropy", logits)
    if labels.shape == logits.shape:  # one-hot or a distribution, whatever its dtype
        logits, labels = zero_padding(logits, mask), zero_padding(labels, mask)
        # float32 labels: a float32 loss of bf16 logits
        dtype = promoted(logits, labels) if jnp.issubdtype(labels.dtype, jnp.floating) else logits.dtype
        # -sum(y log_softmax(z)) as sum(y) logsumexp(z) - sum(y z), which keeps no
        # [..., classes] log-probabilities: 0.37-0.69x the time and 0-0.66x the temporaries
        # (8 x 128 x 8000 and 32 x 128 x 1000 smoothed labels, float32 and bfloat16). In
        # float32 at least: the two terms are as large as the logits, their difference may be
        # small. z is taken as 0 where the label is 0: a -inf logit's product would be NaN
        # there (jax_debug_nans raises on it)
        wide = promoted(dtype, jnp.float32)
        z, labels = logits.astype(wide), labels.astype(wide)
        picked = (labels * jnp.where(labels != 0, z, 0)).sum(-1)
        return real_mean((labels.sum(-1) * jax.nn.logsumexp(z, -1) - picked).astype(dtype), mask)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise _mismatch("softmax_cross_entropy", "one-hot labels of the logits' shape", logits, labels)
    if labels.shape != logits.shape[:-1]:
        raise _mismatch("softmax_cross_entropy", "labels of shape logits.shape[:-1]", logits, labels)
    logits, labels = zero_padding(logits, mask), zero_padding(labels, mask)
    losses = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels)
    in_range = (labels >= 0) & (labels < logits.shape[-1])
    return real_mean(jnp.where(in_range, losses, jnp.nan), mask)


def sigmoid_binary_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean binary cross-entropy of ``sigmoid(logits)`` against labels in [0, 1]; of the real
    steps alone for a masked sequence ``(logits, mask)``.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.losses.sigmoid_binary_cross_entropy(jnp.array([0.0]), jnp.array([1.0]))
        Array(0.6931472, dtype=float32)
    """
    logits, mask = split_outputs("sigmoid_binary_cross_entropy", logits)
    if labels.shape != logits.shape:
        raise _mismatch("sigmoid_binary_cross_entropy", "labels of the logits' shape", logits, labels)
    logits, labels = zero_padding(logits, mask), zero_padding(labels, mask)
    # softplus(z) - z y, which is -y log sigmoid(z) - (1 - y) log sigmoid(-z): the gradient
    # sigmoid(z) - y from one softplus, where optax's two log_sigmoids took 1.9-2x the time
    # (256 x 1000 logits) and 2.4x the work
    return real_mean(jax.nn.softplus(logits) - logits * labels.astype(logits.dtype), mask)


def mean_squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean of ``(predictions - targets) ** 2`` over every entry (every entry of a real step,
    for a masked sequence ``(predictions, mask)``).

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.losses.mean_squared_error(jnp.array([1.0, 3.0]), jnp.array([0.0, 1.0]))
        Array(2.5, dtype=float32)
    """
    predictions, mask = split_outputs("mean_squared_error", predictions)
    if predictions.shape != targets.shape:
        raise _mismatch("mean_squared_error", "targets of the predictions' shape", predictions, targets)
    predictions, targets = zero_padding(predictions, mask), zero_padding(targets, mask)
    return real_mean(optax.losses.squared_error(predictions, targets), mask)
