"""Sweeps: a population of models trained in one compiled program with ``jax.vmap``.

A population is a train state with a leading member axis. Members differ in their seed
(initial weights, batch order, dropout, augmentation) and in hyperparameters that live in
the optimizer state (the learning rate and momentum of an
``optax.inject_hyperparams`` optimizer, which ``fnn.pipeline.make_optimizer`` builds), so
one ``jax.vmap``-ed step trains them all::

    state = init_population(model, optimizer, seeds=[0, 1, 2], x=x_spec,
                            hyperparams={"learning_rate": [1e-3, 1e-3, 3e-3]})
    step = fnn.make_train_step(model, optimizer, loss, population=True)

Member ``i`` follows exactly the computation of the same model trained alone with seed
``i`` and its hyperparameters (``tests/test_sweep.py`` checks it).

For an experiment written with the shared stages of ``fnn.pipeline`` (``batches``,
``train`` and ``report``), :func:`population_pipeline` swaps those three for population
versions, so
``fnn sweep NAME`` works without code of its own.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn import config as config_lib
from fnn import plots
from fnn.data import loader
from fnn.pipeline import PipelineError, check_batch_size, check_population_devices, run_in, train_from
from fnn.precision import policy as precision_policy
from fnn.runs import Run, RunError, dumps, read_json
from fnn.train import TrainState, init_train_state

# what a population can vary inside one program: hyperparameters held in the optimizer state
SWEEPABLE = ("train.learning_rate", "train.momentum")


def init_population(
    model, optimizer, seeds: Sequence[int], x: Any, hyperparams: Mapping[str, Sequence[float]] | None = None,
    *, policy: Any = None,
) -> TrainState:
    """The stacked train states of ``len(seeds)`` members (member ``i`` from ``jax.random.key(seeds[i])``),
    with each named hyperparameter of the ``inject_hyperparams`` optimizer set per member, and
    with a loss-scaled ``policy`` (float16) each member's own loss scale (``init_train_state``).

    Every leaf gains a leading member axis of length ``len(seeds)``.

    Example:
        >>> import jax.numpy as jnp, optax, fnn
        >>> optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
        >>> state = init_population(fnn.Dense(2), optimizer, [0, 1, 2], jnp.zeros((1, 3)),
        ...                         {"learning_rate": [0.1, 0.1, 0.3]})
        >>> state.params["w"].shape, state.opt_state.hyperparams["learning_rate"]
        ((3, 3, 2), Array([0.1, 0.1, 0.3], dtype=float32))
    """
    states = [init_train_state(model, optimizer, jax.random.key(int(s)), x, policy=policy) for s in seeds]
    state = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
    for name, values in (hyperparams or {}).items():
        if len(values) != len(seeds):
            raise ValueError(f"init_population: {len(values)} values of {name} for {len(seeds)} members")
        state = set_hyperparam(state, name, jnp.asarray(values, jnp.float32))
    return state


def set_hyperparam(state: TrainState, name: str, values: jax.Array) -> TrainState:
    """A population's state with hyperparameter ``name`` of its ``inject_hyperparams``
    optimizer set to ``values``, one per member (see :func:`init_population`).

    Example:
        >>> import jax.numpy as jnp, optax, fnn
        >>> optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
        >>> state = init_population(fnn.Dense(2), optimizer, [0, 1], jnp.zeros((1, 3)))
        >>> state = set_hyperparam(state, "learning_rate", jnp.array([0.5, 0.25]))
        >>> state.opt_state.hyperparams["learning_rate"]
        Array([0.5 , 0.25], dtype=float32)
        >>> set_hyperparam(state, "momentum", jnp.array([0.9, 0.9]))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: the optimizer state holds no hyperparameter 'momentum' (it holds ['learning_rate']); ...
    """
    opt_state = state.opt_state
    hyper = getattr(opt_state, "hyperparams", None)
    if hyper is None or name not in hyper:
        have = sorted(hyper) if hyper is not None else []
        raise ValueError(
            f"the optimizer state holds no hyperparameter {name!r} (it holds {have}); "
            "build the optimizer with optax.inject_hyperparams"
        )
    hyper = dict(hyper)
    held = jnp.asarray(hyper[name]).dtype
    values = jnp.asarray(values)
    if not jnp.issubdtype(held, jnp.inexact) and not np.array_equal(values, values.astype(held)):
        raise ValueError(
            f"the optimizer state holds {name!r} as {held} (its optimizer was given an int), so "
            f"{values.tolist()} cannot be stored; give inject_hyperparams a float {name}"
        )
    hyper[name] = values.astype(held)
    return state._replace(opt_state=opt_state._replace(hyperparams=hyper))


def parse_grid(config: Any, specs: Sequence[str]) -> list[tuple[str, list]]:
    """``["train.learning_rate=1e-3,3e-3"]`` as ``[("train.learning_rate", [0.001, 0.003])]``, each
    value checked like an override.

    Example:
        >>> import dataclasses, fnn
        >>> @dataclasses.dataclass(frozen=True)
        ... class Config:
        ...     train: fnn.pipeline.TrainConfig = fnn.pipeline.TrainConfig()
        >>> parse_grid(Config(), ["train.learning_rate=1e-3,3e-3"])
        [('train.learning_rate', [0.001, 0.003])]
        >>> parse_grid(Config(), ["train.momentum=0.5,0.9"])         # adam has no momentum
        Traceback (most recent call last):
            ...
        fnn.config.ConfigError: train.momentum=0.5: adam has no momentum (sgd and rmsprop do); leave it unset
    """
    grid = []
    for spec in specs:
        key, sep, text = spec.partition("=")
        if not sep or not text:
            raise config_lib.ConfigError(f"--grid expects KEY=V1,V2,..., got {spec!r}")
        if key not in SWEEPABLE:
            raise config_lib.ConfigError(
                f"--grid {key}: a population varies only what lives in the optimizer state "
                f"({', '.join(SWEEPABLE)}) and the seed (--seeds); run separate sweeps for {key}"
            )
        if key in (k for k, _ in grid):
            raise config_lib.ConfigError(
                f"--grid {key} is given twice; give all its values at once: {key}=V1,V2,..."
            )
        values = [getattr_path(config_lib.override(config, [f"{key}={v}"]), key) for v in text.split(",")]
        if any(value is None for value in values):
            raise config_lib.ConfigError(f"--grid {key}: each value must be a number, got {text!r}")
        name = key.split(".")[-1]
        train = getattr(config, "train", None)  # the population's optimizer is made from it
        if train is not None:  # checked here, before a sweep directory is made
            from fnn.pipeline import make_optimizer

            held = make_optimizer(train).init({}).hyperparams
            if name not in held:
                raise config_lib.ConfigError(
                    f"--grid {key}: the {train.optimizer} optimizer has no {name} (its "
                    f"hyperparameters are {', '.join(sorted(held))}); choose train.optimizer=sgd"
                    + (f", or give rmsprop one ({key}=0.9)" if train.optimizer == "rmsprop" else "")
                )
        grid.append((key, values))
    return grid


def getattr_path(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


MAX_MEMBERS = 10_000  # members of one population (fnn sweep)


def members(seeds: int, grid: Mapping[str, Sequence]) -> list[dict[str, Any]]:
    """Every grid point times seeds ``0..seeds-1``: ``[{"seed": 0, "train.learning_rate": ...}, ...]``.

    Example:
        >>> for member in members(2, {"train.learning_rate": [1e-3, 3e-3]}):
        ...     print(label(member))
        seed=0 learning_rate=0.001
        seed=1 learning_rate=0.001
        seed=0 learning_rate=0.003
        seed=1 learning_rate=0.003
    """
    if not isinstance(seeds, int) or seeds < 1:
        raise config_lib.ConfigError(f"--seeds must be a positive int, got {seeds!r}")
    points = math.prod(len(values) for values in grid.values())
    if seeds * points > MAX_MEMBERS:  # checked before the list of members is made
        raise config_lib.ConfigError(
            f"--seeds {seeds} times {points} grid point(s) is {seeds * points:,} members; a population "
            f"holds every member's train state at once, so a sweep has at most {MAX_MEMBERS:,}: "
            "run several sweeps"
        )
    keys = list(grid)
    return [
        {"seed": seed, **dict(zip(keys, point))}
        for point in itertools.product(*grid.values())
        for seed in range(seeds)
    ]


def member_config(config: Any, member: Mapping[str, Any]) -> Any:
    """The configuration that trains member ``member`` alone.

    Example:
        >>> import dataclasses, fnn
        >>> @dataclasses.dataclass(frozen=True)
        ... class Config:
        ...     train: fnn.pipeline.TrainConfig = fnn.pipeline.TrainConfig()
        >>> train = member_config(Config(), {"seed": 1, "train.learning_rate": 0.003}).train
        >>> train.seed, train.learning_rate
        (1, 0.003)
    """
    overrides = [f"train.seed={member['seed']}"] + [f"{k}={v}" for k, v in member.items() if k != "seed"]
    return config_lib.override(config, overrides)


# -- population stages -------------------------------------------------------------------


def population_batches(train_set: tuple, config: Any, members: list[dict], augment=None) -> dict:
    """Stage: each member's batches (its own seed's order and augmentation), stacked.

    Example:
        >>> import dataclasses, numpy as np, fnn
        >>> @dataclasses.dataclass(frozen=True)
        ... class Config:
        ...     train: fnn.pipeline.TrainConfig = fnn.pipeline.TrainConfig(batch_size=4, epochs=2)
        >>> train_set = (np.arange(8, dtype=np.float32)[:, None], np.zeros(8, np.int32))
        >>> data = population_batches(train_set, Config(), members(2, {}))["batches"]
        >>> len(data), [a.shape for a in data[0]]               # [member, batch, ...]
        (4, [(2, 4, 1), (2, 4)])
        >>> [sorted(x[:, 0].tolist()) for x in data[0][0]] != [sorted(x[:, 0].tolist()) for x in data[1][0]]
        True
    """
    t = config.train
    check_batch_size(train_set, t)
    per_member = [
        loader(train_set, t.batch_size, seed=m["seed"], epochs=t.epochs, transform=augment) for m in members
    ]

    def stacked(k: int) -> tuple:
        return tuple(np.stack(parts) for parts in zip(*(data[k] for data in per_member)))

    import grain

    return {"batches": grain.MapDataset.range(len(per_member[0])).map(stacked)}


def population_train(
    model,
    optimizer,
    batches,
    loss,
    config: Any,
    members: list[dict],
    metrics=None,
    eval_set=None,
    run=None,
    progress: bool = False,
) -> dict:
    """Stage: train every member in one compiled program; makes ``state`` (stacked) and ``history``
    (records whose metrics are lists, one value per member).

    Example:
        >>> import dataclasses, numpy as np, fnn
        >>> @dataclasses.dataclass(frozen=True)
        ... class Config:
        ...     train: fnn.pipeline.TrainConfig = fnn.pipeline.TrainConfig(optimizer="sgd", batch_size=4,
        ...                                                                epochs=2)
        >>> config = Config()
        >>> population = members(2, {"train.learning_rate": [0.1, 0.3]})       # 4 members
        >>> x, y = np.ones((8, 3), np.float32), np.zeros(8, np.int32)
        >>> made = population_train(fnn.Dense(2), fnn.pipeline.make_optimizer(config.train),
        ...                         population_batches((x, y), config, population)["batches"],
        ...                         fnn.losses.softmax_cross_entropy, config, population, eval_set=(x, y))
        >>> made["state"].params["w"].shape, made["state"].opt_state.hyperparams["learning_rate"]
        ((4, 3, 2), Array([0.1, 0.1, 0.3, 0.3], dtype=float32))
        >>> [(r["step"], r["split"], len(r["loss"])) for r in made["history"]]   # eval every epoch
        [(2, 'train', 4), (2, 'eval', 4), (4, 'train', 4), (4, 'eval', 4)]
    """
    t = config.train
    first = batches[0][0]
    x_spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), first)
    hyper = {key.removeprefix("train."): [m[key] for m in members] for key in members[0] if key != "seed"}
    policy = precision_policy(getattr(t, "precision", "float32"))
    state = init_population(model, optimizer, [m["seed"] for m in members], x_spec, hyper, policy=policy)
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
        population=True,
        eval_every=max(1, len(batches) // t.epochs),
    )  # every epoch: the members' curves


def population_report(
    history: list[dict], members: list[dict], test: dict | None = None, run=None, title: str = ""
) -> dict:
    """Stage: a table with one row per member (its ``test`` metrics; without a test stage its
    last evaluation, or its last training record when there was no evaluation), and a plot
    of the members' curves. A member that :func:`diverged` has NaN metrics and the step it
    diverged at in the table; the means and deviations in ``final`` are over the others, and
    ``final["members_diverged"]`` counts it.

    Example:
        >>> history = [{"step": 2, "split": "eval", "loss": [0.75, 0.5]},
        ...            {"step": 4, "split": "eval", "loss": [0.5, 0.25]}]
        >>> made = population_report(history, [{"seed": 0}, {"seed": 1}])   # the last evaluation
        >>> print(made["report"][0])
        | seed | loss |
        | --- | --- |
        | 0 | 0.5 |
        | 1 | 0.25 |
        >>> made["final"]
        {'loss_mean': 0.375, 'loss_std': 0.125}
        >>> population_report(history, [{"seed": 0}, {"seed": 1}], test={"accuracy": [1.0, 0.5]})["final"]
        {'test_accuracy_mean': 0.75, 'test_accuracy_std': 0.25}
        >>> history.insert(0, {"step": 2, "split": "train", "loss": [0.5, float("nan")]})
        >>> made = population_report(history, [{"seed": 0}, {"seed": 1}], test={"accuracy": [1.0, 0.1]})
        >>> print(made["report"][0])
        | seed | test_accuracy | diverged at step |
        | --- | --- | --- |
        | 0 | 1 | - |
        | 1 | nan | 2 |
        >>> made["final"]
        {'test_accuracy_mean': 1.0, 'test_accuracy_std': 0.0, 'members_diverged': 1}
    """
    evals = [r for r in history if r["split"] == "eval"] or [r for r in history if r["split"] == "train"]
    last = test if test is not None else {k: v for k, v in evals[-1].items() if k not in ("step", "split")}
    prefix = "test_" if test is not None else ""
    names = [k for k in last if k not in ("step", "split")]
    lost = diverged(history, len(members))
    kept = np.array([at is None for at in lost])  # a diverged member's values are not its result
    rows = [{**m, **{prefix + n: last[n][i] if kept[i] else math.nan for n in names}}
            for i, m in enumerate(members)]
    if not kept.all():
        rows = [{**row, "diverged at step": at} for row, at in zip(rows, lost)]
    table = format_table(rows)
    def over_kept(f, values) -> float:
        values = np.asarray(values, np.float64)[kept]
        return float(f(values)) if values.size else math.nan

    final = {f"{prefix}{n}_mean": over_kept(np.mean, last[n]) for n in names}
    final.update({f"{prefix}{n}_std": over_kept(np.std, last[n]) for n in names})
    if not kept.all():
        final["members_diverged"] = int((~kept).sum())
    if run is not None:
        (Path(run.directory) / "members.json").write_text(dumps(rows, indent=2) + "\n")
        (Path(run.directory) / "members.md").write_text(table + "\n")
        curve_names = [k for k in evals[-1] if k not in ("step", "split")]
        panels = {
            f"{evals[-1]['split']} {n}": {
                label(m): [(r["step"], r[n][i]) for r in evals] for i, m in enumerate(members)
            }
            for n in curve_names
        }
        plots.curves(panels, Path(run.directory) / "sweep.png", title=title or "population")
    return {"final": final, "members_table": rows, "report": [table]}


def diverged(history: Sequence[Mapping[str, Any]], count: int) -> list[int | None]:
    """For each of a population's ``count`` members, the step of the first training record
    whose loss is not finite (the member diverged in the steps it averages), or ``None``.

    Trained alone, such a member would have stopped with a ``FloatingPointError`` at that
    record; in a population the others train on (``MetricsWindow.check``), the diverged
    member's values stay non-finite, and its evaluations are NaN (``fnn.evaluate``).

    Example:
        >>> nan = float("nan")
        >>> history = [{"step": 10, "split": "train", "loss": [0.5, 0.75, 0.5]},
        ...            {"step": 20, "split": "train", "loss": [0.25, nan, 0.5]},
        ...            {"step": 20, "split": "eval", "loss": [0.5, nan, 0.5]},
        ...            {"step": 30, "split": "train", "loss": [0.25, nan, float("inf")]}]
        >>> diverged(history, 3)
        [None, 20, 30]
    """
    steps: list[int | None] = [None] * count
    for record in history:
        if record["split"] != "train" or "loss" not in record:
            continue
        finite = np.isfinite(np.asarray(record["loss"], np.float64)).reshape(-1)
        for i in np.flatnonzero(~finite):
            if steps[i] is None:
                steps[i] = record["step"]
    return steps


def label(member: Mapping[str, Any]) -> str:
    """A member as ``seed=0 learning_rate=0.001`` (see :func:`members`)."""
    return " ".join(
        f"{k.split('.')[-1]}={v:g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
        for k, v in member.items()
    )


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of dicts with the same keys (``None`` shown as ``-``).

    Example:
        >>> print(format_table([{"variant": "a", "accuracy": 0.9}, {"variant": "b", "accuracy": 0.85}]))
        | variant | accuracy |
        | --- | --- |
        | a | 0.9 |
        | b | 0.85 |
    """
    keys = list(rows[0])

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else "-" if v is None else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def population_pipeline(experiment):
    """The experiment's pipeline with its ``batches``, ``train`` and ``report`` stages swapped for
    the population versions above.

    Example:
        >>> import fnn
        >>> digits = fnn.pipeline.find("digits")
        >>> pipeline = population_pipeline(digits)
        >>> pipeline.names == digits.pipeline.names
        True
        >>> stages = dict(pipeline.stages)
        >>> stages["batches"] is population_batches, stages["train"] is population_train
        (True, True)
    """
    if experiment.sweep is not None:
        return experiment.sweep
    missing = [name for name in ("batches", "train", "report") if name not in experiment.pipeline.names]
    if missing:
        raise PipelineError(
            f"{experiment.name} cannot be swept: fnn sweep trains a population through the stages "
            f"batches, train and report, and it has no {', '.join(missing)}; run it with fnn run"
        )
    return experiment.pipeline.replace(
        batches=population_batches, train=population_train, report=population_report
    )


def check_sweepable(experiment, config: Any):
    """The population pipeline of ``experiment``; a ``PipelineError`` or ``ConfigError`` when
    it or ``config`` cannot be swept, raised before a run directory is made."""
    stages = population_pipeline(experiment)
    check_population_devices(getattr(config, "train", None))
    return stages


def run_sweep(
    experiment,
    config: Any,
    directory: str,
    *,
    seeds: int,
    grid: Mapping[str, Sequence],
    progress: bool = True,
) -> str:
    """``fnn sweep``: train the population in a new run directory; returns the members table.

    Example:
        >>> import dataclasses, os, tempfile, numpy as np, fnn
        >>> from fnn.pipeline import Experiment, Pipeline, TrainConfig
        >>> @dataclasses.dataclass(frozen=True)
        ... class Config:
        ...     train: TrainConfig = TrainConfig(optimizer="sgd", batch_size=4, epochs=1)
        >>> def data(config):
        ...     x, y = np.ones((8, 3), np.float32), np.zeros(8, np.int32)
        ...     return {"train_set": (x, y), "test_set": (x, y), "model": fnn.Dense(2),
        ...             "loss": fnn.losses.softmax_cross_entropy}
        >>> def report(test):
        ...     return {"final": test}
        >>> experiment = Experiment("tiny", "a tiny experiment", Config(), Pipeline(
        ...     data, fnn.pipeline.optimizer, fnn.pipeline.batches, fnn.pipeline.train, fnn.pipeline.test,
        ...     report))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     table = run_sweep(experiment, Config(), os.path.join(d, "sweep"), seeds=2,
        ...                       grid={"train.learning_rate": [0.1, 0.3]}, progress=False)
        ...     print(table.replace(d, "D"))
        ...     print(sorted(os.listdir(os.path.join(d, "sweep"))))
        | seed | train.learning_rate | test_loss |
        | --- | --- | --- |
        | 0 | 0.1 | ... |
        | 1 | 0.1 | ... |
        | 0 | 0.3 | ... |
        | 1 | 0.3 | ... |
        <BLANKLINE>
        run directory: D/sweep (sweep.png, members.md)
        ['checkpoints', 'config.json', 'final.json', 'members.json', 'members.md', 'metrics.jsonl', \
'summary.md', 'sweep.png', 'tensorboard']
    """
    population = members(seeds, grid)
    stages = check_sweepable(experiment, config)
    # the members go into config.json, written in one piece with the run: a sweep whose member
    # list was written apart could lose it (a full disk) and then resume as a single run
    run = Run.create(directory, experiment.name, config_lib.to_dict(config), members=population)
    values = run_in(experiment, config, run, progress, stages, members=population)
    return values["report"][0] + f"\n\nrun directory: {directory} (sweep.png, members.md)"


def resume_members(directory: str) -> list[dict]:
    """The members of the sweep in ``directory``, which its ``config.json`` lists (a sweep
    made before it did lists them in ``sweep.json``); ``[]`` for a run that is not a sweep."""
    path = Path(directory) / "config.json"
    saved = read_json(path) if path.exists() else {}
    if not (isinstance(saved, dict) and "members" in saved):
        path = Path(directory) / "sweep.json"
        if not path.exists():
            return []
        saved = read_json(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("members"), list) or not saved["members"]:
        raise RunError(f"{path} does not list the sweep's members (a key 'members' holding a list)")
    return saved["members"]


__all__ = [
    "SWEEPABLE",
    "init_population",
    "member_config",
    "members",
    "parse_grid",
    "population_batches",
    "population_pipeline",
    "population_report",
    "population_train",
    "check_sweepable",
    "run_sweep",
    "set_hyperparam",
]
