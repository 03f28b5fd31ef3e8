"""Counting XLA compilations, for tests that a program is reused rather than compiled again."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax


@contextlib.contextmanager
def counting_compiles() -> Iterator[list[str]]:
    """A list that gains one entry per XLA compilation while the block runs."""
    compiled: list[str] = []

    def listen(event, _seconds, **_):
        if event.endswith("backend_compile_duration"):
            compiled.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield compiled
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
