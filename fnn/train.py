"""Training: the train state, the compiled train and evaluation steps, and per-example gradients.

A training run is a loop over one compiled function::

    state = fnn.init_train_state(model, optax.adam(1e-3), jax.random.key(0), x_spec)
    step = fnn.make_train_step(model, optax.adam(1e-3), fnn.losses.softmax_cross_entropy)
    for batch in batches:
        state, metrics = step(state, batch)

``step`` is built from ``jax.value_and_grad`` and an optax optimizer, is jit-compiled,
donates the old state's buffers to the new one, and returns its metrics as device
arrays, so nothing waits for the host between steps.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn.autodiff import reverse_mode_only
from fnn.core import Layer, Params, State, is_count, path_str, shape_str
from fnn.precision import Policy, as_policy
from fnn.precision import apply as apply_in

if TYPE_CHECKING:
    from fnn.distributed import DataParallel

Batch = tuple[Any, Any]
LossFn = Callable[[Any, Any], jax.Array]
MetricFns = Mapping[str, Callable[[Any, Any], jax.Array]]


class TrainState(NamedTuple):
    """Everything a training run carries from step to step; a pytree.

    ``params`` and ``model_state`` are the model's nested dicts, ``opt_state`` the
    optimizer's, ``step`` an int32 scalar (a ``[members]`` vector in a population),
    ``rng`` a typed key from which each step's dropout key is folded, and ``loss_scale``
    a float16 run's dynamic loss scale (``fnn.precision.LossScale``; ``None`` otherwise).

    Example:
        >>> import jax, jax.numpy as jnp, optax, fnn
        >>> state = fnn.init_train_state(fnn.Dense(1), optax.sgd(0.1), jax.random.key(0),
        ...                              jnp.zeros((4, 2)))
        >>> state._fields, int(state.step), state.params["w"].shape
        (('params', 'model_state', 'opt_state', 'step', 'rng', 'loss_scale'), 0, (2, 1))
    """

    params: Params
    model_state: State
    opt_state: optax.OptState
    step: jax.Array
    rng: jax.Array
    loss_scale: Any = None


def step_of(state: TrainState) -> int:
    """The state's step as an int (a population's members all share one).

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> state = fnn.TrainState({}, {}, (), jnp.array(7, jnp.int32), None)
        >>> fnn.train.step_of(state), fnn.train.step_of(state._replace(step=jnp.array([7, 7])))
        (7, 7)
    """
    return int(np.ravel(jax.device_get(state.step))[0])


def init_train_state(
    model: Layer, optimizer: optax.GradientTransformation, key: jax.Array, x: Any, *,
    policy: Policy | str | None = None,
) -> TrainState:
    """A fresh train state for ``model`` on inputs like ``x`` (an array or a spec). With a
    ``policy`` that has a loss scale (float16), the state carries it, and the train step
    adapts it (``fnn.precision``).

    Example:
        >>> import jax, jax.numpy as jnp, optax, fnn
        >>> state = fnn.init_train_state(fnn.Dense(2), optax.sgd(0.1), jax.random.key(0),
        ...                              jax.ShapeDtypeStruct((8, 3), jnp.float32))
        >>> int(state.step), state.params["w"].shape
        (0, (3, 2))
    """
    # Eagerly, not under one jit: each initializer op compiles once per shape and is then
    # cached for every later model, where a jitted init would compile anew for each model.
    policy = as_policy(policy, "init_train_state")
    init_key, rng = jax.random.split(key)
    params, model_state = model.init(init_key, x)
    loss_scale = policy.initial_loss_scale() if policy is not None else None
    return TrainState(params, model_state, optimizer.init(params), jnp.zeros((), jnp.int32), rng, loss_scale)


def pair(batch: Any, where: str) -> tuple[Any, Any]:
    """``batch`` as ``(inputs, targets)``; a ``ValueError`` naming ``where`` for anything else.

    Example:
        >>> pair({"image": 1, "label": 2}, "the train step")
        Traceback (most recent call last):
        ...
        ValueError: the train step takes a batch as a pair (inputs, targets), got a dict with keys ...
    """
    if isinstance(batch, tuple | list) and len(batch) == 2:
        return batch[0], batch[1]
    got = (f"a dict with keys {sorted(batch, key=str)}" if isinstance(batch, dict)
           else f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, tuple | list)
           else f"a {type(batch).__name__}")
    raise ValueError(
        f"{where} takes a batch as a pair (inputs, targets), got {got}; several inputs or targets go "
        "in a pytree inside it: ({'image': x}, labels), (x, (y, weights))"
    )


def _objective(model: Layer, loss: LossFn, policy: Policy | None = None, train: bool = True) -> Callable:
    """``(params, model_state, batch, key) -> (loss, (model_state, outputs))`` in train mode
    (or evaluation mode, ``train=False``), computed in the dtypes of ``policy`` (if given;
    the model state keeps its own dtypes)."""

    def objective(params, model_state, batch, key):
        x, y = pair(batch, "the train step")
        outputs, model_state = apply_in(policy, model, params, model_state, x, key=key, train=train)
        return loss(outputs, y), (model_state, outputs)

    return objective


def _scaled(objective: Callable, scale: Any) -> Callable:
    """``objective`` with its loss multiplied by ``scale`` (as it is, for ``None``)."""
    if scale is None:
        return objective

    def scaled(*args):
        value, aux = objective(*args)
        return value * scale, aux

    return scaled


def make_train_step(
    model: Layer,
    optimizer: optax.GradientTransformation,
    loss: LossFn,
    *,
    metrics: MetricFns | None = None,
    donate: bool = True,
    population: bool = False,
    steps_per_call: int = 1,
    unroll: int | bool = 1,
    parallel: DataParallel | None = None,
    policy: Policy | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """The compiled ``step(state, (x, y)) -> (state, metrics)``.

    Args:
        model: the layer to train.
        optimizer: any optax gradient transformation (``optax.sgd``, ``adam``, ``rmsprop``...).
        loss: ``loss(outputs, y) -> scalar``, e.g. ``fnn.losses.softmax_cross_entropy``.
        metrics: extra ``name -> f(outputs, y)`` computed on the training batch.
        donate: reuse the input state's buffers for the output state (the caller must not
            use the old state after the call).
        population: train a population of models at once: the state and the batch carry a
            leading member axis and the step is ``jax.vmap``-ed over it, so P models (other
            seeds, other learning rates held in an ``optax.inject_hyperparams`` state) train
            in one compiled program (see ``fnn.sweep``). Metrics gain the member axis.
        steps_per_call: take ``K`` steps per call: the batch is ``K`` batches stacked on a
            leading axis (``fnn.data.stack_batches``) and the step runs over them with
            ``lax.scan`` inside one compiled program, so the host dispatches once per ``K``
            steps. Metrics gain a leading ``K`` axis. The result equals ``K`` single calls.
        unroll: with ``steps_per_call``, how many steps each iteration of the scan's loop
            holds (``lax.scan``'s ``unroll``); ``True`` unrolls all ``K``, so the compiled
            program has no loop, at the cost of compiling ``K`` copies of the step (on CPU
            the LeNet benchmark's ten steps unrolled ran 1.0-1.12x as fast as in the loop
            and took about 4x as long to compile).
        parallel: a ``fnn.distributed.DataParallel`` layout: the batch is split among its
            devices and the parameters and optimizer state keep their layout (replicated,
            or sharded with ``fsdp``); place them with ``parallel.put_state`` and
            ``parallel.put_batch``. The result equals the single-device step's up to
            floating-point summation order.
        policy: a ``fnn.precision.Policy`` (or a dtype's name): compute in bfloat16 (or
            float16 with a loss scale) while parameters, gradients and optimizer state stay
            float32, and the outputs and loss are float32. With a loss scale, a step whose
            gradients are not finite is skipped (its metric ``skipped`` is 1, and
            ``loss_scale`` is the scale it used), and a state made by
            ``init_train_state(..., policy=policy)`` adapts the scale.

    Each step draws its dropout key as ``fold_in(state.rng, state.step)``, so a run is
    reproducible from its seed whatever the batch order of other runs.

    The gradient is taken inside ``fnn.reverse_mode_only()``: the layers' weight
    products compute their weight gradients as ``x^T @ g``, and ``fnn.Recurrent`` after
    its backward loop (``fnn.autodiff``), which runs faster on CPU. A loss that applies
    ``jax.jvp`` to the model wraps that call in ``fnn.reverse_mode_only(False)``.

    Example:
        >>> import jax, jax.numpy as jnp, optax, fnn
        >>> model = fnn.Dense(1)
        >>> opt = optax.sgd(0.1)
        >>> x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
        >>> state = fnn.init_train_state(model, opt, jax.random.key(0), x)
        >>> step = fnn.make_train_step(model, opt, fnn.losses.mean_squared_error)
        >>> state, m = step(state, (x, y))
        >>> int(state.step), sorted(m)
        (1, ['loss'])
    """
    if not isinstance(steps_per_call, int) or isinstance(steps_per_call, bool) or steps_per_call < 1:
        raise ValueError(f"make_train_step: steps_per_call must be a positive int, got {steps_per_call!r}")
    if not isinstance(unroll, (int, bool)) or (not isinstance(unroll, bool) and unroll < 1):
        raise ValueError(f"make_train_step: unroll must be a positive int or a bool, got {unroll!r}")
    if parallel is not None and population:
        raise ValueError("make_train_step: population=True and parallel= cannot be combined yet")
    policy = as_policy(policy, "make_train_step")
    objective = _objective(model, loss, policy)
    scaled = policy is not None and policy.loss_scale is not None
    metric_fns = dict(metrics or {})

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        if parallel is not None:
            batch = parallel.constrain_batch(batch)
        key = jax.random.fold_in(state.rng, state.step)
        scale = None
        if scaled:
            scale = policy.loss_scale if state.loss_scale is None else state.loss_scale.scale
        gradient = jax.value_and_grad(_scaled(objective, scale), has_aux=True)
        with reverse_mode_only():
            (value, (model_state, outputs)), grads = gradient(state.params, state.model_state, batch, key)
        if scale is not None:
            value, grads = value / scale, jax.tree.map(lambda g: g / scale, grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        logged = {"loss": value, **{name: f(outputs, batch[1]) for name, f in metric_fns.items()}}
        loss_scale = state.loss_scale
        if scale is not None:  # a step whose scaled gradients overflowed changes nothing but the scale
            finite = jnp.all(jnp.stack([jnp.isfinite(a).all() for a in jax.tree.leaves((value, grads))]))
            params, opt_state, model_state = jax.tree.map(
                lambda new, old: jnp.where(finite, new, old),
                (params, opt_state, model_state), (state.params, state.opt_state, state.model_state),
            )
            if loss_scale is not None:
                loss_scale = policy.next_loss_scale(loss_scale, finite)
            logged["skipped"] = 1.0 - finite.astype(jnp.float32)
            logged["loss_scale"] = jnp.asarray(scale, jnp.float32)  # the scale this step used
        if parallel is not None:
            params, opt_state = parallel.constrain_state((params, opt_state))
        return TrainState(params, model_state, opt_state, state.step + 1, state.rng, loss_scale), logged

    def steps(state: TrainState, stacked: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        if any(a.ndim < 2 for a in jax.tree.leaves(stacked)):  # a batch of K examples, not stacked
            raise ValueError(
                f"train step with steps_per_call={steps_per_call}: expected {steps_per_call} batches "
                f"stacked on a leading axis (fnn.data.stack_batches), each leaf [steps, batch, ...]; "
                f"got {shape_str(stacked)}"
            )
        leading = {a.shape[0] for a in jax.tree.leaves(stacked)}
        if leading != {steps_per_call}:
            raise ValueError(
                f"train step with steps_per_call={steps_per_call}: expected {steps_per_call} batches "
                f"stacked on the leading axis, got leading sizes {sorted(leading)}"
            )
        return jax.lax.scan(step, state, stacked, unroll=unroll)

    fn = step if steps_per_call == 1 else steps
    compiled = jax.jit(jax.vmap(fn) if population else fn, donate_argnums=(0,) if donate else ())
    compiled.steps_per_call, compiled.population = steps_per_call, population  # for fit's records
    return compiled


def make_eval_step(
    model: Layer,
    loss: LossFn,
    *,
    metrics: MetricFns | None = None,
    population: bool = False,
    policy: Policy | None = None,
) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
    """The compiled ``eval_step(state, (x, y)) -> metrics`` in evaluation mode (no dropout,
    running batch-norm statistics). With ``population``, the state has a leading member
    axis, every member sees the same batch and each metric is one value per member. With
    ``policy`` the model computes in the policy's dtypes, as in training.

    Example:
        >>> import jax, jax.numpy as jnp, optax, fnn
        >>> model = fnn.Dense(1)
        >>> x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
        >>> state = fnn.init_train_state(model, optax.sgd(0.1), jax.random.key(0), x)
        >>> eval_step = fnn.make_eval_step(model, fnn.losses.mean_squared_error,
        ...                                metrics={"mae": lambda out, y: jnp.abs(out - y).mean()})
        >>> sorted(eval_step(state, (x, y)))
        ['loss', 'mae']
    """
    policy = as_policy(policy, "make_eval_step")
    metric_fns = dict(metrics or {})

    def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
        x, y = pair(batch, "the eval step")
        outputs, _ = apply_in(policy, model, state.params, state.model_state, x, train=False)
        return {"loss": loss(outputs, y), **{name: f(outputs, y) for name, f in metric_fns.items()}}

    return jax.jit(jax.vmap(eval_step, in_axes=(0, None)) if population else eval_step)


def evaluate(
    eval_step: Callable[[TrainState, Batch], dict[str, jax.Array]],
    state: TrainState,
    batches: Iterable[Batch],
) -> dict[str, float]:
    """Metrics over all ``batches``, each batch weighted by its size; one host transfer.

    For a population (a ``make_eval_step(..., population=True)`` step) each metric is a list
    with one value per member, and a member whose loss is not finite has diverged: its
    other metrics are NaN (an accuracy of its NaN outputs would be a number that means nothing).

    Example:
        >>> import jax, jax.numpy as jnp, optax, fnn
        >>> model = fnn.Dense(1, w_init="zeros")                # predicts 0 everywhere
        >>> state = fnn.init_train_state(model, optax.sgd(0.1), jax.random.key(0), jnp.zeros((1, 2)))
        >>> eval_step = fnn.make_eval_step(model, fnn.losses.mean_squared_error)
        >>> batches = [(jnp.ones((3, 2)), jnp.ones((3, 1))), (jnp.ones((1, 2)), jnp.zeros((1, 1)))]
        >>> fnn.evaluate(eval_step, state, batches)             # (3 * 1 + 1 * 0) / 4
        {'loss': 0.75}
    """
    totals: dict[str, jax.Array] | None = None
    count = 0
    for batch in batches:
        size = jax.tree.leaves(pair(batch, "evaluate")[0])[0].shape[0]  # x may be a pytree, e.g. (ids, mask)
        totals = _add_weighted(totals, eval_step(state, batch), size)
        count += size
    if totals is None:
        raise ValueError("evaluate: no batches to evaluate")
    means = _diverged_nan({name: value / count for name, value in jax.device_get(totals).items()})
    return {name: _number(value) for name, value in means.items()}


@functools.partial(jax.jit, static_argnums=2)
def _add_weighted(totals: dict[str, jax.Array] | None, metrics: dict[str, jax.Array], size: int):
    """``totals + metrics * size`` on the device: ``size`` is part of the program (one per
    batch size), so a batch sends the device nothing (``jax.transfer_guard`` allows it)."""
    weighted = {name: value * size for name, value in metrics.items()}
    return weighted if totals is None else jax.tree.map(jnp.add, totals, weighted)


def _diverged_nan(metrics: dict[str, Any]) -> dict[str, np.ndarray]:
    """A population's metrics (one value per member) with NaN for every other metric of a
    member whose loss is not finite: an accuracy of its NaN outputs would be a number that means
    nothing. A single model's metrics are left as they are."""
    metrics = {name: np.asarray(value) for name, value in metrics.items()}
    if "loss" not in metrics or not metrics["loss"].ndim:
        return metrics
    lost = ~np.isfinite(metrics["loss"])
    return {name: v if name == "loss" else np.where(lost.reshape(lost.shape + (1,) * (v.ndim - 1)), np.nan, v)
            for name, v in metrics.items()}


def _number(value: np.ndarray) -> float | list[float]:
    """A float, or a list of floats for a population's per-member values."""
    value = np.asarray(value)
    return float(value) if value.ndim == 0 else value.tolist()


class MetricsWindow:
    """Training metrics of the steps since the last record, kept on the device until logged.

    Each call's metrics stay device arrays until a record is due, so logging does not make
    the host wait for every step; ``flush`` averages them into one record. With
    ``steps_per_call`` K each call's metrics hold K steps on their first axis (their second,
    after a ``population``'s member axis): they count as K steps and are averaged over them
    too, each metric keeping its own shape. A long window (a record every few thousand
    steps) keeps only its last calls' metrics on the device: older ones are brought to the
    host in blocks of ``ON_DEVICE`` calls, long since computed, so neither the arrays
    held nor the cost of a record grow with ``log_every``.

    Example:
        >>> import jax.numpy as jnp
        >>> from fnn.train import MetricsWindow
        >>> window = MetricsWindow(log_every=2)
        >>> window.add({"loss": jnp.array(1.0)}), window.add({"loss": jnp.array(3.0)})
        (False, True)
        >>> window.flush(step=2)
        {'step': 2, 'split': 'train', 'loss': 2.0}
        >>> window.add({"loss": jnp.array(2.0)}), window.add({"loss": jnp.array(jnp.nan)})
        (False, True)
        >>> window.flush(step=4)
        Traceback (most recent call last):
        ...
        FloatingPointError: training loss became nan at step 4 (the first non-finite one of the 2 ...
    """

    ON_DEVICE = 256  # calls whose metrics stay on the device; a window of more fetches the oldest

    def __init__(self, log_every: int, steps_per_call: int = 1, population: bool = False):
        self.log_every = log_every
        self.steps_per_call = steps_per_call
        self.population = population
        self.pending: list[dict[str, jax.Array]] = []  # the latest calls' metrics, on the device
        self.fetched: list[dict[str, np.ndarray]] = []  # older calls', stacked in blocks on the host
        self.calls = 0

    def __len__(self) -> int:
        """The calls since the last record."""
        return self.calls

    def add(self, metrics: dict[str, jax.Array]) -> bool:
        """Add one call's metrics; true when a record is due (``log_every`` steps or more)."""
        self.pending.append(metrics)
        self.calls += 1
        if len(self.pending) >= 2 * self.ON_DEVICE:
            block, self.pending = self.pending[: self.ON_DEVICE], self.pending[self.ON_DEVICE :]
            self.fetched.append(_stack(jax.device_get(block)))
        return self.calls * self.steps_per_call >= self.log_every

    def stacked(self) -> dict[str, np.ndarray]:
        """Every pending call's metrics on the host, each with a leading axis of calls."""
        blocks = self.fetched + ([_stack(jax.device_get(self.pending))] if self.pending else [])
        return {name: np.concatenate([b[name] for b in blocks]) for name in blocks[0]} if blocks else {}

    def flush(self, step: int) -> dict[str, Any]:
        """The mean of the pending metrics as ``{"step", "split": "train", ...}``; raises as
        :meth:`check` does."""
        per_call, axis = self.steps_per_call, int(self.population)

        def mean(values: np.ndarray) -> np.ndarray:
            dtype = values.dtype if np.issubdtype(values.dtype, np.inexact) else np.float32
            calls = np.mean(values, axis=0, dtype=np.float64)
            return (calls if per_call == 1 else np.mean(calls, axis=axis)).astype(dtype)

        stacked = self.stacked()
        means = _diverged_nan({name: mean(values) for name, values in stacked.items()})
        record = {"step": step, "split": "train", **{k: _number(v) for k, v in means.items()}}
        if ("loss" in record and not np.all(np.isfinite(record["loss"]))) or "loss_scale" in record:
            self.check(step, stacked)  # look at each step only when one may be bad
        self.clear()
        return record

    def clear(self) -> None:
        self.pending, self.fetched, self.calls = [], [], 0

    def check(self, step: int, stacked: dict[str, np.ndarray] | None = None) -> None:
        """Raise ``FloatingPointError`` when a pending step (the last of them ``step``) had a
        non-finite loss, or was a float16 step skipped at loss scale 1 (its gradients overflow
        unscaled), naming the first such step. ``train_loop`` calls it before it saves a
        checkpoint, so a diverged state never takes a good checkpoint's place.

        A population's step is bad when every member's loss is non-finite: until then the
        others train on, and a member that diverged keeps non-finite values, which the
        records show and :func:`fnn.sweep.diverged` finds."""
        stacked = self.stacked() if stacked is None else stacked

        def steps(name: str) -> list[np.ndarray]:  # one value per step (a population's: per member)
            if name not in stacked:
                return []
            values = list(stacked[name])
            if self.steps_per_call == 1:
                return values
            return [v for call in values for v in np.moveaxis(call, int(self.population), 0)]

        losses = steps("loss")
        first = step - len(losses) + 1  # every step has a loss, when one has
        # a population goes on while one member's loss is finite (see fnn.sweep.diverged)
        bad = [i for i, loss in enumerate(losses) if not np.any(np.isfinite(loss))]
        if bad:
            loss = losses[bad[0]]
            members = " (every member)" if loss.ndim else ""
            raise FloatingPointError(
                f"training loss became {_number(loss)}{members} at step {first + bad[0]} (the first "
                f"non-finite one of the {len(losses)} steps up to step {step}); lower the learning rate, "
                "check the data for NaNs, check that token ids are within the embedding's range, or "
                "(float16) lower the loss scale"
            )
        skipped, scales = steps("skipped"), steps("loss_scale")
        lost = [np.asarray(~np.isfinite(loss)) for loss in losses] or [False] * len(skipped)
        # stuck: a step skipped at scale 1 (a population's: when every member is stuck or lost)
        stuck = [i for i, (k, s, x) in enumerate(zip(skipped, scales, lost))
                 if (np.all(((k > 0) & (s <= 1)) | x) if self.population else np.any((k > 0) & (s <= 1)))]
        if stuck:
            at = step - len(skipped) + 1 + stuck[0]
            what = (f"at step {at} every member's float16 gradients overflowed at loss scale 1, the "
                    "smallest, or its loss was not finite" if self.population else
                    f"the gradients of step {at} overflowed float16 at loss scale 1, the smallest")
            raise FloatingPointError(
                f"{what}, so the step was skipped and the scale cannot fall further; lower the learning "
                "rate, check the data for outliers, or compute in bfloat16"
            )

    def to_json(self) -> list[dict[str, list]]:
        """The pending metrics as exact float lists (bit patterns kept), for a checkpoint."""
        stacked = self.stacked()
        return [{k: v[i].tolist() for k, v in stacked.items()} for i in range(self.calls)]

    def load(self, saved: list[dict[str, Any]]) -> None:
        self.clear()
        if saved:
            self.fetched = [_stack([{k: np.asarray(v, np.float32) for k, v in m.items()} for m in saved])]
            self.calls = len(saved)


def _stack(calls: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Calls' metrics (dicts with the same names) as one dict, each with a leading axis of calls."""
    return {name: np.stack([np.asarray(c[name]) for c in calls]) for name in calls[0]}


def fit(
    step: Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]],
    state: TrainState,
    batches: Iterable[Batch],
    *,
    log_every: int = 50,
    log: Callable[[dict[str, float]], None] | None = None,
) -> tuple[TrainState, list[dict[str, float]]]:
    """Run ``step`` over ``batches``; every ``log_every`` steps, record the mean metrics.

    The host reads metrics only at those points, so the device runs ahead in between. A
    non-finite loss stops training with an error naming the step. A step made with
    ``steps_per_call`` K takes K stacked batches per call; its records average over all the
    steps since the last one, and ``log_every`` counts steps (a record at the first call
    that reaches it). (``fnn.loop.train_loop``
    is the same loop for a run with a directory: checkpoints, resumption, evaluation.)

    Returns the final state and the list of logged records ``{"step": ..., "loss": ...}``.

    Example:
        >>> import jax, jax.numpy as jnp, optax, fnn
        >>> model, optimizer = fnn.Dense(1), optax.sgd(0.1)
        >>> x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
        >>> state = fnn.init_train_state(model, optimizer, jax.random.key(0), x)
        >>> step = fnn.make_train_step(model, optimizer, fnn.losses.mean_squared_error)
        >>> state, history = fnn.fit(step, state, [(x, y)] * 5, log_every=2)
        >>> [record["step"] for record in history], history[-1]["loss"] < history[0]["loss"]
        ([2, 4, 5], True)
    """
    history: list[dict[str, float]] = []
    if not is_count(log_every):
        raise ValueError(f"fit: log_every must be an int >= 1, got {log_every!r}")
    window = MetricsWindow(log_every, getattr(step, "steps_per_call", 1), getattr(step, "population", False))

    def flush() -> None:
        record = window.flush(step_of(state))
        del record["split"]
        history.append(record)
        if log is not None:
            log(record)

    for batch in batches:
        state, metrics = step(state, batch)
        if window.add(metrics):
            flush()
    if len(window):
        flush()
    return state, history


def per_example_grads(
    model: Layer,
    loss: LossFn,
    params: Params,
    model_state: State,
    batch: Batch,
    *,
    key: jax.Array | None = None,
    train: bool = True,
) -> Params:
    """Gradients of the loss of each example separately, stacked on a leading batch axis.

    Uses ``jax.vmap`` over the examples; each example is seen by the model as a batch of
    one, so layers that reshape per batch (``Flatten``) behave as in training. The inputs
    and targets may be pytrees (a padded sequence's ``(ids, mask)``) whose leaves share
    the batch axis. Example ``i`` draws its randomness from ``jax.random.split(key, n)[i]``,
    so a ``Dropout`` drops differently in each example, as in a train step; a model with
    ``Dropout`` needs ``key`` when ``train`` is true. A model that keeps state
    (``BatchNorm``'s statistics) cannot be run in training mode on one example, whose batch
    statistics are the example itself: that is a ``ValueError`` unless ``train=False``,
    which normalises with the running statistics (and turns dropout off).

    The gradient is taken inside ``fnn.reverse_mode_only()``, as ``make_train_step`` takes
    its own: fnn's gradient rules apply (in one-off timings on a 2-core CPU, 128 examples
    of a 64-256-256-10 MLP took 8.8 ms against 25.4 ms with JAX's rules, 32 sequences of
    a small LSTM 5.7 against 12.1 ms), and the result cannot be differentiated again in
    forward mode (``jax.jvp``, ``jax.jacfwd``).

    Called outside ``jax.jit``, it is compiled once per model, loss, ``train`` and input
    shapes, as a train step is (so the loss is traced once: a loss that reads a value
    changed later sees the value it was traced with); a model or loss that cannot be hashed
    is run op by op instead. Inside a jitted function it is part of that function's program.

    Example:
        >>> import jax, jax.numpy as jnp, fnn
        >>> model = fnn.Dense(1)
        >>> params, state = model.init(jax.random.key(0), jnp.zeros((1, 3)))
        >>> g = fnn.per_example_grads(model, fnn.losses.mean_squared_error, params, state,
        ...                           (jnp.ones((5, 3)), jnp.zeros((5, 1))))
        >>> g["w"].shape
        (5, 3, 1)
    """
    if train and jax.tree.leaves(model_state):
        paths = sorted({path_str(path[:-1]) for path, _ in jax.tree_util.tree_leaves_with_path(model_state)})
        raise ValueError(
            f"per_example_grads: the model keeps state ({', '.join(paths)}), which one example "
            "cannot update in training mode (its batch statistics would be the example itself); "
            "pass train=False to use BatchNorm's running statistics"
        )
    x, y = batch
    leaves = jax.tree_util.tree_leaves_with_path({"x": x, "y": y})
    sizes = {path_str(path): (np.shape(leaf) or ("none (a scalar)",))[0] for path, leaf in leaves}
    if len(set(sizes.values())) != 1 or not isinstance(next(iter(sizes.values())), int):
        raise ValueError(
            "per_example_grads: the inputs and targets need one leading batch axis, got "
            + ", ".join(f"{name}: {size}" for name, size in sizes.items())
        )
    keys = None if key is None else jax.random.split(key, next(iter(sizes.values())))
    with reverse_mode_only():
        if _hashable(model) and _hashable(loss):
            return _compiled_per_example_grads(model, loss, train, params, model_state, x, y, keys)
        return _per_example_grads(model, loss, train, params, model_state, x, y, keys)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _per_example_grads(model, loss, train, params, model_state, x, y, keys):
    """``per_example_grads``' computation, once its arguments are checked; called inside
    ``reverse_mode_only``."""
    objective = _objective(model, loss, train=train)

    def example_loss(p, x, y, k):
        return objective(p, model_state, jax.tree.map(lambda a: a[None], (x, y)), k)[0]

    per_example = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0, None if keys is None else 0))
    return per_example(params, x, y, keys)


# Compiled once per model, loss, mode and input shapes: called outside a jit, the vmapped
# gradient would otherwise run op by op (a 64-256-256-10 MLP's 128 examples: 117 ms a call
# against 25 ms compiled, on a 2-core CPU). Inside a jit it is traced into the caller's
# program. Only ever called inside reverse_mode_only, so every trace it caches has fnn's rules.
_compiled_per_example_grads = jax.jit(_per_example_grads, static_argnums=(0, 1, 2))
