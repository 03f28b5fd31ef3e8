"""Parameter initializers, selectable per layer by name or as a function.

Every layer that owns weights takes ``w_init`` (and ``b_init`` for biases): either a
``jax.nn.initializers`` function or one of the names below, which is handy in
configuration files and on the command line.

Example:
    >>> import jax, fnn
    >>> fnn.initializers.get("he_normal")(jax.random.key(0), (3, 4)).shape
    (3, 4)
"""

from __future__ import annotations

from collections.abc import Callable

from jax.nn import initializers as jinit

Initializer = Callable  # (key, shape, dtype) -> array

_NAMED: dict[str, Callable[[], Initializer]] = {
    "glorot_uniform": jinit.glorot_uniform,
    "glorot_normal": jinit.glorot_normal,
    "xavier_uniform": jinit.glorot_uniform,
    "xavier_normal": jinit.glorot_normal,
    "he_uniform": jinit.he_uniform,
    "he_normal": jinit.he_normal,
    "kaiming_uniform": jinit.he_uniform,
    "kaiming_normal": jinit.he_normal,
    "lecun_uniform": jinit.lecun_uniform,
    "lecun_normal": jinit.lecun_normal,
    "orthogonal": jinit.orthogonal,
    "normal": jinit.normal,
    "uniform": jinit.uniform,
    "zeros": lambda: jinit.zeros,
    "ones": lambda: jinit.ones,
}

NAMES = tuple(sorted(_NAMED))


def get(init: str | Initializer) -> Initializer:
    """The initializer called ``init`` (one of ``NAMES``), or ``init`` itself when it is
    already a function ``(key, shape, dtype) -> array``.

    Example:
        >>> import jax, fnn
        >>> fnn.initializers.get("zeros")(jax.random.key(0), (2,))
        Array([0., 0.], dtype=float32)
        >>> fnn.initializers.get(jax.nn.initializers.ones) is jax.nn.initializers.ones
        True
    """
    if callable(init):
        return init
    if isinstance(init, str) and init in _NAMED:
        return _NAMED[init]()
    raise ValueError(f"unknown initializer {init!r}; choose a function or one of {', '.join(NAMES)}")
