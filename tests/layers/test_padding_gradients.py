"""What a padded step holds reaches no real output and no gradient, in every mask-aware path.

A masked value is left out by a zero weight (a masked key's probability, a padded step's
cotangent, a frame outside the mask), and zero times NaN or infinity is NaN; so each
mask-aware layer sets the padding to zero before it computes. Each case compares the loss
over real steps, and its gradients for the parameters and the inputs, with NaN, infinite and
huge padding against zero padding, in training and in evaluation (as
``fnn.per_example_grads`` runs).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import audio, ctc

KEY = jax.random.key(0)
MASK = jnp.array([[True, True, True, False, False], [True, False, False, False, False],
                  [False, False, False, False, False]])  # a row of padding alone too


def real_sum(outputs, weights):
    """A loss over the real steps only: a weighted sum of a masked sequence's values."""
    y, mask = outputs
    return jnp.sum(jnp.where(mask.reshape(mask.shape + (1,) * (y.ndim - 2)), y * weights[: y.shape[-1]], 0.0))


def x_float(features=4):
    return jnp.asarray(np.random.default_rng(1).standard_normal((3, 5, features)), jnp.float32)


LAYERS = {
    "lstm": lambda: fnn.Recurrent(fnn.LSTM(3)),
    "gru_reverse": lambda: fnn.Recurrent(fnn.GRU(3), reverse=True),
    "rnn_remat": lambda: fnn.Recurrent(fnn.SimpleRNN(3), remat=True),
    "bidirectional": lambda: fnn.Bidirectional(fnn.LSTM(3)),
    "attention": lambda: fnn.MultiHeadAttention(2),
    "causal_attention": lambda: fnn.MultiHeadAttention(2, causal=True, rotary=True),
    "transformer_block": lambda: fnn.TransformerBlock(2, 8),
    "batch_norm": lambda: fnn.BatchNorm(),
    "group_norm": lambda: fnn.GroupNorm(num_groups=2),
    "keep_mask_conv": lambda: fnn.serial(fnn.KeepMask(fnn.Conv(3, (3,))), fnn.KeepMask(fnn.Conv(3, (3,)))),
}


@pytest.mark.parametrize("pad", [np.nan, np.inf, 1e30])
@pytest.mark.parametrize("name", list(LAYERS))
def test_padding_reaches_no_real_output_or_gradient(name, pad):
    layer = LAYERS[name]()
    x = x_float()
    params, state = layer.init(KEY, (x, MASK))
    weights = jnp.asarray(np.random.default_rng(2).standard_normal(8), jnp.float32)

    def loss(p, v, train):
        outputs, _ = layer.apply(p, state, (v, MASK), key=jax.random.key(1), train=train)
        return real_sum(outputs, weights)

    padded = jnp.where(MASK[..., None], x, pad)
    for train in (True, False):
        grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
        (value, grads), (clean_value, clean_grads) = grad(params, padded, train), grad(params, x, train)
        np.testing.assert_allclose(value, clean_value, rtol=1e-5, err_msg=f"train={train}")
        for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(clean_grads)):
            assert np.isfinite(got).all(), f"train={train}: a gradient is not finite"
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=f"train={train}")


@pytest.mark.parametrize("pad_id", [-1, 11, 7])
def test_a_transformer_lm_takes_any_pad_id(pad_id):
    lm = fnn.TransformerLM(vocab_size=11, d_model=8, num_heads=2, num_layers=1, max_len=5)
    ids = jnp.asarray(np.random.default_rng(3).integers(0, 11, (3, 5)), jnp.int32)
    params, _ = lm.init(KEY, (ids, MASK))
    logits, _ = jax.jit(lm)(params, (jnp.where(MASK, ids, pad_id), MASK))
    clean, _ = lm(params, (jnp.where(MASK, ids, 0), MASK))
    real = np.asarray(MASK)
    assert np.isfinite(np.asarray(logits)[real]).all()
    np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(clean)[real], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pad", [np.nan, np.inf, -np.inf, 1e30])
def test_ctc_loss_leaves_out_whatever_the_padded_frames_hold(pad):
    logits = jnp.asarray(np.random.default_rng(4).standard_normal((2, 6, 4)), jnp.float32)
    frames = jnp.array([[True] * 6, [True] * 4 + [False] * 2])
    labels, label_mask = jnp.array([[1, 2], [3, 0]]), jnp.array([[True, True], [True, False]])

    def loss(v):
        return ctc.ctc_loss((v, frames), (labels, label_mask))

    padded = jnp.where(frames[..., None], logits, pad)
    np.testing.assert_allclose(loss(padded), loss(logits), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(loss)(padded), jax.grad(loss)(logits), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("pad", [np.nan, np.inf, 1e30])
def test_the_audio_front_end_gives_real_frames_gradients_free_of_the_padding(pad):
    wave = jnp.asarray(np.random.default_rng(5).standard_normal((2, 1200)), jnp.float32)
    samples = jnp.arange(1200) < jnp.array([[1200], [800]])
    front = audio.LogMel()

    def loss(v):
        features, frame_mask = front({}, (v, samples))
        return jnp.sum(jnp.where(frame_mask[..., None], features * jnp.arange(40.0), 0.0))

    padded = jnp.where(samples, wave, pad)
    np.testing.assert_allclose(jax.jit(loss)(padded), jax.jit(loss)(wave), rtol=1e-5)
    grad = jax.jit(jax.grad(loss))  # as a train step takes it, and one compile for both waves
    got, want = grad(padded), grad(wave)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)

    features = jnp.asarray(np.random.default_rng(6).standard_normal((2, 5, 3)), jnp.float32)
    frames = jnp.array([[True] * 5, [True] * 3 + [False] * 2])
    norm_loss = lambda v: jnp.sum(jnp.where(frames[..., None], audio.normalize(v, frames) ** 3, 0.0))  # noqa: E731
    got = jax.grad(norm_loss)(jnp.where(frames[..., None], features, pad))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, jax.grad(norm_loss)(features), rtol=1e-4, atol=1e-6)
