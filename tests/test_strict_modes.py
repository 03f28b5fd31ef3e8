"""fnn under JAX's strict settings: with rank promotion raising, strict dtype promotion,
NaN checks, the transfer guard and 64-bit mode on, fnn's own code gives the numbers it
gives by default. Each case computes once by default and once under the setting."""

import contextlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn

KEY = jax.random.key(0)
MASK = jnp.array([[True] * 6, [True, True, True, False, False, False]])


def rand(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# name -> (layer, input): every layer family, masked sequences and both conv paths included
LAYERS = {
    "dense": lambda: (fnn.Dense(4), rand((2, 3))),
    "conv1d": lambda: (fnn.Conv(4, (3,)), rand((2, 6, 3))),
    "conv2d_one_channel": lambda: (fnn.Conv(4, (3, 3)), rand((2, 6, 6, 1))),
    "conv_transpose": lambda: (fnn.ConvTranspose(3, (3, 3), strides=2), rand((2, 4, 4, 2))),
    "avg_pool_overlapping": lambda: (fnn.AvgPool((3, 3), strides=2), rand((2, 7, 7, 2))),
    "max_pool": lambda: (fnn.MaxPool((2, 2)), rand((2, 6, 6, 2))),
    "norms": lambda: (fnn.serial(fnn.LayerNorm(), fnn.RMSNorm(), fnn.GroupNorm(2)), rand((2, 6, 4))),
    "batch_norm": lambda: (fnn.BatchNorm(), rand((4, 3))),
    "lstm_masked": lambda: (fnn.Recurrent(fnn.LSTM(4)), (rand((2, 6, 3)), MASK)),
    "gru": lambda: (fnn.Recurrent(fnn.GRU(4)), rand((2, 6, 3))),
    "bidirectional_rnn": lambda: (fnn.Bidirectional(fnn.SimpleRNN(4)), (rand((2, 6, 3)), MASK)),
    "attention_causal_masked": lambda: (fnn.MultiHeadAttention(2, causal=True, rotary=True), (rand((2, 6, 8)), MASK)),
    "learned_positions": lambda: (fnn.LearnedPositions(8), rand((2, 6, 8))),
    "sinusoidal_positions": lambda: (fnn.SinusoidalPositions(), rand((2, 6, 8))),
    "transformer_lm": lambda: (fnn.TransformerLM(11, 16, 2, 2, max_len=8, positions="sinusoidal"),
                               (jnp.ones((2, 6), jnp.int32), MASK)),
    "sequence_pool": lambda: (fnn.serial(fnn.KeepMask(fnn.Dense(3)), fnn.SequencePool("last")),
                              (rand((2, 6, 3)), MASK)),
    "log_mel": lambda: (fnn.audio.LogMel(sample_rate=8000), rand((1, 2000))),
}


def forward_and_grad(layer, x):
    """The outputs and the gradient of their sum with respect to the params, as arrays,
    computed by one program (traced afresh, under whatever setting is on: JAX keys its
    compiled programs by these settings)."""
    params, state = layer.init(KEY, x)

    def total(p):
        y, _ = layer.apply(p, state, x, train=True)
        return sum(jnp.sum(v.astype(jnp.float32)) for v in jax.tree.leaves(y) if v.dtype != jnp.bool_)

    both = jax.jit(lambda p: (layer.apply(p, state, x, train=True)[0], jax.grad(total)(p)))
    return jax.tree.map(np.asarray, both(params))


@pytest.mark.parametrize("name", list(LAYERS))
def test_layers_under_rank_promotion_raise(name):
    layer, x = LAYERS[name]()
    expected = forward_and_grad(layer, x)
    with jax.numpy_rank_promotion("raise"):
        got = forward_and_grad(layer, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, expected)


@pytest.mark.parametrize("name", [n for n in LAYERS if n not in ("lstm_masked", "gru", "bidirectional_rnn")])
def test_layers_under_strict_dtype_promotion(name):
    """float32 everywhere; the recurrent layers are in the bfloat16 case below only as far
    as they go (see the test's note)."""
    layer, x = LAYERS[name]()
    expected = forward_and_grad(layer, x)
    with jax.numpy_dtype_promotion("strict"):
        got = forward_and_grad(layer, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, expected)


def small_cnn():
    return fnn.serial(fnn.Conv(4, (3, 3)), fnn.GroupNorm(2), fnn.LayerNorm(), fnn.BatchNorm(), jax.nn.relu,
                      fnn.AvgPool((2, 2)), fnn.Flatten(), fnn.RMSNorm(), fnn.Dense(3))


def train_twice(policy, setting):
    """Loss and params after two train steps (plus an evaluation) with ``policy``, under ``setting``."""
    model, optimizer = small_cnn(), optax.sgd(0.1)
    x, y = rand((4, 6, 6, 1)), jnp.array([0, 1, 2, 1])
    with setting:
        state = fnn.init_train_state(model, optimizer, KEY, x, policy=policy)
        step = fnn.make_train_step(model, optimizer, fnn.losses.softmax_cross_entropy, policy=policy,
                                   metrics={"accuracy": fnn.metrics.accuracy})
        for _ in range(2):
            state, metrics = step(state, (x, y))
        evaluated = fnn.evaluate(fnn.make_eval_step(model, fnn.losses.softmax_cross_entropy, policy=policy),
                                 state, [(x, y)])
    return float(metrics["loss"]), evaluated, jax.tree.map(np.asarray, state.params)


@pytest.mark.parametrize("policy", [None, "bfloat16", "float16"])
@pytest.mark.parametrize("setting", ["rank_raise", "dtype_strict"])
def test_a_train_step_under_strict_settings_matches_the_default(policy, setting):
    """A one-channel convolution (fnn's own gradient rule), the four normalisations and a
    pool in a compiled train step and evaluation; with a precision policy too."""
    strict = {"rank_raise": jax.numpy_rank_promotion("raise"),
              "dtype_strict": jax.numpy_dtype_promotion("strict")}[setting]
    loss, evaluated, params = train_twice(policy, strict)
    want_loss, want_evaluated, want_params = train_twice(policy, contextlib.nullcontext())
    tol = 1e-5 if policy is None else 2e-2
    np.testing.assert_allclose(loss, want_loss, rtol=tol)
    assert evaluated.keys() == want_evaluated.keys()
    for name in evaluated:
        np.testing.assert_allclose(evaluated[name], want_evaluated[name], rtol=tol)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=tol, atol=tol), params, want_params)


def test_ctc_loss_and_lengths_to_mask_under_strict_settings():
    logits, labels = rand((2, 6, 4)), jnp.array([[1, 2], [3, 0]])
    outputs = (logits, fnn.lengths_to_mask(jnp.array([6, 4]), 6))
    targets = (labels, jnp.array([[True, True], [True, False]]))
    want = fnn.ctc.ctc_loss(outputs, targets)
    with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
        np.testing.assert_array_equal(fnn.lengths_to_mask(jnp.array([6, 4]), 6), outputs[1])
        np.testing.assert_allclose(fnn.ctc.ctc_loss(outputs, targets), want, rtol=1e-6)


def test_no_nan_is_made_and_thrown_away_under_debug_nans():
    """``jax_debug_nans`` raises on a NaN computed anywhere, a branch a ``where`` drops too."""
    logits = jnp.array([[0.0, 1.0, -jnp.inf]])  # a class ruled out where its label is 0
    x = rand((2, 3, 1)).at[1].set(jnp.nan)      # a row of padding alone, holding NaN
    mask = jnp.array([[True, True, False], [False, False, False]])
    with jax.debug_nans(True):
        one_hot = fnn.losses.softmax_cross_entropy(logits, jnp.array([[0.0, 1.0, 0.0]]))
        np.testing.assert_allclose(one_hot, fnn.losses.softmax_cross_entropy(logits, jnp.array([1])))
        for mode in ("last", "first", "mean", "max"):
            pooled = fnn.SequencePool(mode)({}, (x, mask))
            np.testing.assert_array_equal(pooled[1], 0.0)


def test_evaluate_sends_the_device_nothing_per_batch():
    model = fnn.Dense(2)
    batches = [tuple(jax.device_put(a) for a in (rand((4, 3), seed), rand((4, 2), seed + 9))) for seed in range(3)]
    batches.append(tuple(jax.device_put(a[:1]) for a in batches[0]))  # another batch size
    state = fnn.init_train_state(model, optax.sgd(0.1), KEY, batches[0][0])
    eval_step = fnn.make_eval_step(model, fnn.losses.mean_squared_error)
    want = fnn.evaluate(eval_step, state, batches)  # compiles what it needs
    with jax.transfer_guard("disallow"):
        assert fnn.evaluate(eval_step, state, batches) == want
    sizes = [4, 4, 4, 1]
    losses = [float(eval_step(state, b)["loss"]) for b in batches]
    np.testing.assert_allclose(want["loss"], np.dot(sizes, losses) / sum(sizes), rtol=1e-6)


def test_sample_takes_an_int64_prompt_quietly():
    model = fnn.TransformerLM(11, 16, 2, 2, max_len=8)
    with jax.enable_x64(True):
        params, _ = model.init(KEY, jnp.zeros((1, 3), jnp.int32))
        prompt = jnp.array([[1, 2, 3]])
        assert prompt.dtype == jnp.int64
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tokens = fnn.sample(model, params, prompt, 4, key=KEY)
    assert tokens.shape == (1, 7) and tokens[0, :3].tolist() == [1, 2, 3]


def test_mixed_dtypes_fnn_chooses_run_under_strict_dtype_promotion():
    """A layer given bfloat16 input with float32 params computes in float32, as by default;
    one-hot float32 labels give a float32 loss of bfloat16 logits."""
    x = rand((2, 3, 4)).astype(jnp.bfloat16)
    logits = rand((2, 4, 3)).astype(jnp.bfloat16)
    one_hot = jax.nn.one_hot(jnp.array([[0, 1, 2, 0], [1, 1, 1, 1]]), 3)
    cases = {
        "dense": lambda: (lambda layer: layer(layer.init(KEY, x)[0], x))(fnn.Dense(3)),
        "embedding_attend": lambda: (lambda layer: layer.attend(layer.init(KEY, jnp.zeros((1,), jnp.int32))[0], x))(
            fnn.Embedding(5, 4)),
        "attention": lambda: fnn.dot_product_attention(x[..., None, :], x[..., None, :].astype(jnp.float32),
                                                       x[..., None, :]),
        "one_hot_cross_entropy": lambda: fnn.losses.softmax_cross_entropy(logits, one_hot),
    }
    for name, call in cases.items():
        want = call()
        with jax.numpy_dtype_promotion("strict"):
            got = call()
        assert got.dtype == want.dtype == jnp.float32, name
        np.testing.assert_array_equal(got, want, err_msg=name)
