"""Losses and metrics against plain NumPy maths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn

rng = np.random.default_rng(0)
LOGITS = rng.normal(size=(6, 4)).astype(np.float32)
LABELS = np.array([0, 1, 2, 3, 1, 2], np.int32)


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_softmax_cross_entropy_integer_and_one_hot_labels():
    expected = -np_log_softmax(LOGITS)[np.arange(6), LABELS].mean()
    np.testing.assert_allclose(fnn.losses.softmax_cross_entropy(LOGITS, LABELS), expected, rtol=1e-6)
    one_hot = np.eye(4, dtype=np.float32)[LABELS]
    np.testing.assert_allclose(fnn.losses.softmax_cross_entropy(LOGITS, one_hot), expected, rtol=1e-6)
    np.testing.assert_allclose(fnn.losses.softmax_cross_entropy(LOGITS, one_hot.astype(np.int32)), expected, rtol=1e-6)
    soft = np.full((6, 4), 0.25, np.float32)
    np.testing.assert_allclose(fnn.losses.softmax_cross_entropy(LOGITS, soft),
                               -(np_log_softmax(LOGITS) / 4).sum(-1).mean(), rtol=1e-6)


def test_softmax_cross_entropy_of_ruled_out_classes_and_labels_out_of_range():
    logits = LOGITS.copy()
    logits[LABELS != 3, 3] = -np.inf  # class 3 ruled out where it is not the label
    one_hot = np.eye(4, dtype=np.float32)[LABELS]
    by_ids = fnn.losses.softmax_cross_entropy(logits, LABELS)
    assert np.isfinite(by_ids)
    np.testing.assert_allclose(fnn.losses.softmax_cross_entropy(logits, one_hot), by_ids, rtol=1e-6)
    grads = jax.grad(fnn.losses.softmax_cross_entropy)(jnp.asarray(logits), one_hot)
    assert np.all(np.isfinite(grads))
    np.testing.assert_allclose(grads, jax.grad(fnn.losses.softmax_cross_entropy)(jnp.asarray(logits), LABELS))
    for label in (-1, 4):  # -1 used to train class 3 silently
        labels = LABELS.copy()
        labels[2] = label
        assert np.isnan(fnn.losses.softmax_cross_entropy(LOGITS, labels))
        assert np.isnan(jax.jit(fnn.losses.softmax_cross_entropy)(LOGITS, labels))


def test_sigmoid_binary_cross_entropy_and_mse():
    z = LOGITS[:, 0]
    t = (LABELS % 2).astype(np.float32)
    p = 1 / (1 + np.exp(-z))
    expected = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean()
    np.testing.assert_allclose(fnn.losses.sigmoid_binary_cross_entropy(z, t), expected, rtol=1e-5)
    np.testing.assert_allclose(fnn.losses.mean_squared_error(LOGITS, 2 * LOGITS), (LOGITS**2).mean(), rtol=1e-6)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: fnn.losses.softmax_cross_entropy(LOGITS, LABELS[:5]), "labels of shape logits.shape"),
        (lambda: fnn.losses.softmax_cross_entropy(LOGITS, np.ones((6, 3), np.float32)), "one-hot labels"),
        (lambda: fnn.losses.sigmoid_binary_cross_entropy(LOGITS, LABELS), "labels of the logits' shape"),
        (lambda: fnn.losses.mean_squared_error(LOGITS, LOGITS[:, :1]), r"got outputs float32\[6,4\]"),
        (lambda: fnn.metrics.accuracy(LOGITS, LABELS.astype(np.float32)), "integer labels"),
        (lambda: fnn.metrics.top_k_accuracy(LOGITS, LABELS, k=9), r"k must be in \[1, 4\]"),
        (lambda: fnn.metrics.confusion_matrix(LABELS, LABELS[:2], 4), "must have one shape"),
    ],
)
def test_shape_mismatches_are_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_accuracy_top_k_and_confusion_matrix():
    predictions = LOGITS.argmax(-1)
    np.testing.assert_allclose(fnn.metrics.accuracy(LOGITS, LABELS), (predictions == LABELS).mean())
    top2 = np.argsort(-LOGITS, -1)[:, :2]
    expected = np.mean([LABELS[i] in top2[i] for i in range(6)])
    np.testing.assert_allclose(fnn.metrics.top_k_accuracy(LOGITS, LABELS, k=2), expected)
    np.testing.assert_allclose(fnn.metrics.top_k_accuracy(LOGITS, LABELS, k=4), 1.0)
    matrix = np.zeros((4, 4), np.int32)
    for t, p in zip(LABELS, predictions):
        matrix[t, p] += 1
    np.testing.assert_array_equal(fnn.metrics.confusion_matrix(jnp.asarray(predictions), LABELS, 4), matrix)
    jitted = jax.jit(fnn.metrics.confusion_matrix, static_argnums=2)
    np.testing.assert_array_equal(jitted(predictions, LABELS, 4), matrix)
    # Pairs outside [0, 4) are not counted (they used to wrap into a neighbouring cell).
    padded = jnp.concatenate([jnp.asarray(predictions), jnp.array([1, 4, 0, -1])])
    padded_labels = jnp.concatenate([jnp.asarray(LABELS), jnp.array([-1, 0, 4, 2])])
    np.testing.assert_array_equal(jitted(padded, padded_labels, 4), matrix)
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        fnn.metrics.confusion_matrix(predictions, LABELS, 0)
    # small integer labels: the cell index is computed in int32 (3 * 100 + 3 wrapped to 47 in uint8)
    small = jnp.array([99, 50, 3], jnp.uint8)
    counts = fnn.metrics.confusion_matrix(small, small, 100)
    assert int(counts.sum()) == 3 and [int(counts[i, i]) for i in (3, 50, 99)] == [1, 1, 1]
