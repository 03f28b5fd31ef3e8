"""Losses and metrics against plain NumPy maths."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
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


def _assert_equals_optax(loss, optax_loss, z, y, grad_rtol, atol):
    """``loss``'s value and gradient in ``z`` are those of the mean of ``optax_loss``."""
    got = jax.value_and_grad(loss)(z, y)
    want = jax.value_and_grad(lambda z, y: optax_loss(z, y).mean())(z, y)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=grad_rtol, atol=atol)


def test_cross_entropy_of_distributions_keeps_no_log_probabilities():
    """Smoothed labels: optax's values and gradients, from a compiled step whose
    temporaries are a fraction of the logits (``y * where(y != 0, log_softmax(z), 0)`` kept
    the log-probabilities and more: twice the logits here, and 1.3-1.4x the time at 1000
    classes)."""
    z = jnp.asarray(rng.normal(size=(8, 64, 1000)), jnp.float32)
    y = jax.nn.one_hot(rng.integers(0, 1000, (8, 64)), 1000) * 0.9 + 0.1 / 1000

    _assert_equals_optax(fnn.losses.softmax_cross_entropy, optax.losses.softmax_cross_entropy, z, y,
                         grad_rtol=1e-4, atol=1e-10)

    step = jax.jit(jax.value_and_grad(fnn.losses.softmax_cross_entropy)).lower(z, y).compile()
    assert step.memory_analysis().temp_size_in_bytes < z.nbytes / 4


def test_cross_entropy_of_bfloat16_logits_and_float32_labels_is_float32_exact():
    """Large bfloat16 logits: the float32 loss of the same numbers to float32's precision
    (``log_softmax`` in bfloat16 was 2e-4 off, relative)."""
    z = jnp.asarray(rng.normal(size=(64, 100)) * 4 + 40, jnp.bfloat16)
    y = jax.nn.one_hot(rng.integers(0, 100, 64), 100) * 0.9 + 0.001
    got = fnn.losses.softmax_cross_entropy(z, y)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, optax.losses.softmax_cross_entropy(z.astype(jnp.float32), y).mean(), rtol=1e-5)


def test_sigmoid_binary_cross_entropy_equals_optax_with_no_more_work():
    """Values and gradients of optax's (soft labels too, large logits of either sign), from
    a compiled gradient with no more work or temporaries than ``softplus(z) - z y``'s
    (optax's two log_sigmoids took 2.4x the work and 1.9x the time)."""
    z = jnp.asarray(rng.normal(size=(64, 50)) * 30, jnp.float32)
    t = jnp.asarray(rng.uniform(size=(64, 50)), jnp.float32).at[:, :10].set(1.0).at[:, 10:20].set(0.0)

    _assert_equals_optax(fnn.losses.sigmoid_binary_cross_entropy, optax.losses.sigmoid_binary_cross_entropy, z, t,
                         grad_rtol=1e-5, atol=1e-9)

    def plan(loss):
        compiled = jax.jit(jax.grad(loss)).lower(z, t).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return cost["flops"], compiled.memory_analysis().temp_size_in_bytes

    flops, temp = plan(fnn.losses.sigmoid_binary_cross_entropy)
    plain_flops, plain_temp = plan(lambda z, t: jnp.mean(jax.nn.softplus(z) - z * t))
    assert flops <= 1.05 * plain_flops and temp <= plain_temp


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


# -- a masked sequence's outputs: the real steps alone -------------------------------------------

SEQ_MASK = np.array([[True, True, True, False], [True, False, False, False], [False] * 4])  # a row of padding too
SEQ_LOGITS = rng.normal(size=(3, 4, 5)).astype(np.float32)
SEQ_LABELS = rng.integers(0, 5, size=(3, 4)).astype(np.int32)


def padded(values, pad):
    """``values`` with ``pad`` at the padded steps of SEQ_MASK."""
    values = np.array(values)
    values[~SEQ_MASK] = pad
    return values


MASKED_CALLS = {
    "cross_entropy_ids": (fnn.losses.softmax_cross_entropy, SEQ_LOGITS, SEQ_LABELS, -1),
    "cross_entropy_one_hot": (fnn.losses.softmax_cross_entropy, SEQ_LOGITS,
                              np.eye(5, dtype=np.float32)[SEQ_LABELS], np.nan),
    "binary_cross_entropy": (fnn.losses.sigmoid_binary_cross_entropy, SEQ_LOGITS,
                             (SEQ_LOGITS > 0.3).astype(np.float32), np.inf),
    "squared_error": (fnn.losses.mean_squared_error, SEQ_LOGITS, SEQ_LOGITS[::-1] * 2, np.nan),
    "accuracy": (fnn.metrics.accuracy, SEQ_LOGITS, SEQ_LABELS, 99),
    "top_2_accuracy": (lambda out, y: fnn.metrics.top_k_accuracy(out, y, k=2), SEQ_LOGITS, SEQ_LABELS, -7),
}


@pytest.mark.parametrize("pad", [np.nan, np.inf, 1e30])
@pytest.mark.parametrize("name", list(MASKED_CALLS))
def test_masked_outputs_give_the_value_and_gradient_of_the_real_steps_alone(name, pad):
    """``f((outputs, mask), targets)`` equals ``f`` of the real steps gathered into a plain
    batch, whatever the padding holds in the outputs (``pad``) and in the targets; its
    gradient is that of the gathered steps at the real ones and zero at the padding."""
    f, outputs, targets, pad_target = MASKED_CALLS[name]
    mask = jnp.asarray(SEQ_MASK)
    masked = jax.jit(lambda o, t: f((o, mask), t))
    value = masked(padded(outputs, pad), padded(targets, pad_target))
    alone = f(outputs[SEQ_MASK], targets[SEQ_MASK])
    np.testing.assert_allclose(value, alone, rtol=1e-6)
    if name.endswith("accuracy"):
        return
    grads = jax.grad(masked)(jnp.asarray(padded(outputs, pad)), padded(targets, pad_target))
    want = np.zeros_like(outputs)
    want[SEQ_MASK] = jax.grad(f)(jnp.asarray(outputs[SEQ_MASK]), targets[SEQ_MASK])
    np.testing.assert_allclose(grads, want, rtol=1e-5, atol=1e-7)


def test_masked_outputs_with_no_real_step_give_zero():
    mask = jnp.zeros((3, 4), bool)
    for name, (f, outputs, targets, pad_target) in MASKED_CALLS.items():
        assert float(f((jnp.full_like(outputs, np.nan), mask), np.full_like(targets, pad_target))) == 0.0, name
    grads = jax.grad(lambda o: fnn.losses.softmax_cross_entropy((o, mask), SEQ_LABELS))(jnp.asarray(SEQ_LOGITS))
    np.testing.assert_array_equal(grads, 0.0)


def test_a_real_step_with_a_label_out_of_range_is_still_nan():
    labels = SEQ_LABELS.copy()
    labels[0, 1] = -1  # a real step: the mask does not say it is padding
    assert np.isnan(fnn.losses.softmax_cross_entropy((SEQ_LOGITS, jnp.asarray(SEQ_MASK)), labels))


@pytest.mark.parametrize("f", [fnn.losses.softmax_cross_entropy, fnn.metrics.accuracy])
def test_masked_outputs_with_a_mask_that_does_not_fit_are_a_clear_error(f):
    name = f.__name__
    with pytest.raises(ValueError, match=rf"^{name} expects a mask bool\[3,4\] for the sequence "
                                         r"float32\[3,4,5\], got bool\[3,5\]"):
        f((SEQ_LOGITS, np.ones((3, 5), bool)), SEQ_LABELS)
    with pytest.raises(ValueError, match=rf"^{name} expects a sequence or a pair \(sequence, mask\)"):
        f((SEQ_LOGITS, SEQ_MASK, SEQ_MASK), SEQ_LABELS)
    with pytest.raises(ValueError, match="labels of shape logits.shape|integer labels of shape"):
        f((SEQ_LOGITS, SEQ_MASK), SEQ_LABELS[:, :3])


def test_a_model_of_padded_sequences_trains_on_its_real_steps_alone():
    """A tagger over padded ids, its outputs a masked sequence: the train step's loss,
    accuracy and gradients do not depend on the pad ids or the pad labels."""
    model = fnn.serial(fnn.KeepMask(fnn.Embedding(7, 8)), fnn.Recurrent(fnn.GRU(8)), fnn.KeepMask(fnn.Dense(5)))
    ids = rng.integers(0, 7, size=(3, 4)).astype(np.int32)
    mask = jnp.asarray(SEQ_MASK)
    state = fnn.init_train_state(model, optax.sgd(0.1), jax.random.key(0), (ids, mask))
    step = fnn.make_train_step(model, optax.sgd(0.1), fnn.losses.softmax_cross_entropy,
                               metrics={"accuracy": fnn.metrics.accuracy}, donate=False)
    after, metrics = step(state, ((jnp.asarray(ids), mask), SEQ_LABELS))
    after_padded, metrics_padded = step(state, ((jnp.asarray(padded(ids, 3)), mask), padded(SEQ_LABELS, -1)))
    np.testing.assert_allclose(metrics["loss"], metrics_padded["loss"], rtol=1e-6)
    np.testing.assert_allclose(metrics["accuracy"], metrics_padded["accuracy"])
    chex.assert_trees_all_close(after.params, after_padded.params, rtol=1e-6)
    outputs, _ = model.apply(state.params, state.model_state, (jnp.asarray(ids), mask))
    np.testing.assert_allclose(metrics["loss"], fnn.losses.softmax_cross_entropy(outputs[0][SEQ_MASK],
                                                                                  SEQ_LABELS[SEQ_MASK]), rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_masked_outputs_of_a_narrow_dtype_are_summed_in_float32(dtype):
    """64 x 512 steps of float16 losses summed in float16 overflow to inf, and bfloat16
    counts 1,999 real steps as 2,000; the mean over real steps is taken as ``jnp.mean``
    takes the plain one, in float32, and given back in the values' dtype."""
    logits = jnp.zeros((64, 512, 8), dtype)
    labels = jnp.zeros((64, 512), jnp.int32)
    mask = fnn.lengths_to_mask(jnp.full((64,), 500), 512)
    loss = fnn.losses.softmax_cross_entropy((logits, mask), labels)
    assert loss.dtype == dtype
    np.testing.assert_allclose(float(loss), np.log(8), rtol=1e-2)
    assert float(fnn.metrics.accuracy((logits, mask), labels)) == 1.0
    pred = jax.random.uniform(jax.random.key(0), (1, 2000), minval=0.5, maxval=1.5).astype(dtype)
    short = fnn.lengths_to_mask(jnp.array([1999]), 2000)
    np.testing.assert_allclose(float(fnn.losses.mean_squared_error((pred, short), jnp.zeros_like(pred))),
                               float(jnp.mean(jnp.square(pred[:, :1999].astype(jnp.float32)))), rtol=4e-3)
