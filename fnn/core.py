"""The layer contract and the combinators that build bigger layers from smaller ones.

A layer is an immutable, hashable description (a frozen dataclass of hyperparameters)
with two pure functions:

* ``init(key, x) -> (params, state)`` builds parameters and state from an rng key and an
  input *spec*: anything with ``.shape`` and ``.dtype`` (an array, a
  ``jax.ShapeDtypeStruct``, or a tuple of them for layers that take several inputs).
  It runs under ``jax.eval_shape``.
* ``apply(params, state, x, *, key=None, train=False) -> (y, state)`` computes the
  output. Randomness comes in as ``key``, the mode as ``train``, and state goes in and
  comes out.

A stateless model is also a plain function of its parameters: ``y = model(params, x)``.

Example:
    >>> import jax, jax.numpy as jnp, fnn
    >>> model = fnn.serial(fnn.Dense(16), jax.nn.relu, fnn.Dense(3))
    >>> params, state = model.init(jax.random.key(0), jax.ShapeDtypeStruct((4, 8), jnp.float32))
    >>> sorted(params)
    ['dense_0', 'dense_1']
    >>> model(params, jnp.ones((4, 8))).shape
    (4, 3)
"""

from __future__ import annotations

import dataclasses
import numbers
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fnn.autodiff import reverse_only

Params = dict[str, Any]
State = dict[str, Any]


class LayerError(ValueError):
    """A layer was misused: the message starts with the layer's path in the model.

    The path is ``"dense_1"`` or ``"encoder/conv_0"``; combinators add their part of it
    as the error passes up through them.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> model = fnn.serial(head=fnn.serial(fnn.Conv(4, (3, 3))))
        >>> try:
        ...     model.init(jax.random.key(0), jnp.zeros((2, 8)))
        ... except fnn.LayerError as error:
        ...     print(error.path, type(error).__name__)
        ...     print(error)
        ('head', 'conv_0') ShapeError
        head/conv_0: Conv expects input of rank 4 (batch, height, width, channels), got float32[2,8]
    """

    def __init__(self, message: str, path: tuple[str, ...] = ()):
        self.message = message
        self.path = path
        where = "/".join(path) if path else "<model>"
        super().__init__(f"{where}: {message}")

    def within(self, name: str) -> LayerError:
        """The same error, seen from the parent that holds this layer as ``name``."""
        return type(self)(self.message, (name, *self.path))


class ShapeError(LayerError):
    """A layer got an input of a shape or dtype it cannot take; says what it expected.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> model = fnn.serial(fnn.Dense(4), fnn.Conv(8, (3, 3)))
        >>> model.init(jax.random.key(0), jnp.ones((2, 3)))
        Traceback (most recent call last):
        ...
        fnn.core.ShapeError: conv_0: Conv expects input of rank 4 (batch, height, width, channels), got ...
    """


def shape_str(x: Any) -> str:
    """A short description of an input spec, for error messages: ``float32[8,28,28,1]``.

    Example:
        >>> import jax.numpy as jnp
        >>> shape_str((jnp.zeros((8, 3)), jnp.zeros((8,), bool)))
        '(float32[8,3], bool[8])'
    """
    if isinstance(x, tuple | list):
        return "(" + ", ".join(shape_str(v) for v in x) + ")"
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"{jnp.dtype(x.dtype).name}[{','.join(str(d) for d in x.shape)}]"
    return type(x).__name__


def to_rank(x: jax.Array, ndim: int) -> jax.Array:
    """``x`` with leading axes of size 1 up to rank ``ndim``: a bias ``[features]`` to add to
    ``y [..., features]``. fnn spells each such broadcast out, so that it runs with
    ``jax_numpy_rank_promotion="raise"``, which refuses an implicit one.

    Example:
        >>> import jax.numpy as jnp
        >>> to_rank(jnp.zeros(3), 3).shape
        (1, 1, 3)
    """
    return jax.lax.expand_dims(x, tuple(range(ndim - x.ndim)))


def promoted(*values: Any) -> Any:
    """``jnp.result_type(*values)`` by JAX's standard rules, whatever ``jax_numpy_dtype_promotion``
    says: the dtype fnn then casts to explicitly, so that its code runs under "strict" too.

    Example:
        >>> import jax.numpy as jnp
        >>> promoted(jnp.bfloat16, jnp.float32)
        dtype('float32')
    """
    with jax.numpy_dtype_promotion("standard"):
        return jnp.result_type(*values)


def snake_case(name: str) -> str:
    """``"BatchNorm"`` -> ``"batch_norm"``, ``"ConvTranspose"`` -> ``"conv_transpose"``.

    Example:
        >>> snake_case("MultiHeadAttention")
        'multi_head_attention'
    """
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer of any sign (Python's or NumPy's, not a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """Whether ``value`` is a real number (Python's or NumPy's, not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_count(value: Any, least: int = 1) -> bool:
    """Whether ``value`` is an integer (Python's or NumPy's, not a bool) of at least ``least``.

    Example:
        >>> import numpy as np
        >>> is_count(3), is_count(np.int64(3)), is_count(0), is_count(0, least=0), is_count(True)
        (True, True, False, True, False)
    """
    return is_int(value) and bool(value >= least)


def is_seed(value: Any) -> bool:
    """Whether ``value`` is a seed: an integer in ``[0, 2**32)``. Generators keep 32 bits of
    a seed or read it in 32-bit words (``jax.random.key(2**32)`` is ``jax.random.key(0)``,
    and NumPy's ``default_rng([2**32, 0])`` is ``default_rng([0, 1])``), so larger seeds would
    repeat smaller ones.

    Example:
        >>> is_seed(0), is_seed(2**32 - 1), is_seed(2**32), is_seed(-1)
        (True, True, False, False)
    """
    return is_count(value, least=0) and bool(value < 2**32)


def path_str(path: Sequence[Any]) -> str:
    """A pytree path as fnn names it: ``"params/block_0/attention/query/w"``.

    Dict keys, NamedTuple fields and sequence indices alike become ``/``-separated parts;
    checkpoints and the precision policy's ``keep`` patterns both use this name.

    Example:
        >>> import jax
        >>> [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path({"dense_0": {"w": 1}, "seq": [2]})]
        ['dense_0/w', 'seq/0']
    """
    return "/".join(_key_part(key) for key in path)


def _key_part(key: Any) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


@dataclasses.dataclass(frozen=True)
class Layer:
    """Base class of every layer. Subclasses are frozen dataclasses of hyperparameters.

    A subclass implements ``init`` and ``apply``; a layer without state may instead
    implement the shorter pair ``init_params(key, x) -> params`` and
    ``forward(params, x, *, key, train) -> y``, which the defaults below wrap.

    Example:
        >>> import dataclasses, jax, jax.numpy as jnp, fnn
        >>> @dataclasses.dataclass(frozen=True)
        ... class Bias(fnn.Layer):
        ...     def init_params(self, key, x):
        ...         return {"b": jnp.zeros(x.shape[-1:])}
        ...     def forward(self, params, x, *, key=None, train=False):
        ...         return x + params["b"]
        >>> params, state = Bias().init(jax.random.key(0), jnp.zeros((2, 3)))
        >>> params["b"].shape, state, Bias()(params, jnp.ones((2, 3))).shape
        ((3,), {}, (2, 3))
    """

    def init(self, key: jax.Array, x: Any) -> tuple[Params, State]:
        return self.init_params(key, x), {}

    def apply(
        self, params: Params, state: State, x: Any, *, key: jax.Array | None = None,
        train: bool = False,
    ) -> tuple[Any, State]:
        return self.forward(params, x, key=key, train=train), state

    def init_params(self, key: jax.Array, x: Any) -> Params:
        return {}

    def forward(self, params: Params, x: Any, *, key: jax.Array | None, train: bool) -> Any:
        raise NotImplementedError(f"{type(self).__name__} implements neither apply nor forward")

    def __call__(
        self, params: Params, x: Any, *, key: jax.Array | None = None, train: bool = False
    ) -> Any:
        """Apply a model that keeps no state: ``y = model(params, x)``."""
        y, _ = self.apply(params, {}, x, key=key, train=train)
        return y

    @property
    def name(self) -> str:
        """The stem of this layer's key in its parent's parameter dict."""
        return snake_case(type(self).__name__)

    def output_spec(self, params: Params, state: State, x: Any) -> Any:
        """The output's shape and dtype for input spec ``x``, computed without any FLOPs."""
        return jax.eval_shape(lambda p, s, v: self.apply(p, s, v)[0], params, state, x)

    def trace(self, params: Params, state: State, x: Any, path: tuple[str, ...] = ()) -> list[Node]:
        """Every layer of this model with its path and output spec, outermost first."""
        return [Node(path, self, self.output_spec(params, state, x), params)]


class Node(NamedTuple):
    """One layer of a model as ``fnn.summary`` lists it: its path, the layer, its output
    spec and its own parameters.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> model = fnn.serial(fnn.Dense(4), jax.nn.relu)
        >>> params, state = model.init(jax.random.key(0), jnp.ones((2, 3)))
        >>> [(n.path, type(n.layer).__name__, n.output.shape)
        ...  for n in model.trace(params, state, jnp.ones((2, 3)))]
        [((), 'Serial', (2, 4)), (('dense_0',), 'Dense', (2, 4)), (('relu_0',), 'Fn', (2, 4))]
    """

    path: tuple[str, ...]
    layer: Layer
    output: Any
    params: Params


@dataclasses.dataclass(frozen=True)
class Fn(Layer):
    """Any pure function of the input, used as a layer: ``Fn(jax.nn.relu)``.

    Combinators wrap plain callables in ``Fn`` themselves, so
    ``fnn.serial(fnn.Dense(8), jax.nn.relu)`` works as written.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> fnn.Fn(jnp.square)({}, jnp.array([1.0, 2.0]))
        Array([1., 4.], dtype=float32)
    """

    fn: Callable[[Any], Any]
    label: str | None = None

    def forward(self, params, x, *, key=None, train=False):
        return self.fn(x)

    @property
    def name(self) -> str:
        return self.label or getattr(self.fn, "__name__", "fn").strip("<>")


@dataclasses.dataclass(frozen=True)
class Identity(Layer):
    """Returns its input unchanged; ``fnn.identity`` is one.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.identity({}, jnp.array([1.0, 2.0]))
        Array([1., 2.], dtype=float32)
    """

    def forward(self, params, x, *, key=None, train=False):
        return x


def as_layer(layer: Layer | Callable[[Any], Any]) -> Layer:
    """A layer as given, or a plain callable wrapped in ``Fn``.

    Example:
        >>> import jax
        >>> layer = as_layer(jax.nn.relu)
        >>> type(layer).__name__, layer.name, as_layer(layer) is layer
        ('Fn', 'relu', True)
    """
    if isinstance(layer, Layer):
        return layer
    if callable(layer):
        return Fn(layer)
    raise TypeError(f"expected a fnn Layer or a callable, got {type(layer).__name__}: {layer!r}")


def split_key(key: jax.Array | None, n: int) -> list[jax.Array | None]:
    """``n`` independent keys, or ``n`` Nones when there is no key to split.

    Example:
        >>> import jax
        >>> len(split_key(jax.random.key(0), 3)), split_key(None, 2)
        (3, [None, None])
    """
    if key is None:
        return [None] * n
    return list(jax.random.split(key, n))


def _named(layers: Sequence[Any], named: dict[str, Any]) -> tuple[tuple[Layer, ...], tuple[str, ...]]:
    """Children and their names: ``dense_0, dense_1, conv_0`` by type, or the names given."""
    if layers and named:
        raise TypeError("give the children either all by position or all by name, not both")
    if named:
        return tuple(as_layer(v) for v in named.values()), tuple(named)
    children = tuple(as_layer(v) for v in layers)
    counts: dict[str, int] = {}
    names = []
    for child in children:
        index = counts.get(child.name, 0)
        counts[child.name] = index + 1
        names.append(f"{child.name}_{index}")
    return children, tuple(names)


_MASKS_HINT = "a layer that knows nothing of masks takes a masked sequence inside fnn.KeepMask"


def init_child(name: str, layer: Layer, key: jax.Array, x: Any) -> tuple[Params, State, Any]:
    """Initialise one child and compute its output spec, naming it in any error; for
    writing a combinator.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> from fnn.core import init_child
        >>> params, state, out = init_child("proj", fnn.Dense(4), jax.random.key(0), jnp.ones((2, 3)))
        >>> params["w"].shape, out.shape
        ((3, 4), (2, 4))
        >>> init_child("proj", fnn.Dense(4), jax.random.key(0), jnp.ones(()))
        Traceback (most recent call last):
        ...
        fnn.core.ShapeError: proj: Dense expects ...
    """
    try:
        params, state = layer.init(key, x)
        return params, state, layer.output_spec(params, state, x)
    except LayerError as error:
        raise error.within(name) from None
    except (TypeError, ValueError, AttributeError) as error:
        message = f"{type(layer).__name__} cannot take input {shape_str(x)}: {error}"
        if _is_masked(x):
            message += f"; {_MASKS_HINT}"
        raise ShapeError(message, (name,)) from error


def apply_child(
    name: str, layer: Layer, params: Params, state: State, x: Any, key: jax.Array | None,
    train: bool,
) -> tuple[Any, State]:
    """Apply one child to its part of the parameters and state, naming it in any error;
    for writing a combinator.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> from fnn.core import apply_child
        >>> params = {"proj": fnn.Dense(4).init(jax.random.key(0), jnp.ones((2, 3)))[0]}
        >>> y, state = apply_child("proj", fnn.Dense(4), params, {}, jnp.ones((2, 3)), None, False)
        >>> y.shape, state
        ((2, 4), {})
    """
    try:
        return layer.apply(params.get(name, {}), state.get(name, {}), x, key=key, train=train)
    except LayerError as error:
        raise error.within(name) from None
    except AttributeError as error:
        if not _is_masked(x):
            raise
        raise ShapeError(
            f"{type(layer).__name__} cannot take input {shape_str(x)}: {error}; {_MASKS_HINT}", (name,)
        ) from error
    except KeyError as error:
        lacking = _lacks_entry(layer, params.get(name, {}), state.get(name, {}), x, error)
        if lacking is None:
            raise
        held = sorted(lacking[1])
        hint = (
            "were the parameters made by this model's init?" if lacking[0] == "parameter" else
            "a model that keeps state runs as model.apply(params, state, x, train=...), with the "
            "state its init made (model(params, x) passes none)"
        )
        among = "parameters" if lacking[0] == "parameter" else "state entries"
        raise LayerError(
            f"{type(layer).__name__} found no {lacking[0]} {error} among its {among} "
            f"{{{', '.join(held)}}}; {hint}", (name,)
        ) from error


def _lacks_entry(layer: Layer, params: Any, state: Any, x: Any, error: KeyError) -> tuple[str, Any] | None:
    """``("parameter", params)`` or ``("state entry", state)`` when ``error`` is ``layer``
    looking up an entry its ``init`` makes and that tree lacks; None when it is a key of the
    input or of a user's own lookup."""
    missing = error.args[0] if error.args else None
    trees = [(what, tree) for what, tree in (("parameter", params), ("state entry", state))
             if isinstance(tree, dict) and missing not in tree]
    if not trees:
        return None
    try:
        spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), x)
        made = jax.eval_shape(layer.init, jax.random.key(0), spec)
    except Exception:  # only deciding which error to raise
        return None
    for what, tree in trees:
        made_tree = made[0] if what == "parameter" else made[1]
        if isinstance(made_tree, dict) and missing in made_tree:
            return what, tree
    return None


def _keep(tree: dict[str, Any]) -> dict[str, Any]:
    """Drop the children that have nothing to hold, so trees list only what is there."""
    return {name: value for name, value in tree.items() if value}


@dataclasses.dataclass(frozen=True)
class Serial(Layer):
    """Layers applied one after another. Build it with ``fnn.serial``.

    Example:
        >>> import jax, fnn
        >>> model = fnn.serial(fnn.Dense(8), jax.nn.relu, fnn.Dense(2))
        >>> type(model).__name__, model.names
        ('Serial', ('dense_0', 'relu_0', 'dense_1'))
        >>> fnn.serial(hidden=fnn.Dense(8), head=fnn.Dense(2)).names
        ('hidden', 'head')
    """

    layers: tuple[Layer, ...]
    names: tuple[str, ...]

    def init(self, key, x):
        params, state = {}, {}
        for name, layer, k in zip(self.names, self.layers, split_key(key, len(self.layers))):
            params[name], state[name], x = init_child(name, layer, k, x)
        return _keep(params), _keep(state)

    def apply(self, params, state, x, *, key=None, train=False):
        new_state = {}
        for name, layer, k in zip(self.names, self.layers, split_key(key, len(self.layers))):
            x, new_state[name] = apply_child(name, layer, params, state, x, k, train)
        return x, _keep(new_state)

    def trace(self, params, state, x, path=()):
        nodes = [Node(path, self, self.output_spec(params, state, x), params)]
        for name, layer in zip(self.names, self.layers):
            p, s = params.get(name, {}), state.get(name, {})
            nodes += layer.trace(p, s, x, (*path, name))
            x = layer.output_spec(p, s, x)
        return nodes


def serial(*layers: Layer | Callable, **named: Layer | Callable) -> Serial:
    """Compose layers in sequence; the result is itself a layer.

    Children are named by type and position (``dense_0``, ``relu_0``, ``dense_1``) or
    by the keywords given (``serial(encoder=..., head=...)``). Children without
    parameters are left out of the parameter dict.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> mlp = fnn.serial(fnn.Dense(32), jax.nn.relu, fnn.Dense(10))
        >>> params, _ = mlp.init(jax.random.key(0), jnp.zeros((1, 64)))
        >>> jax.tree.map(jnp.shape, params)
        {'dense_0': {'b': (32,), 'w': (64, 32)}, 'dense_1': {'b': (10,), 'w': (32, 10)}}
    """
    children, names = _named(layers, named)
    return Serial(children, names)


@dataclasses.dataclass(frozen=True)
class Parallel(Layer):
    """Child ``i`` applied to input ``i`` of a tuple. Build it with ``fnn.parallel``.

    Example:
        >>> import jax, fnn
        >>> branches = fnn.parallel(fnn.Dense(2), fnn.Dense(3))
        >>> type(branches).__name__, branches.names
        ('Parallel', ('dense_0', 'dense_1'))
    """

    layers: tuple[Layer, ...]
    names: tuple[str, ...]

    def _check(self, x):
        if not isinstance(x, tuple | list) or len(x) != len(self.layers):
            raise ShapeError(
                f"parallel of {len(self.layers)} layers expected a tuple of "
                f"{len(self.layers)} inputs, got {shape_str(x)}; use fnn.fan_out({len(self.layers)}) "
                "before it to feed the same input to every branch"
            )

    def init(self, key, x):
        self._check(x)
        params, state = {}, {}
        for name, layer, k, xi in zip(self.names, self.layers, split_key(key, len(x)), x):
            params[name], state[name], _ = init_child(name, layer, k, xi)
        return _keep(params), _keep(state)

    def apply(self, params, state, x, *, key=None, train=False):
        self._check(x)
        ys, new_state = [], {}
        for name, layer, k, xi in zip(self.names, self.layers, split_key(key, len(x)), x):
            y, new_state[name] = apply_child(name, layer, params, state, xi, k, train)
            ys.append(y)
        return tuple(ys), _keep(new_state)

    def trace(self, params, state, x, path=()):
        nodes = [Node(path, self, self.output_spec(params, state, x), params)]
        for name, layer, xi in zip(self.names, self.layers, x):
            nodes += layer.trace(params.get(name, {}), state.get(name, {}), xi, (*path, name))
        return nodes


def parallel(*layers: Layer | Callable, **named: Layer | Callable) -> Parallel:
    """Apply child ``i`` to element ``i`` of a tuple input; returns a tuple.

    With ``fan_out`` before it and ``fan_in_concat`` or ``fan_in_sum`` after it, this
    builds branching blocks.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> block = fnn.serial(fnn.fan_out(2), fnn.parallel(fnn.Dense(4), fnn.Dense(6)),
        ...                    fnn.fan_in_concat())
        >>> params, _ = block.init(jax.random.key(0), jnp.zeros((2, 3)))
        >>> block(params, jnp.zeros((2, 3))).shape
        (2, 10)
    """
    children, names = _named(layers, named)
    return Parallel(children, names)


@dataclasses.dataclass(frozen=True)
class FanOut(Layer):
    """Copies its input into a tuple of ``n``. Build it with ``fnn.fan_out``.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> a, b = fnn.core.FanOut(2)({}, jnp.ones(3))
        >>> a.shape, b.shape
        ((3,), (3,))
    """

    n: int

    def __post_init__(self):
        if not is_count(self.n):
            raise ValueError(f"FanOut: n must be a positive int, got {self.n!r}")
        object.__setattr__(self, "n", int(self.n))  # a NumPy int as Python's, so the layer stays hashable

    def forward(self, params, x, *, key=None, train=False):
        return (x,) * self.n


def _check_tuple(layer: Layer, x: Any) -> None:
    if not isinstance(x, tuple | list) or not x:
        raise ShapeError(f"{type(layer).__name__} expected a tuple of arrays, got {shape_str(x)}")


@dataclasses.dataclass(frozen=True)
class FanInConcat(Layer):
    """Concatenates a tuple of arrays along ``axis`` (the feature axis by default).
    Build it with ``fnn.fan_in_concat``.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.core.FanInConcat()({}, (jnp.ones((2, 3)), jnp.ones((2, 5)))).shape
        (2, 8)
    """

    axis: int = -1

    def __post_init__(self):
        if not is_int(self.axis):
            raise ValueError(f"FanInConcat: axis must be an int, got {self.axis!r}")
        object.__setattr__(self, "axis", int(self.axis))

    def _check(self, x: Any) -> None:
        """A tuple of arrays of one rank, with ``axis``, equal in every other axis (at init and
        again at apply)."""
        _check_tuple(self, x)
        ranks = {len(v.shape) for v in x}
        rank = max(ranks)
        if len(ranks) != 1 or not -rank <= self.axis < rank:
            raise ShapeError(
                f"FanInConcat(axis={self.axis}) needs inputs of one rank with an axis {self.axis}, "
                f"got {shape_str(x)}"
            )
        axis = self.axis % rank
        if len({tuple(d for i, d in enumerate(v.shape) if i != axis) for v in x}) != 1:
            raise ShapeError(
                f"FanInConcat(axis={self.axis}) needs inputs equal in all other axes, "
                f"got {shape_str(x)}"
            )

    def init_params(self, key, x):
        self._check(x)
        return {}

    def forward(self, params, x, *, key=None, train=False):
        self._check(x)
        return jnp.concatenate(x, axis=self.axis)


@dataclasses.dataclass(frozen=True)
class FanInSum(Layer):
    """Sums a tuple of arrays of one shape. Build it with ``fnn.fan_in_sum``.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.core.FanInSum()({}, (jnp.ones(3), 2 * jnp.ones(3))).tolist()
        [3.0, 3.0, 3.0]
    """

    def _check(self, x: Any) -> None:
        _check_tuple(self, x)
        if len({tuple(v.shape) for v in x}) != 1:
            raise ShapeError(f"FanInSum needs inputs of one shape, got {shape_str(x)}")

    def init_params(self, key, x):
        self._check(x)
        return {}

    def forward(self, params, x, *, key=None, train=False):
        self._check(x)
        total = x[0]
        for v in x[1:]:
            total = total + v
        return total


def fan_out(n: int) -> FanOut:
    """``x -> (x,) * n``: feeds one input to ``n`` parallel branches.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.fan_out(2)({}, jnp.array([1.0]))
        (Array([1.], dtype=float32), Array([1.], dtype=float32))
    """
    return FanOut(n)


def fan_in_concat(axis: int = -1) -> FanInConcat:
    """``(a, b, ...) -> concatenate([a, b, ...], axis)``; the inputs must agree in every
    other axis.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.fan_in_concat()({}, (jnp.ones((1, 2)), jnp.zeros((1, 1))))
        Array([[1., 1., 0.]], dtype=float32)
    """
    return FanInConcat(axis)


def fan_in_sum() -> FanInSum:
    """``(a, b, ...) -> a + b + ...``; the inputs must have one shape.

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> fnn.fan_in_sum()({}, (jnp.ones(2), jnp.ones(2)))
        Array([2., 2.], dtype=float32)
    """
    return FanInSum()


@dataclasses.dataclass(frozen=True)
class Residual(Layer):
    """``x + body(x)``. Build it with ``fnn.residual``; the parameters are the body's.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> block = fnn.Residual(fnn.Dense(3, w_init="zeros"))   # body(x) = 0 at the start
        >>> params, _ = block.init(jax.random.key(0), jnp.ones((2, 3)))
        >>> sorted(params), block(params, jnp.ones((2, 3))).tolist()
        (['b', 'w'], [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    """

    body: Layer

    def _check_input(self, x: Any) -> None:
        if not hasattr(_values(x), "shape"):
            raise ShapeError(f"residual takes an array or a masked sequence (x, mask), got {shape_str(x)}")

    def _check_output(self, x: Any, y: Any, dtype: bool = True) -> None:
        """The body's output against its input: the shape and mask, and at init the dtype too
        (at apply a precision policy may keep the body's last layer in float32, and the sum
        takes the wider dtype)."""
        xv, yv = _values(x), _values(y)
        same = hasattr(yv, "shape") and tuple(yv.shape) == tuple(xv.shape)
        if not same or (dtype and yv.dtype != xv.dtype) or _is_masked(x) != _is_masked(y):
            raise ShapeError(
                f"residual body must keep its input's shape{' and dtype' if dtype else ''}: "
                f"expected {shape_str(x)}, got {shape_str(y)}"
            )

    def init(self, key, x):
        self._check_input(x)
        params, state = self.body.init(key, x)
        self._check_output(x, self.body.output_spec(params, state, x))
        return params, state

    def apply(self, params, state, x, *, key=None, train=False):
        self._check_input(x)
        y, state = self.body.apply(params, state, x, key=key, train=train)
        self._check_output(x, y, dtype=False)
        if _is_masked(x):  # a masked sequence: add the values, keep the input's mask
            return (x[0] + y[0], x[1]), state
        return x + y, state

    def trace(self, params, state, x, path=()):
        # The body shares this layer's path; list its inner layers, not the body itself.
        inner = self.body.trace(params, state, x, path)[1:]
        return [Node(path, self, self.output_spec(params, state, x), params), *inner]


def _is_masked(x: Any) -> bool:
    """Whether ``x`` is a masked sequence ``(values, mask)`` (``mask`` boolean)."""
    return isinstance(x, tuple | list) and len(x) == 2 and getattr(x[1], "dtype", None) == jnp.bool_


def _values(x: Any) -> Any:
    """The values of a masked sequence ``(values, mask)``; ``x`` itself otherwise."""
    return x[0] if _is_masked(x) else x


def residual(*layers: Layer | Callable) -> Residual:
    """``x + f(x)`` where ``f`` is the given layer, or the ``serial`` of several.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> block = fnn.residual(fnn.Dense(8), jax.nn.relu, fnn.Dense(8))
        >>> params, _ = block.init(jax.random.key(0), jnp.zeros((2, 8)))
        >>> sorted(params)
        ['dense_0', 'dense_1']
    """
    body = as_layer(layers[0]) if len(layers) == 1 else serial(*layers)
    return Residual(body)


@dataclasses.dataclass(frozen=True)
class Remat(Layer):
    """``body`` with its activations recomputed in the backward pass instead of stored
    (gradient checkpointing, ``jax.checkpoint``). Build it with ``fnn.remat``.

    The parameters, the output and the gradients are the body's; only the memory the
    backward pass keeps differs: the body's intermediate activations are not saved but
    computed again from its input when the gradient needs them. ``policy`` names a
    ``jax.checkpoint_policies`` entry saying what may still be saved (e.g.
    ``"dots_with_no_batch_dims_saveable"`` keeps matrix products and recomputes the
    cheap element-wise work). The layer takes its body's name, so wrapping a layer does
    not change the parameter tree.

    It is ``jax.checkpoint``; in a train step (inside ``fnn.reverse_mode_only``) its
    backward pass starts from saved values tied to the cotangent (``_recomputed``), where
    XLA's CPU backend would otherwise merge the recomputation with the forward pass.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> dense, x = fnn.Dense(4), jnp.ones((2, 3))
        >>> params, _ = dense.init(jax.random.key(0), x)
        >>> wrapped = fnn.Remat(dense, policy="dots_saveable")
        >>> wrapped.name, bool(jnp.all(wrapped(params, x) == dense(params, x)))
        ('dense', True)
        >>> fnn.Remat(dense, policy="everything")
        Traceback (most recent call last):
        ...
        ValueError: Remat: policy 'everything' is not in jax.checkpoint_policies; ...
    """

    body: Layer
    policy: str | None = None

    def __post_init__(self):
        if self.policy is not None and not callable(getattr(jax.checkpoint_policies, self.policy, None)):
            raise ValueError(
                f"Remat: policy {self.policy!r} is not in jax.checkpoint_policies; e.g. "
                "'dots_saveable', 'dots_with_no_batch_dims_saveable', 'nothing_saveable'"
            )

    @property
    def name(self) -> str:
        return self.body.name

    def init(self, key, x):
        return self.body.init(key, x)

    def apply(self, params, state, x, *, key=None, train=False):
        def body(params, state, x, key):
            return self.body.apply(params, state, x, key=key, train=train)

        policy = getattr(jax.checkpoint_policies, self.policy) if self.policy is not None else None
        checkpointed = jax.checkpoint(body, policy=policy)
        if reverse_only():
            return _recomputed(checkpointed, params, state, x, key)
        return checkpointed(params, state, x, key)

    def trace(self, params, state, x, path=()):
        return self.body.trace(params, state, x, path)


def _recomputed(checkpointed: Callable, *args: Any) -> Any:
    """``checkpointed(*args)`` (a ``jax.checkpoint``-ed body) whose backward pass starts
    from the values its forward pass saved plus a zero made from the cotangent (the same
    bits): a custom VJP, so reverse mode only (``Remat`` inside ``fnn.reverse_mode_only()``).

    ``jax.checkpoint`` marks the recomputation with optimization barriers so that XLA does
    not merge it with the forward pass; XLA's CPU backend removes those barriers, then
    eliminates common subexpressions, merges the two, and keeps every activation as if there
    were no checkpoint (eight blocks of four 4096x1024 products in raw JAX, a one-off: 640
    MiB of temporaries with ``jax.checkpoint``, 528 MiB without). A recomputation that
    depends on the cotangent cannot be merged with the forward pass, nor moved before it:
    the train step of an 8-block transformer (``benchmarks/memory.py``) plans 388 MiB of
    temporaries with ``TransformerLM(remat=True)`` against 2,156 MiB without."""

    @jax.custom_vjp
    def run(*args):
        return checkpointed(*args)

    def forward(*args):
        return jax.vjp(checkpointed, *args)  # the output, and the backward pass with what it saved

    def backward(saved, cotangent):
        tie = _zero_from(cotangent)
        floating = lambda a: jnp.issubdtype(a.dtype, jnp.inexact)  # noqa: E731
        saved = jax.tree.map(lambda a: a + tie.astype(a.dtype) if floating(a) else a, saved)
        return saved(cotangent)

    run.defvjp(forward, backward)
    return run(*args)


def _zero_from(cotangent: Any) -> jax.Array:
    """A float32 zero that XLA cannot tell is zero without the cotangent: 0 * one of its
    values, made 0 where that is not finite (0 * inf and 0 * nan are nan)."""
    leaves = [a for a in jax.tree.leaves(cotangent) if jnp.issubdtype(a.dtype, jnp.inexact) and a.size]
    if not leaves:
        return jnp.zeros((), jnp.float32)
    zero = 0.0 * leaves[0].ravel()[0].astype(jnp.float32)
    return jnp.where(zero == 0.0, zero, 0.0)


def remat(*layers: Layer | Callable, policy: str | None = None) -> Remat:
    """The given layer (or the ``serial`` of several) with gradient checkpointing: its
    activations are recomputed in the backward pass, trading compute for memory.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> block = fnn.remat(fnn.Dense(8), jax.nn.relu, fnn.Dense(8))
        >>> params, _ = block.init(jax.random.key(0), jnp.zeros((2, 8)))
        >>> sorted(params), block(params, jnp.ones((2, 8))).shape
        (['dense_0', 'dense_1'], (2, 8))
    """
    body = as_layer(layers[0]) if len(layers) == 1 else serial(*layers)
    return Remat(body, policy)


identity = Identity()
