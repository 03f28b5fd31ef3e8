"""fnn.autodiff: the layers' weight product and its reverse-mode weight gradient."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import fnn
from fnn import autodiff
from fnn.autodiff import _REVERSE_ONLY, matmul


def _jit(f):
    """``jax.jit`` of a fresh function: traced at its first call, under the
    ``reverse_mode_only`` setting of that call (jit caches a trace by function)."""
    return jax.jit(lambda *a: f(*a))


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


@pytest.mark.parametrize("rows", [24, 24_000], ids=["small x: x^T copied first", "large x"])
def test_weight_gradient_contracts_the_input_first(rows):
    """The rule's point: the weight gradient is x^T @ g -> [in, out], the input (as rows) the
    left operand; JAX's own rule computes dot_general(g, x) -> [out, in] and transposes it.
    On CPU an x of at most 2**16 elements is transposed into its own array first."""
    x, w = _inputs((4, rows // 4, 3))
    loss = lambda w: jnp.sum(jnp.tanh(matmul(x, w)))  # noqa: E731

    def dots(enabled):
        with fnn.reverse_mode_only(enabled):
            jaxpr = jax.make_jaxpr(jax.grad(loss))(w)
        return [
            (e.invars[0].aval.shape, e.outvars[0].aval.shape)
            for e in jaxpr.jaxpr.eqns
            if e.primitive.name == "dot_general" and e.outvars[0].aval.shape in ((3, 5), (5, 3))
        ]

    assert dots(True) == [((3, rows), (3, 5)) if rows * 3 <= 2**16 else ((rows, 3), (3, 5))]
    assert dots(False) == [((4, rows // 4, 5), (5, 3))]
    with fnn.reverse_mode_only():
        got = jax.jit(jax.grad(loss))(w)
    np.testing.assert_allclose(got, jax.grad(loss)(w), rtol=1e-5, atol=1e-4)


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
        (fnn.serial(fnn.Conv(4, (3, 3)), fnn.relu, fnn.MaxPool((2, 2)), fnn.Conv(5, (3, 3), padding="VALID"),
                    fnn.relu, fnn.Flatten(), fnn.Dense(11)),
         jax.random.normal(jax.random.key(2), (3, 8, 8, 1))),
    ],
    ids=["transformer", "lstm", "bigru", "cnn"],
)
def test_train_step_equals_plain_gradient(model, x):
    """make_train_step takes its gradient inside reverse_mode_only; one SGD step equals
    the update from JAX's own gradient rule."""
    y = jnp.arange(3) if x.ndim == 4 else (x + 1) % 11
    opt = optax.sgd(0.5)
    state = fnn.init_train_state(model, opt, jax.random.key(1), x)
    loss = fnn.losses.softmax_cross_entropy

    def objective(p):
        return loss(model.apply(p, state.model_state, x)[0], y)

    value, grads = _jit(jax.value_and_grad(objective))(state.params)
    want = jax.tree.map(lambda p, g: p - 0.5 * g, state.params, grads)
    new, metrics = fnn.make_train_step(model, opt, loss, donate=False)(state, (x, y))
    np.testing.assert_allclose(metrics["loss"], value, rtol=1e-5)
    for got, ref in zip(jax.tree.leaves(new.params), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


# Convolutions: autodiff.conv (one group; any stride and dilation) and its rule on CPU.

CONV_CASES = [  # x shape, kernel, padding as Conv takes it, out channels, strides, dilation
    ((2, 12, 12, 1), (5, 5), "SAME", 6, 1, 1),  # one input channel: the shifted-sum forward
    ((2, 9, 9, 6), (5, 5), "VALID", 4, 1, 1),  # up to 8 input channels: the col2im input gradient
    ((3, 10, 3), (4,), ((1, 2),), 5, 1, 1),  # 1-D, asymmetric padding
    ((2, 5, 6, 4, 1), (3, 3, 2), 1, 3, 1, 1),  # 3-D, one input channel
    ((2, 7, 8, 4), (2, 3), "SAME", 5, 1, 1),  # even kernel: more padding after than before
    ((2, 6, 7, 12), (3, 3), "SAME", 4, 1, 1),  # more than 8 input channels: no rule, XLA's
    ((2, 13, 10, 1), (3, 3), "SAME", 4, 2, 1),  # one channel, stride 2, odd size: a row left out
    ((2, 11, 9, 1), (3, 2), "VALID", 3, (3, 2), 1),  # one channel, a stride per axis
    ((2, 12, 12, 1), (3, 3), "SAME", 4, 1, 2),  # one channel, dilated kernel
    ((2, 9, 10, 3), (3, 3), ((2, 0), (1, 1)), 5, 2, 1),  # few channels, stride 2
    ((2, 10, 10, 12), (3, 3), "SAME", 4, 2, 1),  # more than 8 channels, stride 2: XLA's
    ((2, 12, 12, 12), (3, 3), "VALID", 4, 1, 2),  # more than 8 channels, dilated: XLA's
    ((2, 12, 12, 1), (3, 3), "SAME", 16, 1, 1),  # one channel to more than 9: the shifted sum, XLA's dx
    ((2, 15, 15, 1), (7, 7), "SAME", 4, 1, 1),  # one channel, 49 offsets: col2im, XLA's forward
    ((2, 15, 15, 3), (7, 7), "SAME", 4, 2, 1),  # 49 offsets at stride 2: XLA's
    ((2, 9, 9, 3), (3, 3), "SAME", 32, 1, 1),  # more out channels than offsets x in: XLA's
    ((3, 17, 2), (4,), "SAME", 3, 3, 2),  # 1-D, stride and dilation
    ((2, 7, 7, 6, 1), (2, 3, 3), 1, 2, 2, (1, 2, 1)),  # 3-D, strided and dilated
]


def _conv_inputs(x_shape, kernel, out, dtype=jnp.float32):
    kx, kw = jax.random.split(jax.random.key(3))
    x = jax.random.normal(kx, x_shape, dtype)
    w = (jax.random.normal(kw, (*kernel, x_shape[-1], out)) * 0.3).astype(dtype)
    return x, w


def _geometry(x, w, padding, strides=1, dilation=1):
    """(pads, strides, dilation) as fnn.Conv resolves them."""
    layer = fnn.Conv(w.shape[-1], w.shape[:-2], padding=padding, strides=strides, dilation=dilation)
    pads = layer.padding
    if isinstance(pads, str):
        window = [d * (k - 1) + 1 for k, d in zip(w.shape[:-2], layer.dilation)]
        pads = jax.lax.padtype_to_pads(x.shape[1:-1], window, layer.strides, pads)
    return pads, layer.strides, layer.dilation


def _pads(x, w, padding):
    return _geometry(x, w, padding)[0]


def _conv_loss(pads, strides=None, dilation=None):
    return lambda x, w: jnp.sum(jnp.sin(autodiff.conv(x, w, pads, strides, dilation)) ** 2)


@pytest.mark.parametrize("x_shape, kernel, padding, out, strides, dilation", CONV_CASES)
def test_conv_values_and_gradients_match_xla(x_shape, kernel, padding, out, strides, dilation):
    x, w = _conv_inputs(x_shape, kernel, out)
    pads, strides, dilation = _geometry(x, w, padding, strides, dilation)
    want_y = jax.lax.conv_general_dilated(
        x, w, strides, pads, rhs_dilation=dilation,
        dimension_numbers=jax.lax.conv_dimension_numbers(x.shape, w.shape, _conv_layout(len(kernel))),
    )
    loss = _conv_loss(pads, strides, dilation)
    plain = _jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, w)
    # the rule where one of its parts applies (see conv's docstring)
    rule = x_shape[-1] == 1 and math.prod(kernel) <= 25 or (
        x_shape[-1] <= 8 and math.prod(kernel) * x_shape[-1] >= out
        and (math.prod(strides) == 1 or math.prod(kernel) <= 4 * math.prod(strides)))
    with fnn.reverse_mode_only():
        y = autodiff.conv(x, w, pads, strides, dilation)
        assert _custom_vjp_calls(loss, x, w) == rule
        value, grads = _jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, w)
    assert y.shape == want_y.shape
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(value, plain[0], rtol=1e-5)
    for got, want in zip(grads, plain[1]):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _conv_layout(n):
    spatial = "DHW"[3 - n :]
    return ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")


@pytest.mark.parametrize("cin", [1, 3])
def test_conv_bfloat16_gradients_keep_their_dtypes(cin):
    x, w = _conv_inputs((2, 8, 8, cin), (3, 3), 4, jnp.bfloat16)
    pads = ((1, 1), (1, 1))
    with fnn.reverse_mode_only():
        y = autodiff.conv(x, w, pads)
        dx, dw = _jit(jax.grad(_conv_loss(pads), argnums=(0, 1)))(x, w)
    f32 = [a.astype(jnp.float32) for a in (x, w)]
    want_dx, want_dw = _jit(jax.grad(_conv_loss(pads), argnums=(0, 1)))(*f32)
    assert y.dtype == dx.dtype == dw.dtype == jnp.bfloat16
    np.testing.assert_allclose(y.astype(jnp.float32), autodiff.conv(*f32, pads), rtol=0.05, atol=0.05)
    np.testing.assert_allclose(dw.astype(jnp.float32), want_dw, rtol=0.05, atol=0.5)
    np.testing.assert_allclose(dx.astype(jnp.float32), want_dx, rtol=0.05, atol=0.1)


def _custom_vjp_calls(f, *args):
    """The custom-VJP calls in a fresh trace of ``f`` (``make_jaxpr`` caches by function,
    not by the ``reverse_mode_only`` setting)."""
    text = str(jax.make_jaxpr(lambda *a: f(*a))(*args))
    return text.count("custom_vjp_call")


def test_conv_layer_takes_the_rule_for_one_group_at_any_stride_and_dilation():
    x = jnp.ones((2, 8, 8, 4))
    for layer, calls in [
        (fnn.Conv(4, (3, 3)), 1),
        (fnn.Conv(4, (3, 3), strides=2), 1),
        (fnn.Conv(4, (3, 3), dilation=2), 1),
        (fnn.Conv(4, (3, 3), groups=2), 0),
    ]:
        params, _ = layer.init(jax.random.key(0), x)
        loss = lambda p, layer=layer: jnp.sum(layer(p, x))  # noqa: E731
        with fnn.reverse_mode_only():
            assert _custom_vjp_calls(loss, params) == calls, layer
        assert _custom_vjp_calls(loss, params) == 0


@pytest.mark.parametrize("strides, dilation, padding", [(2, 1, "SAME"), ((1, 3), 1, "VALID"), (1, 2, "SAME"), (2, 2, 1)])
def test_strided_conv_layer_trains_as_with_xlas_gradient(strides, dilation, padding):
    """A training step of a strided or dilated ``fnn.Conv`` (fnn's rule) against the same
    step with JAX's gradient of ``lax.conv_general_dilated`` (``reverse_mode_only(False)``)."""
    net = fnn.serial(
        fnn.Conv(6, (3, 3), strides=strides, dilation=dilation, padding=padding), fnn.relu,
        fnn.Conv(5, (3, 3), strides=strides, padding=padding), fnn.relu,
        fnn.Flatten(), fnn.Dense(3),
    )
    x = jax.random.normal(jax.random.key(1), (4, 15, 14, 1))
    y = jnp.array([0, 1, 2, 1])
    loss = fnn.losses.softmax_cross_entropy
    params, _ = net.init(jax.random.key(0), x)

    def value_and_grad(p):
        return jax.value_and_grad(lambda p: loss(net(p, x), y))(p)

    want = _jit(value_and_grad)(params)
    with fnn.reverse_mode_only():
        assert _custom_vjp_calls(lambda p: loss(net(p, x), y), params) == 3  # two convolutions, the Dense
        got = _jit(value_and_grad)(params)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


CONV_TRANSPOSE_CASES = [  # x shape, kernel, strides, padding as ConvTranspose takes it, out, dilation, rule
    ((2, 5, 5, 3), (3, 3), 2, "SAME", 4, 1, True),
    ((2, 7, 7, 8), (2, 2), 2, "VALID", 1, 1, True),  # one output channel: the diagonals' weight gradient
    ((2, 6, 6, 1), (4, 4), 2, "SAME", 5, 1, True),  # one input channel
    ((3, 9, 2), (3,), 3, "SAME", 2, 2, True),  # 1-D, dilated
    ((2, 4, 5, 2), (3, 3), (1, 2), ((1, 2), (0, 1)), 3, 1, True),  # a stride per axis, explicit padding
    ((2, 4, 4, 3, 1), (2, 2, 2), 2, "SAME", 2, 1, True),  # 3-D
    ((2, 5, 5, 4), (1, 1), 2, "SAME", 3, 1, False),  # more padding than the kernel: XLA's
    ((2, 5, 5, 4), (3, 3), 1, "SAME", 3, (2, 1), False),  # stride 1, a plain convolution: XLA's
]


@pytest.mark.parametrize("x_shape, kernel, strides, padding, out, dilation, rule", CONV_TRANSPOSE_CASES)
def test_conv_transpose_values_and_gradients_match_xla(x_shape, kernel, strides, padding, out, dilation, rule):
    """``fnn.ConvTranspose`` in a training step (fnn's rule where it applies) against
    ``lax.conv_transpose`` and JAX's gradient of it."""
    layer = fnn.ConvTranspose(out, kernel, strides=strides, padding=padding, dilation=dilation)
    x = jax.random.normal(jax.random.key(0), x_shape)
    params, _ = layer.init(jax.random.key(1), x)
    spatial = "DHW"[3 - len(kernel) :]
    want_y = jax.lax.conv_transpose(
        x, params["w"], layer.strides, layer.padding, rhs_dilation=layer.dilation,
        dimension_numbers=("N" + spatial + "C", spatial + "IO", "N" + spatial + "C"),
    ) + params["b"]

    def loss(p, x):
        return jnp.sum(jnp.sin(layer(p, x)) ** 2)

    plain = _jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
    with fnn.reverse_mode_only():
        y = layer(params, x)
        assert _custom_vjp_calls(lambda p: layer(p, x), params) == int(rule)
        value, grads = _jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
    assert y.shape == want_y.shape
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(value, plain[0], rtol=1e-5)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(plain[1])):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv_transpose_rule_keeps_bfloat16():
    layer = fnn.ConvTranspose(3, (3, 3), strides=2, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 5))
    params, _ = layer.init(jax.random.key(1), x)
    loss = lambda p, x: jnp.sum(layer(p, x).astype(jnp.float32) ** 2)  # noqa: E731
    want = _jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    with fnn.reverse_mode_only():
        y = layer(params, x)
        got = _jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    assert y.dtype == jnp.bfloat16
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a.astype(jnp.float32), b.astype(jnp.float32), rtol=0.05, atol=0.3)


def test_conv_rule_is_for_cpu_only(monkeypatch):
    """On GPU and TPU the rule is off: XLA's convolutions there come from cuDNN and the
    TPU compiler."""
    x, w = _conv_inputs((2, 6, 6, 1), (3, 3), 2)
    with fnn.reverse_mode_only():
        assert _custom_vjp_calls(lambda w: autodiff.conv(x, w, ((1, 1), (1, 1))), w) == 1
        monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
        assert _custom_vjp_calls(lambda w: autodiff.conv(x, w, ((1, 1), (1, 1))), w) == 0


def test_one_channel_conv_rule_does_not_keep_every_unrolled_steps_rows(monkeypatch):
    """The one-channel weight gradient builds its stacked rows from the training data.
    Unless they wait for the step's cotangent, XLA's CPU scheduler builds them for all the
    unrolled steps of a call at the start and keeps them all."""
    k, batch = 6, 32
    net = fnn.serial(fnn.Conv(4, (5, 5)), fnn.relu, fnn.Flatten(), fnn.Dense(10))
    x = jax.random.normal(jax.random.key(1), (k, batch, 16, 16, 1))
    y = jnp.zeros((k, batch), jnp.int32)
    state = fnn.init_train_state(net, optax.sgd(0.1), jax.random.key(0), x[0])

    def temporaries():
        step = fnn.make_train_step(net, optax.sgd(0.1), fnn.losses.softmax_cross_entropy,
                                   steps_per_call=k, unroll=True, donate=False)
        return step.lower(state, (x, y)).compile().memory_analysis().temp_size_in_bytes

    waits = temporaries()
    monkeypatch.setattr(autodiff, "_after", lambda x, g: x)
    rows = batch * 16 * 5 * 20 * 4  # one step's stacked rows, float32
    assert temporaries() >= waits + (k - 2) * rows


@pytest.mark.parametrize("layer, x_shape", [
    (fnn.Conv(16, (9,)), (8, 1000, 1)),  # one channel over a long sequence (raw audio)
    (fnn.Conv(32, (3, 3)), (4, 64, 64, 1)),  # one channel, more out channels than offsets
    (fnn.Conv(16, (7, 7), strides=2), (2, 64, 64, 3)),  # an image stem: 49 offsets at stride 2
    (fnn.Conv(32, (3, 3), strides=2), (4, 32, 32, 64)),  # many channels at a stride
    (fnn.ConvTranspose(1, (4,), strides=2), (4, 250, 32)),  # to one channel over a long sequence
], ids=["1d-one-channel", "2d-one-channel", "stem", "strided", "transpose-to-one"])
def test_conv_rule_plans_no_more_work_or_memory_than_xlas(layer, x_shape):
    """The rule's step, against JAX's rules, by XLA's own count of the compiled step's
    work and its plan of temporaries. (The weight gradient of one input channel as one
    product of the input's rows was quadratic in the last axis's length: 74x the work and
    42x the memory on the 1-D case here.)"""
    x = jax.random.normal(jax.random.key(0), x_shape)
    params, _ = layer.init(jax.random.key(1), x)

    def plan(rules):
        with fnn.reverse_mode_only(rules):
            step = jax.jit(jax.grad(lambda p, x: jnp.sum(layer(p, x) ** 2), argnums=(0, 1)))
            compiled = step.lower(params, x).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return cost["flops"], compiled.memory_analysis().temp_size_in_bytes

    (flops, temp), (xla_flops, xla_temp) = plan(True), plan(False)
    assert flops <= 1.25 * xla_flops
    assert temp <= 1.5 * xla_temp + 2**20


def test_shifted_sums_are_computed_once_in_a_training_step(monkeypatch):
    """A LeNet-like step. XLA would fuse the one-channel forward's shifted sum into each of
    its consumers (the ReLU, the pooling's choice of maxima, the backward ReLU mask) and
    compute it in each: one window of the padded input per kernel offset, but the one the
    unpadded input is, each time. And it would fuse the second convolution's input
    gradient (25 shifted adds) into the pooling's gradient, which reads each of its
    elements four times."""
    net = fnn.serial(fnn.Conv(6, (5, 5)), fnn.relu, fnn.MaxPool((2, 2)), fnn.Conv(16, (5, 5), padding="VALID"),
                     fnn.relu, fnn.MaxPool((2, 2)), fnn.Flatten(), fnn.Dense(10))
    x = jax.random.normal(jax.random.key(1), (8, 28, 28, 1))
    y = jnp.zeros((8,), jnp.int32)
    state = fnn.init_train_state(net, optax.sgd(0.1), jax.random.key(0), x)

    def reads():
        step = fnn.make_train_step(net, optax.sgd(0.1), fnn.losses.softmax_cross_entropy, donate=False)
        hlo = step.lower(state, (x, y)).compile().as_text()
        windows = len(re.findall(r"= f32\[8,28,28,1\]\{[0-9,]*\} slice\(", hlo))
        # the input gradient's shifted adds inside a computation whose result is the pooling's gradient
        in_pooling = sum(len(re.findall(r"= f32\[8,14,14,6\]\{[0-9,]*\} pad\(", c)) for c in hlo.split("\n\n")
                         if re.search(r"ROOT [^=]*= f32\[8,28,28,6\]", c))
        return windows, in_pooling

    assert reads() == (24, 0)
    monkeypatch.setattr(autodiff, "_computed_once", lambda y: y)
    assert reads() == (3 * 24, 25)


def test_one_channel_conv_keeps_non_finite_outputs():
    x = jnp.array([1.0, jnp.inf, -jnp.inf, jnp.nan, 0.0]).reshape(1, 5, 1, 1)
    w = jnp.ones((1, 1, 1, 1))
    with fnn.reverse_mode_only():
        y = autodiff.conv(x, w, ((0, 0), (0, 0)))
    np.testing.assert_array_equal(y.ravel(), x.ravel())


@pytest.mark.parametrize("cin", [1, 2])
def test_conv_second_order_and_vmap_inside(cin):
    x, w = _conv_inputs((3, 6, 6, cin), (3, 3), 2)
    pads = ((1, 1), (1, 1))
    loss = _conv_loss(pads)
    hess = lambda: _jit(jax.jacrev(jax.grad(loss, argnums=1), argnums=1))  # noqa: E731
    per_example = lambda: _jit(jax.vmap(lambda x: jax.grad(loss, argnums=1)(x[None], w)))  # noqa: E731
    want = hess()(x, w), per_example()(x)
    with fnn.reverse_mode_only():
        got = hess()(x, w), per_example()(x)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    with jax.enable_x64(True), fnn.reverse_mode_only():  # float64: finite differences of order 2
        x64, w64 = (np.asarray(a, np.float64) for a in (x, w))
        check_grads(_jit(lambda w: loss(x64, w)), (w64,), order=2, modes=["rev"])


def test_conv_without_output_positions_raises_inside():
    layer = fnn.Conv(3, (5, 5), padding="VALID")
    params, _ = layer.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))
    with fnn.reverse_mode_only(), pytest.raises(fnn.ShapeError, match="no output positions"):
        layer(params, jnp.ones((1, 3, 3, 1)))


# Attention: autodiff.attention (fnn.dot_product_attention without dropout) and its rule on CPU.

def _qkv(b=2, tq=5, tk=5, heads=3, d=2, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(7), 3)
    q = jax.random.normal(keys[0], (b, tq, heads, d))
    k, v = (jax.random.normal(key, (b, tk, heads, d)) for key in keys[1:])
    return q.astype(dtype), k.astype(dtype), v.astype(dtype)


def _attention_loss(**options):
    def loss(q, k, v):
        out = fnn.dot_product_attention(q, k, v, **options).astype(jnp.float32)
        return jnp.sum(jnp.sin(out) * jnp.arange(1, out.shape[-1] + 1))

    return loss


PADDED = jnp.array([[True] * 5, [True, True, False, False, False]])[:, None, None, :]
ATTENTION_CASES = {  # (tq, tk), options
    "plain": ((5, 5), {}),
    "causal": ((5, 5), {"causal": True}),
    "padded keys": ((5, 5), {"mask": PADDED}),
    # the first query sees no key: fnn gives it zeros, and no gradient flows through it
    "a query sees nothing": ((3, 5), {"mask": jnp.arange(5)[None, :] < jnp.arange(3)[:, None]}),
    "cross, causal": ((3, 5), {"causal": True, "mask": PADDED}),
}


@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_attention_values_and_gradients_match_jax(case):
    (tq, tk), options = ATTENTION_CASES[case]
    q, k, v = _qkv(tq=tq, tk=tk)
    loss = _attention_loss(**options)
    want = _jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)
    with fnn.reverse_mode_only():
        assert _custom_vjp_calls(loss, q, k, v) == 1
        got = _jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    for a, b in zip(got[1], want[1]):
        assert bool(jnp.isfinite(a).all())
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _reference_attention(q, k, v, visible):
    """Every score, as jax.nn computes them; a query that sees no key gives zeros."""
    out = jax.nn.dot_product_attention(q, k, v, mask=visible)
    return jnp.where(jnp.swapaxes(visible.any(-1), 1, 2)[..., None], out, 0.0)


@pytest.mark.parametrize(
    "tq, tk, padded, calls",  # with tq > tk, blocks whose queries see no key make no call
    [(128, 128, False, 2), (256, 256, False, 4), (192, 256, True, 3), (256, 96, False, 2), (100, 100, False, 1)],
)
def test_causal_attention_in_query_blocks_equals_every_score(tq, tk, padded, calls):
    """On the CPU causal attention runs in blocks of at least 64 queries (at most 4), each over
    the keys up to its last query's; values and gradients are those of the whole score
    matrix, with fnn's rule (one call a block) and with JAX's. With tq > tk the first
    queries see no key (zeros, no gradient)."""
    q, k, v = _qkv(tq=tq, tk=tk, heads=2, d=4)
    mask = (jnp.arange(tk) < tk - 7 * jnp.arange(2)[:, None])[:, None, None, :] if padded else None
    visible = jnp.arange(tk)[None, :] <= jnp.arange(tq)[:, None] + (tk - tq)
    visible = visible[None, None] if mask is None else mask & visible

    def loss_of(attend):
        return lambda q, k, v: jnp.sum(jnp.sin(attend(q, k, v)) * jnp.arange(4))

    reference = loss_of(lambda q, k, v: _reference_attention(q, k, v, visible))
    want = _jit(jax.value_and_grad(reference, (0, 1, 2)))(q, k, v)
    loss = loss_of(lambda q, k, v: fnn.dot_product_attention(q, k, v, mask=mask, causal=True))
    got_jax = _jit(jax.value_and_grad(loss, (0, 1, 2)))(q, k, v)
    with fnn.reverse_mode_only():
        assert _custom_vjp_calls(loss, q, k, v) == calls
        got_rule = _jit(jax.value_and_grad(loss, (0, 1, 2)))(q, k, v)
    for got in (got_jax, got_rule):
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
        for a, b in zip(got[1], want[1]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    if tq > tk:
        assert not bool(got_rule[1][0][:, : tq - tk].any())
    if tq == tk == 128:  # second order through the blocks: a Hessian-vector product in q
        tangent = jnp.cos(q)
        hvp = lambda f: _jit(jax.grad(lambda q: jnp.vdot(jax.grad(f)(q, k, v), tangent)))(q)  # noqa: E731
        want_hvp = hvp(reference)
        with fnn.reverse_mode_only():
            np.testing.assert_allclose(hvp(loss), want_hvp, rtol=1e-3, atol=1e-4)


def test_attention_bfloat16_gradients_keep_their_dtypes():
    q, k, v = _qkv(dtype=jnp.bfloat16)
    loss = _attention_loss(causal=True)
    want = _jit(jax.grad(loss, argnums=(0, 1, 2)))(*(a.astype(jnp.float32) for a in (q, k, v)))
    with fnn.reverse_mode_only():
        got = _jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(got, want):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_allclose(a.astype(jnp.float32), b, rtol=0.05, atol=0.05)


def test_float16_attention_compiles_outside_the_rule_on_cpu():
    """JAX's attention in float16 does not compile on CPU (XLA's dot_general refuses its
    float16 products with float32 results): an eval step of a float16 model failed."""
    q, k, v = _qkv(dtype=jnp.float16)
    want = _attention_loss(causal=True)(*(a.astype(jnp.float32) for a in (q, k, v)))
    got = jax.jit(_attention_loss(causal=True))(q, k, v)
    np.testing.assert_allclose(got, want, rtol=0.02, atol=0.02)
    grads = jax.jit(jax.grad(_attention_loss(causal=True), argnums=(0, 1, 2)))(q, k, v)
    assert all(g.dtype == jnp.float16 and bool(jnp.isfinite(g).all()) for g in grads)


def test_weight_gradient_with_no_input_features():
    x, w = jnp.ones((2, 0)), jnp.zeros((0, 3))  # a reshape to (-1, 0) failed inside the rule
    with fnn.reverse_mode_only():
        dw = jax.grad(lambda w: jnp.sum(matmul(x, w) + 1.0))(w)
    assert dw.shape == (0, 3)


def test_attention_rule_needs_twice_as_many_keys_as_the_head_dimension():
    """The rule's row sums run over the head dimension, JAX's over the keys: with fewer
    keys JAX's pass is the shorter one (16 x 8 queries x 8 keys x 4 heads of 64: the rule
    took 1.3x JAX's time and planned 1.5x its temporaries). There the step is JAX's own."""
    loss = _attention_loss()
    with fnn.reverse_mode_only():
        assert _custom_vjp_calls(loss, *_qkv(tk=8, d=4)) == 1
        assert _custom_vjp_calls(loss, *_qkv(tk=7, d=4)) == 0
    q, k, v = _qkv(b=16, tq=8, tk=8, heads=4, d=64)

    def plan(rules):
        with fnn.reverse_mode_only(rules):
            lowered = jax.jit(jax.grad(lambda *a: loss(*a), argnums=(0, 1, 2))).lower(q, k, v)
        return lowered.as_text(), lowered.compile().memory_analysis().temp_size_in_bytes

    (program, temp), (jax_program, jax_temp) = plan(True), plan(False)
    assert temp <= jax_temp and program == jax_program


def test_attention_rule_is_for_cpu_inside_and_not_with_dropout(monkeypatch):
    """On GPU and TPU the rule is off (a backend may fuse attention itself), and dropout on
    the weights keeps JAX's gradient of the written-out maths."""
    q, k, v = _qkv()
    loss = _attention_loss(causal=True)
    assert _custom_vjp_calls(loss, q, k, v) == 0
    with fnn.reverse_mode_only():
        assert _custom_vjp_calls(loss, q, k, v) == 1
        dropped = _attention_loss(dropout_rate=0.5, key=jax.random.key(0))
        assert _custom_vjp_calls(dropped, q, k, v) == 0
        monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
        assert _custom_vjp_calls(loss, q, k, v) == 0


DROPOUT_CASES = {  # (tq, tk), options
    "plain": ((5, 5), {}),
    "padded keys": ((5, 5), {"mask": PADDED}),
    "cross, causal": ((3, 5), {"causal": True, "mask": PADDED}),
    "causal, in two blocks": ((128, 128), {"causal": True}),
    "causal, padded, in three blocks": (
        (192, 256), {"causal": True, "mask": (jnp.arange(256) < 256 - 7 * jnp.arange(2)[:, None])[:, None, None]}
    ),
}


@pytest.mark.parametrize("case", DROPOUT_CASES)
def test_attention_dropout_equals_every_score_with_the_same_mask(case):
    """Dropout on the weights (in blocks of queries where causal, in and out of a training
    step) gives the values and gradients of the written-out maths over every score, with
    ``jax.random.bernoulli``'s mask."""
    (tq, tk), options = DROPOUT_CASES[case]
    rate, key = 0.3, jax.random.key(3)
    q, k, v = _qkv(tq=tq, tk=tk, heads=2)
    loss = _attention_loss(dropout_rate=rate, key=key, **options)
    visible = jnp.ones((1, 1, tq, tk), bool) if options.get("mask") is None else options["mask"]
    if options.get("causal"):
        visible = visible & (jnp.arange(tk)[None, :] <= jnp.arange(tq)[:, None] + (tk - tq))

    def reference(q, k, v):
        keep = jax.random.bernoulli(key, 1.0 - rate, (q.shape[0], q.shape[2], tq, tk))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
        p = jax.nn.softmax(jnp.where(visible, scores, -jnp.inf), axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", jnp.where(keep, p / (1.0 - rate), 0.0), v)
        out = jnp.where(jnp.swapaxes(visible.any(-1), 1, 2)[..., None], out, 0.0)
        return jnp.sum(jnp.sin(out) * jnp.arange(1, out.shape[-1] + 1))

    want = _jit(jax.value_and_grad(reference, argnums=(0, 1, 2)))(q, k, v)
    got_jax = _jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)
    with fnn.reverse_mode_only():
        got_step = _jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)
    no_dropout = _attention_loss(**options)(q, k, v)
    assert abs(float(want[0] - no_dropout)) > 1e-3  # the mask drops weights
    for got in (got_jax, got_step):
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
        for a, b in zip(got[1], want[1]):
            assert bool(jnp.isfinite(a).all())
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_attention_second_order_and_vmap_inside():
    q, k, v = _qkv(tq=4, tk=4, heads=2, d=2)
    loss = _attention_loss(causal=True)
    hess = lambda: _jit(jax.jacrev(jax.grad(loss, argnums=0), argnums=(0, 1, 2)))  # noqa: E731
    per_example = lambda: _jit(  # noqa: E731
        jax.vmap(lambda q, k, v: jax.grad(loss, argnums=(0, 1, 2))(q[None], k[None], v[None]))
    )
    want = hess()(q, k, v), per_example()(q, k, v)
    with fnn.reverse_mode_only():
        got = hess()(q, k, v), per_example()(q, k, v)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # finite differences of order 2, in float64 but for the scores, which are float32 as in
    # jax.nn (so the tolerance is float32's)
    with jax.enable_x64(True), fnn.reverse_mode_only():
        q64, k64, v64 = (np.asarray(a, np.float64) for a in (q, k, v))
        check_grads(_jit(loss), (q64, k64, v64), order=2, modes=["rev"], atol=2e-3, rtol=2e-3)
