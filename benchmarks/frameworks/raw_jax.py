"""Hand-written raw JAX: a dict of arrays, ``jax.jit(value_and_grad)`` and optax."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from benchmarks.models import (
    D_MODEL,
    HEADS,
    LAYERS,
    LEARNING_RATE,
    LSTM_EMBED,
    LSTM_HIDDEN,
    MLP_DIM,
    MLP_WIDTHS,
    SEQ,
    SPECS,
    VOCAB,
    Bench,
    count_floats,
)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _dense(key, a, b):
    return {"w": jax.nn.initializers.lecun_normal()(key, (a, b)), "b": jnp.zeros(b)}


def init(name: str, key: jax.Array) -> dict:
    kind = SPECS[name].kind
    keys = iter(jax.random.split(key, 32))
    if kind == "mlp":
        w = MLP_WIDTHS[name]
        return {f"d{i}": _dense(next(keys), a, b) for i, (a, b) in enumerate(zip(w, w[1:]))}
    if kind == "lenet":
        conv = jax.nn.initializers.lecun_normal(in_axis=(0, 1, 2), out_axis=3)
        return {
            "c1": {"w": conv(next(keys), (5, 5, 1, 6)), "b": jnp.zeros(6)},
            "c2": {"w": conv(next(keys), (5, 5, 6, 16)), "b": jnp.zeros(16)},
            "d0": _dense(next(keys), 400, 120), "d1": _dense(next(keys), 120, 84), "d2": _dense(next(keys), 84, 10),
        }
    normal = jax.nn.initializers.normal(0.02)
    if kind == "lstm":
        g = 4 * LSTM_HIDDEN
        return {
            "embed": jax.random.normal(next(keys), (VOCAB, LSTM_EMBED)),
            "lstm": {"wx": jax.nn.initializers.glorot_uniform()(next(keys), (LSTM_EMBED, g)),
                     "wh": jax.nn.initializers.orthogonal()(next(keys), (LSTM_HIDDEN, g)),
                     "b": jnp.zeros(g).at[LSTM_HIDDEN:2 * LSTM_HIDDEN].set(1.0)},
            "head": _dense(next(keys), LSTM_HIDDEN, VOCAB),
        }

    def ln():
        return {"scale": jnp.ones(D_MODEL), "bias": jnp.zeros(D_MODEL)}

    params = {"embed": normal(next(keys), (VOCAB, D_MODEL)), "pos": normal(next(keys), (SEQ, D_MODEL)),
              "norm": ln(), "head": _dense(next(keys), D_MODEL, VOCAB)}
    for i in range(LAYERS):
        params[f"block{i}"] = {
            "ln1": ln(), "ln2": ln(),
            **{p: _dense(next(keys), D_MODEL, D_MODEL) for p in ("q", "k", "v", "o")},
            "fc1": _dense(next(keys), D_MODEL, MLP_DIM), "fc2": _dense(next(keys), MLP_DIM, D_MODEL),
        }
    return params


def _layer_norm(p, x, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def _attention(p, x):
    b, t, _ = x.shape
    heads = [(x @ p[n]["w"] + p[n]["b"]).reshape(b, t, HEADS, D_MODEL // HEADS) for n in ("q", "k", "v")]
    out = jax.nn.dot_product_attention(*heads, is_causal=True)
    return out.reshape(b, t, D_MODEL) @ p["o"]["w"] + p["o"]["b"]


def apply(name: str, p: dict, x: jax.Array) -> jax.Array:
    kind = SPECS[name].kind
    if kind == "mlp":
        n = len(MLP_WIDTHS[name]) - 1
        for i in range(n):
            x = x @ p[f"d{i}"]["w"] + p[f"d{i}"]["b"]
            x = jax.nn.relu(x) if i < n - 1 else x
        return x
    if kind == "lenet":
        def pool(v):
            return jax.lax.reduce_window(v, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

        def conv(v, q, padding):
            dn = ("NHWC", "HWIO", "NHWC")
            return jax.lax.conv_general_dilated(v, q["w"], (1, 1), padding, dimension_numbers=dn) + q["b"]

        x = pool(jax.nn.relu(conv(x, p["c1"], "SAME")))
        x = pool(jax.nn.relu(conv(x, p["c2"], "VALID")))
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(x @ p["d0"]["w"] + p["d0"]["b"])
        x = jax.nn.relu(x @ p["d1"]["w"] + p["d1"]["b"])
        return x @ p["d2"]["w"] + p["d2"]["b"]
    if kind == "lstm":
        q = p["lstm"]
        embedded = jnp.swapaxes(p["embed"][x], 0, 1)  # [time, batch, embed]

        def cell(carry, e):
            c, h = carry  # the input projection inside the loop: faster on CPU than one ahead of it
            i, f, g, o = jnp.split(e @ q["wx"] + q["b"] + h @ q["wh"], 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (c, h), h

        zeros = jnp.zeros((x.shape[0], LSTM_HIDDEN))
        _, hs = jax.lax.scan(cell, (zeros, zeros), embedded)
        return jnp.swapaxes(hs, 0, 1) @ p["head"]["w"] + p["head"]["b"]
    h = p["embed"][x] + p["pos"][: x.shape[1]]
    for i in range(LAYERS):
        q = p[f"block{i}"]
        h = h + _attention(q, _layer_norm(q["ln1"], h))
        m = jax.nn.gelu(_layer_norm(q["ln2"], h) @ q["fc1"]["w"] + q["fc1"]["b"])
        h = h + m @ q["fc2"]["w"] + q["fc2"]["b"]
    return _layer_norm(p["norm"], h) @ p["head"]["w"] + p["head"]["b"]


def adam_bench(apply, params, batch: tuple, key: jax.Array | None = None) -> Bench:
    """The plain JAX train step around ``apply(params, x) -> logits``: ``jax.jit`` of
    ``value_and_grad`` and an optax adam update, the state donated. Every pytree-of-arrays
    framework (raw JAX, Linen, Haiku) is timed through this one step. With ``key`` the
    state carries it, and each step splits off a new one for ``apply(params, x, key)``."""
    optimizer = optax.adam(LEARNING_RATE)

    def step(state, batch):
        params, opt_state, *key = state
        x, y = batch
        forward = apply
        if key:
            key[0], step_key = jax.random.split(key[0])
            forward = functools.partial(apply, key=step_key)
        loss, grads = jax.value_and_grad(lambda q: cross_entropy(forward(q, x), y))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, *key), loss

    step = jax.jit(step, donate_argnums=0)
    count = sum(a.size for a in jax.tree.leaves(params))
    state = (params, optimizer.init(params), *([] if key is None else [key]))
    return Bench(step, state, jax.device_put(batch), count, jax.block_until_ready, step.lower)


def make(name: str, batch: tuple) -> Bench:
    return adam_bench(functools.partial(apply, name), init(name, jax.random.key(0)), batch)


def count_params(name: str, batch: tuple) -> int:
    """The parameter count, from shapes alone (nothing is computed)."""
    return count_floats(jax.eval_shape(lambda: init(name, jax.random.key(0))))
