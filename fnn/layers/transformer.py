"""Transformers: the pre-norm block, a decoder-only language model with a key/value
cache, and sampling from any causal language model.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from fnn.core import Layer, Remat, ShapeError, apply_child, init_child, is_count, serial, shape_str
from fnn.layers._common import positive_int, require_rank
from fnn.layers.attention import (
    LearnedPositions,
    MultiHeadAttention,
    SinusoidalPositions,
    check_implementation,
    check_length,
    check_rate,
)
from fnn.layers.dropout import Dropout
from fnn.layers.linear import Dense, Embedding
from fnn.layers.normalization import LayerNorm, RMSNorm
from fnn.layers.sequence import join_mask, split_mask, zero_padding

_NORMS = {"layer": LayerNorm, "rms": RMSNorm}


def _check_choice(layer: Any, field: str, value: Any, choices: Any) -> None:
    if value not in choices:
        raise ValueError(
            f"{type(layer).__name__}: {field} must be one of {', '.join(choices)}, got {value!r}"
        )


@dataclasses.dataclass(frozen=True)
class TransformerBlock(Layer):
    """A pre-norm transformer block: ``x + Dropout(MHA(Norm(x)))``, then
    ``x + Dropout(MLP(Norm(x)))`` with ``MLP = Dense(mlp_dim) -> activation -> Dense(d_model)``.

    Args:
        num_heads, causal, rotary: as for ``MultiHeadAttention``.
        mlp_dim: hidden size of the MLP.
        dropout: on the attention weights and on both residual branches while training.
        norm: ``"layer"`` (LayerNorm) or ``"rms"`` (RMSNorm).
        activation: a ``jax.nn`` function name for the MLP.
        attention_implementation: the attention's ``implementation`` (``None``, or
            ``"cudnn"`` for cuDNN's fused attention on a GPU; see ``MultiHeadAttention``).

    Params ``{"norm_1", "attention", "norm_2", "mlp": {"dense_0", "dense_1"}}``.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> block = fnn.TransformerBlock(num_heads=2, mlp_dim=16, causal=True)
        >>> params, _ = block.init(jax.random.key(0), jnp.ones((1, 5, 8)))
        >>> sorted(params)
        ['attention', 'mlp', 'norm_1', 'norm_2']
    """

    num_heads: int
    mlp_dim: int
    dropout: float = 0.0
    causal: bool = False
    norm: str = "layer"
    activation: str = "gelu"
    rotary: bool = False
    attention_implementation: str | None = None

    def __post_init__(self):
        positive_int(self, "mlp_dim", self.mlp_dim)
        check_rate(self, self.dropout)
        _check_choice(self, "norm", self.norm, _NORMS)
        if not callable(getattr(jax.nn, self.activation, None)):
            raise ValueError(
                f"TransformerBlock: activation must name a jax.nn function, got {self.activation!r}"
            )
        self.attention  # noqa: B018  (validates num_heads)

    @property
    def attention(self) -> MultiHeadAttention:
        return MultiHeadAttention(
            self.num_heads, causal=self.causal, dropout=self.dropout, rotary=self.rotary,
            implementation=self.attention_implementation,
        )

    def _children(self, d_model: int) -> dict[str, Layer]:
        return {
            "norm_1": _NORMS[self.norm](),
            "attention": self.attention,
            "norm_2": _NORMS[self.norm](),
            "mlp": _mlp(self.mlp_dim, d_model, self.activation),
        }

    def init_params(self, key, x):
        values, _ = split_mask(self, x)
        require_rank(self, values, 3, "batch, time, d_model")
        params = {}
        for k, (name, child) in zip(jax.random.split(key, 4), self._children(values.shape[-1]).items()):
            params[name], _, _ = init_child(name, child, k, x if name == "attention" else values)
        return params

    def _residuals(self, params, x, attend, key, train):
        """``x + attention branch``, then ``+ MLP branch``; ``attend(normed) -> heads out``."""
        children = self._children(x.shape[-1])
        k_attention, k_drop_1, k_drop_2, k_mlp = jax.random.split(key, 4) if key is not None else [None] * 4
        drop = Dropout(self.dropout)

        def child(name, v, k=None):
            y, _ = apply_child(name, children[name], params, {}, v, k, train)
            return y

        x = x + drop({}, attend(child("norm_1", x), k_attention), key=k_drop_1, train=train)
        return x + drop({}, child("mlp", child("norm_2", x), k_mlp), key=k_drop_2, train=train)

    def forward(self, params, x, *, key=None, train=False):
        values, mask = split_mask(self, x)
        values = zero_padding(values, mask)  # the norms and the MLP see no NaN a padded step held

        def attend(normed, k):
            y, _ = apply_child("attention", self.attention, params, {}, join_mask(normed, mask), k, train)
            return y if mask is None else y[0]

        return join_mask(self._residuals(params, values, attend, key, train), mask)

    def decode(self, params, cache, x_t):
        """One new step ``[batch, 1, d_model]`` against this block's attention cache."""
        new_cache = {}

        def attend(normed, k):
            y, new_cache["attention"] = self.attention.decode(params["attention"], cache, normed)
            return y

        y = self._residuals(params, x_t, attend, None, False)
        return y, new_cache["attention"]


def _mlp(mlp_dim: int, d_model: int, activation: str) -> Layer:
    return serial(Dense(mlp_dim), getattr(jax.nn, activation), Dense(d_model))


_POSITIONS = ("learned", "sinusoidal", "rotary")


@dataclasses.dataclass(frozen=True)
class TransformerLM(Layer):
    """A decoder-only (causal) transformer language model: ids -> next-token logits.

    Args:
        vocab_size: number of token ids.
        d_model: width of the residual stream.
        num_heads, num_layers: heads per block, blocks.
        mlp_dim: hidden size of each block's MLP (default ``4 * d_model``).
        max_len: the longest sequence (the positional table's size and the cache's).
        dropout: as for ``TransformerBlock``, and on the embeddings.
        positions: ``"learned"``, ``"sinusoidal"`` or ``"rotary"``.
        norm: ``"layer"`` or ``"rms"``.
        tie_embeddings: score the output against the embedding table instead of a
            separate ``head``.
        remat: recompute each block's activations in the backward pass instead of storing
            them (``fnn.remat``): less memory for more compute; the same parameters and
            gradients.
        attention_implementation: ``None``, or ``"cudnn"`` for cuDNN's fused attention on a
            GPU in training (float16 or bfloat16, e.g. under ``fnn.precision.Policy``; no
            dropout). ``decode`` keeps fnn's attention.

    Shapes: ``ids: int[batch, time]`` or ``(ids, mask)`` -> ``[batch, time, vocab_size]``.
    Params ``{"embed", "positions"?, "block_0", ..., "norm", "head"?}``.

    ``init_cache`` and ``decode`` run one token at a time with a key/value cache;
    ``fnn.sample`` uses them.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> lm = fnn.TransformerLM(vocab_size=11, d_model=16, num_heads=2, num_layers=2, max_len=32)
        >>> params, _ = lm.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
        >>> lm(params, jnp.zeros((1, 8), jnp.int32)).shape
        (1, 8, 11)
    """

    vocab_size: int
    d_model: int
    num_heads: int
    num_layers: int
    mlp_dim: int | None = None
    max_len: int = 512
    dropout: float = 0.0
    positions: str = "learned"
    norm: str = "layer"
    tie_embeddings: bool = False
    remat: bool = False
    attention_implementation: str | None = None

    def __post_init__(self):
        for field in ("vocab_size", "d_model", "num_heads", "num_layers", "max_len"):
            positive_int(self, field, getattr(self, field))
        if self.mlp_dim is not None:
            positive_int(self, "mlp_dim", self.mlp_dim)
        check_rate(self, self.dropout)
        _check_choice(self, "positions", self.positions, _POSITIONS)
        _check_choice(self, "norm", self.norm, _NORMS)
        if self.d_model % self.num_heads:
            raise ValueError(
                f"TransformerLM: d_model {self.d_model} is not divisible by num_heads {self.num_heads}"
            )
        check_implementation(type(self).__name__, self.attention_implementation, self.dropout)

    @property
    def embed(self) -> Embedding:
        return Embedding(self.vocab_size, self.d_model, w_init=jax.nn.initializers.normal(0.02))

    @property
    def position_layer(self) -> Layer | None:
        if self.positions == "learned":
            return LearnedPositions(self.max_len)
        if self.positions == "sinusoidal":
            return SinusoidalPositions(self.max_len)
        return None

    @property
    def block(self) -> TransformerBlock:
        return TransformerBlock(
            self.num_heads,
            4 * self.d_model if self.mlp_dim is None else self.mlp_dim,
            dropout=self.dropout,
            causal=True,
            norm=self.norm,
            rotary=self.positions == "rotary",
            attention_implementation=self.attention_implementation,
        )

    def _children(self) -> dict[str, Layer]:
        children: dict[str, Layer] = {"embed": self.embed}
        if self.position_layer is not None:
            children["positions"] = self.position_layer
        block = Remat(self.block) if self.remat else self.block
        children.update({f"block_{i}": block for i in range(self.num_layers)})
        children["norm"] = _NORMS[self.norm]()
        if not self.tie_embeddings:
            children["head"] = Dense(self.vocab_size)
        return children

    def _check_ids(self, x):
        ids, mask = split_mask(self, x)
        if len(ids.shape) != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ShapeError(f"TransformerLM expects integer ids [batch, time], got {shape_str(ids)}")
        check_length(self, ids.shape[1], self.max_len)
        return ids, mask

    def init_params(self, key, x):
        ids, mask = self._check_ids(x)
        params = {}
        h: Any = ids
        children = self._children()
        for k, (name, child) in zip(jax.random.split(key, len(children)), children.items()):
            h_in = h if name == "embed" else (h if mask is None or name in ("norm", "head") else (h, mask))
            params[name], _, out = init_child(name, child, k, h_in)
            h = out[0] if isinstance(out, tuple) else out
        return params

    def _logits(self, params, h):
        if self.tie_embeddings:
            return self.embed.attend(params["embed"], h)
        y, _ = apply_child("head", Dense(self.vocab_size), params, {}, h, None, False)
        return y

    def forward(self, params, x, *, key=None, train=False):
        ids, mask = self._check_ids(x)
        ids = zero_padding(ids, mask)  # any pad id, one the embedding lacks too
        children = self._children()
        keys = jax.random.split(key, len(children)) if key is not None else [None] * len(children)
        h, _ = apply_child("embed", children["embed"], params, {}, ids, None, train)
        h = Dropout(self.dropout)({}, h, key=keys[0], train=train)
        if "positions" in children:
            h, _ = apply_child("positions", children["positions"], params, {}, h, None, train)
        for i in range(self.num_layers):
            out, _ = apply_child(
                f"block_{i}", children[f"block_{i}"], params, {}, join_mask(h, mask), keys[i + 1], train
            )
            h = out if mask is None else out[0]
        h, _ = apply_child("norm", children["norm"], params, {}, h, None, train)
        return join_mask(self._logits(params, h), mask)

    def init_cache(self, params, batch_size: int, dtype: Any = jnp.float32) -> dict[str, Any]:
        """An empty key/value cache for ``batch_size`` sequences of up to ``max_len`` tokens."""
        attention = self.block.attention
        return {
            f"block_{i}": attention.init_cache(
                params[f"block_{i}"]["attention"], batch_size, self.max_len, dtype
            )
            for i in range(self.num_layers)
        } | {"index": jnp.zeros((), jnp.int32)}

    def decode(self, params, cache, ids_t: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """Logits ``[batch, vocab]`` for one new token per sequence ``ids_t: int[batch]``, and
        the cache with it added. Under ``jit`` a position past ``max_len`` cannot raise; its
        logits come out NaN instead."""
        index = cache["index"]
        if not isinstance(index, jax.core.Tracer) and int(index) >= self.max_len:
            raise ShapeError(f"TransformerLM: the cache holds max_len {self.max_len} tokens and is full")
        batch = cache["block_0"]["key"].shape[0]
        if tuple(ids_t.shape) != (batch,) or not jnp.issubdtype(ids_t.dtype, jnp.integer):
            raise ShapeError(
                f"TransformerLM.decode expects one id per sequence of the cache, int[{batch}], "
                f"got {shape_str(ids_t)}"
            )
        h, _ = apply_child("embed", self.embed, params, {}, ids_t[:, None], None, False)
        if self.position_layer is not None:
            table = self.position_layer.table(params.get("positions", {}), self.d_model)
            h = h + lax.dynamic_slice_in_dim(table, jnp.minimum(index, self.max_len - 1), 1)[None].astype(
                h.dtype
            )
        new_cache = {"index": index + 1}
        for i in range(self.num_layers):
            name = f"block_{i}"
            h, new_cache[name] = self.block.decode(params[name], cache[name], h)
        h = _NORMS[self.norm]()(params["norm"], h)
        logits = self._logits(params, h)[:, 0]
        return jnp.where(index < self.max_len, logits, jnp.nan), new_cache


def sample(
    model: Layer,
    params,
    prompt: jax.Array,
    num_steps: int,
    *,
    key: jax.Array,
    temperature: float = 1.0,
    use_cache: bool = True,
) -> jax.Array:
    """Continue ``prompt: int[batch, p]`` by ``num_steps`` tokens: ``int32[batch, p + num_steps]``.

    ``model`` maps ids ``[batch, time]`` to logits ``[batch, time, vocab]`` causally (any
    such model: a transformer, a recurrent network). With ``use_cache`` (models with
    ``init_cache``/``decode``, e.g. ``TransformerLM``) each new token costs one step;
    without, the whole sequence is recomputed for each token. Both draw token ``i``
    with ``fold_in(key, i)``, so they give the same tokens. ``temperature=0`` is greedy.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> lm = fnn.TransformerLM(vocab_size=7, d_model=8, num_heads=2, num_layers=1, max_len=16)
        >>> params, _ = lm.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
        >>> prompt = jnp.array([[1, 2, 3]])
        >>> out = fnn.sample(lm, params, prompt, 5, key=jax.random.key(1))
        >>> out.shape, bool((out == fnn.sample(lm, params, prompt, 5, key=jax.random.key(1),
        ...                                    use_cache=False)).all())
        ((1, 8), True)
    """
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[1] < 1 or not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"sample: prompt must be integer ids [batch, length >= 1], got {shape_str(prompt)}")
    if not isinstance(temperature, numbers.Real) or not 0 <= temperature < math.inf:
        raise ValueError(f"sample: temperature must be a finite number >= 0, got {temperature!r}")
    if not is_count(num_steps, least=0):
        raise ValueError(f"sample: num_steps must be an int >= 0, got {num_steps!r}")
    num_steps = int(num_steps)
    if not (isinstance(key, jax.Array) and (jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
                                            or key.dtype == jnp.uint32)):
        raise ValueError(f"sample: key must be a jax.random key, got {shape_str(key)}")
    vocab_size = getattr(model, "vocab_size", None)
    if not isinstance(prompt, jax.core.Tracer):  # a model without vocab_size: its logits' width
        if vocab_size is None:
            vocab_size = jax.eval_shape(model, params, prompt).shape[-1]
        if int(prompt.min()) < 0 or int(prompt.max()) >= vocab_size:
            raise ValueError(
                f"sample: prompt ids must be in [0, {vocab_size}) (the model's vocab_size), "
                f"got ids from {int(prompt.min())} to {int(prompt.max())}"
            )
    batch, p = prompt.shape
    total = p + num_steps
    max_len = getattr(model, "max_len", None)
    if max_len is not None and total > max_len:
        raise ValueError(f"sample: {p} prompt + {num_steps} new tokens exceed the model's max_len {max_len}")
    if use_cache and not hasattr(model, "decode"):
        raise ValueError(f"sample: {type(model).__name__} has no key/value cache; pass use_cache=False")

    # int32 whatever the prompt's dtype: a narrow one's ids would wrap, an int64 one's warns
    tokens = jnp.zeros((batch, total), jnp.int32).at[:, :p].set(prompt.astype(jnp.int32))
    run = _sample_cached if use_cache else _sample_recomputed
    return run(model, params, tokens, key, float(temperature), p)


def _pick(logits, key, i, temperature):
    """Token ``i``: the argmax when ``temperature`` is 0, else a draw with ``fold_in(key, i)``.

    The draw is ``jax.random.categorical(key, logits / temperature)``'s Gumbel-max trick,
    ``argmax(logits / temperature + gumbel)``, taken as ``argmax(logits + temperature * gumbel)``
    (the same token): dividing by a tiny temperature would overflow to infinities."""
    if temperature == 0:
        return jnp.argmax(logits, -1)
    gumbel = jax.random.gumbel(jax.random.fold_in(key, i), logits.shape, logits.dtype)
    return jnp.argmax(logits + temperature * gumbel, -1)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _sample_recomputed(model, params, tokens, key, temperature, p):
    def body(i, tokens):  # position i from the logits at i - 1; later zeros are unseen
        logits = model(params, tokens)[:, i - 1]
        return tokens.at[:, i].set(_pick(logits, key, i, temperature).astype(tokens.dtype))

    return lax.fori_loop(p, tokens.shape[1], body, tokens)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _sample_cached(model, params, tokens, key, temperature, p):
    cache = model.init_cache(params, tokens.shape[0])

    def body(carry, i):
        cache, tokens = carry
        logits, cache = model.decode(params, cache, tokens[:, i])
        drawn = _pick(logits, key, i + 1, temperature).astype(tokens.dtype)
        nxt = jnp.where(i + 1 >= p, drawn, tokens[:, i + 1])  # the prompt is kept as it is
        return (cache, tokens.at[:, i + 1].set(nxt)), None

    (_, tokens), _ = lax.scan(body, (cache, tokens), jnp.arange(tokens.shape[1] - 1))
    return tokens
