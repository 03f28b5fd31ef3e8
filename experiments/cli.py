"""A command line from an experiment's ``Config`` dataclass: one ``--flag`` per field."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any


def _value_type(hint: Any) -> Any:
    """``float`` for ``float`` and for ``float | None``; the hint itself otherwise."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return inner
    return hint


def parse_config(config_class: type, description: str, argv: list[str] | None = None) -> Any:
    """Parse ``argv`` (default: ``sys.argv[1:]``) into a ``config_class`` instance.

    Each field ``some_name`` becomes ``--some-name`` with the field's default; a bool
    field becomes ``--some-name`` / ``--no-some-name``; ``choices`` in a field's
    metadata limit its values. ``--help`` lists them all.
    """
    parser = argparse.ArgumentParser(description=description)
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        flag = "--" + field.name.replace("_", "-")
        kind = _value_type(hints[field.name])
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            parser.add_argument(
                flag, type=kind, default=field.default, choices=field.metadata.get("choices"),
                help=f"default: {field.default}",
            )
    return config_class(**vars(parser.parse_args(argv)))
