"""Experiments as pipelines of small stages.

A stage is a plain function. Its parameter names say which values it reads; it returns
a dict of the values it makes (or ``None``). A :class:`Pipeline` runs its stages in
order, each reading from what the caller gave and what earlier stages made::

    >>> def load(config):
    ...     return {"numbers": list(range(config))}
    >>> def total(numbers):
    ...     return {"final": {"sum": sum(numbers)}}
    >>> pipeline = Pipeline(load, total)
    >>> pipeline.run(config=4)["final"]
    {'sum': 6}
    >>> pipeline.replace(total=lambda numbers: {"final": {"max": max(numbers)}}).run(config=4)["final"]
    {'max': 3}

Because a stage is named by its function and takes its inputs by name, a new
experiment is the stages of an old one with one replaced (``replace``), one added
(``insert``) or one taken out (``without``), and any stage can be called on its own in
a test.

An :class:`Experiment` is a pipeline with a name, a description and a default
configuration (a frozen dataclass, see ``fnn.config``); ``fnn run NAME`` finds it
through the ``fnn.experiments`` entry points of the installed packages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from fnn import config as config_lib
from fnn import precision as precision_lib
from fnn.core import is_count
from fnn.data import check_dataset, example_count, loader
from fnn.loop import Interrupted, train_loop
from fnn.runs import Run
from fnn.train import evaluate as evaluate_batches
from fnn.train import init_train_state, make_eval_step, make_train_step

Stage = Callable[..., Mapping[str, Any] | None]


class PipelineError(ValueError):
    """A pipeline whose stages do not fit together; the message names the stage.

    Example:
        >>> def total(numbers):
        ...     return {"final": {"sum": sum(numbers)}}
        >>> Pipeline(total).run(config=4)
        Traceback (most recent call last):
            ...
        fnn.pipeline.PipelineError: stage 'total' needs 'numbers', which neither the caller nor an \
earlier stage provides; available: config, stage_seconds
        >>> issubclass(PipelineError, ValueError)
        True
    """


def _stage_name(fn: Callable) -> str:
    name = getattr(fn, "__name__", None)
    if not name or name == "<lambda>":
        raise PipelineError(f"stage {fn!r} has no name; pass it as a keyword: Pipeline(name=fn)")
    return name


class Pipeline:
    """Stages run in order over a shared set of named values.

    Args:
        *stages: functions, named by their ``__name__``.
        **named: functions under the given names (after the positional ones).

    Example:
        >>> def load(config):
        ...     return {"numbers": list(range(config))}
        >>> def total(numbers, offset=0):
        ...     return {"final": {"sum": sum(numbers) + offset}}
        >>> pipeline = Pipeline(load, total)
        >>> pipeline, pipeline.names
        (Pipeline(load -> total), ['load', 'total'])
        >>> values = pipeline.run(config=4, offset=10)     # offset: an optional input from the caller
        >>> values["final"], sorted(values["stage_seconds"])
        ({'sum': 16}, ['load', 'total'])
        >>> def double(numbers):
        ...     return {"numbers": [2 * n for n in numbers]}
        >>> doubled = pipeline.insert(after="load", double=double)
        >>> doubled, doubled.run(config=4)["final"]
        (Pipeline(load -> double -> total), {'sum': 12})
        >>> sorted(doubled.without("total").run(config=2))
        ['config', 'numbers', 'stage_seconds']
    """

    def __init__(self, *stages: Stage, **named: Stage):
        items = [(_stage_name(fn), fn) for fn in stages] + list(named.items())
        names = [n for n, _ in items]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise PipelineError(f"two stages are named {duplicates[0]!r}; name one with a keyword")
        for name, fn in items:
            if not callable(fn):
                raise PipelineError(f"stage {name!r} is not callable: {fn!r}")
        self.stages: tuple[tuple[str, Stage], ...] = tuple(items)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.stages]

    def __repr__(self) -> str:
        return f"Pipeline({' -> '.join(self.names)})"

    def _index(self, name: str) -> int:
        if name not in self.names:
            raise PipelineError(f"no stage named {name!r}; the stages are {', '.join(self.names)}")
        return self.names.index(name)

    def replace(self, **stages: Stage) -> Pipeline:
        """A pipeline with the named stages swapped for new functions, in the same places."""
        for name in stages:
            self._index(name)
        return Pipeline(**{n: stages.get(n, fn) for n, fn in self.stages})

    def insert(self, *, after: str | None = None, before: str | None = None, **stages: Stage) -> Pipeline:
        """A pipeline with new stages placed right after (or before) an existing one."""
        if (after is None) == (before is None):
            raise PipelineError("insert: give exactly one of after= or before=")
        at = self._index(after) + 1 if after is not None else self._index(before)
        taken = sorted(set(stages) & set(self.names))
        if taken:
            raise PipelineError(f"insert: a stage is already named {taken[0]!r}; name the new one "
                                "otherwise, or use replace")
        items = list(self.stages)
        items[at:at] = list(stages.items())
        return Pipeline(**dict(items))

    def without(self, *names: str) -> Pipeline:
        for name in names:
            self._index(name)
        return Pipeline(**{n: fn for n, fn in self.stages if n not in names})

    def run(self, **values: Any) -> dict[str, Any]:
        """Run every stage; returns all values, those given and those the stages made, and
        ``stage_seconds``: the wall time each stage took."""
        values = dict(values)
        seconds = values.setdefault("stage_seconds", {})
        for name, fn in self.stages:
            began = time.perf_counter()
            kwargs = {}
            for param in inspect.signature(fn).parameters.values():
                if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                    continue
                if param.name in values:
                    kwargs[param.name] = values[param.name]
                elif param.default is param.empty:
                    raise PipelineError(
                        f"stage {name!r} needs {param.name!r}, which neither the caller nor an earlier "
                        f"stage provides; available: {', '.join(sorted(values)) or 'nothing'}"
                    )
            made = fn(**kwargs)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - began
            if made is None:
                continue
            if not isinstance(made, Mapping):
                raise PipelineError(
                    f"stage {name!r} returned {type(made).__name__}; a stage returns a "
                    "dict of the values it makes, or None"
                )
            values.update(made)
        return values


# -- experiments -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A named pipeline with a default configuration.

    The pipeline is run with ``config`` (the resolved configuration), ``run`` (an
    ``fnn.runs.Run`` or ``None``) and ``progress`` (whether to show a progress bar) and
    must make ``final``: a dict of the final metrics. ``notes`` (a list of strings), if
    made, go into the run's summary.

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class Config:
        ...     n: int = 4
        >>> def load(config):
        ...     return {"numbers": list(range(config.n))}
        >>> def report(numbers):
        ...     return {"final": {"sum": sum(numbers)}}
        >>> experiment = Experiment("demo", "sums numbers", Config(), Pipeline(load, report))
        >>> experiment()["final"], experiment(Config(n=5))["final"]
        ({'sum': 6}, {'sum': 10})
    """

    name: str
    description: str
    config: Any
    pipeline: Pipeline
    sweep: Pipeline | None = None  # a population version, for ``fnn sweep``

    def __call__(
        self, config: Any | None = None, *, run: Run | None = None, progress: bool = False, **values: Any
    ) -> dict[str, Any]:
        """Run the experiment; returns every value its stages made (``final`` among them)."""
        config = self.config if config is None else config
        values = self.pipeline.run(config=config, run=run, progress=progress, **values)
        if "final" not in values:
            raise PipelineError(f"experiment {self.name!r}: no stage made 'final'")
        return values


def experiments() -> dict[str, Experiment]:
    """The experiments that installed packages declare under the ``fnn.experiments`` entry points,
    by name.

    Example:
        >>> experiments()["xor"].name
        'xor'
    """
    from importlib.metadata import entry_points

    found = {}
    for point in entry_points(group="fnn.experiments"):
        experiment = point.load()
        if not isinstance(experiment, Experiment):
            raise PipelineError(f"entry point {point.name} = {point.value} is not an fnn.pipeline.Experiment")
        found[experiment.name] = experiment
    return dict(sorted(found.items()))


def find(name: str) -> Experiment:
    """The installed experiment called ``name``; a ``PipelineError`` listing them if none is.

    Example:
        >>> find("xor").description
        'a 2-4-1 sigmoid network learns XOR by backpropagation'
        >>> find("nope")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        fnn.pipeline.PipelineError: no experiment named 'nope'; the experiments are ...digits, ...
    """
    known = experiments()
    if name not in known:
        raise PipelineError(f"no experiment named {name!r}; the experiments are {', '.join(known) or 'none'}")
    return known[name]


def start(experiment: Experiment, config: Any, directory: str, *, progress: bool = True) -> tuple[Run, dict]:
    """Create a run directory for ``config`` and run ``experiment`` in it to the end.

    Returns the :class:`fnn.runs.Run` and the pipeline's values.

    Example:
        >>> import dataclasses, os, tempfile
        >>> @dataclasses.dataclass(frozen=True)
        ... class Config:
        ...     n: int = 4
        >>> experiment = Experiment("demo", "sums numbers", Config(),
        ...                         Pipeline(total=lambda config: {"final": {"sum": config.n * 2}}))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     run, values = start(experiment, Config(), os.path.join(d, "run"), progress=False)
        ...     values["final"], run.final()["sum"]
        ({'sum': 8}, 8)
    """
    run = Run.create(directory, experiment.name, config_lib.to_dict(config))
    return run, run_in(experiment, config, run, progress)


def resume(
    directory: str, *, experiment: Experiment | None = None, progress: bool = True
) -> tuple[Run, dict]:
    """Continue the run in ``directory`` from its latest checkpoint.

    The experiment is found by the name in the run's ``config.json`` (among the installed
    ones, :func:`experiments`), or is ``experiment`` (one of your own, started with
    :func:`start`; its name must be the run's), and runs with the configuration recorded
    there; a run of ``fnn sweep`` continues as a population. Returns the run and the
    pipeline's values.

    Example:
        >>> import dataclasses, os, tempfile
        >>> xor = find("xor")
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _, first = start(xor, dataclasses.replace(xor.config, steps=10), os.path.join(d, "run"),
        ...                      progress=False)
        ...     run, again = resume(os.path.join(d, "run"), progress=False)  # restores step 10's checkpoint
        ...     run.experiment, run.config["steps"], int(again["state"].step)
        ('xor', 10, 10)
        >>> again["final"] == first["final"]
        True
    """
    from fnn import sweep

    run = Run(directory)
    if experiment is None:
        try:
            experiment = find(run.experiment)
        except PipelineError as error:
            raise PipelineError(f"{error}; a run of an experiment of your own continues with "
                                "fnn.pipeline.resume(directory, experiment=...)") from None
    elif experiment.name != run.experiment:
        raise PipelineError(f"{run.directory} is a run of {run.experiment!r}, not of {experiment.name!r}")
    try:
        config = config_lib.from_dict(type(experiment.config), recorded_config(run))
    except config_lib.ConfigError as error:
        raise config_lib.ConfigError(f"{run.directory / 'config.json'}: {error}") from None
    members = sweep.resume_members(directory)
    if members:  # a population run of `fnn sweep`
        return run, run_in(
            experiment, config, run, progress, sweep.population_pipeline(experiment), members=members
        )
    return run, run_in(experiment, config, run, progress)


def recorded_config(run: Run) -> dict:
    """The configuration ``run`` recorded, as this version reads it. Before format 2 a
    ``TrainConfig`` recorded ``momentum: 0.9`` whatever its optimizer, and only sgd used it;
    such a run's adam or rmsprop momentum is read as none, as it trained.

    Example:
        >>> import types
        >>> old = types.SimpleNamespace(format=1, config={"train": {"optimizer": "adam", "momentum": 0.9}})
        >>> recorded_config(old)
        {'train': {'optimizer': 'adam', 'momentum': None}}
    """
    if run.format >= 2:
        return run.config

    def as_trained(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        node = {key: as_trained(value) for key, value in node.items()}
        if node.get("optimizer", "sgd") != "sgd" and "momentum" in node:
            node["momentum"] = None
        return node

    return as_trained(run.config)


def run_in(
    experiment: Experiment,
    config: Any,
    run: Run,
    progress: bool,
    pipeline: Pipeline | None = None,
    **values: Any,
) -> dict:
    """Run ``pipeline`` (default: the experiment's) in ``run`` to the end and write its
    final metrics, plots and summary; returns the pipeline's values.

    Example:
        >>> import dataclasses, os, tempfile
        >>> xor = find("xor")
        >>> config = dataclasses.replace(xor.config, steps=20)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     run = Run.create(os.path.join(d, "run"), "xor", dataclasses.asdict(config))
        ...     values = run_in(xor, config, run, progress=False)
        ...     sorted(run.final())[:2], (run.directory / "summary.md").exists()
        (['all_correct', 'loss'], True)
    """
    run.keep_checkpoints = getattr(getattr(config, "train", None), "keep_checkpoints", 3)
    pipeline = pipeline or experiment.pipeline
    began = time.perf_counter()
    with run.held():  # refused while another process trains in the directory
        run.check_writable()
        try:
            with _ctrl_c_noted() as noted:
                values = pipeline.run(config=config, run=run, progress=progress, **values)
            if noted:  # its KeyboardInterrupt was raised where Python ignores one (a GC callback)
                raise KeyboardInterrupt
        except Interrupted as stop:  # a sub-run's loop (a comparison's variant) stopped: resume this run
            _close(run, stop)
            if stop.directory != str(run.directory):
                raise Interrupted(str(run.directory), stop.step, stop.signum) from None
            raise
        except KeyboardInterrupt as stop:  # Ctrl-C while no loop caught it (data, compiling, a later stage)
            _close(run, stop)
            raise Interrupted(str(run.directory), None, signal.SIGINT) from None
        except BaseException as error:
            _close(run, error)
            raise
        run.finish(
            values["final"],
            seconds=time.perf_counter() - began,
            notes=values.get("notes", ()),
            stage_seconds=values.get("stage_seconds"),
        )
        return values


def _close(run: Run, error: BaseException) -> None:
    """Close ``run`` after ``error`` without letting a failure to close (a full disk that
    TensorBoard cannot flush to) take the place of ``error``."""
    try:
        run.close()
    except Exception as failure:
        error.add_note(f"(closing the run failed too: {type(failure).__name__}: {failure})")


@contextlib.contextmanager
def _ctrl_c_noted() -> Iterator[list[int]]:
    """SIGINT raises ``KeyboardInterrupt`` as usual, and is noted in the list yielded: one
    raised inside a garbage-collection callback is printed and ignored by Python, and the
    note lets the run stop all the same. The training loop installs its own handler while
    it trains. A process whose SIGINT is ignored (a shell's background job) or handled by
    its own code is left as it is."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield []
        return
    noted: list[int] = []

    def handler(signum, frame):
        noted.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield noted
    finally:
        signal.signal(signal.SIGINT, previous)


# -- stages shared by the supervised experiments ---------------------------------------


OPTIMIZERS = {"adam": 1e-3, "sgd": 0.05, "rmsprop": 1e-3}  # each one's default learning rate


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a supervised experiment trains: optimizer, batches, how often to log, evaluate
    and checkpoint. Intervals are in steps; 0 means once per epoch (log), only at the end
    (eval) or four times a run (checkpoint). Values are checked when the config is made
    (or overridden): a bad one is a ``ConfigError`` naming the key.

    Example:
        >>> train = TrainConfig(optimizer="sgd", batch_size=32, epochs=2)
        >>> train.optimizer, train.batch_size, train.epochs, train.devices, train.precision
        ('sgd', 32, 2, 'one', 'float32')
        >>> TrainConfig(batch_size=0)
        Traceback (most recent call last):
            ...
        fnn.config.ConfigError: train.batch_size must be at least 1, got 0
        >>> TrainConfig(devices="gpus")
        Traceback (most recent call last):
            ...
        fnn.config.ConfigError: train.devices: 'gpus' is not one of 'one', 'data', 'fsdp'
    """

    optimizer: str = dataclasses.field(default="adam", metadata={"choices": tuple(OPTIMIZERS)})
    learning_rate: float | None = None  # None: the optimizer's default (OPTIMIZERS)
    # None: sgd's 0.9, none for rmsprop; adam has none (its first-moment decay is fixed)
    momentum: float | None = None
    batch_size: int = 64
    epochs: int = 20
    seed: int = 0  # the initial weights, the batch order and the augmentation
    log_every: int = 0
    eval_every: int = 0
    checkpoint_every: int = 0  # 0: four times in a run, and at the end
    keep_checkpoints: int = 3
    # devices: "one" (the default device), "data" (every batch split among all devices,
    # parameters replicated) or "fsdp" (parameters and optimizer state split too)
    devices: str = dataclasses.field(default="one", metadata={"choices": ("one", "data", "fsdp")})
    # what the model computes in; parameters, gradients and optimizer state stay float32
    # (fnn.precision; float16 uses a loss scale of 2**12)
    precision: str = dataclasses.field(default="float32", metadata={"choices": precision_lib.DTYPES})

    def __post_init__(self):
        config_lib.check_choices(self, prefix="train.")
        config_lib.check_at_least(self, (("batch_size", 1), ("epochs", 1), ("keep_checkpoints", 1),
                                         ("log_every", 0), ("eval_every", 0), ("checkpoint_every", 0)),
                                  prefix="train.")
        config_lib.check_seeds(self, ["seed"], prefix="train.")
        config_lib.check_that(self, (("learning_rate", self.learning_rate is None or self.learning_rate > 0,
                                      "positive"),
                                     ("momentum", self.momentum is None or 0 <= self.momentum < 1,
                                      "in [0, 1)")), prefix="train.")
        if self.optimizer == "adam" and self.momentum is not None:
            raise config_lib.ConfigError(
                f"train.momentum={self.momentum}: adam has no momentum (sgd and rmsprop do); leave it unset"
            )


def learning_rate(train: TrainConfig) -> float:
    """``train.learning_rate``, or the optimizer's default when it is None.

    Example:
        >>> learning_rate(TrainConfig()), learning_rate(TrainConfig(optimizer="sgd"))
        (0.001, 0.05)
    """
    return OPTIMIZERS[train.optimizer] if train.learning_rate is None else train.learning_rate


def make_optimizer(train: TrainConfig) -> optax.GradientTransformation:
    """The optimizer of ``train`` with its learning rate (and momentum) injected as
    hyperparameters, so a population of runs can differ in them (see ``fnn.sweep``).

    Example:
        >>> import jax.numpy as jnp
        >>> optimizer = make_optimizer(TrainConfig(optimizer="sgd"))
        >>> {k: round(float(v), 3) for k, v in optimizer.init({"w": jnp.zeros(2)}).hyperparams.items()}
        {'learning_rate': 0.05, 'momentum': 0.9}
        >>> optimizer = make_optimizer(TrainConfig(optimizer="rmsprop", momentum=0.5))
        >>> round(float(optimizer.init({"w": jnp.zeros(2)}).hyperparams["momentum"]), 3)
        0.5
    """
    if train.optimizer not in OPTIMIZERS:
        raise config_lib.ConfigError(
            f"train.optimizer: {train.optimizer!r} is not one of {', '.join(OPTIMIZERS)}"
        )
    # floats, so that a population's per-member values (fnn.sweep) are never cast to an int
    lr = float(learning_rate(train))  # TrainConfig has checked that it is positive
    if train.optimizer == "sgd":
        momentum = 0.9 if train.momentum is None else float(train.momentum)
        return optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=momentum)
    if train.optimizer == "rmsprop" and train.momentum is not None:
        return optax.inject_hyperparams(optax.rmsprop)(learning_rate=lr, momentum=float(train.momentum))
    return optax.inject_hyperparams(getattr(optax, train.optimizer))(learning_rate=lr)


def optimizer(config: Any) -> dict:
    """Stage: ``optimizer`` from ``config.train``.

    Example:
        >>> import dataclasses, jax.numpy as jnp
        >>> @dataclasses.dataclass(frozen=True)
        ... class Config:
        ...     train: TrainConfig = TrainConfig(optimizer="sgd", learning_rate=0.1)
        >>> made = optimizer(Config())
        >>> opt_state = made["optimizer"].init({"w": jnp.zeros(2)})
        >>> list(made), round(float(opt_state.hyperparams["learning_rate"]), 3)
        (['optimizer'], 0.1)
    """
    return {"optimizer": make_optimizer(config.train)}


def batches(train_set: tuple, config: Any, augment: Callable | None = None) -> dict:
    """Stage: ``batches``, the shuffled training batches of every epoch (a grain dataset).

    Example:
        >>> import dataclasses, numpy as np
        >>> @dataclasses.dataclass(frozen=True)
        ... class Config:
        ...     train: TrainConfig = TrainConfig(batch_size=4, epochs=2)
        >>> train_set = (np.ones((10, 3), np.float32), np.zeros(10, np.int32))
        >>> data = batches(train_set, Config())["batches"]
        >>> len(data), [a.shape for a in data[0]]                # 2 full batches an epoch, 2 epochs
        (4, [(4, 3), (4,)])
        >>> batches(train_set, Config(train=TrainConfig(batch_size=16)))
        Traceback (most recent call last):
            ...
        fnn.config.ConfigError: train.batch_size=16 is larger than the training set (10 examples)
    """
    t = config.train
    check_batch_size(train_set, t)
    return {"batches": loader(train_set, t.batch_size, seed=t.seed, epochs=t.epochs, transform=augment)}


def check_batch_size(train_set: Any, train: TrainConfig) -> None:
    """A ``ConfigError`` naming ``train.batch_size`` when it is larger than the training set."""
    examples = example_count("train_set", jax.tree.leaves(train_set))
    if train.batch_size > examples:
        raise config_lib.ConfigError(
            f"train.batch_size={train.batch_size} is larger than the training set ({examples} examples)"
        )


def train(
    model,
    optimizer,
    batches,
    loss,
    config: Any,
    metrics=None,
    eval_set=None,
    run=None,
    progress: bool = False,
) -> dict:
    """Stage: train ``model`` on ``batches``; makes ``state`` and ``history``.

    Evaluates on ``eval_set`` (if given; a validation split) every ``config.train.eval_every``
    steps and at the end; the test set is for the :func:`test` stage, once, after training.

    Example:
        >>> import dataclasses, numpy as np, fnn
        >>> @dataclasses.dataclass(frozen=True)
        ... class Config:
        ...     train: TrainConfig = TrainConfig(optimizer="sgd", batch_size=4, epochs=2)
        >>> x, y = np.ones((8, 3), np.float32), np.zeros(8, np.int32)
        >>> config = Config()
        >>> made = train(fnn.Dense(2), optimizer(config)["optimizer"], batches((x, y), config)["batches"],
        ...              fnn.losses.softmax_cross_entropy, config, eval_set=(x, y))
        >>> sorted(made), int(made["state"].step), made["state"].params["w"].shape
        (['history', 'loop_stats', 'state'], 4, (3, 2))
        >>> [(r["step"], r["split"]) for r in made["history"]]  # a record an epoch; eval at the end
        [(2, 'train'), (4, 'train'), (4, 'eval')]
    """
    t = config.train
    x_spec = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((t.batch_size, *a.shape[1:]), a.dtype), batches[0][0]
    )
    policy = precision_lib.policy(getattr(t, "precision", "float32"))
    state = init_train_state(model, optimizer, jax.random.key(t.seed), x_spec, policy=policy)
    parallel = layout(t)
    if parallel is not None:
        if t.batch_size % parallel.size:
            raise config_lib.ConfigError(
                f"train.batch_size {t.batch_size} does not divide among {parallel.size} devices "
                f"(train.devices={t.devices!r}); use a multiple of {parallel.size}"
            )
        state = parallel.put_state(state)
    return train_from(
        state,
        model,
        optimizer,
        batches,
        loss,
        config,
        metrics=metrics,
        eval_set=eval_set,
        run=run,
        progress=progress,
    )


def train_from(
    state,
    model,
    optimizer,
    batches,
    loss,
    config: Any,
    *,
    metrics=None,
    eval_set=None,
    run=None,
    progress: bool = False,
    population: bool = False,
    eval_every: int = 0,
) -> dict:
    """Train ``state`` (one model, or a population with ``population=True``) with the loop
    settings of ``config.train``; ``eval_every`` is the default when the config says 0.
    Makes ``state``, ``history`` and ``loop_stats`` (wall time and the time spent waiting
    for input; see ``fnn.loop.train_loop``).

    Example:
        >>> import dataclasses, jax, numpy as np, fnn
        >>> @dataclasses.dataclass(frozen=True)
        ... class Config:
        ...     train: TrainConfig = TrainConfig(optimizer="sgd", batch_size=4, epochs=2)
        >>> x, y = np.ones((8, 3), np.float32), np.zeros(8, np.int32)
        >>> config, model = Config(), fnn.Dense(2)
        >>> opt = make_optimizer(config.train)
        >>> state = fnn.init_train_state(model, opt, jax.random.key(0), x[:4])
        >>> made = train_from(state, model, opt, batches((x, y), config)["batches"],
        ...                   fnn.losses.softmax_cross_entropy, config, eval_set=(x, y), eval_every=1)
        >>> int(made["state"].step), [(r["step"], r["split"]) for r in made["history"]]
        (4, [(1, 'eval'), (2, 'train'), (2, 'eval'), (3, 'eval'), (4, 'train'), (4, 'eval')])
    """
    t = config.train
    if population:
        check_population_devices(t)
    parallel = layout(t)
    policy = precision_lib.policy(getattr(t, "precision", "float32"))
    step = make_train_step(model, optimizer, loss, metrics=metrics, population=population, parallel=parallel,
                           policy=policy)
    per_epoch = max(1, len(batches) // t.epochs)
    evaluate = None
    if eval_set is not None:
        check_dataset("eval_set", jax.tree.leaves(eval_set))  # once, before training, as the loader does
        eval_step = make_eval_step(model, loss, metrics=metrics, population=population, policy=policy)

        def evaluate(state):
            return evaluate_batches(eval_step, state, loader_in_order(eval_set, 512))

    state, history = train_loop(
        step,
        state,
        batches,
        run=run,
        log_every=t.log_every or per_epoch,
        evaluate=evaluate,
        eval_every=t.eval_every or eval_every,
        checkpoint_every=t.checkpoint_every or max(1, len(batches) // 4),
        progress=progress,
        parallel=parallel,
        stats=(stats := {}),
    )
    return {"state": state, "history": history, "loop_stats": stats}


def check_population_devices(train: TrainConfig) -> None:
    """A ``ConfigError`` unless ``train.devices`` is ``"one"``: a population (``fnn sweep``)
    trains on one device."""
    devices = getattr(train, "devices", "one")
    if devices != "one":
        raise config_lib.ConfigError(
            f"train.devices={devices!r} cannot be combined with a population (fnn sweep) yet; "
            "use train.devices=one"
        )


def layout(train: TrainConfig):
    """The ``fnn.distributed.DataParallel`` layout that ``train.devices`` asks for, or None.

    Example:
        >>> import jax
        >>> layout(TrainConfig()) is None                       # devices="one"
        True
        >>> parallel = layout(TrainConfig(devices="fsdp"))
        >>> type(parallel).__name__, parallel.fsdp, parallel.size == len(jax.devices())
        ('DataParallel', True, True)
    """
    devices = getattr(train, "devices", "one")
    if devices == "one":
        return None
    from fnn.distributed import DataParallel

    return DataParallel.over(fsdp=devices == "fsdp")


def test(model, loss, state, test_set, metrics=None, config: Any = None) -> dict:
    """Stage: ``test``, the metrics of the trained model (or of each member of a population)
    on ``test_set``, computed once, after training, in the precision it was trained in.

    Example:
        >>> import jax, numpy as np, optax, fnn
        >>> model = fnn.Dense(2, w_init="zeros")                 # equal logits: loss log 2
        >>> state = fnn.init_train_state(model, optax.sgd(0.1), jax.random.key(0), np.zeros((1, 3)))
        >>> test_set = (np.ones((5, 3), np.float32), np.zeros(5, np.int32))
        >>> made = test(model, fnn.losses.softmax_cross_entropy, state, test_set,
        ...             metrics={"accuracy": fnn.metrics.accuracy})
        >>> {k: round(float(v), 3) for k, v in sorted(made["test"].items())}
        {'accuracy': 1.0, 'loss': 0.693}
    """
    check_dataset("test_set", jax.tree.leaves(test_set))
    population = jnp.ndim(state.step) > 0
    train_config = getattr(config, "train", None)
    policy = precision_lib.policy(getattr(train_config, "precision", "float32"))
    eval_step = make_eval_step(model, loss, metrics=metrics, population=population, policy=policy)
    return {"test": evaluate_batches(eval_step, state, loader_in_order(test_set, 512))}


test.__test__ = False  # a pipeline stage, not a test: pytest must not collect it


def loader_in_order(arrays: Any, batch_size: int):
    """Batches of ``arrays`` (a pytree of equally long arrays) in order, the last one smaller
    (for evaluation).

    Example:
        >>> import numpy as np
        >>> [x.shape for (x,) in loader_in_order((np.ones((5, 3)),), 2)]
        [(2, 3), (2, 3), (1, 3)]
    """
    if not is_count(batch_size):
        raise ValueError(f"loader_in_order: batch_size must be a positive int, got {batch_size!r}")
    n = example_count("loader_in_order", jax.tree.leaves(arrays))
    for i in range(0, n, batch_size):
        yield jax.tree.map(lambda a, i=i: a[i : i + batch_size], arrays)


def predict(model, state, inputs, batch_size: int = 512, *, policy: Any = None) -> jax.Array:
    """The model's outputs on ``inputs`` (an array or a pytree such as ``(x, mask)``) in
    evaluation mode, computed in batches, in the dtypes of ``policy`` (a
    ``fnn.precision.Policy`` or a dtype's name, as the model was trained and tested in).

    Example:
        >>> import jax, jax.numpy as jnp, optax, fnn
        >>> model = fnn.Dense(2)
        >>> state = fnn.init_train_state(model, optax.sgd(0.1), jax.random.key(0), jnp.zeros((1, 3)))
        >>> predict(model, state, jnp.ones((5, 3)), batch_size=2).shape
        (5, 2)
    """
    if not is_count(batch_size):
        raise ValueError(f"predict: batch_size must be a positive int, got {batch_size!r}")
    policy = precision_lib.as_policy(policy, "predict")
    apply = jax.jit(lambda params, state, x: precision_lib.apply(policy, model, params, state, x)[0])
    if not len(jax.tree.leaves(inputs)[0]):  # no examples: the outputs' shapes with none
        shapes = jax.eval_shape(apply, state.params, state.model_state, inputs)
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    outs = [
        apply(state.params, state.model_state, chunk) for (chunk,) in loader_in_order((inputs,), batch_size)
    ]
    return jax.tree.map(lambda *parts: jnp.concatenate(parts), *outs)
