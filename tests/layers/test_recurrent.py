"""Recurrent cells, Recurrent, Bidirectional, SequencePool and KeepMask."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import fnn

B, T, F, H = 3, 6, 4, 5
KEY = jax.random.key(0)


def sequence(batch=B, time=T, features=F, seed=1):
    return jax.random.normal(jax.random.key(seed), (batch, time, features))


def init_cell(cell, batch=B, features=F):
    carry = cell.initial_carry((batch,))
    params, _ = cell.init(KEY, (carry, jnp.zeros((batch, features))))
    return params


# ---- cells against flax's, weights copied ------------------------------------------------


def concat(p, names, part="kernel"):
    return jnp.concatenate([p[n][part] for n in names], axis=-1)


def copy_from_flax(cell, p):
    """fnn params for ``cell`` holding the weights ``p`` of the matching flax cell."""
    if isinstance(cell, fnn.LSTM):
        gates = ("i", "f", "g", "o")
        return {
            "input": {"w": concat(p, [f"i{g}" for g in gates]), "b": concat(p, [f"h{g}" for g in gates], "bias")},
            "hidden": {"w": concat(p, [f"h{g}" for g in gates])},
        }
    if isinstance(cell, fnn.GRU):
        return {
            "input": {"w": concat(p, ["ir", "iz", "in"]), "b": concat(p, ["ir", "iz", "in"], "bias")},
            "hidden": {"w": concat(p, ["hr", "hz", "hn"]), "b": p["hn"]["bias"]},
        }
    return {"input": {"w": p["i"]["kernel"], "b": p["i"]["bias"]}, "hidden": {"w": p["h"]["kernel"]}}


@pytest.mark.parametrize(
    "cell, flax_cell",
    [(fnn.SimpleRNN(H), nn.SimpleCell(H)), (fnn.LSTM(H), nn.LSTMCell(H)), (fnn.GRU(H), nn.GRUCell(H))],
    ids=["simple_rnn", "lstm", "gru"],
)
def test_cell_matches_flax_over_a_sequence(cell, flax_cell):
    flax_p = flax_cell.init(jax.random.key(5), flax_cell.initialize_carry(KEY, (B, F)), jnp.zeros((B, F)))
    params = copy_from_flax(cell, flax_p["params"])
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, init_cell(cell))

    x = sequence()
    ours = fnn.Recurrent(cell)
    ys, carry = ours.scan(params, x)
    ref_carry = flax_cell.initialize_carry(jax.random.key(0), (B, F))
    ref_ys = []
    for t in range(T):
        ref_carry, y = flax_cell.apply(flax_p, ref_carry, x[:, t])
        ref_ys.append(y)
    np.testing.assert_allclose(ys, jnp.stack(ref_ys, 1), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves(ref_carry)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_lstm_equations_in_numpy():
    cell = fnn.LSTM(H)
    params = jax.tree.map(np.asarray, init_cell(cell))
    x = np.asarray(sequence())
    c = h = np.zeros((B, H), np.float32)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    for t in range(T):
        z = x[:, t] @ params["input"]["w"] + params["input"]["b"] + h @ params["hidden"]["w"]
        i, f, g, o = np.split(z, 4, axis=-1)
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
    _, (c_ours, h_ours) = fnn.Recurrent(cell).scan(params, x)
    np.testing.assert_allclose(c_ours, c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(h_ours, h, rtol=1e-5, atol=1e-5)


def test_lstm_forget_bias_and_orthogonal_recurrent_init():
    params = init_cell(fnn.LSTM(H, forget_bias=1.0))
    b = params["input"]["b"]
    np.testing.assert_array_equal(b[H : 2 * H], 1.0)
    np.testing.assert_array_equal(jnp.concatenate([b[:H], b[2 * H :]]), 0.0)
    u = params["hidden"]["w"]
    for block in jnp.split(u, 4, axis=1):
        np.testing.assert_allclose(block.T @ block, jnp.eye(H), atol=1e-5)


# ---- backpropagation through time --------------------------------------------------------


@pytest.mark.parametrize("cell", [fnn.SimpleRNN(H), fnn.LSTM(H), fnn.GRU(H)], ids=["rnn", "lstm", "gru"])
def test_scan_gradient_equals_gradient_of_a_python_unroll(cell):
    params = init_cell(cell)
    x = sequence()
    target = jax.random.normal(jax.random.key(2), (B, T, H))

    def scanned(p):
        ys, _ = fnn.Recurrent(cell).scan(p, x)
        return jnp.mean((ys - target) ** 2)

    def unrolled(p):
        carry, ys = cell.initial_carry((B,)), []
        for t in range(T):
            carry, y = cell(p, (carry, x[:, t]))
            ys.append(y)
        return jnp.mean((jnp.stack(ys, 1) - target) ** 2)

    np.testing.assert_allclose(scanned(params), unrolled(params), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(jax.grad(scanned)(params)), jax.tree.leaves(jax.grad(unrolled)(params))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_gradient_reaches_the_first_step():
    rnn = fnn.Recurrent(fnn.LSTM(H))
    params, _ = rnn.init(KEY, sequence())
    grad_x = jax.grad(lambda x: rnn(params, x)[:, -1].sum())(sequence())
    assert jnp.abs(grad_x[:, 0]).sum() > 0  # the last output depends on the first input


def test_check_grads_order_two():
    rnn = fnn.Recurrent(fnn.GRU(3))
    x = sequence(2, 3, 2)
    params, _ = rnn.init(KEY, x)
    check_grads(jax.jit(lambda p, v: rnn(p, v)), (params, x), order=2, modes=["rev"], atol=2e-2, rtol=2e-2, eps=1e-3)


@pytest.mark.parametrize("rnn", [fnn.Recurrent(fnn.LSTM(H), remat=True), fnn.Recurrent(fnn.LSTM(H), unroll=3)])
def test_remat_and_unroll_change_nothing_but_speed(rnn):
    x = sequence()
    params, _ = rnn.init(KEY, x)
    plain = fnn.Recurrent(fnn.LSTM(H))
    np.testing.assert_allclose(rnn(params, x), plain(params, x), rtol=1e-6)
    g1 = jax.grad(lambda p: rnn(p, x).sum())(params)
    g2 = jax.grad(lambda p: plain(p, x).sum())(params)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# In a training step (fnn.reverse_mode_only) a built-in cell's scan has a hand-written
# backward loop, and takes each weight gradient and its input's gradient as one product
# over all steps, after that loop (with remat, at each step inside it).
BY_HAND = [
    fnn.Recurrent(fnn.LSTM(H)),
    fnn.Recurrent(fnn.GRU(H), reverse=True),
    fnn.Recurrent(fnn.SimpleRNN(H), remat=True, unroll=2),
    fnn.Bidirectional(fnn.LSTM(H)),
    fnn.Recurrent(fnn.LSTM(H), remat=True),
    fnn.Recurrent(fnn.GRU(H), remat=True),
]


def _by_hand_and_plain_grads(layer, x, loss_of_output):
    params, state = layer.init(KEY, x)

    def loss(p):
        y = layer.apply(p, state, x)[0]
        return loss_of_output(y[0] if isinstance(y, tuple) else y)

    with fnn.reverse_mode_only():
        by_hand = jax.value_and_grad(loss)(params)
        jaxpr = jax.make_jaxpr(jax.grad(loss))(params)
    return by_hand, jax.value_and_grad(loss)(params), jaxpr


@pytest.mark.parametrize("layer", BY_HAND,
                         ids=["lstm", "gru-reverse", "rnn-remat-unroll", "bidirectional", "lstm-remat", "gru-remat"])
@pytest.mark.parametrize("masked", [False, True])
def test_hand_written_gradients_equal_the_plain_ones(layer, masked):
    x = sequence()
    if masked:
        x = (x, jnp.arange(T)[None] < jnp.array([T, 2, 1])[:, None])
    weights = jnp.arange(H * (2 if isinstance(layer, fnn.Bidirectional) else 1))
    (value, grads), (want_value, want), jaxpr = _by_hand_and_plain_grads(
        layer, x, lambda y: jnp.sum(jnp.sin(y) * weights)
    )
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # per direction, outside the loop: the two weight gradients and the input's gradient
    # (with remat inside it, at each step: no cotangent per step is kept for them)
    directions = 2 if isinstance(layer, fnn.Bidirectional) else 1
    after = 0 if getattr(layer, "remat", False) else 3 * directions
    assert sum(e.primitive.name == "dot_general" for e in jaxpr.jaxpr.eqns) == after


@pytest.mark.parametrize("cell", [fnn.LSTM(H), fnn.GRU(H), fnn.SimpleRNN(H)], ids=["lstm", "gru", "rnn"])
def test_hand_written_gradients_of_the_input_and_the_initial_carry(cell):
    """The gradients reach the sequence and the carry it starts from, through padding."""
    rnn = fnn.Recurrent(cell)
    x = sequence()
    mask = jnp.arange(T)[None] < jnp.array([T, 3, 0])[:, None]
    params, _ = rnn.init(KEY, x)
    carry = jax.tree.map(lambda c: jax.random.normal(jax.random.key(2), c.shape), cell.initial_carry((B,)))

    def loss(params, x, carry):
        ys, final = rnn.scan(params, x, carry, mask)
        return jnp.sum(jnp.cos(ys)) + sum(jnp.sum(c**2) for c in jax.tree.leaves(final))

    want = jax.grad(loss, argnums=(0, 1, 2))(params, x, carry)
    with fnn.reverse_mode_only():
        got = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, x, carry)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # the third sequence is all padding: its final carry is the initial one
    for d_c, c in zip(jax.tree.leaves(got[2]), jax.tree.leaves(carry)):
        np.testing.assert_allclose(d_c[2], 2 * c[2], rtol=1e-6)


@pytest.mark.parametrize("cell", [fnn.LSTM(3, param_dtype=jnp.bfloat16), fnn.GRU(3, param_dtype=jnp.float16)])
def test_half_precision_parameters_initialise(cell):
    """The default orthogonal hidden weights (a QR, which has no half-precision kernel) are
    made in float32 and cast."""
    params, _ = fnn.Recurrent(cell).init(jax.random.key(0), jnp.ones((2, 4, 5)))
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(cell.param_dtype)}
    w = np.asarray(params["hidden"]["w"], np.float32)[:, :3]
    np.testing.assert_allclose(w.T @ w, np.eye(3), atol=0.02)


def test_hand_written_gradients_in_bfloat16_and_under_vmap():
    x = sequence()
    for cell in (fnn.LSTM(H, dtype=jnp.bfloat16), fnn.GRU(H, dtype=jnp.bfloat16)):
        (_, grads), (_, want), _ = _by_hand_and_plain_grads(
            fnn.Recurrent(cell), x, lambda y: jnp.sum(y.astype(jnp.float32) ** 2)
        )
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
            assert a.dtype == b.dtype == jnp.float32
            np.testing.assert_allclose(a, b, rtol=0.1, atol=0.05)
    rnn = fnn.Recurrent(fnn.GRU(H))
    params, _ = rnn.init(KEY, x)
    members = jax.tree.map(lambda a: jnp.stack([a, 0.5 * a]), params)
    grad = jax.vmap(jax.grad(lambda p: jnp.sum(rnn(p, x) ** 2)))
    with fnn.reverse_mode_only():
        got = grad(members)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(grad(members))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_hand_written_gradients_order_two_and_a_custom_cell_is_left_alone():
    rnn = fnn.Recurrent(fnn.GRU(3))
    x = sequence(2, 3, 2)
    params, _ = rnn.init(KEY, x)
    with fnn.reverse_mode_only():
        check_grads(jax.jit(lambda p, v: rnn(p, v)), (params, x), order=2, modes=["rev"], atol=2e-2, rtol=2e-2, eps=1e-3)

    class Doubled(fnn.SimpleRNN):  # reads its own hidden product: the scan must not assume _hidden
        def recur(self, params, carry, projected):
            h = jnp.tanh(projected + 2.0 * (carry @ params["hidden"]["w"]))
            return h, h

    (_, grads), (_, want), jaxpr = _by_hand_and_plain_grads(
        fnn.Recurrent(Doubled(H)), sequence(), lambda y: jnp.sum(y**2)
    )
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _planned_bytes(rnn, x, rules=True):
    params, _ = rnn.init(KEY, x)
    loss = lambda p: jnp.sum(jnp.tanh(rnn(p, x)) ** 2)  # noqa: E731
    with fnn.reverse_mode_only(rules):
        return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes


def _primitives(jaxpr, into=None):
    """The names of the primitives of ``jaxpr`` and of every jaxpr inside it."""
    into = set() if into is None else into
    for eqn in jaxpr.eqns:
        into.add(eqn.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            _primitives(sub, into)
    return into


@pytest.mark.parametrize("cell", [fnn.LSTM(16), fnn.GRU(16)], ids=["lstm", "gru"])
def test_gated_cells_keep_their_gates_and_the_backward_loop_computes_no_sigmoid_or_tanh(cell, monkeypatch):
    """The forward loop keeps an LSTM's gates after their activations and ``tanh(c')`` (a
    GRU's ``r``, ``z``, ``n`` and ``h U_n + b_hn``), so that the backward loop's element-wise
    gradient is products and sums alone; second-order gradients stay right. Without that,
    an LSTM would keep the sum of the input projection and the hidden product (one [batch,
    4 * hidden] array a step, as a SimpleRNN does), which plans less memory than its gates,
    and a GRU both parts (2 x [batch, 3 * hidden]), which plans more than its gates."""
    from fnn.layers import recurrent

    rnn = fnn.Recurrent(cell)
    x = sequence(4, 12, 8)
    params, _ = rnn.init(KEY, x)
    with fnn.reverse_mode_only():
        jaxpr = jax.make_jaxpr(jax.grad(lambda p: jnp.sum(rnn(p, x) ** 2)))(params).jaxpr
    loops = [eqn for eqn in jaxpr.eqns if eqn.primitive.name == "scan"]
    backward = [eqn for eqn in loops if eqn.params["reverse"]]  # the forward loop runs forward
    assert len(loops) == 2 and len(backward) == 1
    assert {"logistic", "tanh"} <= _primitives(loops[0].params["jaxpr"].jaxpr)
    assert not {"logistic", "tanh"} & _primitives(backward[0].params["jaxpr"].jaxpr)

    gates = _planned_bytes(rnn, x)
    monkeypatch.setattr(recurrent, "_GATE_RULES", {})
    pre_activation = _planned_bytes(rnn, x)
    if isinstance(cell, fnn.LSTM):
        monkeypatch.setattr(recurrent, "_SUMMED", ())
        assert pre_activation < _planned_bytes(rnn, x)
    else:
        assert gates < pre_activation
    monkeypatch.undo()
    small = fnn.Recurrent(type(cell)(3))
    xs = sequence(2, 3, 2)
    p, _ = small.init(KEY, xs)
    second = jax.jacrev(jax.grad(lambda p: jnp.sum(jnp.sin(small(p, xs)))))
    want = second(p)
    with fnn.reverse_mode_only():
        got = second(p)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cell", [fnn.LSTM(16), fnn.GRU(16)], ids=["lstm", "gru"])
def test_remat_keeps_only_the_carry(cell):
    """With ``remat`` the forward loop keeps each step's carry alone, and the backward loop
    makes the pre-activation again: the compiled gradient plans less memory."""
    x = sequence(4, 32, 8)
    assert _planned_bytes(fnn.Recurrent(cell, remat=True), x) < _planned_bytes(fnn.Recurrent(cell), x)


@pytest.mark.parametrize("cell", [fnn.LSTM(64), fnn.GRU(64), fnn.SimpleRNN(64)], ids=["lstm", "gru", "rnn"])
def test_remat_plans_no_more_than_jaxs_checkpointed_scan(cell):
    """With ``remat`` the hand-written backward loop takes its products at each step, as
    JAX's gradient of the checkpointed scan does, and keeps no cotangent per step for
    products after the loop ([time, batch, gates * hidden]: 2.2x, 3.3x and 1.7x JAX's
    plan here before)."""
    x = sequence(8, 256, 16)
    rnn = fnn.Recurrent(cell, remat=True)
    assert _planned_bytes(rnn, x) <= 1.05 * _planned_bytes(rnn, x, rules=False)


def test_jit_equals_eager():
    rnn = fnn.Bidirectional(fnn.LSTM(H))
    x = sequence()
    params, _ = rnn.init(KEY, x)
    np.testing.assert_allclose(jax.jit(rnn)(params, x), rnn(params, x), rtol=1e-6)


# ---- carries, direction and masks ---------------------------------------------------------


def test_carry_in_and_out_splits_a_sequence_exactly():
    rnn = fnn.Recurrent(fnn.LSTM(H))
    x = sequence()
    params, _ = rnn.init(KEY, x)
    ys, final = rnn.scan(params, x)
    ys_1, carry = rnn.scan(params, x[:, :2])
    ys_2, final_2 = rnn.scan(params, x[:, 2:], carry)
    np.testing.assert_allclose(jnp.concatenate([ys_1, ys_2], 1), ys, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(final_2), jax.tree.leaves(final)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_stateful_layer_continues_across_batches_and_stops_the_gradient():
    rnn = fnn.Recurrent(fnn.GRU(H), stateful=True)
    x = sequence()
    params, state = rnn.init(KEY, x[:, :3])
    np.testing.assert_array_equal(state["carry"], 0.0)
    y1, state = rnn.apply(params, state, x[:, :3])
    y2, state = rnn.apply(params, state, x[:, 3:])
    full = fnn.Recurrent(fnn.GRU(H))(params, x)
    np.testing.assert_allclose(jnp.concatenate([y1, y2], 1), full, rtol=1e-6)
    np.testing.assert_allclose(state["carry"], full[:, -1], rtol=1e-6)

    def loss(p, s):  # the second batch's loss does not reach back into the first batch
        _, s = rnn.apply(p, s, x[:, :3])
        y, _ = rnn.apply(p, jax.lax.stop_gradient(s), x[:, 3:])
        return y.sum()

    _, s0 = rnn.init(KEY, x[:, :3])
    _, s1 = rnn.apply(params, s0, x[:, :3])
    g = jax.grad(loss)(params, s0)
    g_truncated = jax.grad(lambda p: rnn.apply(p, s1, x[:, 3:])[0].sum())(params)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_truncated)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_reverse_equals_forward_on_the_flipped_sequence():
    cell = fnn.LSTM(H)
    x = sequence()
    params, _ = fnn.Recurrent(cell).init(KEY, x)
    backward = fnn.Recurrent(cell, reverse=True)(params, x)
    forward_on_flipped = fnn.Recurrent(cell)(params, x[:, ::-1])
    np.testing.assert_allclose(backward, forward_on_flipped[:, ::-1], rtol=1e-6)


class FastWeights(fnn.Cell):
    """A user's cell whose carry holds a ``[batch, hidden, hidden]`` matrix beside its state."""

    def initial_carry(self, batch_shape, dtype=jnp.float32):
        return (jnp.zeros((*batch_shape, self.hidden), dtype),
                jnp.zeros((*batch_shape, self.hidden, self.hidden), dtype))

    def hidden_input(self, carry):
        return carry[0]

    def recur(self, params, carry, projected):
        h, a = carry
        h = jnp.tanh(projected + self._hidden(params, h, projected.dtype) + jnp.einsum("bij,bj->bi", a, h))
        return (h, 0.5 * a + jnp.einsum("bi,bj->bij", h, h)), h


class Counter(fnn.Cell):
    """A user's cell whose carry holds a ``[batch]`` count of the steps taken."""

    def initial_carry(self, batch_shape, dtype=jnp.float32):
        return jnp.zeros((*batch_shape, self.hidden), dtype), jnp.zeros(batch_shape, dtype)

    def hidden_input(self, carry):
        return carry[0]

    def recur(self, params, carry, projected):
        h = jnp.tanh(projected + self._hidden(params, carry[0], projected.dtype))
        return (h, carry[1] + 1), h


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", [fnn.SimpleRNN(H), fnn.LSTM(H), fnn.GRU(H), FastWeights(B), Counter(H)],
                         ids=["rnn", "lstm", "gru", "matrix-carry", "count-carry"])
def test_padding_changes_nothing_at_real_steps(cell, reverse):
    """A user's carry of another rank than [batch, features] was masked along the wrong axis
    (hidden == batch: silently wrong, even in a row without padding) or failed in scan."""
    rnn = fnn.Recurrent(cell, reverse=reverse)
    lengths = np.array([6, 2, 4])
    x = sequence()
    mask = fnn.lengths_to_mask(lengths, T)
    garbage = jnp.where(mask[..., None], x, 1e3)  # what the padding holds must not matter
    params, _ = rnn.init(KEY, (garbage, mask))
    ys, carry = rnn.scan(params, garbage, mask=mask)
    (ys_pair, mask_out) = rnn(params, (garbage, mask))
    np.testing.assert_array_equal(mask_out, mask)
    np.testing.assert_allclose(ys_pair, ys)
    for b, n in enumerate(lengths):
        alone, alone_carry = rnn.scan(params, x[b : b + 1, :n])
        np.testing.assert_allclose(ys[b, :n], alone[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ys[b, n:], 0.0)
        for a, c in zip(jax.tree.leaves(carry), jax.tree.leaves(alone_carry)):
            np.testing.assert_allclose(a[b], c[0], rtol=1e-5, atol=1e-6)


def test_bidirectional_concatenates_a_forward_and_a_backward_pass():
    birnn = fnn.Bidirectional(fnn.LSTM(H), fnn.GRU(3))
    x = sequence()
    mask = fnn.lengths_to_mask(np.array([6, 3, 1]), T)
    params, state = birnn.init(KEY, (x, mask))
    assert set(params) == {"forward", "backward"} and state == {}
    (y, _) = birnn(params, (x, mask))
    assert y.shape == (B, T, H + 3)
    fwd, _ = fnn.Recurrent(fnn.LSTM(H)).scan(params["forward"], x, mask=mask)
    bwd, _ = fnn.Recurrent(fnn.GRU(3), reverse=True).scan(params["backward"], x, mask=mask)
    np.testing.assert_allclose(y, jnp.concatenate([fwd, bwd], -1), rtol=1e-6)
    ys, (carry_f, carry_b) = birnn.scan(params, x, mask=mask)
    np.testing.assert_allclose(carry_b, bwd[:, 0], rtol=1e-6)  # the backward pass ends at step 0


def test_stacked_layers_pass_the_mask_along_and_summarise():
    model = fnn.serial(
        fnn.KeepMask(fnn.Embedding(20, 8)),
        fnn.Bidirectional(fnn.LSTM(H)),
        fnn.Recurrent(fnn.GRU(H)),
        fnn.SequencePool("last"),
        fnn.Dense(2),
    )
    ids = jax.random.randint(KEY, (B, T), 0, 20)
    mask = fnn.lengths_to_mask(np.array([6, 2, 4]), T)
    params, _ = model.init(KEY, (ids, mask))
    assert list(params) == ["embedding_0", "bidirectional_0", "gru_0", "dense_0"]
    assert model(params, (ids, mask)).shape == (B, 2)
    # the prediction for row 1 ignores its padded ids
    other = ids.at[1, 2:].set(7)
    np.testing.assert_allclose(model(params, (other, mask))[1], model(params, (ids, mask))[1], rtol=1e-6)
    table = str(fnn.summary(model, (ids, mask)))
    assert "bidirectional_0" in table and "gru_0" in table


def test_lstm_learns_to_remember_the_first_input():
    """Output at the last step the sign of the first input, ten steps back: needs memory."""
    model = fnn.serial(fnn.Recurrent(fnn.LSTM(16)), fnn.SequencePool("last"), fnn.Dense(1))
    x = jax.random.normal(jax.random.key(3), (256, 10, 1))
    y = (x[:, 0] > 0).astype(jnp.float32)
    optimizer = optax.adam(1e-2)
    state = fnn.init_train_state(model, optimizer, KEY, x)
    step = fnn.make_train_step(model, optimizer, fnn.losses.sigmoid_binary_cross_entropy)
    state, _ = fnn.fit(step, state, [(x, y)] * 300)
    accuracy = jnp.mean((model(state.params, x) > 0) == (y > 0))
    assert accuracy > 0.95


# ---- SequencePool and KeepMask --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["mean", "max", "last", "first"])
def test_sequence_pool_against_numpy(mode):
    x = np.asarray(sequence())
    lengths = np.array([6, 1, 3])
    mask = np.array(fnn.lengths_to_mask(lengths, T))
    mask[2, 0] = False  # a hole at the start of row 2: its first real step is 1
    got = fnn.SequencePool(mode)({}, (x, mask))
    for b in range(B):
        real = x[b][mask[b]]
        want = {"mean": real.mean(0), "max": real.max(0), "last": real[-1], "first": real[0]}[mode]
        np.testing.assert_allclose(got[b], want, rtol=1e-6)
    np.testing.assert_allclose(fnn.SequencePool(mode)({}, x)[0],
                               {"mean": x[0].mean(0), "max": x[0].max(0), "last": x[0, -1], "first": x[0, 0]}[mode],
                               rtol=1e-6)


def test_sequence_pool_of_an_all_padding_row_is_zero():
    x = sequence()
    mask = jnp.zeros((B, T), bool).at[0].set(True)
    for mode in ["mean", "max", "last", "first"]:
        out = fnn.SequencePool(mode)({}, (x, mask))
        assert jnp.isfinite(out).all()
        np.testing.assert_array_equal(out[1:], 0.0)


def test_keep_mask_applies_the_layer_and_passes_the_mask():
    layer = fnn.KeepMask(fnn.Dense(3))
    x, mask = sequence(), jnp.ones((B, T), bool)
    params, _ = layer.init(KEY, (x, mask))
    y, m = layer(params, (x, mask))
    np.testing.assert_allclose(y, fnn.Dense(3)(params, x))
    assert m is mask
    np.testing.assert_allclose(layer(params, x), y)


@pytest.mark.parametrize("paddings", [("SAME", "SAME"), (((2, 0),), ((4, 0),))], ids=["same", "causal"])
@pytest.mark.parametrize("pad", [0.0, 1e6, np.nan])
def test_keep_mask_zeroes_the_padding_so_convolutions_over_time_ignore_it(paddings, pad):
    """A stack of convolutions over time: each padded row's real steps equal that row alone,
    whatever the padding holds. The first convolution's output is not zero at the padding
    (bias, and its window reaching back over the sequence's end), so without the zeroing the
    second one saw it."""
    model = fnn.serial(
        fnn.KeepMask(fnn.serial(fnn.Conv(5, (3,), padding=paddings[0]), jax.nn.relu)),
        fnn.KeepMask(fnn.Conv(4, (3,), padding=paddings[1], dilation=2)),
    )
    x = np.array(sequence())
    lengths = np.array([6, 1, 3])
    mask = np.asarray(fnn.lengths_to_mask(lengths, T))
    x[~mask] = pad
    params, _ = model.init(KEY, (x, mask))
    y, m = jax.jit(model)(params, (jnp.asarray(x), jnp.asarray(mask)))
    assert m.shape == mask.shape
    for b, n in enumerate(lengths):
        alone, _ = model(params, (x[b : b + 1, :n], mask[b : b + 1, :n]))
        np.testing.assert_allclose(y[b, :n], alone[0], rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda p: jnp.sum(jnp.where(mask[..., None], model(p, (x, mask))[0], 0.0)))(params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("layer, after", [
    (fnn.Conv(2, (3,), strides=2), "float32[3,3,2]"),
    (fnn.Conv(2, (3,), padding="VALID"), "float32[3,4,2]"),
    (fnn.SequencePool(), "float32[3,4]"),
])
def test_keep_mask_refuses_a_layer_that_changes_the_time_length(layer, after):
    x, mask = sequence(), fnn.lengths_to_mask(jnp.array([6, 1, 3]), T)
    wrapped = fnn.KeepMask(layer)
    params, _ = wrapped.init(KEY, (x, mask))
    with pytest.raises(fnn.ShapeError, match=rf"KeepMask: {type(layer).__name__} turned the sequence "
                                             rf"float32\[3,6,4\] into {re.escape(after)}, and the mask "
                                             rf"bool\[3,6\] no longer fits its batch and time"):
        wrapped(params, (x, mask))


def test_keep_mask_lets_padding_hold_ids_the_embedding_does_not_have():
    embed = fnn.KeepMask(fnn.Embedding(5, 2))
    ids, mask = jnp.array([[1, 4, -1, 99]]), jnp.array([[True, True, False, False]])  # -1 or 99 as pad ids
    params, _ = embed.init(KEY, (ids, mask))
    y, _ = jax.jit(embed)(params, (ids, mask))
    np.testing.assert_array_equal(y[0, :2], params["w"][jnp.array([1, 4])])


# ---- errors ---------------------------------------------------------------------------------


def test_config_errors():
    with pytest.raises(ValueError, match="LSTM: hidden must be a positive int, got 0"):
        fnn.LSTM(0)
    with pytest.raises(TypeError, match=r"Recurrent runs a recurrent cell .* got Dense"):
        fnn.Recurrent(fnn.Dense(3))
    with pytest.raises(ValueError, match="Recurrent: unroll must be a positive int"):
        fnn.Recurrent(fnn.GRU(3), unroll=0)
    with pytest.raises(ValueError, match="SequencePool: mode must be one of mean, max, last, first, got 'sum'"):
        fnn.SequencePool("sum")


def test_shape_errors_name_the_layer():
    model = fnn.serial(first=fnn.Identity(), rnn=fnn.Recurrent(fnn.LSTM(H)))
    with pytest.raises(fnn.ShapeError, match=r"rnn: Recurrent expects input of rank 3 \(batch, time, features\)"):
        model.init(KEY, jnp.zeros((B, F)))
    with pytest.raises(fnn.ShapeError, match=r"rnn: Recurrent expects a mask bool\[3,6\] .* got int32\[3,6\]"):
        model.init(KEY, (sequence(), jnp.ones((B, T), jnp.int32)))
    with pytest.raises(fnn.ShapeError, match=r"rnn: Recurrent got an empty batch float32\[3,0,4\]"):
        model.init(KEY, sequence(time=0))
    with pytest.raises(fnn.ShapeError, match=r"Recurrent expects floating-point input, got int32"):
        fnn.Recurrent(fnn.LSTM(H)).init(KEY, jnp.zeros((B, T, F), jnp.int32))


def test_a_cell_given_a_whole_sequence_points_to_recurrent():
    with pytest.raises(fnn.ShapeError, match=r"cell: LSTM is one time step: it takes \(carry, x_t\).*fnn.Recurrent"):
        fnn.serial(cell=fnn.LSTM(H)).init(KEY, sequence())


def test_wrong_carry_and_wrong_features_at_apply():
    rnn = fnn.Recurrent(fnn.LSTM(H))
    params, _ = rnn.init(KEY, sequence())
    with pytest.raises(fnn.ShapeError, match=r"lstm: LSTM expects a carry of shapes \(\(3, 5\), \(3, 5\)\)"):
        rnn.scan(params, sequence(), carry=jnp.zeros((B, H)))
    with pytest.raises(fnn.ShapeError, match="lstm: LSTM expected 4 input features, got float32"):
        rnn(params, sequence(features=7))


def test_stateful_layer_rejects_another_batch_size():
    rnn = fnn.Recurrent(fnn.GRU(H), stateful=True)
    params, state = rnn.init(KEY, sequence())
    with pytest.raises(fnn.ShapeError, match="holds a carry for batch 3, got input float32"):
        rnn.apply(params, state, sequence(batch=5))


def test_recurrent_checks_the_cell_params_against_the_cell():
    x = jnp.ones((2, 5, 3))
    lstm = fnn.serial(rnn=fnn.Recurrent(fnn.LSTM(4)))
    cases = [  # the first ran silently (the gates broadcast), the others raised raw lax errors
        (fnn.SimpleRNN(4), r"LSTM\(4\) expects parameter hidden/w of shape \[4, 16\], got \[4, 4\]"),
        (fnn.GRU(4), r"LSTM\(4\) expects no parameter hidden/b, got \[4\]"),
        (fnn.LSTM(5), r"LSTM\(4\) expects parameter hidden/w of shape \[4, 16\], got \[5, 20\]"),
    ]
    for other, message in cases:
        foreign, _ = fnn.serial(rnn=fnn.Recurrent(other)).init(KEY, x)
        with pytest.raises(fnn.ShapeError, match=r"^rnn/lstm: " + message):
            lstm(foreign, x)
    cell = fnn.LSTM(4)
    carry, x_t = cell.initial_carry((2,)), jnp.ones((2, 3))
    params, _ = cell.init(KEY, (carry, x_t))
    bad = {**params, "input": {**params["input"], "b": jnp.ones(4)}}
    with pytest.raises(fnn.ShapeError, match=r"expects parameter input/b of shape \[16\], got \[4\]"):
        cell(bad, (carry, x_t))


def test_cell_param_dtype_is_checked():
    x = jnp.ones((2, 5, 3))
    for param_dtype in (jnp.int32, "foo"):  # a raw initializer error, blamed on the input in serial
        for cell in (fnn.SimpleRNN(4, param_dtype=param_dtype), fnn.GRU(4, param_dtype=param_dtype)):
            with pytest.raises(fnn.LayerError, match=r"^\w+: \w+: param_dtype must be a floating-point dtype"):
                fnn.serial(fnn.Recurrent(cell)).init(KEY, x)
