"""fnn.autodiff: the layers' weight product and its reverse-mode weight gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn.autodiff import _REVERSE_ONLY, matmul


def _inputs(x_shape, out=5, dtype=jnp.float32):
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, x_shape, dtype)
    w = jax.random.normal(kw, (x_shape[-1], out), dtype)
    return x, w


def _grads(x, w):
    loss = lambda x, w: jnp.sum(jnp.sin(matmul(x, w)))  # noqa: E731
    return jax.value_and_grad(loss, argnums=(0, 1))(x, w)


@pytest.mark.parametrize("x_shape", [(3,), (4, 3), (2, 6, 3), (2, 2, 2, 3)])
def test_values_and_gradients_match_jax(x_shape):
    x, w = _inputs(x_shape)
    plain_value, plain_grads = _grads(x, w)
    with fnn.reverse_mode_only():
        value, grads = _grads(x, w)
    np.testing.assert_allclose(value, plain_value, rtol=1e-6)
    np.testing.assert_allclose(value, jnp.sum(jnp.sin(x @ w)), rtol=1e-6)
    for got, want in zip(grads, plain_grads):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bfloat16_gradients_keep_their_dtypes():
    x, w = _inputs((8, 4), dtype=jnp.bfloat16)
    with fnn.reverse_mode_only():
        _, (dx, dw) = _grads(x, w)
    _, (want_dx, want_dw) = _grads(x.astype(jnp.float32), w.astype(jnp.float32))
    assert dx.dtype == dw.dtype == jnp.bfloat16
    np.testing.assert_allclose(dw.astype(jnp.float32), want_dw, rtol=0.05, atol=0.1)
    np.testing.assert_allclose(dx.astype(jnp.float32), want_dx, rtol=0.05, atol=0.1)


def test_weight_gradient_contracts_the_input_first():
    """The rule's point: the weight gradient is dot_general(x, g) -> [in, out], the input
    (as rows) the left operand; JAX's own rule computes dot_general(g, x) -> [out, in] and
    transposes it."""
    x, w = _inputs((4, 6, 3))

    def dots(enabled):
        with fnn.reverse_mode_only(enabled):
            jaxpr = jax.make_jaxpr(jax.grad(lambda w: jnp.sum(jnp.tanh(matmul(x, w)))))(w)
        return [
            (e.invars[0].aval.shape, e.outvars[0].aval.shape)
            for e in jaxpr.jaxpr.eqns
            if e.primitive.name == "dot_general" and e.outvars[0].aval.shape in ((3, 5), (5, 3))
        ]

    assert dots(True) == [((24, 3), (3, 5))]
    assert dots(False) == [((4, 6, 5), (5, 3))]


def test_second_order_reverse_mode_works_inside():
    x, w = _inputs((4, 3))
    loss = lambda w: jnp.sum(jnp.sin(matmul(x, w)) ** 2)  # noqa: E731
    want = jax.jacrev(jax.grad(loss))(w)
    with fnn.reverse_mode_only():
        got = jax.jacrev(jax.grad(loss))(w)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_vmap_of_gradients_inside():
    x, w = _inputs((7, 4, 3))
    per_example = jax.vmap(lambda x: jax.grad(lambda w: jnp.sum(jnp.sin(matmul(x, w))))(w))
    want = per_example(x)
    with fnn.reverse_mode_only():
        got = per_example(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_forward_mode_outside_and_off_but_not_inside():
    model = fnn.Dense(3)
    x = jnp.ones((2, 4))
    params, _ = model.init(jax.random.key(0), x)
    f = lambda p: model(p, x)  # noqa: E731
    want = jax.jvp(f, (params,), (params,))
    with fnn.reverse_mode_only():
        with pytest.raises(TypeError, match="forward-mode"):
            jax.jvp(f, (params,), (params,))
        with fnn.reverse_mode_only(False):
            got = jax.jvp(f, (params,), (params,))
        assert _REVERSE_ONLY.get()
    assert not _REVERSE_ONLY.get()
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert jax.hessian(lambda p: jnp.sum(f(p) ** 2))(params)["w"]["w"].shape == (4, 3, 4, 3)


def test_the_setting_is_restored_after_an_error():
    with pytest.raises(RuntimeError):
        with fnn.reverse_mode_only():
            raise RuntimeError("inside")
    assert not _REVERSE_ONLY.get()


@pytest.mark.parametrize(
    "model, x",
    [
        (fnn.TransformerLM(vocab_size=11, d_model=16, num_heads=2, num_layers=2, max_len=8),
         jnp.arange(24).reshape(3, 8) % 11),
        (fnn.serial(fnn.Embedding(11, 6), fnn.Recurrent(fnn.LSTM(8)), fnn.Dense(11)),
         jnp.arange(24).reshape(3, 8) % 11),
        (fnn.serial(fnn.Embedding(11, 6), fnn.Bidirectional(fnn.GRU(5)), fnn.Dense(11)),
         jnp.arange(24).reshape(3, 8) % 11),
    ],
    ids=["transformer", "lstm", "bigru"],
)
def test_train_step_equals_plain_gradient(model, x):
    """make_train_step takes its gradient inside reverse_mode_only; one SGD step equals
    the update from JAX's own gradient rule."""
    y = (x + 1) % 11
    opt = optax.sgd(0.5)
    state = fnn.init_train_state(model, opt, jax.random.key(1), x)
    loss = fnn.losses.softmax_cross_entropy

    def objective(p):
        return loss(model.apply(p, state.model_state, x)[0], y)

    value, grads = jax.value_and_grad(objective)(state.params)
    want = jax.tree.map(lambda p, g: p - 0.5 * g, state.params, grads)
    new, metrics = fnn.make_train_step(model, opt, loss, donate=False)(state, (x, y))
    np.testing.assert_allclose(metrics["loss"], value, rtol=1e-5)
    for got, ref in zip(jax.tree.leaves(new.params), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
