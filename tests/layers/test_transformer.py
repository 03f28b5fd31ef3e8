"""Attention, positional encodings, transformer blocks, the language model, its cache and sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import fnn

KEY = jax.random.key(0)
B, T, D, HEADS = 2, 6, 8, 2


def rand(shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def numpy_attention(q, k, v, visible):
    """softmax(q k^T / sqrt(d)) v per head with plain NumPy; ``visible: [b, h, q, k]``."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(visible, scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v)


def numpy_rotary(x, positions, base=10000.0):
    x = np.asarray(x, np.float64)
    half = x.shape[-1] // 2
    out = np.empty_like(x)
    for t, p in enumerate(positions):
        for i in range(half):
            angle = p * base ** (-i / half)
            a, b = x[:, t, :, i], x[:, t, :, i + half]
            out[:, t, :, i] = a * np.cos(angle) - b * np.sin(angle)
            out[:, t, :, i + half] = b * np.cos(angle) + a * np.sin(angle)
    return out


# ---- attention against plain maths ---------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_multi_head_attention_against_numpy(causal, padded):
    mha = fnn.MultiHeadAttention(HEADS, causal=causal)
    x = rand((B, T, D))
    mask = fnn.lengths_to_mask(jnp.array([T, 3]), T) if padded else jnp.ones((B, T), bool)
    params, _ = mha.init(KEY, (x, mask))
    p = jax.tree.map(np.asarray, params)
    xn = np.where(np.asarray(mask)[..., None], np.asarray(x, np.float64), 0.0)  # zeros at the padding
    q, k, v = (np.einsum("btd,dhk->bthk", xn, p[n]["w"]) + p[n]["b"] for n in ("query", "key", "value"))
    visible = np.broadcast_to(np.asarray(mask)[:, None, None, :], (B, HEADS, T, T))
    if causal:
        visible = visible & np.tril(np.ones((T, T), bool))
    expected = np.einsum("bthk,hko->bto", numpy_attention(q, k, v, visible), p["out"]["w"]) + p["out"]["b"]
    y, mask_out = mha(params, (x, mask))
    assert mask_out is mask
    close(y, expected, 1e-4)


def test_dot_product_attention_masks_and_empty_rows():
    q, k, v = rand((1, 3, 1, 4)), rand((1, 5, 1, 4), 2), rand((1, 5, 1, 4), 3)
    mask = jnp.array([True, True, False, True, False])[None, None, None, :]
    visible = np.broadcast_to(np.asarray(mask), (1, 1, 3, 5))
    close(fnn.dot_product_attention(q, k, v, mask=mask), numpy_attention(q, k, v, visible), 1e-5)
    causal = np.tril(np.ones((3, 5), bool), k=2)[None, None]  # the last query sees every key
    close(fnn.dot_product_attention(q, k, v, causal=True), numpy_attention(q, k, v, causal), 1e-5)
    nothing = jnp.zeros((1, 1, 3, 5), bool)
    out = fnn.dot_product_attention(q, k, v, mask=nothing)
    assert jnp.isfinite(out).all() and (out == 0).all()


def test_rotary_against_numpy_and_relative_positions():
    x = rand((1, 4, 2, 6))
    positions = jnp.array([0, 1, 5, 9])
    close(fnn.rotary(x, positions), numpy_rotary(x, np.asarray(positions)), 1e-5)
    q, k = rand((1, 1, 1, 8), 4), rand((1, 1, 1, 8), 5)

    def score(i, j):
        return float(jnp.sum(fnn.rotary(q, jnp.array([i])) * fnn.rotary(k, jnp.array([j]))))

    assert score(3, 1) == pytest.approx(score(10, 8), rel=1e-4)  # only i - j matters
    assert score(3, 1) != pytest.approx(score(3, 2), rel=1e-3)


def test_rotary_attention_matches_numpy():
    mha = fnn.MultiHeadAttention(HEADS, causal=True, rotary=True, use_bias=False)
    x = rand((B, T, D))
    params, _ = mha.init(KEY, x)
    p = jax.tree.map(np.asarray, params)
    xn = np.asarray(x, np.float64)
    q, k, v = (np.einsum("btd,dhk->bthk", xn, p[n]["w"]) for n in ("query", "key", "value"))
    q, k = numpy_rotary(q, range(T)), numpy_rotary(k, range(T))
    visible = np.broadcast_to(np.tril(np.ones((T, T), bool)), (B, HEADS, T, T))
    expected = np.einsum("bthk,hko->bto", numpy_attention(q, k, v, visible), p["out"]["w"])
    close(mha(params, x), expected, 1e-4)


def test_positional_encodings():
    table = np.asarray(fnn.sinusoids(7, 6))
    for pos in range(7):
        for i in range(3):
            assert table[pos, 2 * i] == pytest.approx(np.sin(pos / 10000 ** (2 * i / 6)), abs=1e-5)
            assert table[pos, 2 * i + 1] == pytest.approx(np.cos(pos / 10000 ** (2 * i / 6)), abs=1e-5)
    x = rand((B, 5, 6))
    close(fnn.SinusoidalPositions()({}, x), x + table[:5])
    learned = fnn.LearnedPositions(10)
    params, _ = learned.init(KEY, x)
    assert params["w"].shape == (10, 6)
    close(learned(params, x), x + params["w"][:5])


# ---- causality and padding -----------------------------------------------------------------


def lm(**options):
    config = {"vocab_size": 13, "d_model": 16, "num_heads": 2, "num_layers": 2, "max_len": 16} | options
    return fnn.TransformerLM(**config)


@pytest.mark.parametrize(
    "model, x",
    [
        (fnn.MultiHeadAttention(HEADS, causal=True), rand((B, T, D))),
        (fnn.TransformerBlock(HEADS, 16, causal=True), rand((B, T, D))),
        (lm(), jax.random.randint(KEY, (B, T), 0, 13)),
        (lm(positions="rotary", norm="rms", tie_embeddings=True), jax.random.randint(KEY, (B, T), 0, 13)),
    ],
    ids=["attention", "block", "lm", "lm-rotary-rms-tied"],
)
def test_changing_a_future_step_never_changes_an_earlier_output(model, x):
    params, _ = model.init(KEY, x)
    y = model(params, x)
    for t in range(1, T):
        changed = x.at[:, t].set((x[:, t] + 1) % 13 if x.dtype == jnp.int32 else x[:, t] * -3.0)
        y2 = model(params, changed)
        close(y2[:, :t], y[:, :t], 1e-5)
        assert not np.allclose(y2[:, t], y[:, t])


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "rotary"])
def test_padding_changes_nothing_at_real_positions(positions):
    model = lm(positions=positions)
    ids = jax.random.randint(KEY, (B, T), 0, 13)
    mask = fnn.lengths_to_mask(jnp.array([T, 4]), T)
    params, _ = model.init(KEY, (ids, mask))
    logits, _ = model(params, (ids.at[1, 4:].set(7), mask))
    alone = model(params, ids[1:, :4])
    close(logits[1, :4], alone[0], 1e-5)
    bidirectional = fnn.TransformerBlock(HEADS, 16)  # not causal: padding must be masked
    x = rand((B, T, D))
    p, _ = bidirectional.init(KEY, (x, mask))
    y, _ = bidirectional(p, (x.at[1, 4:].set(100.0), mask))
    close(y[1, :4], bidirectional(p, x[1:, :4])[0], 1e-4)


# ---- key/value cache and sampling ----------------------------------------------------------


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "rotary"])
def test_decoding_with_the_cache_equals_the_full_forward_pass(positions):
    model = lm(positions=positions)
    ids = jax.random.randint(KEY, (B, 10), 0, 13)
    params, _ = model.init(KEY, ids)
    full = model(params, ids)
    cache = model.init_cache(params, B)
    decode = jax.jit(model.decode)
    for t in range(10):
        logits, cache = decode(params, cache, ids[:, t])
        close(logits, full[:, t], 1e-5)
    assert int(cache["index"]) == 10


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sampling_with_and_without_the_cache_gives_the_same_tokens(temperature):
    model = lm()
    params, _ = model.init(KEY, jnp.zeros((1, 4), jnp.int32))
    prompt = jnp.array([[1, 2, 3], [4, 5, 6]])
    fast = fnn.sample(model, params, prompt, 9, key=jax.random.key(4), temperature=temperature)
    slow = fnn.sample(model, params, prompt, 9, key=jax.random.key(4), temperature=temperature, use_cache=False)
    np.testing.assert_array_equal(fast, slow)
    np.testing.assert_array_equal(fast[:, :3], prompt)
    assert fast.shape == (2, 12) and int(fast.max()) < 13
    if temperature == 0:  # greedy: each token is the argmax given the ones before
        logits = model(params, fast)
        np.testing.assert_array_equal(fast[:, 3:], jnp.argmax(logits[:, 2:-1], -1))


@pytest.mark.parametrize("use_cache", [True, False])
def test_sampling_at_a_tiny_temperature_is_greedy(use_cache):
    # logits / 1e-50 overflowed float32 to infinities, and the draw was token 0 every time
    model = lm()
    params, _ = model.init(KEY, jnp.zeros((1, 4), jnp.int32))
    prompt = jnp.array([[1, 2, 3], [4, 5, 6]])
    sample = lambda t: fnn.sample(model, params, prompt, 6, key=KEY, temperature=t, use_cache=use_cache)  # noqa: E731
    np.testing.assert_array_equal(sample(1e-50), sample(0.0))


def test_a_draw_is_jax_categorical_of_the_tempered_logits():
    from fnn.layers.transformer import _pick

    logits = jax.random.normal(KEY, (64, 13))
    for temperature in (0.5, 1.0, 3.0):
        expected = jax.random.categorical(jax.random.fold_in(KEY, 7), logits / temperature)
        np.testing.assert_array_equal(_pick(logits, KEY, 7, temperature), expected)


def test_sampling_works_for_a_recurrent_model_without_a_cache():
    model = fnn.serial(fnn.Embedding(9, 8), fnn.Recurrent(fnn.LSTM(8)), fnn.Dense(9))
    params, _ = model.init(KEY, jnp.zeros((1, 3), jnp.int32))
    out = fnn.sample(model, params, jnp.array([[1, 2]]), 6, key=KEY, temperature=0.0, use_cache=False)
    np.testing.assert_array_equal(out[:, 2:], jnp.argmax(model(params, out)[:, 1:-1], -1))
    with pytest.raises(ValueError, match="Serial has no key/value cache; pass use_cache=False"):
        fnn.sample(model, params, jnp.array([[1, 2]]), 6, key=KEY)
    # its vocabulary is its logits' width: an id outside it was continued with zeros (NaN logits)
    with pytest.raises(ValueError, match=r"prompt ids must be in \[0, 9\) .* got ids from 1 to 20"):
        fnn.sample(model, params, jnp.array([[1, 20]]), 4, key=KEY, use_cache=False)


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.int8, jnp.int16])
def test_a_narrow_prompt_dtype_does_not_wrap_the_ids_drawn(dtype):
    model = fnn.TransformerLM(vocab_size=300, d_model=8, num_heads=2, num_layers=1, max_len=16)
    params, _ = model.init(KEY, jnp.zeros((1, 4), jnp.int32))
    wide = fnn.sample(model, params, jnp.array([[1, 2, 3]], jnp.int32), 12, key=KEY, temperature=2.0)
    assert int(wide.max()) > 127  # ids a narrow prompt's dtype cannot hold
    narrow = fnn.sample(model, params, jnp.array([[1, 2, 3]], dtype), 12, key=KEY, temperature=2.0)
    assert narrow.dtype == jnp.int32
    np.testing.assert_array_equal(narrow, wide)


# ---- gradients, jit, learning ----------------------------------------------------------------


def test_attention_gradients_and_jit():
    mha = fnn.MultiHeadAttention(HEADS, causal=True)
    x = rand((1, 4, D))
    params, _ = mha.init(KEY, x)
    check_grads(jax.jit(lambda p, v: mha(p, v)), (params, x), order=2, modes=["rev"], atol=5e-2, rtol=5e-2, eps=1e-3)
    model = lm(dropout=0.1)
    ids = jax.random.randint(KEY, (B, T), 0, 13)
    params, _ = model.init(KEY, ids)
    close(jax.jit(model)(params, ids), model(params, ids), 1e-5)
    a = model(params, ids, key=jax.random.key(1), train=True)
    b = model(params, ids, key=jax.random.key(2), train=True)
    assert not np.allclose(a, b)  # dropout is on while training
    close(model(params, ids, key=jax.random.key(1), train=True), a, 1e-6)


def test_init_is_abstract_and_params_are_readable():
    model = lm()
    spec = jax.ShapeDtypeStruct((B, T), jnp.int32)
    abstract, _ = jax.eval_shape(model.init, KEY, spec)
    real, _ = model.init(KEY, jnp.zeros((B, T), jnp.int32))
    assert jax.tree.map(jnp.shape, abstract) == jax.tree.map(jnp.shape, real)
    assert list(real) == ["embed", "positions", "block_0", "block_1", "norm", "head"]
    assert sorted(real["block_0"]) == ["attention", "mlp", "norm_1", "norm_2"]
    assert real["block_0"]["attention"]["query"]["w"].shape == (16, 2, 8)
    assert "head" not in lm(tie_embeddings=True).init(KEY, jnp.zeros((1, 4), jnp.int32))[0]


def test_a_small_transformer_learns_a_periodic_sequence():
    model = lm(num_layers=1, max_len=32)
    pattern = np.array([3, 1, 4, 1, 5])
    stream = np.tile(pattern, 40)
    batches = list(fnn.text.lm_windows(stream, 16, 12, seed=0, steps=150))
    optimizer = optax.adam(3e-3)
    state = fnn.init_train_state(model, optimizer, KEY, batches[0][0])
    step = fnn.make_train_step(model, optimizer, fnn.losses.softmax_cross_entropy)
    state, history = fnn.fit(step, state, batches, log_every=50)
    assert history[-1]["loss"] < 0.05 < history[0]["loss"]


# ---- errors -----------------------------------------------------------------------------------


def test_configuration_errors():
    with pytest.raises(ValueError, match="MultiHeadAttention: num_heads must be a positive int, got 0"):
        fnn.MultiHeadAttention(0)
    with pytest.raises(ValueError, match=r"MultiHeadAttention: dropout must be in \[0, 1\), got 1.5"):
        fnn.MultiHeadAttention(2, dropout=1.5)
    with pytest.raises(ValueError, match="TransformerLM: positions must be one of learned, sinusoidal, rotary"):
        lm(positions="foo")
    with pytest.raises(ValueError, match="TransformerLM: d_model 16 is not divisible by num_heads 3"):
        lm(num_heads=3)
    with pytest.raises(ValueError, match="TransformerBlock: norm must be one of layer, rms, got 'batch'"):
        fnn.TransformerBlock(2, 8, norm="batch")


def test_input_errors_name_the_layer():
    with pytest.raises(fnn.ShapeError, match="net: MultiHeadAttention: d_model 10 is not divisible by num_heads 4"):
        fnn.serial(net=fnn.MultiHeadAttention(4)).init(KEY, rand((1, 3, 10)))
    with pytest.raises(fnn.ShapeError, match="lm/positions: LearnedPositions: the sequence has 20 steps, more than"):
        fnn.serial(lm=fnn.serial(positions=fnn.LearnedPositions(16))).init(KEY, rand((1, 20, 4)))
    with pytest.raises(fnn.ShapeError, match="lm: TransformerLM: the sequence has 17 steps, more than max_len 16"):
        fnn.serial(lm=lm()).init(KEY, jnp.zeros((1, 17), jnp.int32))
    with pytest.raises(fnn.ShapeError, match=r"lm: TransformerLM expects a mask bool\[2,6\] .* got bool\[2,5\]"):
        fnn.serial(lm=lm()).init(KEY, (jnp.zeros((2, 6), jnp.int32), jnp.ones((2, 5), bool)))
    with pytest.raises(fnn.ShapeError, match=r"lm: TransformerLM got an empty batch int32\[0,6\]"):
        fnn.serial(lm=lm()).init(KEY, jnp.zeros((0, 6), jnp.int32))
    model = fnn.serial(lm=lm())
    params, _ = model.init(KEY, jnp.zeros((1, 6), jnp.int32))
    with pytest.raises(fnn.ShapeError, match="lm/embed: Embedding has ids 0 to 12, got 13 at index"):
        model(params, jnp.full((1, 6), 13))


def test_sampling_errors():
    model = lm()
    params, _ = model.init(KEY, jnp.zeros((1, 4), jnp.int32))
    with pytest.raises(ValueError, match="exceed the model's max_len 16"):
        fnn.sample(model, params, jnp.ones((1, 10), jnp.int32), 7, key=KEY)
    with pytest.raises(ValueError, match=r"prompt must be integer ids \[batch, length >= 1\]"):
        fnn.sample(model, params, jnp.ones((1, 0), jnp.int32), 3, key=KEY)
    prompt = jnp.ones((1, 2), jnp.int32)
    for temperature in (-1.0, float("nan"), float("inf")):  # nan drew token 0 every time
        with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
            fnn.sample(model, params, prompt, 3, key=KEY, temperature=temperature)
    for steps in (-1, 1.5):
        with pytest.raises(ValueError, match=f"num_steps must be an int >= 0, got {steps}"):
            fnn.sample(model, params, prompt, steps, key=KEY)
    with pytest.raises(ValueError, match="key must be a jax.random key, got NoneType"):
        fnn.sample(model, params, prompt, 3, key=None)
    with pytest.raises(ValueError, match=r"prompt ids must be in \[0, 13\) \(the model's vocab_size\), got ids from 1 to 99"):
        fnn.sample(model, params, jnp.array([[1, 99]]), 3, key=KEY)
    assert fnn.sample(model, params, prompt, np.int64(0), key=KEY).shape == (1, 2)
    cache = model.init_cache(params, 1) | {"index": jnp.array(16)}
    with pytest.raises(fnn.ShapeError, match="the cache holds max_len 16 tokens and is full"):
        model.decode(params, cache, jnp.ones((1,), jnp.int32))
