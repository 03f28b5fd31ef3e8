"""dot_product_attention's masks, dtypes, dropout and input checks; MultiHeadAttention with its own
head sizes; positional layers' checks; jit == eager; the language model's cache and errors.

The core references (attention, rotary, causality, padding, cache == forward pass, sampling with
and without the cache, learning a periodic sequence) are in test_transformer.py.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import fnn

KEY = jax.random.key(0)


def rand(shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


def close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=tol, atol=tol)


def reference_attention(q, k, v, visible):
    """One query and one head at a time, in float64; a query that sees nothing gives zeros."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    visible = np.broadcast_to(visible, (q.shape[0], q.shape[2], q.shape[1], k.shape[1]))
    out = np.zeros_like(q)
    for b, i, h in np.ndindex(q.shape[0], q.shape[1], q.shape[2]):
        seen = visible[b, h, i]
        if seen.any():
            scores = k[b, seen, h] @ q[b, i, h] / np.sqrt(q.shape[-1])
            weights = np.exp(scores - scores.max())
            out[b, i, h] = weights @ v[b, seen, h] / weights.sum()
    return out


def lm(**options):
    config = {"vocab_size": 13, "d_model": 16, "num_heads": 2, "num_layers": 2, "max_len": 16} | options
    return fnn.TransformerLM(**config)


@pytest.fixture(scope="module")
def lm_params():
    """A language model and its initial parameters, built once (init is the slow part)."""
    model = lm()
    return model, model.init(KEY, jnp.zeros((1, 4), jnp.int32))[0]


# ---- dot_product_attention --------------------------------------------------------------------


def test_per_head_masks_with_causal_against_a_reference():
    q, k, v = rand((2, 4, 3, 4)), rand((2, 6, 3, 4), 2), rand((2, 6, 3, 4), 3)
    mask = np.array(jax.random.bernoulli(jax.random.key(4), 0.7, (2, 3, 4, 6)))
    mask[1, 2, 0] = False  # a query that sees no key
    causal = np.tril(np.ones((4, 6), bool), k=2)  # aligned to the last key: query 3 sees all six
    out = fnn.dot_product_attention(q, k, v, mask=jnp.asarray(mask), causal=True)
    close(out, reference_attention(q, k, v, mask & causal))
    assert (out[1, 0, 2] == 0).all()
    lengths = fnn.lengths_to_mask(jnp.array([6, 2]), 6)[:, None, None, :]  # [batch, 1, 1, tk]
    close(fnn.dot_product_attention(q, k, v, mask=lengths), reference_attention(q, k, v, lengths))


def test_low_precision_inputs_keep_their_dtype_and_mixed_inputs_are_promoted():
    q, k, v = rand((1, 5, 2, 8)), rand((1, 5, 2, 8), 2), rand((1, 5, 2, 8), 3)
    expected = reference_attention(q, k, v, np.tril(np.ones((5, 5), bool)))
    half = fnn.dot_product_attention(*(a.astype(jnp.bfloat16) for a in (q, k, v)), causal=True)
    assert half.dtype == jnp.bfloat16
    close(half, expected, 5e-2)
    mixed = fnn.dot_product_attention(q, k.astype(jnp.bfloat16), v, causal=True)
    assert mixed.dtype == jnp.float32


@pytest.mark.parametrize("rate", [0.0, 0.5])
def test_a_query_that_sees_nothing_has_finite_values_and_gradients(rate):
    q, k, v = rand((1, 3, 2, 4)), rand((1, 3, 2, 4), 2), rand((1, 3, 2, 4), 3)
    mask = jnp.array([False, False, False])[None, None, None, :]

    def loss(q, k, v):
        out = fnn.dot_product_attention(q, k, v, mask=mask, dropout_rate=rate, key=jax.random.key(1))
        return jnp.sum(out**2), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    assert (out == 0).all()
    assert all(bool(jnp.isfinite(g).all()) for g in grads)


def test_attention_dropout_is_unbiased_and_needs_a_key():
    q, k, v = rand((1, 3, 1, 4)), rand((1, 3, 1, 4), 2), rand((1, 3, 1, 4), 3)
    plain = fnn.dot_product_attention(q, k, v, causal=True)

    def dropped(key):
        return fnn.dot_product_attention(q, k, v, causal=True, dropout_rate=0.25, key=key)

    draws = jax.jit(jax.vmap(dropped))(jax.random.split(KEY, 4000))
    close(draws.mean(0), plain, 0.05)
    assert not np.allclose(draws[0], draws[1])
    close(dropped(jax.random.key(3)), dropped(jax.random.key(3)), 0)
    with pytest.raises(fnn.LayerError, match="attention dropout needs an rng key"):
        fnn.dot_product_attention(q, k, v, dropout_rate=0.25)


@pytest.mark.parametrize(
    "shapes, mask, message",
    [
        (((1, 3, 2, 4), (1, 3, 2), (1, 3, 2, 4)), None, r"got q float32\[1,3,2,4\], k float32\[1,3,2\]"),
        (((1, 3, 2, 4), (1, 5, 3, 4), (1, 5, 3, 4)), None, r"got q float32\[1,3,2,4\], k float32\[1,5,3,4\]"),
        (((1, 3, 2, 4), (1, 5, 2, 4), (1, 4, 2, 4)), None, r"v float32\[1,4,2,4\]"),
        (((1, 3, 2, 4), (1, 5, 2, 4), (1, 5, 2, 4)), jnp.ones((1, 1, 3, 5), jnp.int32),
         r"bool mask broadcastable to \[batch, heads, tq, tk\] = \[1,2,3,5\], got int32\[1,1,3,5\]"),
        (((1, 3, 2, 4), (1, 5, 2, 4), (1, 5, 2, 4)), jnp.ones((1, 1, 5, 3), bool), r"got bool\[1,1,5,3\]"),
    ],
    ids=["rank", "heads", "tk", "mask-dtype", "mask-shape"],
)
def test_dot_product_attention_input_errors(shapes, mask, message):
    q, k, v = (jnp.zeros(s) for s in shapes)
    with pytest.raises(fnn.ShapeError, match=message):
        fnn.dot_product_attention(q, k, v, mask=mask)


# ---- MultiHeadAttention with its own head sizes, gradients and abstract init ---------------------


def test_dropout_rate_and_rotary_arguments_are_checked():
    q = rand((1, 3, 2, 4))
    for rate in (1.0, 1.5, -0.5):  # zeros, zeros, and every weight scaled by 1/1.5
        with pytest.raises(ValueError, match=rf"dot_product_attention: dropout_rate must be in \[0, 1\), got {rate}"):
            fnn.dot_product_attention(q, q, q, dropout_rate=rate, key=KEY)
    with pytest.raises(fnn.ShapeError, match=r"rotary expects .* an even head_dim, got float32\[1,3,1,3\]"):
        fnn.rotary(rand((1, 3, 1, 3)), jnp.arange(3))  # returned a head of 4
    with pytest.raises(fnn.ShapeError, match=r"rotary expects one position per step, int\[3\], got int32\[2\]"):
        fnn.rotary(q, jnp.arange(2))


def test_attention_with_explicit_head_dim_and_out_features_against_a_reference():
    mha = fnn.MultiHeadAttention(3, head_dim=4, out_features=5, causal=True, use_bias=False)
    x, mask = rand((2, 6, 7)), fnn.lengths_to_mask(jnp.array([6, 4]), 6)
    params, _ = mha.init(KEY, (x, mask))
    assert jax.tree.map(jnp.shape, params) == {
        "query": {"w": (7, 3, 4)}, "key": {"w": (7, 3, 4)}, "value": {"w": (7, 3, 4)}, "out": {"w": (3, 4, 5)}
    }
    seen = np.where(np.asarray(mask)[..., None], x, 0.0)  # the layer reads zeros at the padding
    q, k, v = (np.einsum("btd,dhk->bthk", seen, params[name]["w"]) for name in ("query", "key", "value"))
    visible = np.asarray(mask)[:, None, None, :] & np.tril(np.ones((6, 6), bool))
    expected = np.einsum("bthk,hko->bto", reference_attention(q, k, v, visible), params["out"]["w"])
    y, mask_out = mha(params, (x, mask))
    assert mask_out is mask
    close(y, expected, 1e-4)


def test_padded_rows_are_finite_and_abstract_init_matches():
    mha = fnn.MultiHeadAttention(2, rotary=True)
    x, mask = rand((2, 6, 8)), fnn.lengths_to_mask(jnp.array([2, 0]), 6)
    spec = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(mask.shape, bool))
    abstract, _ = jax.eval_shape(mha.init, KEY, spec)
    params, _ = mha.init(KEY, (x, mask))
    assert jax.tree.map(jnp.shape, abstract) == jax.tree.map(jnp.shape, params)
    out_spec, mask_spec = mha.output_spec(params, {}, spec)
    assert (out_spec.shape, mask_spec.shape) == ((2, 6, 8), (2, 6))
    y, _ = mha(params, (x, mask))
    assert jnp.isfinite(y).all()
    close(y[1], jnp.broadcast_to(params["out"]["b"], (6, 8)))  # a row with no real step: the bias


def test_attention_gradients_with_a_mask_and_rotary_in_both_modes():  # order 2: test_transformer.py
    mha = fnn.MultiHeadAttention(2, causal=True, rotary=True)
    x, mask = rand((1, 3, 4)), jnp.array([[True, True, False]])
    params, _ = mha.init(KEY, (x, mask))
    check_grads(jax.jit(lambda p, v: mha(p, (v, mask))[0]), (params, x), order=1, modes=["fwd", "rev"],
                atol=5e-2, rtol=5e-2, eps=1e-3)


# ---- jit == eager ---------------------------------------------------------------------------------


class JitEqualsEager(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_attention_with_a_mask_and_dropout_while_training(self):
        mha = fnn.MultiHeadAttention(2, causal=True, dropout=0.3)
        x, mask = rand((2, 6, 8)), fnn.lengths_to_mask(jnp.array([6, 3]), 6)
        params, _ = mha.init(KEY, (x, mask))
        apply = self.variant(lambda p, v, m, k: mha(p, (v, m), key=k, train=True))
        y, m = apply(params, x, mask, jax.random.key(2))
        y_ref, _ = mha(params, (x, mask), key=jax.random.key(2), train=True)
        np.testing.assert_array_equal(m, mask)
        chex.assert_trees_all_close(y, y_ref, rtol=1e-5, atol=1e-5)
        assert not np.allclose(y, mha(params, (x, mask))[0])  # dropout was on


# ---- positional layers ----------------------------------------------------------------------------


def test_sinusoids_of_an_odd_width_and_the_pair_form():
    table = np.asarray(fnn.sinusoids(4, 5))
    for pos, i in np.ndindex(4, 5):
        angle = pos / 10000 ** (2 * (i // 2) / 5)
        assert table[pos, i] == pytest.approx(np.sin(angle) if i % 2 == 0 else np.cos(angle), abs=1e-6)
    x, mask = rand((2, 3, 5)), fnn.lengths_to_mask(jnp.array([3, 1]), 3)
    for layer in (fnn.SinusoidalPositions(8), fnn.LearnedPositions(8)):
        params, _ = layer.init(KEY, (x, mask))
        y, mask_out = layer(params, (x, mask))
        assert mask_out is mask
        close(y, layer(params, x))


def test_positional_layers_check_length_width_and_rank():
    long = rand((1, 9, 4))
    with pytest.raises(fnn.ShapeError, match="pos: SinusoidalPositions: the sequence has 9 steps, more than max_len 8"):
        fnn.serial(pos=fnn.SinusoidalPositions(8)).init(KEY, long)  # at init
    with pytest.raises(fnn.ShapeError, match="LearnedPositions: the sequence has 9 steps, more than max_len 8"):
        jax.jit(fnn.LearnedPositions(8))({"w": jnp.zeros((8, 4))}, long)  # and at apply, under jit too
    learned = fnn.LearnedPositions(8)
    params, _ = learned.init(KEY, rand((1, 3, 4)))
    with pytest.raises(fnn.ShapeError, match=r"LearnedPositions expected 4 features on axis -1, got input float32\[1,3,6\]"):
        learned(params, rand((1, 3, 6)))
    with pytest.raises(fnn.ShapeError, match=r"expects input of rank 3 \(batch, time, d_model\), got float32\[2,3\]"):
        learned.init(KEY, rand((2, 3)))
    with pytest.raises(fnn.ShapeError, match="SinusoidalPositions expects floating-point input"):
        fnn.SinusoidalPositions().init(KEY, jnp.zeros((1, 3, 4), jnp.int32))


# ---- the language model's cache -------------------------------------------------------------------


def test_cache_layout_and_decoding_under_jit_past_max_len(lm_params):
    model, params = lm_params
    cache = model.init_cache(params, 3, jnp.bfloat16)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), cache["block_1"]) == {
        "key": ((3, 16, 2, 8), jnp.bfloat16), "value": ((3, 16, 2, 8), jnp.bfloat16), "index": ((), jnp.int32)
    }
    cache = model.init_cache(params, 3) | {"index": jnp.array(16)}
    logits, cache = jax.jit(model.decode)(params, cache, jnp.ones((3,), jnp.int32))  # cannot raise
    assert logits.shape == (3, 13) and jnp.isnan(logits).all() and int(cache["index"]) == 17


def test_sampling_depends_on_the_key_only(lm_params):
    model, params = lm_params
    prompt = jnp.array([[1, 2, 3], [4, 5, 6]])
    first, again, other = (fnn.sample(model, params, prompt, 9, key=jax.random.key(s)) for s in (5, 5, 6))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


# ---- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: lm(num_heads=0), "TransformerLM: num_heads must be a positive int, got 0"),
        (lambda: lm(dropout=1.5), r"TransformerLM: dropout must be in \[0, 1\), got 1.5"),
        (lambda: lm(norm="batch"), "TransformerLM: norm must be one of layer, rms, got 'batch'"),
        (lambda: fnn.TransformerBlock(2, 8, dropout=-0.1), r"TransformerBlock: dropout must be in \[0, 1\)"),
        (lambda: fnn.TransformerBlock(2, 0), "TransformerBlock: mlp_dim must be a positive int, got 0"),
        (lambda: lm(mlp_dim=0), "TransformerLM: mlp_dim must be a positive int, got 0"),  # was 4 * d_model
        (lambda: fnn.TransformerBlock(2, 8, activation="foo"), "activation must name a jax.nn function, got 'foo'"),
        (lambda: fnn.TransformerBlock(0, 8), "MultiHeadAttention: num_heads must be a positive int, got 0"),
        (lambda: fnn.MultiHeadAttention(2, head_dim=0), "MultiHeadAttention: head_dim must be a positive int"),
        (lambda: fnn.LearnedPositions(0), "LearnedPositions: max_len must be a positive int, got 0"),
        (lambda: fnn.SinusoidalPositions(-3), "SinusoidalPositions: max_len must be a positive int, got -3"),
        (lambda: lm(attention_implementation="flash"), "TransformerLM: implementation must be None or 'cudnn'"),
        (lambda: lm(dropout=0.1, attention_implementation="cudnn"),
         "TransformerLM: implementation='cudnn' has no dropout, got dropout 0.1"),
        (lambda: fnn.TransformerBlock(2, 8, dropout=0.1, attention_implementation="cudnn"),
         "MultiHeadAttention: implementation='cudnn' has no dropout"),
        (lambda: fnn.MultiHeadAttention(2, implementation="xla"),
         "MultiHeadAttention: implementation must be None or 'cudnn', got 'xla'"),
    ],
)
def test_configuration_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_input_errors_name_the_layer_path():
    x = rand((2, 6, 8))
    net = fnn.serial(encoder=fnn.serial(fnn.TransformerBlock(2, 16)))
    with pytest.raises(fnn.ShapeError, match=r"encoder/transformer_block_0: TransformerBlock expects a mask bool\[2,6\] "
                                             r"for the sequence float32\[2,6,8\], got int32\[2,6\]"):
        net.init(KEY, (x, jnp.ones((2, 6), jnp.int32)))
    with pytest.raises(fnn.ShapeError, match=r"encoder/transformer_block_0/attention: MultiHeadAttention: rotary "
                                             "embeddings need an even head_dim, got 3"):
        fnn.serial(encoder=fnn.serial(fnn.TransformerBlock(2, 16, rotary=True))).init(KEY, rand((2, 6, 6)))
    with pytest.raises(fnn.ShapeError, match=r"att: MultiHeadAttention expects floating-point input, got int32\[2,6,8\]; "
                                             "embed integer ids with fnn.Embedding first"):
        fnn.serial(att=fnn.MultiHeadAttention(2)).init(KEY, jnp.zeros((2, 6, 8), jnp.int32))
    with pytest.raises(fnn.ShapeError, match=r"lm: TransformerLM got an empty batch int32\[3,0\]"):
        fnn.serial(lm=lm()).init(KEY, jnp.zeros((3, 0), jnp.int32))
    mha = fnn.MultiHeadAttention(2)
    params, _ = mha.init(KEY, x)
    with pytest.raises(fnn.ShapeError, match=r"MultiHeadAttention expected d_model 8, got float32\[2,6,4\]"):
        mha(params, rand((2, 6, 4)))


def test_decode_errors(lm_params):
    model, params = lm_params
    mha = fnn.MultiHeadAttention(2, causal=True)
    x = rand((1, 3, 8))
    mha_params, _ = mha.init(KEY, x)
    mha_cache = mha.init_cache(mha_params, 1, 2)
    for steps in (x[:, :2], x[0]):  # two steps at once moved the index by one and hid the second key
        with pytest.raises(fnn.ShapeError, match=r"decode expects one step per sequence of the cache, \[1, 1, d_model\]"):
            mha.decode(mha_params, mha_cache, steps)
    for t in range(2):
        _, mha_cache = mha.decode(mha_params, mha_cache, x[:, t : t + 1])
    with pytest.raises(fnn.ShapeError, match="the cache holds max_len 2 steps and is full"):  # it overwrote the last
        mha.decode(mha_params, mha_cache, x[:, 2:])
    assert np.isnan(jax.jit(mha.decode)(mha_params, mha_cache, x[:, 2:])[0]).all()
    cache = model.init_cache(params, 2)
    with pytest.raises(fnn.ShapeError, match=r"decode expects one id per sequence of the cache, int\[2\], got int32\[2,1\]"):
        model.decode(params, cache, jnp.ones((2, 1), jnp.int32))
    with pytest.raises(fnn.ShapeError, match="embed: Embedding has ids 0 to 12, got 13 at index"):
        model.decode(params, cache, jnp.array([1, 13]))


# ---- cuDNN's fused attention (implementation="cudnn") ------------------------------------------
# No GPU here: the tests check what fnn hands jax.nn.dot_product_attention, with a stand-in
# that records the call and computes it with JAX's own XLA implementation.


@pytest.fixture
def fake_gpu(monkeypatch):
    calls = []
    real = jax.nn.dot_product_attention

    def recorded(q, k, v, *, mask=None, is_causal=False, implementation=None, **kw):
        calls.append({"mask": None if mask is None else mask.shape, "is_causal": is_causal,
                      "implementation": implementation, "dtype": q.dtype})
        return real(q, k, v, mask=mask, is_causal=is_causal, implementation="xla", **kw)

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax.nn, "dot_product_attention", recorded)
    return calls


@pytest.mark.parametrize("causal, padded, tq", [(True, False, 6), (True, True, 6), (False, True, 6), (True, True, 4)])
def test_cudnn_gets_its_own_causal_mask_and_the_rest_as_an_array(fake_gpu, causal, padded, tq):
    q = jax.random.normal(jax.random.key(0), (2, tq, 2, 8), jnp.bfloat16)
    k, v = (jax.random.normal(jax.random.key(i), (2, 6, 2, 8), jnp.bfloat16) for i in (1, 2))
    mask = jnp.array([[True] * 6, [True] * 4 + [False] * 2])[:, None, None, :] if padded else None
    expected = fnn.dot_product_attention(q, k, v, mask=mask, causal=causal)  # fnn's own, under the same "gpu"
    fake_gpu.clear()
    got = fnn.dot_product_attention(q, k, v, mask=mask, causal=causal, implementation="cudnn")
    chex.assert_trees_all_close(got.astype(jnp.float32), expected.astype(jnp.float32), atol=2e-2)
    (call,) = fake_gpu
    own_causal = causal and tq == 6
    assert call["implementation"] == "cudnn" and call["is_causal"] == own_causal
    # the causal mask goes as cuDNN's own when the queries are the keys' steps; anything else as an array
    assert call["mask"] == (None if own_causal and not padded else (2, 2, tq, 6))


def test_cudnn_attention_needs_a_gpu_and_keeps_fnns_for_float32(fake_gpu, monkeypatch):
    q = jax.random.normal(jax.random.key(0), (1, 4, 2, 8))
    fake_gpu.clear()
    same = fnn.dot_product_attention(q, q, q, causal=True, implementation="cudnn")  # float32: fnn's own
    assert [c["implementation"] for c in fake_gpu] == [None]
    chex.assert_trees_all_close(same, fnn.dot_product_attention(q, q, q, causal=True))
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    half = q.astype(jnp.bfloat16)
    with pytest.raises(fnn.LayerError, match="implementation='cudnn' runs on a GPU; the default backend is cpu"):
        fnn.dot_product_attention(half, half, half, implementation="cudnn")
    # float32 keeps fnn's attention on any backend: a cuDNN model initialises on the CPU
    chex.assert_trees_all_close(fnn.dot_product_attention(q, q, q, implementation="cudnn"),
                                fnn.dot_product_attention(q, q, q))
    model = lm(attention_implementation="cudnn")
    params, _ = model.init(KEY, jnp.zeros((1, 4), jnp.int32))
    assert model(params, jnp.zeros((1, 4), jnp.int32)).shape == (1, 4, 13)
    with pytest.raises(ValueError, match="implementation='cudnn' has no dropout"):
        fnn.dot_product_attention(q, q, q, implementation="cudnn", dropout_rate=0.1, key=jax.random.key(0))


def test_a_language_model_trains_with_cudnn_attention_as_with_its_own(fake_gpu):
    """The option reaches every block's attention; under a bfloat16 policy the train step's
    loss and gradients are those of fnn's attention (to bfloat16 rounding)."""
    import optax

    from fnn.precision import Policy

    ids = jax.random.randint(jax.random.key(0), (2, 9), 0, 11)
    models = {impl: lm(attention_implementation=impl) for impl in (None, "cudnn")}
    results = {}
    for impl, model in models.items():
        opt = optax.sgd(0.1)
        state = fnn.init_train_state(model, opt, jax.random.key(1), ids[:, :-1])
        step = fnn.make_train_step(model, opt, fnn.losses.softmax_cross_entropy, policy=Policy("bfloat16"))
        fake_gpu.clear()
        results[impl] = step(state, (ids[:, :-1], ids[:, 1:]))
        assert [c["implementation"] for c in fake_gpu] == [impl] * 2  # one call a block
    (s0, m0), (s1, m1) = results[None], results["cudnn"]
    assert float(m1["loss"]) == pytest.approx(float(m0["loss"]), rel=1e-2)
    chex.assert_trees_all_close(s1.params, s0.params, atol=2e-3)


def test_multi_head_attention_checks_its_params_and_input():
    x = jnp.ones((2, 5, 8))
    mha = fnn.serial(att=fnn.MultiHeadAttention(2))
    cases = [  # each ran silently with the other layer's shapes
        (fnn.MultiHeadAttention(4), r"expects query w\[8, 2, 4\], b\[2, 4\], got w\[8, 4, 2\]"),
        (fnn.MultiHeadAttention(2, head_dim=3), r"expects query w\[8, 2, 4\], b\[2, 4\], got w\[8, 2, 3\]"),
        (fnn.MultiHeadAttention(2, out_features=5), r"expects out w\[2, 4, 8\], b\[8\], got w\[2, 4, 5\]"),
        (fnn.MultiHeadAttention(2, use_bias=False), r"expects query w\[8, 2, 4\], b\[2, 4\], got w\[8, 2, 4\]:"),
    ]
    for other, message in cases:
        params, _ = fnn.serial(att=other).init(KEY, x)
        with pytest.raises(fnn.ShapeError, match=r"^att: MultiHeadAttention with 2 heads of 4 .*" + message):
            mha(params, x)
    params, _ = mha.init(KEY, x)
    with pytest.raises(fnn.ShapeError, match=r"att: MultiHeadAttention expects floating-point input, got int32"):
        mha(params, jnp.ones((2, 5, 8), jnp.int32))  # ran, as init refuses it


def test_multi_head_attention_hyperparameters_are_checked():
    for base in (0.0, -10000.0, float("nan"), float("inf"), "1e4", True):  # the output was all NaN
        with pytest.raises(ValueError, match="MultiHeadAttention: rotary_base must be > 0 and finite"):
            fnn.MultiHeadAttention(2, rotary=True, rotary_base=base)
    assert type(fnn.MultiHeadAttention(2, rotary_base=np.float32(500.0)).rotary_base) is float
    for param_dtype in (jnp.int32, "foo"):  # a raw initializer error, blamed on the input in serial
        with pytest.raises(fnn.LayerError, match=r"^att: MultiHeadAttention: param_dtype must be a floating-point"):
            fnn.serial(att=fnn.MultiHeadAttention(2, param_dtype=param_dtype)).init(KEY, jnp.ones((2, 5, 8)))
