"""Configuration as typed data: frozen dataclasses, overridden by ``key=value`` strings.

An experiment's configuration is a frozen dataclass whose fields may themselves be
dataclasses (``config.train.learning_rate``). The command line changes it with dotted
overrides that are parsed by each field's type and checked::

    >>> import dataclasses
    >>> @dataclasses.dataclass(frozen=True)
    ... class Train:
    ...     learning_rate: float = 1e-3
    ...     epochs: int = 10
    >>> @dataclasses.dataclass(frozen=True)
    ... class Config:
    ...     model: str = dataclasses.field(default="cnn", metadata={"choices": ("cnn", "mlp")})
    ...     train: Train = Train()
    >>> override(Config(), ["model=mlp", "train.learning_rate=3e-4"])
    Config(model='mlp', train=Train(learning_rate=0.0003, epochs=10))
    >>> to_dict(Config())
    {'model': 'cnn', 'train': {'learning_rate': 0.001, 'epochs': 10}}

A key that does not exist, a value that does not parse as the field's type or a value
outside the field's ``choices`` is a :class:`ConfigError` that lists what is valid.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from fnn.core import is_seed


class ConfigError(ValueError):
    """A configuration key or value that is not valid; the message says what is.

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class C:
        ...     seed: int = 0
        >>> override(C(), ["sede=1"])
        Traceback (most recent call last):
        ...
        fnn.config.ConfigError: unknown key 'sede'; valid keys: seed
    """


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def _split_optional(hint: Any) -> tuple[Any, bool]:
    """``(inner type, whether None is allowed)`` for ``X`` or ``X | None``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = typing.get_args(hint)
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise ConfigError(f"unsupported field type {hint!r}: only X or X | None")
        return inner[0], type(None) in args
    return hint, False


def _hints(config_class: type) -> dict[str, Any]:
    """Each field's type, resolving string annotations; a nested dataclass whose name does
    not resolve in the class's module (one defined in a function) is known by its default."""
    try:
        return typing.get_type_hints(config_class)
    except NameError:
        pass
    module = vars(__import__(config_class.__module__, fromlist=["_"]))
    hints = {}
    for field in dataclasses.fields(config_class):
        hint = field.type
        if isinstance(hint, str):
            try:
                hint = eval(hint, dict(module))  # noqa: S307  (a type annotation of the class)
            except NameError:
                default = field.default_factory() if callable(field.default_factory) else field.default
                hint = type(default)
        hints[field.name] = hint
    return hints


def keys(config: Any, prefix: str = "") -> list[str]:
    """Every settable dotted key of a config (nested dataclasses expanded).

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class C:
        ...     seed: int = 0
        >>> keys(C())
        ['seed']
    """
    out = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            out.extend(keys(value, f"{prefix}{field.name}."))
        else:
            out.append(prefix + field.name)
    return out


def parse_value(text: str, hint: Any, key: str, choices: Iterable | None = None) -> Any:
    """``text`` converted to the type ``hint`` of field ``key``; a ``ConfigError`` if it won't.

    Example:
        >>> parse_value("3", int, "seed"), parse_value("true", bool, "shuffle")
        (3, True)
        >>> parse_value("three", int, "seed")
        Traceback (most recent call last):
        ...
        fnn.config.ConfigError: seed: expected int, got 'three'
    """
    kind, optional = _split_optional(hint)
    if optional and text.strip().lower() in ("none", "null"):
        return None
    try:
        if kind is bool:
            low = text.strip().lower()
            if low not in _TRUE | _FALSE:
                raise ValueError(text)
            value: Any = low in _TRUE
        elif kind is int:
            value = int(text)
            if not -(2**63) <= value < 2**63:
                raise ConfigError(f"{key}: {text.strip()} does not fit in 64 bits")
        elif kind is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(text)
        elif kind is str:
            value = text
        elif typing.get_origin(kind) is tuple:  # a,b or the form --keys shows: ('a', 'b')
            (item, *_rest) = typing.get_args(kind)
            inner = text.strip()
            if inner[:1] + inner[-1:] in ("()", "[]"):
                inner = inner[1:-1]
            parts = [_unquoted(part) for part in inner.split(",") if part.strip()]
            value = tuple(parse_value(part, item, key) for part in parts)
        else:
            raise ConfigError(f"{key}: fields of type {kind!r} cannot be set from the command line")
    except ValueError as error:
        if isinstance(error, ConfigError):
            raise
        name = getattr(kind, "__name__", str(kind))
        raise ConfigError(f"{key}: expected {name}{' or none' if optional else ''}, got {text!r}") from None
    check_choice(key, value, choices)
    return value


def _unquoted(part: str) -> str:
    """A tuple item without its spaces and the quotes around it: ``" 'no'"`` -> ``"no"``."""
    part = part.strip()
    return part[1:-1] if len(part) >= 2 and part[0] == part[-1] and part[0] in "'\"" else part


def check_at_least(config: Any, bounds: Iterable[tuple[str, float]], prefix: str = "") -> None:
    """A ``ConfigError`` naming the first field of ``config`` below its lower bound, for
    ``(field, bound)`` pairs; ``prefix`` is the config's place in a larger one (``train.``).

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass
        ... class Run:
        ...     steps: int = 10
        ...     batch_size: int = 0
        >>> check_at_least(Run(), [("steps", 1), ("batch_size", 1)], prefix="train.")
        Traceback (most recent call last):
        ...
        fnn.config.ConfigError: train.batch_size must be at least 1, got 0
    """
    for key, low in bounds:
        if not getattr(config, key) >= low:  # NaN too
            raise ConfigError(f"{prefix}{key} must be at least {low}, got {getattr(config, key)}")


def check_that(config: Any, checks: Iterable[tuple[str, bool, str]], prefix: str = "") -> None:
    """A ``ConfigError`` naming the first field of ``config`` whose check failed, for
    ``(field, ok, what it must be)`` triples; ``prefix`` as for :func:`check_at_least`.

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass
        ... class Run:
        ...     dropout: float = 1.5
        >>> run = Run()
        >>> check_that(run, [("dropout", 0 <= run.dropout < 1, "in [0, 1)")])
        Traceback (most recent call last):
        ...
        fnn.config.ConfigError: dropout must be in [0, 1), got 1.5
    """
    for key, ok, says in checks:
        if not ok:
            raise ConfigError(f"{prefix}{key} must be {says}, got {getattr(config, key)}")


def check_seeds(config: Any, names: Iterable[str], prefix: str = "") -> None:
    """A ``ConfigError`` naming the first of the fields ``names`` of ``config`` that is not
    a seed, an int in ``[0, 2**32)`` (:func:`fnn.core.is_seed`); ``prefix`` as for
    :func:`check_at_least`.

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass
        ... class Run:
        ...     seed: int = 2**32
        >>> check_seeds(Run(), ["seed"], prefix="train.")
        Traceback (most recent call last):
        ...
        fnn.config.ConfigError: train.seed must be an int in [0, 2**32), got 4294967296
    """
    check_that(config, [(name, is_seed(getattr(config, name)), "an int in [0, 2**32)") for name in names],
               prefix)


def check_choices(config: Any, prefix: str = "") -> None:
    """:func:`check_choice` for every field of the dataclass ``config`` with ``choices``
    metadata; ``prefix`` as for :func:`check_at_least`.

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass
        ... class Run:
        ...     model: str = dataclasses.field(default="rnn", metadata={"choices": ("mlp", "cnn")})
        >>> check_choices(Run(), prefix="train.")
        Traceback (most recent call last):
        ...
        fnn.config.ConfigError: train.model: 'rnn' is not one of 'mlp', 'cnn'
    """
    for field in dataclasses.fields(config):
        check_choice(f"{prefix}{field.name}", getattr(config, field.name), field.metadata.get("choices"))


def check_choice(key: str, value: Any, choices: Iterable | None) -> None:
    """A ``ConfigError`` naming ``key`` unless ``value`` is one of ``choices`` (None: any).

    Example:
        >>> check_choice("model", "cnn", ("mlp", "cnn"))
        >>> check_choice("model", "rnn", ("mlp", "cnn"))
        Traceback (most recent call last):
        ...
        fnn.config.ConfigError: model: 'rnn' is not one of 'mlp', 'cnn'
    """
    if choices is not None and value is not None and value not in tuple(choices):
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")


def _field(config: Any, name: str, path: str) -> dataclasses.Field:
    for field in dataclasses.fields(config):
        if field.name == name:
            return field
    raise ConfigError(f"unknown key {path!r}; valid keys: {', '.join(keys(config))}")


def _parse(config: Any, path: list[str], text: str, full: str, root: Any, changes: dict) -> None:
    """Check the key ``path`` of ``config`` and put its value, parsed, in ``changes`` (a dict
    per nested config, keyed by field name)."""
    name, rest = path[0], path[1:]
    try:
        field = _field(config, name, full)
    except ConfigError:
        raise ConfigError(f"unknown key {full!r}; valid keys: {', '.join(keys(root))}") from None
    current = getattr(config, name)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(
                f"unknown key {full!r}: {name!r} has no sub-keys; valid keys: {', '.join(keys(root))}"
            )
        _parse(current, rest, text, full, root, changes.setdefault(name, {}))
        return
    if dataclasses.is_dataclass(current):
        group = ", ".join(keys(current, f"{full}."))
        raise ConfigError(f"{full!r} is a group of settings; set one of: {group}")
    hint = _hints(type(config))[name]
    changes[name] = parse_value(text, hint, full, field.metadata.get("choices"))


def _apply(config: Any, changes: dict) -> Any:
    """``config`` with ``changes`` made, each nested config replaced once, after its own."""
    values = {
        name: _apply(getattr(config, name), change) if isinstance(change, dict) else change
        for name, change in changes.items()
    }
    return dataclasses.replace(config, **values)


def override(config: Any, assignments: Iterable[str]) -> Any:
    """``config`` with each ``"dotted.key=value"`` of ``assignments`` applied (a key given
    twice takes its last value).

    Values are parsed by the field's type and checked against its ``choices`` metadata.
    All assignments are made before the config checks itself, so checks that relate
    several keys see them all, whatever their order.

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class Train:
        ...     lr: float = 1e-3
        >>> @dataclasses.dataclass(frozen=True)
        ... class C:
        ...     seed: int = 0
        ...     train: Train = Train()
        >>> override(C(), ["seed=3", "train.lr=0.01"])
        C(seed=3, train=Train(lr=0.01))
    """
    changes: dict = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"expected key=value, got {assignment!r}; valid keys: {', '.join(keys(config))}"
            )
        key = key.strip()
        _parse(config, key.split("."), text, key, config, changes)
    return _apply(config, changes) if changes else config


def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain nested dicts (what a run directory's ``config.json`` holds).

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class C:
        ...     seed: int = 0
        ...     model: str = "mlp"
        >>> to_dict(C())
        {'seed': 0, 'model': 'mlp'}
    """
    return dataclasses.asdict(config)


def from_dict(config_class: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    """The inverse of :func:`to_dict`, with every key and type checked.

    Keys missing from ``values`` keep their defaults; unknown keys are an error.

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class C:
        ...     seed: int = 0
        ...     model: str = "mlp"
        >>> from_dict(C, {"seed": 1})
        C(seed=1, model='mlp')
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix + unknown[0]!r}; valid keys: {', '.join(prefix + k for k in fields)}"
        )
    hints = _hints(config_class)
    kwargs = {}
    for name, value in values.items():
        key = prefix + name
        kind, optional = _split_optional(hints[name])
        if dataclasses.is_dataclass(kind):
            kwargs[name] = from_dict(kind, value, f"{key}.")
            continue
        value = _typed(value, hints[name], key)
        check_choice(key, value, fields[name].metadata.get("choices"))
        kwargs[name] = value
    return config_class(**kwargs)


def _typed(value: Any, kind: Any, key: str) -> Any:
    """A value read from JSON as type ``kind``, checked as :func:`parse_value` checks text:
    a tuple's items too, finite floats, ints that fit in 64 bits."""
    kind, optional = _split_optional(kind)
    if value is None and optional:
        return None
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item, *_rest) = typing.get_args(kind)
        return tuple(_typed(part, item, key) for part in value)
    expected = typing.get_origin(kind) or kind
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    if expected is float and not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite float, got {value!r}")
    if expected is int and not -(2**63) <= value < 2**63:
        raise ConfigError(f"{key}: {value} does not fit in 64 bits")
    return value
