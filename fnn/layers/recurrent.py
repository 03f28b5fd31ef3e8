"""Recurrent networks: Elman, LSTM and GRU cells, run over time by ``Recurrent``.

A cell is a layer for ONE time step with an explicit carry: its input is the pair
``(carry, x_t)`` and its output the pair ``(carry', y_t)``. ``Recurrent(cell)`` runs
it over a sequence with ``jax.lax.scan``, so the gradient of anything computed from
its outputs is backpropagation through time. ``Bidirectional`` runs one cell forward
and one backward and concatenates their outputs; stack layers with ``fnn.serial``.

Each step makes its own input-to-hidden product inside the scan, next to the
hidden-to-hidden one: on CPU that trained faster in less memory than one product for
the whole sequence before the scan (see ``_scan``). In a training step
(``fnn.reverse_mode_only``) the built-in cells' backpropagation through time is written
by hand (``_scan_by_hand``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from fnn import initializers
from fnn.autodiff import matmul, reverse_only
from fnn.autodiff import weight_grad as step_weight_grad
from fnn.core import Layer, LayerError, ShapeError, init_child, path_str, promoted, shape_str, to_rank
from fnn.layers._common import compute_dtype, float_dtype, positive_int, require_float, require_rank
from fnn.layers.sequence import along, join_mask, split_mask, zero_padding

Carry = Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class _CellOptions:
    """Keyword-only options every cell shares.

    Args:
        w_init: initializer of the input-to-hidden weights.
        recurrent_init: initializer of the hidden-to-hidden weights (orthogonal keeps
            the recurrence's gain near 1 at the start).
        b_init: initializer of the biases.
        dtype: dtype to compute in (``None``: the inputs' promoted dtype).
        param_dtype: dtype the parameters are stored in.
    """

    w_init: Any = "glorot_uniform"
    recurrent_init: Any = "orthogonal"
    b_init: Any = "zeros"
    dtype: Any = None
    param_dtype: Any = jnp.float32


@dataclasses.dataclass(frozen=True)
class Cell(_CellOptions, Layer):
    """Base of the recurrent cells: ``(carry, x_t) -> (carry', y_t)`` for one step.

    A subclass sets ``gates`` (how many ``hidden``-wide blocks the input projection
    has) and implements ``initial_carry`` and either ``recur`` or ``activate``: the default
    ``recur`` makes the hidden product (``_hidden``) and hands it to ``activate``, the
    element-wise rest, which the built-in cells' hand-written backward pass differentiates
    step by step. Params are
    ``{"input": {"w": [in, gates * hidden], "b": [gates * hidden]},
    "hidden": {"w": [hidden, gates * hidden], ...}}``.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> cell = fnn.GRU(4)                                  # a Cell with 3 gates
        >>> x_t = jnp.ones((2, 3))                              # one step: [batch, features]
        >>> carry = cell.initial_carry((2,))
        >>> params, _ = cell.init(jax.random.key(0), (carry, x_t))
        >>> params["input"]["w"].shape
        (3, 12)
        >>> carry, y_t = cell(params, (carry, x_t))
        >>> carry.shape, y_t.shape
        ((2, 4), (2, 4))
    """

    hidden: int
    gates = 1

    def __post_init__(self):
        positive_int(self, "hidden", self.hidden)

    def initial_carry(self, batch_shape: tuple[int, ...], dtype: Any = jnp.float32) -> Carry:
        """The all-zero carry for a batch of this shape."""
        return jnp.zeros((*batch_shape, self.hidden), dtype)

    def _check_carry(self, carry: Carry, x_t: Any) -> None:
        expected = jax.tree.map(lambda a: a.shape, self.initial_carry(x_t.shape[:-1]))
        got = jax.tree.map(lambda a: tuple(a.shape), carry)
        if got != expected:
            raise ShapeError(
                f"{type(self).__name__} expects a carry of shapes {expected} for a step "
                f"input {shape_str(x_t)}, got {shape_str(carry)}"
            )

    def _split(self, x: Any) -> tuple[Carry, Any]:
        if not isinstance(x, tuple | list) or len(x) != 2:
            raise ShapeError(
                f"{type(self).__name__} is one time step: it takes (carry, x_t), got {shape_str(x)}; "
                "run it over a sequence with fnn.Recurrent"
            )
        carry, x_t = x
        require_float(self, x_t)
        if len(x_t.shape) < 1:
            raise ShapeError(f"{type(self).__name__} expects x_t [..., features], got {shape_str(x_t)}")
        self._check_carry(carry, x_t)
        return carry, x_t

    def init_params(self, key, x):
        _, x_t = self._split(x)
        k_in, k_hidden, k_b = jax.random.split(key, 3)
        width = self.gates * self.hidden
        dtype = float_dtype(self, "param_dtype", self.param_dtype)
        make = lambda init, k, shape: initializers.get(init)(k, shape, dtype)  # noqa: E731
        blocks = jax.random.split(k_hidden, self.gates)  # orthogonal per gate: each its own map
        recurrent = jnp.concatenate([make(self.recurrent_init, k, (self.hidden,) * 2) for k in blocks], 1)
        return {
            "input": {"w": make(self.w_init, k_in, (x_t.shape[-1], width)), "b": self.initial_bias(k_b)},
            "hidden": {"w": recurrent},
        }

    def initial_bias(self, key: jax.Array) -> jax.Array:
        dtype = float_dtype(self, "param_dtype", self.param_dtype)
        return initializers.get(self.b_init)(key, (self.gates * self.hidden,), dtype)

    def _check_width(self, params, x: Any) -> None:
        w = params["input"]["w"]
        if x.shape[-1] != w.shape[0]:
            raise ShapeError(
                f"{type(self).__name__} expected {w.shape[0]} input features, got {shape_str(x)}"
            )

    def check_params(self, params, x_t: Any) -> None:
        """A ShapeError naming the first parameter whose shape is not the one ``init`` makes for
        the step input ``x_t`` (e.g. another cell's or another size's); at apply, trace-time only."""
        self._check_width(params, x_t)
        got = {path_str(path): tuple(a.shape) for path, a in jax.tree_util.tree_leaves_with_path(params)}
        made = _made_shapes(self, x_t.shape[-1])
        for name in sorted(made.keys() | got.keys()):
            if got.get(name) != made.get(name):
                expected = f"no parameter {name}" if name not in made else (
                    f"parameter {name} of shape {_dims(made[name])}"
                )
                raise ShapeError(
                    f"{type(self).__name__}({self.hidden}) expects {expected}, got {_dims(got.get(name))}: "
                    "were the parameters made by this cell's init?"
                )

    def project(self, params, x: jax.Array) -> jax.Array:
        """The input-to-hidden part ``x @ W + b`` for any number of leading axes."""
        self._check_width(params, x)
        w = params["input"]["w"]
        dtype = compute_dtype(self, x, w)
        y = matmul(x.astype(dtype), w.astype(dtype))
        return y + to_rank(params["input"]["b"].astype(dtype), y.ndim)

    def recur(self, params, carry: Carry, projected: jax.Array) -> tuple[Carry, jax.Array]:
        """One step from the projected input: ``(carry', y_t)``; by default ``activate`` of
        it and the hidden product."""
        hidden = self._hidden(params, self.hidden_input(carry), projected.dtype)
        return self.activate(params, carry, projected, hidden)

    def activate(self, params, carry: Carry, projected: jax.Array, hidden: jax.Array) -> tuple[Carry, Any]:
        """The step's element-wise part, from the input projection and the hidden product."""
        raise NotImplementedError

    def _hidden(self, params, h: jax.Array, dtype: Any) -> jax.Array:
        return matmul(h.astype(dtype), params["hidden"]["w"].astype(dtype))

    def hidden_input(self, carry: Carry) -> jax.Array:
        """The part of the carry the hidden-to-hidden product reads (``h``)."""
        return carry

    def forward(self, params, x, *, key=None, train=False):
        carry, x_t = self._split(x)
        self.check_params(params, x_t)
        return self.recur(params, carry, self.project(params, x_t))


def _dims(shape: tuple[int, ...] | None) -> str:
    return "none" if shape is None else f"[{', '.join(map(str, shape))}]"


@functools.lru_cache(maxsize=256)
def _made_shapes(cell: Cell, features: int) -> dict[str, tuple[int, ...]]:
    """The shape of each parameter ``cell.init`` makes for ``features`` input features, by path."""
    step = jax.ShapeDtypeStruct((1, features), jnp.float32)
    made = jax.eval_shape(lambda: cell.init_params(jax.random.key(0), (cell.initial_carry((1,)), step)))
    return {path_str(path): tuple(a.shape) for path, a in jax.tree_util.tree_leaves_with_path(made)}


@dataclasses.dataclass(frozen=True)
class SimpleRNN(Cell):
    """Elman's simple recurrent cell: ``h' = activation(x W + b + h U)``; ``y = h'``.

    Args:
        hidden: size of the hidden state.
        activation: a ``jax.nn``-style function (default ``tanh``).

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> cell = fnn.SimpleRNN(4)
        >>> h, x_t = cell.initial_carry((2,)), jnp.ones((2, 3))
        >>> params, _ = cell.init(jax.random.key(0), (h, x_t))
        >>> h, y = cell(params, (h, x_t))
        >>> h.shape, bool((h == y).all())
        ((2, 4), True)
    """

    activation: Any = jnp.tanh

    def activate(self, params, carry, projected, hidden):
        h = self.activation(projected + hidden)
        return h, h


@dataclasses.dataclass(frozen=True)
class LSTM(Cell):
    """Long short-term memory (Hochreiter and Schmidhuber, 1997, with the forget gate of
    Gers et al., 2000). Carry ``(c, h)``; output ``h``.

    ``i, f, o = sigmoid(.)``, ``g = tanh(.)`` from ``x W + b + h U`` (gate order i, f, g, o),
    ``c' = f * c + i * g``, ``h' = o * tanh(c')``.

    Args:
        hidden: size of ``c`` and ``h``.
        forget_bias: initial bias of the forget gate (1 lets memories last at the start).

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> cell = fnn.LSTM(4)
        >>> carry, x_t = cell.initial_carry((2,)), jnp.ones((2, 3))
        >>> params, _ = cell.init(jax.random.key(0), (carry, x_t))
        >>> (c, h), y = cell(params, (carry, x_t))
        >>> c.shape, h.shape, y.shape
        ((2, 4), (2, 4), (2, 4))
    """

    forget_bias: float = 1.0
    gates = 4

    def initial_carry(self, batch_shape, dtype=jnp.float32):
        return (jnp.zeros((*batch_shape, self.hidden), dtype), jnp.zeros((*batch_shape, self.hidden), dtype))

    def initial_bias(self, key):
        b = super().initial_bias(key)
        return b.at[self.hidden : 2 * self.hidden].add(self.forget_bias)

    def hidden_input(self, carry):
        return carry[1]

    def activate(self, params, carry, projected, hidden):
        i, f, g, o = self.gate_values(projected + hidden)
        c = f * carry[0] + i * g
        h = o * jnp.tanh(c)
        return (c, h), h

    @staticmethod
    def gate_values(z: jax.Array) -> tuple[jax.Array, ...]:
        """``(i, f, g, o)`` after their activations, from the pre-activation ``z``."""
        i, f, g, o = jnp.split(z, 4, axis=-1)
        return jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)


@dataclasses.dataclass(frozen=True)
class GRU(Cell):
    """Gated recurrent unit (Cho et al., 2014). Carry and output ``h``.

    ``r = sigmoid(x W_r + b_r + h U_r)``, ``z = sigmoid(x W_z + b_z + h U_z)``,
    ``n = tanh(x W_n + b_n + r * (h U_n + b_hn))``, ``h' = (1 - z) * n + z * h``.
    Params as for every cell, plus ``hidden/b: [hidden]`` (the ``b_hn`` inside ``r *``).

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> cell = fnn.GRU(4)
        >>> h, x_t = cell.initial_carry((2,)), jnp.ones((2, 3))
        >>> params, _ = cell.init(jax.random.key(0), (h, x_t))
        >>> cell(params, (h, x_t))[0].shape
        (2, 4)
    """

    gates = 3

    def init_params(self, key, x):
        params = super().init_params(key, x)
        b_init = initializers.get(self.b_init)
        dtype = float_dtype(self, "param_dtype", self.param_dtype)
        params["hidden"]["b"] = b_init(jax.random.fold_in(key, 1), (self.hidden,), dtype)
        return params

    def activate(self, params, carry, projected, hidden):
        _, z, n, _ = self.gate_values(projected, hidden, params["hidden"]["b"])
        h = (1.0 - z) * n + z * carry
        return h, h

    @staticmethod
    def gate_values(projected: jax.Array, hidden: jax.Array, hidden_bias: jax.Array) -> tuple[jax.Array, ...]:
        """``(r, z, n)`` after their activations, and ``h U_n + b_hn`` (what ``r`` multiplies),
        from the input projection, the hidden product and ``hidden/b``."""
        x_r, x_z, x_n = jnp.split(projected, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(hidden, 3, axis=-1)
        r = jax.nn.sigmoid(x_r + h_r)
        z = jax.nn.sigmoid(x_z + h_z)
        reset = h_n + to_rank(hidden_bias.astype(projected.dtype), h_n.ndim)
        return r, z, jnp.tanh(x_n + r * reset), reset


def _as_cell(layer: Recurrent | Bidirectional, cell: Any) -> Cell:
    if not isinstance(cell, Cell):
        raise TypeError(
            f"{type(layer).__name__} runs a recurrent cell (fnn.SimpleRNN, fnn.LSTM, fnn.GRU or a "
            f"fnn.Cell subclass), got {type(cell).__name__}"
        )
    return cell


@dataclasses.dataclass(frozen=True)
class Recurrent(Layer):
    """Runs a cell over time with ``jax.lax.scan``: ``[batch, time, in] -> [batch, time, hidden]``.

    Args:
        cell: the recurrent cell.
        reverse: run from the last step to the first.
        stateful: keep the final carry as model state and start the next call from it:
            truncated backpropagation through time over consecutive batches of one long
            stream (the gradient stops at the batch boundary). State ``{"carry": ...}``;
            reset it by replacing it with ``layer.init``'s.
        remat: recompute each step's activations in the backward pass instead of storing
            them (``jax.checkpoint``), for long sequences.
        unroll: steps per iteration of the compiled loop (``lax.scan``'s ``unroll``).

    Masked sequences ``(x, mask)`` skip padded steps: there the carry stays as it was
    and the output is zero, so the final carry of a padded sequence equals that of the
    unpadded one, in either direction. Use ``scan`` for an explicit initial carry in
    and the final carry out.

    Inside ``fnn.reverse_mode_only()`` (a training step) the scan of a built-in cell has a
    hand-written backward loop: per step, the cell's element-wise gradient and one product
    for the hidden state's; each weight gradient, and the gradient of the input, is one
    product over all steps after that loop. The forward loop keeps the carry and one
    pre-activation per step (two for a GRU; an LSTM's gates after their activations and
    ``tanh(c')`` instead). With ``remat`` it keeps the carry alone, and the backward loop
    makes the step's activations again and takes the weight and input products at each
    step, so that it keeps no ``[time, batch, gates * hidden]`` cotangent either: slower,
    in the memory of JAX's own checkpointed scan.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> rnn = fnn.Recurrent(fnn.LSTM(8))
        >>> x = jnp.ones((2, 5, 3))
        >>> params, _ = rnn.init(jax.random.key(0), x)
        >>> rnn(params, x).shape
        (2, 5, 8)
        >>> ys, (c, h) = rnn.scan(params, x)
        >>> bool(jnp.allclose(h, ys[:, -1]))
        True
    """

    cell: Any
    reverse: bool = False
    stateful: bool = False
    remat: bool = False
    unroll: int = 1

    def __post_init__(self):
        _as_cell(self, self.cell)
        positive_int(self, "unroll", self.unroll)

    @property
    def name(self) -> str:
        return f"{'reverse_' if self.reverse else ''}{self.cell.name}"

    def _check(self, x: Any) -> tuple[Any, Any]:
        x, mask = split_mask(self, x)
        require_float(self, x)
        require_rank(self, x, 3, "batch, time, features")
        return x, mask

    def _carry_dtype(self, x: Any) -> Any:
        """The dtype the cell computes in, and so the carry's: as ``compute_dtype``."""
        if self.cell.dtype is not None:
            return float_dtype(self.cell, "dtype", self.cell.dtype)
        return promoted(x.dtype, float_dtype(self.cell, "param_dtype", self.cell.param_dtype))

    def init(self, key, x):
        x, _ = self._check(x)
        carry = self.cell.initial_carry(x.shape[:1], self._carry_dtype(x))
        step_input = jax.ShapeDtypeStruct((x.shape[0], x.shape[2]), x.dtype)
        params, _, _ = init_child(self.cell.name, self.cell, key, (carry, step_input))
        return params, ({"carry": carry} if self.stateful else {})

    def scan(
        self, params, x: Any, carry: Carry | None = None, mask: jax.Array | None = None
    ) -> tuple[jax.Array, Carry]:
        """``(ys [batch, time, hidden], final carry)`` from ``carry`` (default: zeros).

        ``x`` may be a masked pair instead of passing ``mask``.
        """
        x, pair_mask = self._check(x)
        mask = pair_mask if mask is None else split_mask(self, (x, mask))[1]
        x = zero_padding(x, mask)  # a padded step's NaN would reach the gradients through 0 * NaN
        cell = self.cell
        if carry is None:
            carry = cell.initial_carry(x.shape[:1], self._carry_dtype(x))
        step = jax.ShapeDtypeStruct((x.shape[0], x.shape[2]), x.dtype)  # a spec: no op in the program
        try:
            cell._check_carry(carry, step)
            cell.check_params(params, step)
            dtype = jax.eval_shape(cell.project, params, step).dtype
        except LayerError as error:
            raise error.within(cell.name) from None
        carry = jax.tree.map(lambda c: c.astype(dtype), carry)

        xs, time_mask = jnp.swapaxes(x, 0, 1), None if mask is None else mask.T
        options = (cell, self.reverse, self.unroll, self.remat)
        if reverse_only() and type(cell) in _HAND_WRITTEN:
            ys, carry = _scan_by_hand(*options, params, carry, xs, time_mask)
        else:
            ys, carry, _ = _scan(*options, params, carry, xs, time_mask)
        return jnp.swapaxes(ys, 0, 1), carry

    def apply(self, params, state, x, *, key=None, train=False):
        values, mask = self._check(x)
        carry = state.get("carry") if self.stateful else None
        if carry is not None and jax.tree.leaves(carry)[0].shape[0] != values.shape[0]:
            raise ShapeError(
                f"Recurrent(stateful=True) holds a carry for batch {jax.tree.leaves(carry)[0].shape[0]}, "
                f"got input {shape_str(values)}; re-initialise the state for a new batch size"
            )
        ys, carry = self.scan(params, values, carry, mask)
        if self.stateful:
            state = {"carry": jax.tree.map(lax.stop_gradient, carry)}
        return join_mask(ys, mask), state


def _masked_step(carry, new_carry, y_t, m_t):
    """Padding (``m_t`` false): the carry as it was and a zero output. The mask is laid
    along the leading (batch) axis of each piece, whatever its rank: a user's cell may
    carry a ``[batch]`` counter or a ``[batch, n, n]`` matrix beside its state."""
    if m_t is None:
        return new_carry, y_t
    carry = jax.tree.map(lambda new, old: jnp.where(along(m_t, jnp.ndim(new)), new, old), new_carry, carry)
    return carry, jnp.where(along(m_t, jnp.ndim(y_t)), y_t, 0)


def _scan(cell, reverse, unroll, remat, params, carry, xs, mask, save=False):
    """``(ys, final carry, saved)``: ``cell`` over time-major ``xs``. With ``save`` (the
    hand-written backward's forward pass) ``saved`` holds each step's carry in and, unless
    ``remat``, what the backward step needs of the rest (see ``_residuals``).

    The input projection is made step by step inside the loop, not once for the whole
    sequence before it: on CPU that trained the benchmark LSTM 1.4x faster in 40% less
    memory, as the [time, batch, gates * hidden] projection is never stored; with the
    hand-written backward pass, 1.4x faster in 37% less (one-off A/Bs)."""

    def step(carry, inputs):
        x_t, m_t = inputs
        saved = None
        if save:
            projected, hidden = _pre_activation(cell, params, carry, x_t)
            new_carry, y_t = cell.activate(params, carry, projected, hidden)
            saved = (carry, None if remat else _residuals(cell, params, carry, projected, hidden))
        else:
            new_carry, y_t = cell.recur(params, carry, cell.project(params, x_t))
        new_carry, y_t = _masked_step(carry, new_carry, y_t, m_t)
        return new_carry, (y_t, saved)

    if remat and not save:
        step = jax.checkpoint(step)
    carry, (ys, saved) = lax.scan(step, carry, (xs, mask), reverse=reverse, unroll=unroll)
    return ys, carry, saved


def _pre_activation(cell, params, carry, x_t):
    """A built-in cell's step before ``activate``: its input projection and hidden product
    (as ``Cell.recur`` makes them)."""
    projected = cell.project(params, x_t)
    return projected, cell._hidden(params, cell.hidden_input(carry), projected.dtype)


def _parts(cell, projected, hidden):
    """What the backward pass keeps of a step's pre-activation: the sum of the input
    projection and the hidden product for a cell that only reads their sum (one array,
    one cotangent), both otherwise (a GRU's reset gate multiplies its hidden product)."""
    return (projected + hidden,) if type(cell) in _SUMMED else (projected, hidden)


def _residuals(cell, params, carry, projected, hidden):
    """What the hand-written backward pass keeps of a step: for an LSTM or a GRU its gates
    after their activations (``_GATE_RULES``), so that the backward step computes no
    sigmoid or tanh; for a SimpleRNN the pre-activation (``_parts``). Against keeping the
    pre-activation, the benchmark LSTM's step ran 1.08x faster for 2 MiB more of its 29
    (paired medians of two one-off A/Bs of 11 and 21 rounds), and a GRU language model's
    of the same size 1.17-1.21x (two one-off A/Bs of 21 rounds)."""
    rule = _GATE_RULES.get(type(cell))
    if rule is not None:
        return rule.gates(cell, params, carry, projected, hidden)
    return _parts(cell, projected, hidden)


def _lstm_gates(cell, params, carry, projected, hidden):
    """An LSTM's four gates after their activations and ``tanh(c')``."""
    i, f, g, o = cell.gate_values(projected + hidden)
    return i, f, g, o, jnp.tanh(f * carry[0] + i * g)


def _lstm_step_grad(carry, gates, m_t, d_new, d_y):
    """An LSTM step's cotangents from its saved gates: ``(d_carry, (d_z,), {})`` as the
    ``jax.vjp`` of the masked ``activate`` gives them."""
    i, f, g, o, t = gates
    d_c_new, d_h_new = d_new
    d_h = d_h_new + d_y
    if m_t is not None:  # a padded step passes the carry's cotangent through unchanged
        keep = m_t[:, None]
        d_c_in, d_h = jnp.where(keep, d_c_new, 0), jnp.where(keep, d_h, 0)
    else:
        d_c_in = d_c_new
    d_c = d_c_in + d_h * o * (1 - t * t)
    d_z = jnp.concatenate([d_c * g * i * (1 - i), d_c * carry[0] * f * (1 - f), d_c * i * (1 - g * g),
                           d_h * t * o * (1 - o)], axis=-1)
    d_c_prev, d_h_prev = d_c * f, jnp.zeros_like(d_h_new)
    if m_t is not None:
        d_c_prev, d_h_prev = jnp.where(keep, d_c_prev, d_c_new), jnp.where(keep, 0, d_h_new)
    return (d_c_prev, d_h_prev), (d_z,), {}


def _gru_gates(cell, params, carry, projected, hidden):
    """A GRU's ``r``, ``z``, ``n`` after their activations and ``h U_n + b_hn``."""
    return cell.gate_values(projected, hidden, params["hidden"]["b"])


def _gru_step_grad(carry, gates, m_t, d_new, d_y):
    """A GRU step's cotangents from its saved gates: ``(d_carry, (d_projected, d_hidden),
    {"b": d_b_hn})`` as the ``jax.vjp`` of the masked ``activate`` gives them."""
    r, z, n, reset = gates
    d_h = d_new + d_y
    if m_t is not None:  # a padded step passes the carry's cotangent through unchanged
        keep = m_t[:, None]
        d_h = jnp.where(keep, d_h, 0)
    d_n = d_h * (1 - z) * (1 - n * n)  # through tanh
    d_z = d_h * (carry - n) * z * (1 - z)
    d_r = d_n * reset * r * (1 - r)
    d_reset = d_n * r
    d_prev = d_h * z
    if m_t is not None:
        d_prev = jnp.where(keep, d_prev, d_new)
    parts = (jnp.concatenate([d_r, d_z, d_n], axis=-1), jnp.concatenate([d_r, d_z, d_reset], axis=-1))
    return d_prev, parts, {"b": d_reset.sum(0)}


class _GateRule(NamedTuple):
    gates: Callable  # (cell, params, carry, projected, hidden) -> the step's saved gates
    step_grad: Callable  # (carry, gates, mask_t, d_carry, d_y) -> (d_carry, d_parts, d_rest)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _scan_by_hand(cell, reverse, unroll, remat, params, carry, xs, mask):
    """``_scan`` with a hand-written backpropagation through time (``fnn.reverse_mode_only``).

    The backward loop makes, per step, the cell's element-wise gradient (``jax.vjp`` of
    ``cell.activate``; an LSTM's and a GRU's written out from their saved gates, ``_GATE_RULES``) and
    one product, the hidden state's gradient ``dz @ U^T``. The weight gradients, the input
    projection's bias gradient and the input's gradient are each one product (or sum) over
    all steps after the loop, not one small one per step inside it. The forward loop keeps
    only each step's carry and ``_residuals`` (``remat``: the carry alone; the backward loop
    then makes the rest again, and takes the products at each step, adding the weight
    gradients up in its carry, so that it keeps no cotangent per step either)."""
    ys, carry, _ = _scan(cell, reverse, unroll, remat, params, carry, xs, mask)
    return ys, carry


def _scan_by_hand_forward(cell, reverse, unroll, remat, params, carry, xs, mask):
    ys, new_carry, saved = _scan(cell, reverse, unroll, remat, params, carry, xs, mask, save=True)
    return (ys, new_carry), (params, xs, mask, saved)


def _scan_by_hand_backward(cell, reverse, unroll, remat, residuals, cotangents):
    params, xs, mask, (carries, kept) = residuals
    d_ys, d_carry = cotangents
    rest = {k: v for k, v in params["hidden"].items() if k != "w"}  # a GRU's bias inside r *

    def activate(carry, parts, rest, m_t):
        p = {**params, "hidden": {**params["hidden"], **rest}}
        projected, hidden = parts if len(parts) == 2 else (parts[0], 0)
        return _masked_step(carry, *cell.activate(p, carry, projected, hidden), m_t)

    def weight_grad(rows, g, like):
        # over time and batch in place: time-major, so merging the two axes would
        # interleave a batch split among devices
        return lax.dot_general(rows.astype(g.dtype), g, (((0, 1), (0, 1)), ((), ()))).astype(like.dtype)

    w_in, b_in, w_hidden = params["input"]["w"], params["input"]["b"], params["hidden"]["w"]

    def input_grad(g_in):
        # Cell.project's input gradient (x and w cast to the compute dtype, g_in's)
        return jnp.matmul(g_in, w_in.astype(g_in.dtype).T).astype(xs.dtype)

    def step(grads, inputs):
        d_carry, d_rest, summed = grads
        carry, kept, x_t, m_t, d_y = inputs
        if kept is None:  # remat: the step's residuals again
            kept = _residuals(cell, params, carry, *_pre_activation(cell, params, carry, x_t))
        rule = _GATE_RULES.get(type(cell))
        if rule is not None:
            d_carry, d_parts, d_step_rest = rule.step_grad(carry, kept, m_t, d_carry, d_y)
        else:
            _, vjp = jax.vjp(lambda c, z, r: activate(c, z, r, m_t), carry, kept, rest)
            d_carry, d_parts, d_step_rest = vjp((d_carry, d_y))
        _, to_carry = jax.vjp(cell.hidden_input, carry)
        (d_h,) = to_carry(jnp.matmul(d_parts[-1], u_t))
        d_carry = jax.tree.map(jnp.add, d_carry, d_h)
        d_rest = jax.tree.map(lambda total, d: total + d.astype(total.dtype), d_rest, d_step_rest)
        if summed is None:
            return (d_carry, d_rest, None), d_parts
        # remat: the step's products now, so that no [time, ...] cotangent is kept
        g_in, g_hidden = d_parts[0], d_parts[-1]
        summed = jax.tree.map(lambda total, d: total + d.astype(total.dtype), summed, (
            step_weight_grad(x_t, g_in), g_in.sum(0), step_weight_grad(cell.hidden_input(carry), g_hidden)))
        return (d_carry, d_rest, summed), input_grad(g_in)

    # U^T copied once before the loop (the barrier keeps XLA from folding the transpose
    # into each step's product): 1.04-1.07x the LSTM step in one-off A/Bs
    u_t = lax.optimization_barrier(w_hidden.astype(d_ys.dtype).T)
    zeros = jax.tree.map(jnp.zeros_like, rest)
    summed = jax.tree.map(jnp.zeros_like, (w_in, b_in, w_hidden)) if remat else None
    inputs = (carries, kept, xs, mask, d_ys)
    (d_carry, d_rest, summed), out = lax.scan(
        step, (d_carry, zeros, summed), inputs, reverse=not reverse, unroll=unroll)
    if remat:
        (d_w_in, d_b_in, d_w_hidden), d_xs = summed, out
    else:
        g_in, g_hidden = out[0], out[-1]
        d_w_in, d_b_in = weight_grad(xs, g_in, w_in), g_in.sum((0, 1)).astype(b_in.dtype)
        d_w_hidden = weight_grad(cell.hidden_input(carries), g_hidden, w_hidden)
        d_xs = input_grad(g_in)
    d_params = {"input": {"w": d_w_in, "b": d_b_in}, "hidden": {"w": d_w_hidden, **d_rest}}
    return d_params, d_carry, d_xs, None


_scan_by_hand.defvjp(_scan_by_hand_forward, _scan_by_hand_backward)
# the cells whose step is ``Cell.project``, ``Cell._hidden`` and ``activate`` (a subclass may
# compute its step otherwise, so it keeps JAX's gradient of the loop)
_HAND_WRITTEN = (SimpleRNN, LSTM, GRU)
# those that read the input projection and the hidden product only as their sum
_SUMMED = (SimpleRNN, LSTM)
# those whose forward loop keeps the gates after their activations (``_residuals``), with
# the backward step written out from them
_GATE_RULES = {LSTM: _GateRule(_lstm_gates, _lstm_step_grad), GRU: _GateRule(_gru_gates, _gru_step_grad)}


@dataclasses.dataclass(frozen=True)
class Bidirectional(Layer):
    """One cell run forward and one backward over the sequence, outputs concatenated.

    Args:
        cell: the forward cell.
        backward_cell: the backward cell (default: a cell like ``cell``, with its own
            parameters).
        remat, unroll: as for ``Recurrent``.

    Shapes: ``[batch, time, in] -> [batch, time, hidden_fwd + hidden_bwd]`` (masked pairs
    too). Params ``{"forward": ..., "backward": ...}``.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> birnn = fnn.Bidirectional(fnn.GRU(8))
        >>> params, _ = birnn.init(jax.random.key(0), jnp.ones((2, 5, 3)))
        >>> birnn(params, jnp.ones((2, 5, 3))).shape
        (2, 5, 16)
    """

    cell: Any
    backward_cell: Any = None
    remat: bool = False
    unroll: int = 1

    def __post_init__(self):
        _as_cell(self, self.cell)
        if self.backward_cell is not None:
            _as_cell(self, self.backward_cell)

    @property
    def directions(self) -> dict[str, Recurrent]:
        backward = self.cell if self.backward_cell is None else self.backward_cell
        options = {"remat": self.remat, "unroll": self.unroll}
        return {
            "forward": Recurrent(self.cell, **options),
            "backward": Recurrent(backward, reverse=True, **options),
        }

    def init(self, key, x):
        keys = jax.random.split(key)
        params = {}
        for k, (name, rnn) in zip(keys, self.directions.items()):
            params[name], _, _ = init_child(name, rnn, k, x)
        return params, {}

    def scan(self, params, x: Any, carry: tuple[Carry, Carry] | None = None, mask: jax.Array | None = None):
        """``(ys, (forward final carry, backward final carry))``; ``carry`` as such a pair."""
        carries = (None, None) if carry is None else carry
        directions = self.directions.items()
        outputs = [rnn.scan(params[name], x, c, mask) for (name, rnn), c in zip(directions, carries)]
        return jnp.concatenate([ys for ys, _ in outputs], axis=-1), tuple(c for _, c in outputs)

    def apply(self, params, state, x, *, key=None, train=False):
        values, mask = split_mask(self, x)
        ys, _ = self.scan(params, values, mask=mask)
        return join_mask(ys, mask), state

