"""Mixed precision: parameters stored in float32, computation in bfloat16 (or float16),
outputs and losses in float32.

A :class:`Policy` is given to ``make_train_step(..., policy=...)`` (or set in a pipeline
as ``train.precision=bfloat16``). In each step it casts the float32 parameters and the
floating inputs to the computation dtype, runs the model, and casts the outputs back to
float32 before the loss; the gradient flows back through the casts, so the gradients,
the optimizer state and the stored parameters stay float32. Layers compute in their
inputs' dtype, so a model needs no change.

Per-layer overrides:

- ``keep``: parameter paths (``fnmatch`` patterns over ``"block_0/attention/query/w"``
  style paths) that are not cast. A layer whose weights stay float32 computes in float32
  (JAX promotes its bfloat16 input), e.g. ``keep=("head/*",)`` for the output layer.
- A layer's own ``dtype`` field (``fnn.Dense(10, dtype=jnp.float32)``) still fixes what
  that layer computes in.
- Normalisation layers compute their statistics in at least float32 whatever the policy.

float16 has a narrow range: small gradients underflow to zero. A float16 policy needs a
``loss_scale``: the loss is multiplied by it before differentiation and the gradients
divided by it after, which keeps them in float16's range. A step whose scaled gradients
overflow (any of them, or the loss, not finite) is skipped: the parameters, optimizer
state and model state stay as they were, and the step's ``skipped`` metric is 1 (its
``loss_scale`` metric is the scale it used). A state made by
``init_train_state(..., policy=policy)`` carries the scale as it goes
(:class:`LossScale`): halved at each skipped step (down to 1), doubled after
``growth_interval`` finite steps in a row, as PyTorch's ``GradScaler`` does; without it the
scale stays ``loss_scale``. A step skipped at scale 1, whose gradients overflow float16
unscaled, stops ``fnn.fit`` and ``fnn.loop.train_loop`` with a ``FloatingPointError``
naming it, at the record that covers it.

Example:
    >>> import jax, jax.numpy as jnp, fnn
    >>> policy = Policy("bfloat16", keep=("dense_1/*",))
    >>> params = {"dense_0": {"w": jnp.ones((2, 2))}, "dense_1": {"w": jnp.ones((2, 2))}}
    >>> jax.tree.map(lambda p: p.dtype.name, policy.cast_params(params))
    {'dense_0': {'w': 'bfloat16'}, 'dense_1': {'w': 'float32'}}
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fnn.core import path_str
from fnn.layers._common import positive_int

DTYPES = ("float32", "bfloat16", "float16")
MAX_LOSS_SCALE = 2.0**24


class LossScale(NamedTuple):
    """A train state's dynamic loss scale (``TrainState.loss_scale``): the scale, and how
    many finite steps in a row it has been used for."""

    scale: jax.Array  # float32 scalar
    good_steps: jax.Array  # int32 scalar


@dataclasses.dataclass(frozen=True)
class Policy:
    """What a train step computes in.

    Args:
        compute: the dtype of the model's computation: ``"bfloat16"``, ``"float16"`` or
            ``"float32"`` (no casting).
        output: the dtype the model's outputs are cast to before the loss.
        keep: parameter paths (``fnmatch`` patterns) left in their stored dtype.
        loss_scale: multiply the loss by this before differentiating and divide the
            gradients by it after; required for ``"float16"``. With it, a step whose
            gradients are not finite is skipped; a state made with this policy adapts
            the scale (the initial one) as it trains.
        growth_interval: with a loss scale carried in the state, double it after this many
            finite steps in a row (it is halved at every skipped step).

    Example: a train step that computes in bfloat16 except for the last layer.

        >>> import jax, jax.numpy as jnp, optax, fnn
        >>> from fnn.precision import Policy
        >>> model = fnn.serial(fnn.Dense(8), fnn.relu, fnn.Dense(2))
        >>> bf16 = Policy("bfloat16", keep=("dense_1/*",))         # the last layer stays float32
        >>> x, y = jnp.ones((4, 3)), jnp.array([0, 1, 0, 1])
        >>> state = fnn.init_train_state(model, optax.adam(1e-3), jax.random.key(0), x)
        >>> step = fnn.make_train_step(model, optax.adam(1e-3), fnn.losses.softmax_cross_entropy,
        ...                            policy=bf16)
        >>> state, metrics = step(state, (x, y))
        >>> metrics["loss"].dtype, state.params["dense_0"]["w"].dtype  # stored in float32
        (dtype('float32'), dtype('float32'))
        >>> {k: v["w"].dtype.name for k, v in bf16.cast_params(state.params).items()}
        {'dense_0': 'bfloat16', 'dense_1': 'float32'}
        >>> Policy("float16")
        Traceback (most recent call last):
        ...
        ValueError: Policy: float16 computation needs a loss_scale (e.g. 2.0**12): ...
    """

    compute: str = "bfloat16"
    output: str = "float32"
    keep: tuple[str, ...] = ()
    loss_scale: float | None = None
    growth_interval: int = 2000

    def __post_init__(self):
        for field in ("compute", "output"):
            if getattr(self, field) not in DTYPES:
                raise ValueError(
                    f"Policy: {field} must be one of {', '.join(DTYPES)}, got {getattr(self, field)!r}"
                )
        if isinstance(self.keep, str):
            raise ValueError(f"Policy: keep must be a tuple of path patterns, got the string {self.keep!r}")
        if self.loss_scale is not None:
            try:
                scale = None if isinstance(self.loss_scale, bool) else float(self.loss_scale)
            except (TypeError, ValueError):
                scale = None
            if scale is None or not 0 < scale <= MAX_LOSS_SCALE:
                raise ValueError(
                    f"Policy: loss_scale must be a positive number of at most 2**24, got {self.loss_scale!r}"
                )
            object.__setattr__(self, "loss_scale", scale)  # a plain float: the policy stays hashable
        positive_int(self, "growth_interval", self.growth_interval)
        if self.compute == "float16" and self.loss_scale is None:
            raise ValueError(
                "Policy: float16 computation needs a loss_scale (e.g. 2.0**12): without one, small "
                "gradients underflow to zero; or compute in bfloat16, which has float32's range"
            )

    def initial_loss_scale(self) -> LossScale | None:
        """What ``init_train_state(..., policy=self)`` puts in the state: the loss scale to
        adapt, or ``None`` without one."""
        if self.loss_scale is None:
            return None
        return LossScale(jnp.asarray(self.loss_scale, jnp.float32), jnp.zeros((), jnp.int32))

    def next_loss_scale(self, current: LossScale, finite: jax.Array) -> LossScale:
        """The scale after a step: halved (down to 1) if its gradients were not ``finite``,
        doubled (up to 2**24) after ``growth_interval`` finite steps in a row.

        Example:
            >>> import jax.numpy as jnp
            >>> policy = Policy("float16", loss_scale=8.0, growth_interval=2)
            >>> s = policy.initial_loss_scale()
            >>> for finite in (True, True, False):
            ...     s = policy.next_loss_scale(s, jnp.asarray(finite))
            ...     print(float(s.scale), int(s.good_steps))
            8.0 1
            16.0 0
            8.0 0
        """
        good = current.good_steps + 1
        grow = good >= self.growth_interval
        scale = jnp.where(
            finite,
            jnp.where(grow, jnp.minimum(current.scale * 2, MAX_LOSS_SCALE), current.scale),
            jnp.maximum(current.scale / 2, 1.0),
        )
        return LossScale(scale.astype(jnp.float32), jnp.where(finite & ~grow, good, 0).astype(jnp.int32))

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.compute)

    def _cast(self, tree: Any, dtype: Any) -> Any:
        return jax.tree.map(
            lambda x: x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, tree
        )

    def cast_params(self, params: Any) -> Any:
        """Floating parameters in the computation dtype, except those under ``keep``; a
        ``ValueError`` for a ``keep`` pattern that matches no parameter (a typo, or a layer's
        name without ``/*``), listing the parameters' paths."""
        leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
        paths = [path_str(path) for path, _ in leaves]
        unmatched = [p for p in self.keep if not any(fnmatch.fnmatchcase(path, p) for path in paths)]
        if unmatched:
            shown = ", ".join(paths[:12]) + (f", ... ({len(paths)} in all)" if len(paths) > 12 else "")
            raise ValueError(
                f"Policy: keep pattern(s) {unmatched} match no parameter; patterns match whole paths "
                f"(a layer's parameters: 'dense_1/*'), and the parameters are: {shown}"
            )

        def cast(path, x):
            if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
                return x
            if any(fnmatch.fnmatchcase(path, pattern) for pattern in self.keep):
                return x
            return x.astype(self.compute_dtype)

        return jax.tree.unflatten(treedef, [cast(path, x) for path, (_, x) in zip(paths, leaves)])

    def cast_inputs(self, x: Any) -> Any:
        """Floating inputs in the computation dtype (integer ids and masks untouched)."""
        return self._cast(x, self.compute_dtype)

    def cast_outputs(self, y: Any) -> Any:
        """Floating outputs in the output dtype."""
        return self._cast(y, jnp.dtype(self.output))


def apply(policy: Policy | None, model: Any, params: Any, model_state: Any, x: Any, **options: Any):
    """``model.apply(params, model_state, x, **options)`` computed in the dtypes of ``policy``
    (``None``: as the parameters are): the parameters and floating inputs in its computation
    dtype, the floating outputs in its output dtype, the new model state in the old one's
    dtypes. Training, evaluation and ``fnn.pipeline.predict`` all run a model through it.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> model = fnn.Dense(2)
        >>> params, state = model.init(jax.random.key(0), jnp.ones((1, 3)))
        >>> y, _ = apply(policy("bfloat16"), model, params, state, jnp.ones((1, 3)))
        >>> y.dtype, apply(None, model, params, state, jnp.ones((1, 3)))[0].dtype
        (dtype('float32'), dtype('float32'))
    """
    if policy is None:
        return model.apply(params, model_state, x, **options)
    params, x = policy.cast_params(params), policy.cast_inputs(x)
    outputs, new_state = model.apply(params, model_state, x, **options)
    new_state = jax.tree.map(lambda new, old: new.astype(old.dtype), new_state, model_state)
    return policy.cast_outputs(outputs), new_state


def as_policy(value: Any, where: str) -> Policy | None:
    """A ``policy=`` argument as a :class:`Policy`: a policy or ``None`` as is, a dtype's name
    (``"bfloat16"``) as :func:`policy` makes it; a ``TypeError`` for anything else.

    Example:
        >>> as_policy("bfloat16", "make_train_step").compute, as_policy(None, "make_train_step")
        ('bfloat16', None)
    """
    if value is None or isinstance(value, Policy):
        return value
    if isinstance(value, str):
        return policy(value)
    raise TypeError(
        f"{where}: policy must be a fnn.precision.Policy, a dtype's name ({', '.join(DTYPES)}) or None, "
        f"got {value!r}"
    )


def policy(name: str) -> Policy | None:
    """The policy a pipeline's ``train.precision`` names: ``"float32"`` is none at all.

    Example:
        >>> from fnn.precision import policy
        >>> policy("float32") is None, policy("bfloat16").compute, policy("float16").loss_scale
        (True, 'bfloat16', 4096.0)
    """
    if name not in DTYPES:
        raise ValueError(f"precision must be one of {', '.join(DTYPES)}, got {name!r}")
    if name == "float32":
        return None
    return Policy(name, loss_scale=2.0**12 if name == "float16" else None)
