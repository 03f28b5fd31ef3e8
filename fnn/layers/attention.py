"""Attention: scaled dot-product and multi-head attention (with a key/value cache),
rotary embeddings, and learned and sinusoidal positional encodings.

Shapes: sequences are ``[batch, time, d_model]``; queries, keys and values inside
attention are ``[batch, time, heads, head_dim]``. Padded batches travel as
``(x, mask)`` pairs (see ``fnn.layers.sequence``); padding is masked out of the keys.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from fnn import initializers
from fnn.autodiff import attention, matmul
from fnn.core import Layer, LayerError, ShapeError, is_real, promoted, shape_str, to_rank
from fnn.layers._common import (
    WeightOptions,
    compute_dtype,
    float_dtype,
    freeze,
    positive_int,
    require_features,
    require_float,
    require_rank,
)
from fnn.layers.dropout import keep_mask
from fnn.layers.sequence import join_mask, split_mask, zero_padding


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    causal: bool = False,
    dropout_rate: float = 0.0,
    key: jax.Array | None = None,
    implementation: str | None = None,
) -> jax.Array:
    """``softmax(q k^T / sqrt(head_dim)) v`` per head.

    Args:
        q: ``[batch, tq, heads, head_dim]``; k, v: ``[batch, tk, heads, head_dim]``.
        mask: bool, broadcastable to ``[batch, heads, tq, tk]``; False hides a key.
        causal: query ``i`` sees keys ``j <= i + (tk - tq)`` (the last query sees all).
        dropout_rate, key: dropout on the attention weights (needs ``key``).
        implementation: ``None`` (fnn's choice, below) or ``"cudnn"``: on a GPU, for
            float16 or bfloat16 inputs, ``jax.nn.dot_product_attention(...,
            implementation="cudnn")``, cuDNN's fused attention, which never stores the
            ``[tq, tk]`` scores (a causal mask as its own, without an array); float32
            inputs (a model's initialisation, say) keep fnn's attention. No dropout.

    Returns ``[batch, tq, heads, head_dim]``; a query that sees no key at all gives zeros.
    Without dropout this is ``jax.nn.dot_product_attention`` (softmax in float32), so a
    backend's fused attention applies (in a training step on CPU, with fnn's gradient
    rule: ``fnn.autodiff.attention``); with dropout, the same maths written out, its mask
    from ``fnn.layers.dropout.keep_mask``. On the CPU a causal attention over at least 128
    queries runs in blocks of queries that skip the hidden scores (``_causal_blocks``),
    with or without dropout.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> q = k = v = jnp.ones((1, 3, 2, 4))
        >>> fnn.dot_product_attention(q, k, v, causal=True).shape
        (1, 3, 2, 4)
    """
    _check_attention_inputs(q, k, v, mask)
    check_rate("dot_product_attention", dropout_rate, "dropout_rate")
    check_implementation("dot_product_attention", implementation, dropout_rate)
    dtype = promoted(q, k, v)
    q, k, v = q.astype(dtype), k.astype(dtype), v.astype(dtype)
    tq, tk = q.shape[1], k.shape[1]
    visible = None if mask is None else jnp.reshape(mask, (1,) * (4 - len(mask.shape)) + tuple(mask.shape))
    given = visible
    if causal:  # aligned to the last key, unlike jax.nn's is_causal when tq != tk
        now = jnp.arange(tk)[None, :] <= jnp.arange(tq)[:, None] + (tk - tq)
        visible = now[None, None] if visible is None else visible & now[None, None]
    keep = None
    if dropout_rate > 0.0:
        if key is None:
            raise LayerError("attention dropout needs an rng key when train=True: pass key=...")
        keep = keep_mask(key, dropout_rate, (q.shape[0], q.shape[2], tq, tk))
    if implementation == "cudnn" and dtype in (jnp.float16, jnp.bfloat16):
        if jax.default_backend() != "gpu":
            raise LayerError(
                f"dot_product_attention: implementation='cudnn' runs on a GPU; the default backend is "
                f"{jax.default_backend()}"
            )
        own_causal = causal and tq == tk  # cuDNN's causal mask is jax.nn's is_causal
        out = _cudnn(q, k, v, given if own_causal else visible, own_causal)
    elif causal and jax.default_backend() == "cpu":
        out = _causal_blocks(q, k, v, visible, keep, dropout_rate)
    else:
        out = attention(q, k, v, visible, keep, dropout_rate)
    if visible is None or (mask is None and tq <= tk):  # causal alone: every query sees key 0
        return out
    # jax.nn gives a query that sees no key the mean of all values; give it zeros instead
    sees_a_key = jnp.swapaxes(visible.any(-1), 1, 2)[..., None]  # [batch|1, tq, heads|1, 1]
    return jnp.where(sees_a_key, out, 0.0)


IMPLEMENTATIONS = (None, "cudnn")


def check_implementation(where: str, implementation: Any, dropout: float) -> None:
    """A ``ValueError`` naming ``where`` for an attention ``implementation`` fnn does not
    have, or cuDNN's with dropout."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"{where}: implementation must be None or 'cudnn', got {implementation!r}")
    if implementation == "cudnn" and dropout:
        raise ValueError(f"{where}: implementation='cudnn' has no dropout, got dropout {dropout}")


def _cudnn(q, k, v, visible, is_causal):
    """cuDNN's fused attention, with its own causal mask when ``is_causal``; ``visible`` (the
    rest of the mask) goes as an array, which cuDNN adds to the scores as a bias."""
    if visible is not None:
        visible = jnp.broadcast_to(visible, (q.shape[0], q.shape[2], q.shape[1], k.shape[1]))
    return jax.nn.dot_product_attention(q, k, v, mask=visible, is_causal=is_causal, implementation="cudnn")


def _check_attention_inputs(q: Any, k: Any, v: Any, mask: Any) -> None:
    heads_and_batch = [(a.shape[0], *a.shape[2:]) if len(a.shape) == 4 else None for a in (q, k, v)]
    if None in heads_and_batch or len(set(heads_and_batch)) != 1 or k.shape[1] != v.shape[1]:
        raise ShapeError(
            "dot_product_attention expects q [batch, tq, heads, head_dim] and k, v [batch, tk, heads, "
            f"head_dim], got q {shape_str(q)}, k {shape_str(k)}, v {shape_str(v)}"
        )
    if mask is None:
        return
    expected = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
    try:
        fits = len(mask.shape) <= 4 and jnp.broadcast_shapes(mask.shape, expected) == expected
    except ValueError:
        fits = False
    if not fits or mask.dtype != jnp.bool_:
        raise ShapeError(
            "dot_product_attention expects a bool mask broadcastable to [batch, heads, tq, tk] = "
            f"[{','.join(map(str, expected))}], got {shape_str(mask)}"
        )


def _causal_blocks(q, k, v, visible, keep, rate):
    """Causal attention on the CPU in up to 4 blocks of at least 64 queries, each over the
    keys up to its last query's, so that the scores hidden in the blocks' upper right are
    not computed (``attention`` there computes every score; a causal ``[128, 128]`` in two
    blocks computes 3/4 of them). The same values, summed over fewer hidden zeros; with
    dropout, each block keeps its part of the one ``keep`` mask."""
    tq, tk = q.shape[1], k.shape[1]
    blocks = min(4, tq // 64)
    if blocks < 2:
        return attention(q, k, v, visible, keep, rate)
    bounds = [tq * i // blocks for i in range(blocks + 1)]
    outs = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        end = hi + tk - tq  # the last key that query hi - 1 sees, plus one
        if end <= 0:  # these queries see no key
            outs.append(jnp.zeros((q.shape[0], hi - lo, *v.shape[2:]), v.dtype))
        else:
            part = None if keep is None else keep[..., lo:hi, :end]
            outs.append(attention(q[:, lo:hi], k[:, :end], v[:, :end], visible[..., lo:hi, :end], part, rate))
    return jnp.concatenate(outs, axis=1)


def rotary(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotary position embedding: rotates pairs ``(x[..., i], x[..., i + d/2])`` of each head
    by ``position * base ** (-2i / d)``, so ``q . k`` depends on the relative position.

    Shapes: ``x: [batch, time, heads, head_dim]`` (head_dim even), ``positions: int[time]``.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> x = jnp.array([[[[1.0, 0.0]]]])  # one step, one head: the pair (1, 0)
        >>> [round(v, 3) for v in fnn.rotary(x, jnp.array([2]))[0, 0, 0].tolist()]  # by 2 radians
        [-0.416, 0.909]
    """
    if len(x.shape) != 4 or x.shape[-1] % 2:
        raise ShapeError(
            f"rotary expects x [batch, time, heads, head_dim] with an even head_dim, got {shape_str(x)}"
        )
    if tuple(positions.shape) != (x.shape[1],):
        raise ShapeError(
            f"rotary expects one position per step, int[{x.shape[1]}], got {shape_str(positions)}"
        )
    half = x.shape[-1] // 2
    frequencies = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[:, None].astype(jnp.float32) * frequencies[None, :]  # [time, half]
    cos, sin = jnp.cos(angles)[None, :, None], jnp.sin(angles)[None, :, None]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def check_rate(layer: Any, rate: Any, name: str = "dropout") -> None:
    """A ``ValueError`` naming ``layer`` (or the function named ``layer``) unless the dropout
    ``rate`` is in [0, 1)."""
    if not is_real(rate) or not 0.0 <= rate < 1.0:
        where = layer if isinstance(layer, str) else type(layer).__name__
        raise ValueError(f"{where}: {name} must be in [0, 1), got {rate!r}")


@dataclasses.dataclass(frozen=True)
class MultiHeadAttention(WeightOptions, Layer):
    """Multi-head self-attention (Vaswani et al., 2017).

    Args:
        num_heads: number of heads.
        head_dim: size of each head (default ``d_model // num_heads``).
        out_features: output size (default ``d_model``).
        causal: each step attends only to itself and earlier steps.
        dropout: dropout rate on the attention weights while training.
        rotary: apply rotary position embeddings to queries and keys.
        rotary_base: the rotary embeddings' base wavelength.
        implementation: as for ``dot_product_attention``: ``None`` or ``"cudnn"`` (cuDNN's
            fused attention on a GPU for float16 or bfloat16, e.g. under
            ``fnn.precision.Policy``; no dropout).
        use_bias, w_init, b_init, dtype, param_dtype: keyword-only, see ``WeightOptions``.

    Shapes: ``x: [batch, time, d_model]`` or ``(x, mask)`` -> ``[batch, time, out]``
    (with the mask). Params ``query, key, value: {"w": [d_model, heads, head_dim],
    "b": [heads, head_dim]}``, ``out: {"w": [heads, head_dim, out], "b": [out]}``.

    ``decode`` runs one new step against a key/value cache from ``init_cache``.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> mha = fnn.MultiHeadAttention(num_heads=2, causal=True)
        >>> params, _ = mha.init(jax.random.key(0), jnp.ones((1, 5, 8)))
        >>> mha(params, jnp.ones((1, 5, 8))).shape
        (1, 5, 8)
    """

    num_heads: int
    head_dim: int | None = None
    out_features: int | None = None
    causal: bool = False
    dropout: float = 0.0
    rotary: bool = False
    rotary_base: float = 10000.0
    implementation: str | None = None

    def __post_init__(self):
        positive_int(self, "num_heads", self.num_heads)
        for field in ("head_dim", "out_features"):
            if getattr(self, field) is not None:
                positive_int(self, field, getattr(self, field))
        check_rate(self, self.dropout)
        freeze(self, "dropout", float(self.dropout))  # a NumPy float as Python's: it must not promote x
        check_implementation(type(self).__name__, self.implementation, self.dropout)
        if not is_real(self.rotary_base) or not 0 < self.rotary_base < float("inf"):
            raise ValueError(
                f"MultiHeadAttention: rotary_base must be > 0 and finite, got {self.rotary_base!r}"
            )
        freeze(self, "rotary_base", float(self.rotary_base))

    def _head_dim(self, d_model: int) -> int:
        if self.head_dim is not None:
            head_dim = self.head_dim
        elif d_model % self.num_heads:
            raise ShapeError(
                f"MultiHeadAttention: d_model {d_model} is not divisible by num_heads {self.num_heads}; "
                "give head_dim explicitly"
            )
        else:
            head_dim = d_model // self.num_heads
        if self.rotary and head_dim % 2:
            raise ShapeError(f"MultiHeadAttention: rotary embeddings need an even head_dim, got {head_dim}")
        return head_dim

    def init_params(self, key, x):
        x, _ = split_mask(self, x)
        require_float(self, x)
        require_rank(self, x, 3, "batch, time, d_model")
        d = x.shape[-1]
        shape = (self.num_heads, self._head_dim(d))
        out = self.out_features or d
        w_init, b_init = initializers.get(self.w_init), initializers.get(self.b_init)
        dtype = float_dtype(self, "param_dtype", self.param_dtype)
        keys = jax.random.split(key, 4)

        def projection(k, fan_in, fan_out, w_shape, b_shape):
            # initialised as the [fan_in, fan_out] matrix it acts as, then split into heads
            params = {"w": w_init(k, (fan_in, fan_out), dtype).reshape(w_shape)}
            if self.use_bias:
                params["b"] = b_init(k, b_shape, dtype)
            return params

        width = shape[0] * shape[1]
        qkv = {
            name: projection(k, d, width, (d, *shape), shape)
            for name, k in zip(("query", "key", "value"), keys)
        }
        return {**qkv, "out": projection(keys[3], width, out, (*shape, out), (out,))}

    def _project(self, params, x, dtype):
        def proj(name):
            p = params[name]
            d, heads, width = p["w"].shape
            y = matmul(x.astype(dtype), p["w"].astype(dtype).reshape(d, heads * width))
            y = y.reshape(*y.shape[:-1], heads, width)
            return y + to_rank(p["b"].astype(dtype), y.ndim) if "b" in p else y

        return proj("query"), proj("key"), proj("value")

    def _output(self, params, heads, dtype):
        p = params["out"]
        w = p["w"].astype(dtype)
        y = matmul(heads.reshape(*heads.shape[:-2], -1), w.reshape(-1, w.shape[-1]))
        return y + to_rank(p["b"].astype(dtype), y.ndim) if "b" in p else y

    def _check_features(self, params, x):
        """Float input of the params' d_model, and the params ``init`` makes for it: query, key,
        value and out of this layer's heads, head_dim and out_features, with biases if it uses them."""
        require_float(self, x)
        d = params["query"]["w"].shape[0]
        if x.shape[-1] != d:
            raise ShapeError(f"MultiHeadAttention expected d_model {d}, got {shape_str(x)}")
        heads = (self.num_heads, self._head_dim(d))
        out = self.out_features or d
        made = {name: {"w": (d, *heads), "b": heads} for name in ("query", "key", "value")}
        made["out"] = {"w": (*heads, out), "b": (out,)}
        for name, shapes in made.items():
            expected = shapes if self.use_bias else {"w": shapes["w"]}
            got = {k: tuple(v.shape) for k, v in params[name].items()}
            if got != expected:
                raise ShapeError(
                    f"MultiHeadAttention with {self.num_heads} heads of {heads[1]} and {out} output features "
                    f"expects {name} {_dims(expected)}, got {_dims(got)}: were the parameters made by this "
                    "layer's init?"
                )

    def forward(self, params, x, *, key=None, train=False):
        x, mask = split_mask(self, x)
        require_rank(self, x, 3, "batch, time, d_model")
        self._check_features(params, x)
        x = zero_padding(x, mask)  # a masked key's probability is 0, but 0 * NaN is NaN
        dtype = compute_dtype(self, x, params["query"]["w"])
        q, k, v = self._project(params, x, dtype)
        if self.rotary:
            positions = jnp.arange(x.shape[1])
            q, k = rotary(q, positions, self.rotary_base), rotary(k, positions, self.rotary_base)
        heads = dot_product_attention(
            q,
            k,
            v,
            mask=None if mask is None else mask[:, None, None, :],
            causal=self.causal,
            dropout_rate=self.dropout if train else 0.0,
            key=key,
            implementation=self.implementation,
        )
        return join_mask(self._output(params, heads, dtype), mask)

    def init_cache(self, params, batch_size: int, max_len: int, dtype: Any = jnp.float32) -> dict[str, Any]:
        """Zero keys and values ``[batch, max_len, heads, head_dim]`` and the next position."""
        _, heads, head_dim = params["key"]["w"].shape
        zeros = jnp.zeros((batch_size, max_len, heads, head_dim), dtype)
        return {"key": zeros, "value": zeros, "index": jnp.zeros((), jnp.int32)}

    def decode(self, params, cache, x_t: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """One new step ``x_t: [batch, 1, d_model]`` attending to the cached steps and itself.

        A full cache is a ``ShapeError``; under ``jit``, where the position cannot be read,
        the output past the cache's ``max_len`` steps is NaN."""
        batch, max_len = cache["key"].shape[:2]
        if len(x_t.shape) != 3 or tuple(x_t.shape[:2]) != (batch, 1):
            raise ShapeError(
                f"MultiHeadAttention.decode expects one step per sequence of the cache, "
                f"[{batch}, 1, d_model], got {shape_str(x_t)}"
            )
        self._check_features(params, x_t)
        index = cache["index"]
        if not isinstance(index, jax.core.Tracer) and int(index) >= max_len:
            raise ShapeError(
                f"MultiHeadAttention.decode: the cache holds max_len {max_len} steps and is full"
            )
        dtype = compute_dtype(self, x_t, params["query"]["w"])
        q, k, v = self._project(params, x_t, dtype)
        if self.rotary:
            q, k = rotary(q, index[None], self.rotary_base), rotary(k, index[None], self.rotary_base)
        keys = lax.dynamic_update_slice_in_dim(cache["key"], k.astype(cache["key"].dtype), index, axis=1)
        values = lax.dynamic_update_slice_in_dim(
            cache["value"], v.astype(cache["value"].dtype), index, axis=1
        )
        seen = (jnp.arange(keys.shape[1]) <= index)[None, None, None, :]  # causal: the past and now
        heads = dot_product_attention(q, keys.astype(dtype), values.astype(dtype), mask=seen)
        out = jnp.where(index < max_len, self._output(params, heads, dtype), jnp.nan)
        return out, {"key": keys, "value": values, "index": index + 1}


def _dims(shapes: dict[str, tuple[int, ...]]) -> str:
    """``{"w": (8, 2, 4), "b": (2, 4)}`` as ``w[8, 2, 4], b[2, 4]``."""
    return ", ".join(f"{name}{list(shape)}" for name, shape in shapes.items()) or "nothing"


def check_length(layer: Any, time: int, max_len: int) -> None:
    """A ``ShapeError`` naming ``layer`` when a sequence of ``time`` steps exceeds ``max_len``."""
    if time > max_len:
        raise ShapeError(
            f"{type(layer).__name__}: the sequence has {time} steps, more than max_len {max_len}"
        )


def _check_positions_input(layer: Any, x: Any, max_len: int | None) -> tuple[Any, Any]:
    """``(values, mask)`` of a float ``[batch, time, d_model]`` sequence of at most ``max_len``."""
    values, mask = split_mask(layer, x)
    require_rank(layer, values, 3, "batch, time, d_model")
    require_float(layer, values)
    if max_len is not None:
        check_length(layer, values.shape[1], max_len)
    return values, mask


@dataclasses.dataclass(frozen=True)
class LearnedPositions(Layer):
    """Adds a learned vector per position: ``x + w[:time]``; params ``w: [max_len, d_model]``.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> pos = fnn.LearnedPositions(16)
        >>> params, _ = pos.init(jax.random.key(0), jnp.zeros((2, 5, 4)))
        >>> params["w"].shape
        (16, 4)
    """

    max_len: int
    w_init: Any = jax.nn.initializers.normal(0.02)

    def __post_init__(self):
        positive_int(self, "max_len", self.max_len)

    def init_params(self, key, x):
        x, _ = _check_positions_input(self, x, self.max_len)
        return {"w": initializers.get(self.w_init)(key, (self.max_len, x.shape[-1]), jnp.float32)}

    def table(self, params, d_model: int) -> jax.Array:
        return params["w"]

    def forward(self, params, x, *, key=None, train=False):
        x, mask = _check_positions_input(self, x, self.max_len)
        require_features(self, x, params["w"].shape[1])
        return join_mask(x + params["w"][None, : x.shape[1]].astype(x.dtype), mask)


def sinusoids(length: int, d_model: int) -> jax.Array:
    """The fixed encoding of Vaswani et al. (2017): ``[length, d_model]`` with
    ``PE[p, 2i] = sin(p / 10000^(2i/d))`` and ``PE[p, 2i+1] = cos(p / 10000^(2i/d))``.

    Example:
        >>> import fnn
        >>> [round(v, 3) for v in fnn.sinusoids(3, 2)[2].tolist()]  # (sin 2, cos 2)
        [0.909, -0.416]
    """
    position = jnp.arange(length, dtype=jnp.float32)[:, None]
    rates = 10000.0 ** (-jnp.arange(0, d_model, 2, dtype=jnp.float32) / d_model)
    table = jnp.zeros((length, d_model), jnp.float32)
    table = table.at[:, 0::2].set(jnp.sin(position * rates[None, :]))
    return table.at[:, 1::2].set(jnp.cos(position * rates[None, : d_model // 2]))


@dataclasses.dataclass(frozen=True)
class SinusoidalPositions(Layer):
    """Adds the fixed sinusoidal encoding ``sinusoids(time, d_model)``; no params.

    Args:
        max_len: the longest sequence accepted (None: any length).

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.SinusoidalPositions()({}, jnp.zeros((1, 3, 4)))[0, 1].round(3)
        Array([0.841, 0.54 , 0.01 , 1.   ], dtype=float32)
    """

    max_len: int | None = None

    def __post_init__(self):
        if self.max_len is not None:
            positive_int(self, "max_len", self.max_len)

    def table(self, params, d_model: int) -> jax.Array:
        return sinusoids(self.max_len, d_model)

    def init_params(self, key, x):
        _check_positions_input(self, x, self.max_len)
        return {}

    def forward(self, params, x, *, key=None, train=False):
        x, mask = _check_positions_input(self, x, self.max_len)
        return join_mask(x + sinusoids(x.shape[1], x.shape[-1])[None].astype(x.dtype), mask)
