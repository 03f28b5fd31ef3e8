"""Run directories: what one training run leaves on disk, and reading it back.

A run directory holds::

    config.json       the experiment's name and its resolved configuration
    metrics.jsonl     one JSON line per logged training window and per evaluation
    tensorboard/      the same metrics as TensorBoard event files
    checkpoints/      orbax checkpoints (see fnn.checkpoint)
    final.json        the final metrics, once the run has finished
    curves.png        learning curves, one panel per metric (when a number was logged)
    summary.md        a short report: configuration, final metrics, plots

Every record of ``metrics.jsonl`` has ``step`` and ``split`` (``"train"`` for the mean
of the training steps since the last record, ``"eval"`` for an evaluation) and one
number per metric; nothing in it depends on the clock, so a resumed run writes the
same lines as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import shlex
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from fnn import plots
from fnn.checkpoint import Checkpoints


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """An ``OSError`` while writing ``path`` (a full disk, a read-only directory) as a
    ``RunError`` naming it: a failed ``write`` names no file of its own."""
    try:
        yield
    except OSError as error:
        raise RunError(f"cannot write {path}: {error.strerror or error}") from error


# config.json's format: 2 since TrainConfig.momentum is None unless given (fnn.pipeline.recorded_config)
FORMAT = 2

# What a run writes besides config.json: a directory holding any of them holds a run's work.
_RUN_FILES = ("checkpoints", "metrics.jsonl", "final.json", "sweep.json")


class RunError(ValueError):
    """A run directory that is missing or unreadable; the message names the file.

    Example:
        >>> import os, tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     Run(d)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        fnn.runs.RunError: .../config.json is missing: is ... a run directory?
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = Run.create(os.path.join(d, "run"), "demo", {})
        ...     Run.create(os.path.join(d, "run"), "demo", {})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        fnn.runs.RunError: .../run already holds a run; continue it with `fnn resume .../run` or choose \
another directory (it holds nothing but its config.json: ...)
    """


def resume_command(directory: str | os.PathLike) -> str:
    """The command that continues the run in ``directory``, quoted for a shell.

    Example:
        >>> resume_command("runs/digits"), resume_command("my runs/digits")
        ('fnn resume runs/digits', "fnn resume 'my runs/digits'")
    """
    return f"fnn resume {shlex.quote(str(directory))}"


# JSON has no NaN or infinity: a run's metrics spell them as these strings (strict JSON, which
# any reader parses), and fnn reads them back as the floats
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def dumps(value: Any, **options: Any) -> str:
    """``json.dumps`` of a run's values as strict JSON: a NaN or infinite float is written as
    the string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``.

    Example:
        >>> dumps({"loss": float("nan"), "acc": [0.5, float("-inf")]})
        '{"loss": "NaN", "acc": [0.5, "-Infinity"]}'
        >>> _read_back(json.loads(_))
        {'loss': nan, 'acc': [0.5, -inf]}
    """
    return json.dumps(_spelled(value), allow_nan=False, **options)


def _spelled(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {key: _spelled(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [_spelled(v) for v in value]
    return value


def _read_back(value: Any) -> Any:
    """The inverse of ``dumps``'s spelling, for metrics read from a run's files."""
    if isinstance(value, str):
        return _NON_FINITE.get(value, value)
    if isinstance(value, dict):
        return {key: _read_back(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_read_back(v) for v in value]
    return value


def read_json(path: Path) -> Any:
    try:
        text = path.read_text()
        if not text.strip():  # written in place by an older fnn, and stopped before it was whole
            raise RunError(f"{path} is empty: the process writing it stopped before it was whole")
        return json.loads(text)
    except FileNotFoundError:
        raise RunError(f"{path} is missing: is {path.parent} a run directory?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunError(f"{path} is not valid JSON ({error})") from None
    except OSError as error:  # a directory of that name, no permission
        raise RunError(f"{path} cannot be read ({error.strerror or error})") from None


def _just_started(directory: Path) -> str:
    """What ``Run.create`` says when another process made ``config.json`` first."""
    return f"{directory} already holds a run: another process has just started one"


def _create_in_place(path: Path, text: str) -> None:
    """Create ``path`` exclusively and write ``text`` in it, removing it if that fails."""
    try:
        f = open(path, "x")
    except FileExistsError:
        raise RunError(_just_started(path.parent)) from None
    except OSError as error:
        raise RunError(f"{path.parent}: cannot create config.json ({error})") from None
    try:
        with f:
            f.write(text)
    except OSError as error:
        path.unlink(missing_ok=True)
        raise RunError(f"{path.parent}: cannot write config.json ({error})") from None


def _empty(path: Path) -> bool:
    try:
        return path.is_file() and not path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return False


def _lock(handle: Any, tries: int = 20) -> None:
    """Lock ``handle``'s file exclusively, waiting out a moment's look by another process
    (``_in_use``, 50 ms at most) but not a holder: ``BlockingIOError`` while it is held."""
    for attempt in range(tries):
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == tries - 1:
                raise
            time.sleep(0.0025)


def _in_use(config: Path) -> bool:
    """Whether another process holds the run whose ``config.json`` this is (``Run.held``)."""
    if fcntl is None:
        return False
    try:
        with open(config, "rb") as handle:
            try:  # shared: this look never keeps out another look (Run.held waits out one)
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:  # no config.json, or not one that can be read: not held
        return False
    return False


def _jsonable(value: Any) -> Any:
    """Floats and ints from NumPy scalars and 0-d arrays; other values as they are."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


class Run:
    """One run directory; created with ``Run.create``, reopened with ``Run(path)``.

    ``log`` appends a record to ``metrics.jsonl`` (and TensorBoard), ``checkpoints`` is the
    run's :class:`fnn.checkpoint.Checkpoints`, and ``finish`` writes ``final.json``,
    ``summary.md`` and, when a numeric metric was logged, ``curves.png``.

    A run holds a TensorBoard writer (a thread and open files) and its checkpoints open:
    ``close`` closes them, as does leaving a ``with`` block on the run; a run that is
    dropped without either is closed when it is collected, or at exit.

    Example:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with Run.create(os.path.join(d, "demo"), "demo", {"seed": 0}) as run:
        ...         run.log({"step": 10, "split": "train", "loss": 0.5})
        ...         run.finish({"accuracy": 0.9})
        ...     sorted(p.name for p in run.directory.iterdir()), run.records(), run.final()
        (['config.json', 'curves.png', 'final.json', 'metrics.jsonl', 'summary.md', 'tensorboard'], \
[{'step': 10, 'split': 'train', 'loss': 0.5}], {'accuracy': 0.9})
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            why = "it is a file" if self.directory.exists() else "it does not exist"
            raise RunError(f"{self.directory} is not a run directory ({why})")
        meta = read_json(self.directory / "config.json")
        if not isinstance(meta, dict) or "experiment" not in meta or "config" not in meta:
            raise RunError(f"{self.directory / 'config.json'} lacks the keys 'experiment' and 'config'")
        if not isinstance(meta["config"], dict):
            raise RunError(f"{self.directory / 'config.json'}: its 'config' is not a mapping of settings")
        self.experiment: str = meta["experiment"]
        self.config: dict = meta["config"]
        self.format: int = meta.get("format", 1)  # 1: written before config.json said its format
        self._tail_checked = False
        self._open = _Open()
        weakref.finalize(self, self._open.close)  # a run dropped unclosed: its thread and files
        self.keep_checkpoints = 3

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike,
        experiment: str,
        config: Mapping[str, Any],
        members: Sequence[Mapping[str, Any]] | None = None,
    ) -> Run:
        """A new run directory holding ``config.json`` (with a sweep's ``members``, so that
        the directory of a sweep never lacks them). Refuses one that already holds a run,
        or what is left of one (checkpoints, metrics), which the new run would otherwise
        continue, and says so when a process is training in it. ``config.json`` is written
        whole to a file of its own and then linked in place, which fails where one exists:
        two processes given one directory cannot both start in it, and a process stopped at
        any moment (or a full disk) leaves it whole or absent."""
        directory = Path(directory)
        left = [name for name in _RUN_FILES if (directory / name).exists()]
        if _in_use(directory / "config.json"):
            raise RunError(
                f"{directory} is in use: another process is training in it (its config.json is "
                "locked); choose another directory"
            )
        if not left and _empty(directory / "config.json"):
            raise RunError(
                f"{directory} holds nothing but an empty config.json (a process stopped while "
                "making the run, before it began); remove the directory to start afresh"
            )
        if (directory / "config.json").exists():
            raise RunError(
                f"{directory} already holds a run; continue it with `{resume_command(directory)}` "
                "or choose another directory"
                + ("" if left else " (it holds nothing but its config.json: the run stopped before "
                   "its first step, and removing the directory starts afresh)")
            )
        if left:
            raise RunError(
                f"{directory} holds {', '.join(left)} of an earlier run but no config.json; "
                "choose another directory (nothing there was changed)"
            )
        meta = {
            "experiment": experiment,
            "config": dict(config),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "format": FORMAT,
            **({"members": [dict(m) for m in members]} if members is not None else {}),
        }
        text = json.dumps(meta, indent=2) + "\n"
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise RunError(f"{directory}: cannot make the run directory, a file has that name") from None
        except OSError as error:
            raise RunError(f"{directory}: cannot create the run directory ({error})") from None
        # written whole to a file of its own, then linked in place: a process stopped at any
        # moment leaves config.json whole or absent, and link, like an exclusive create, fails
        # where another process has made one
        part = directory / f".config.json.{os.getpid()}.part"
        try:
            try:
                part.write_text(text)
            except OSError as error:
                raise RunError(f"{directory}: cannot write config.json ({error})") from None
            try:
                os.link(part, directory / "config.json")
            except FileExistsError:
                raise RunError(_just_started(directory)) from None
            except OSError:  # a file system without hard links
                _create_in_place(directory / "config.json", text)
        finally:
            part.unlink(missing_ok=True)
        return cls(directory)

    # -- metrics ------------------------------------------------------------------------

    @property
    def metrics_path(self) -> Path:
        return self.directory / "metrics.jsonl"

    def log(self, record: Mapping[str, Any]) -> None:
        """Append one record (``step``, ``split`` and metrics) to metrics.jsonl and TensorBoard.
        TensorBoard gets the finite values: a diverged population member's curve ends there."""
        record = {key: _jsonable(value) for key, value in record.items()}
        if not self._tail_checked:
            self._drop_torn_tail()
        with _writing(self.metrics_path), open(self.metrics_path, "a") as f:
            f.write(dumps(record) + "\n")
        writer = self._tensorboard()
        split = record.get("split", "train")
        for key, value in record.items():
            if key in ("step", "split"):
                continue
            if isinstance(value, int | float) and math.isfinite(value):
                writer.add_scalar(f"{split}/{key}", value, record["step"])
            elif isinstance(value, list):  # one value per member of a population
                for i, v in enumerate(value):
                    if isinstance(v, int | float) and math.isfinite(v):
                        writer.add_scalar(f"{split}/{key}/member_{i}", v, record["step"])

    def _drop_torn_tail(self) -> None:
        """Cut a last line left without its newline (a process stopped while writing it), so
        that the next record starts a line of its own."""
        self._tail_checked = True
        if not self.metrics_path.exists():
            return
        with _writing(self.metrics_path), open(self.metrics_path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def _tensorboard(self, purge_step: int | None = None):
        held = self._open
        if held.writer is None or purge_step is not None:
            from tensorboardX import SummaryWriter

            if held.writer is not None:
                held.writer.close()
            held.writer = SummaryWriter(
                str(self.directory / "tensorboard"), purge_step=purge_step, flush_secs=10
            )
        return held.writer

    def records(self, split: str | None = None) -> list[dict]:
        """The records of metrics.jsonl, optionally only those of one ``split``. A last line
        cut short (no newline: the process stopped while writing it) is left out; a resumed
        run writes it again."""
        if not self.metrics_path.exists():
            return []
        out = []
        text = self.metrics_path.read_text()
        lines = text.splitlines()
        if not text.endswith("\n"):  # cut short, even where what is there parses: the next log drops it
            lines = lines[:-1]
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise RunError(f"{self.metrics_path}:{number} is not valid JSON: {line[:80]!r}") from None
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise RunError(f"{self.metrics_path}:{number} is not a record with a step: {line[:80]!r}")
            if split is None or record.get("split") == split:
                out.append(_read_back(record))
        return out

    def rewind(self, step: int) -> None:
        """Forget what was logged after ``step`` (a resumed run logs it again); TensorBoard
        is told to drop its events after ``step`` too."""
        kept = [r for r in self.records() if r.get("step", 0) <= step]
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        with _writing(tmp):  # the records stay as they were until the new file is whole
            tmp.write_text("".join(dumps(r) + "\n" for r in kept))
            os.replace(tmp, self.metrics_path)
        self._tensorboard(purge_step=step + 1)

    # -- checkpoints --------------------------------------------------------------------

    @property
    def checkpoints(self) -> Checkpoints:
        if self._open.checkpoints is None:
            self._open.checkpoints = Checkpoints(self.directory / "checkpoints", keep=self.keep_checkpoints)
        return self._open.checkpoints

    # -- the end of a run ---------------------------------------------------------------

    def finish(
        self,
        final: Mapping[str, Any],
        *,
        seconds: float | None = None,
        notes: Sequence[str] = (),
        stage_seconds: Mapping[str, float] | None = None,
    ) -> None:
        """Write final.json, the learning curves and summary.md (with the time each stage took)."""
        final = {key: _jsonable(value) for key, value in final.items()}
        if seconds is not None:
            final["seconds"] = round(seconds, 2)
        with _writing(self.directory / "final.json"):
            (self.directory / "final.json").write_text(dumps(final, indent=2) + "\n")
        plots = self.plot()
        timing = [f"{name}: {secs:.1f} s" for name, secs in (stage_seconds or {}).items()]
        notes = [*notes, *(["time per stage: " + ", ".join(timing)] if timing else [])]
        self.write_summary(final, plots, notes)
        self.close()

    def final(self) -> dict:
        path = self.directory / "final.json"
        final = read_json(path) if path.exists() else {}
        if not isinstance(final, dict):
            raise RunError(f"{path} is not a mapping of metrics")
        return _read_back(final)

    def plot(self) -> list[str]:
        """Learning curves (one panel per metric, train and eval) as ``curves.png``."""
        records = self.records()
        if not _metric_names(records):
            return []  # nothing scalar to draw (a population's records hold lists; see fnn.sweep)
        panels = {
            name: {split: _points(records, name, split) for split in ("train", "eval")}
            for name in _metric_names(records)
        }
        with _writing(self.directory / "curves.png"):
            return [
                plots.curves(
                    panels, self.directory / "curves.png", title=f"{self.experiment}: {self.directory.name}"
                ).name
            ]

    def write_summary(
        self, final: Mapping[str, Any], plots: Sequence[str], notes: Sequence[str] = ()
    ) -> None:
        lines = [
            f"# {self.experiment}: {self.directory.name}",
            "",
            "## Final metrics",
            "",
            "| metric | value |",
            "| --- | --- |",
        ]
        lines += [
            f"| {key} | {_format(value)} |"
            for key, value in final.items()
            if isinstance(value, int | float | str)
        ]
        lines += ["", "## Configuration", "", "```json", json.dumps(self.config, indent=2), "```", ""]
        if plots:
            lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
        if notes:
            lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
        lines += [f"Resume an interrupted run with `{resume_command(self.directory)}`.", ""]
        with _writing(self.directory / "summary.md"):
            (self.directory / "summary.md").write_text("\n".join(lines))

    @contextlib.contextmanager
    def held(self):
        """Hold the run for this process while it trains: a second process that starts
        training in the same directory meanwhile (``fnn resume`` run twice) is refused
        instead of writing the same checkpoints and metrics. The hold is an advisory lock
        on ``config.json`` that the system drops when the process ends, however it ends.

        Example:
            >>> import os, tempfile
            >>> with tempfile.TemporaryDirectory() as d:
            ...     run = Run.create(os.path.join(d, "run"), "demo", {})
            ...     with run.held():
            ...         with Run(run.directory).held():  # doctest: +ELLIPSIS
            ...             pass
            Traceback (most recent call last):
                ...
            fnn.runs.RunError: .../run is in use: another process is training in it ...
        """
        if fcntl is None:  # no advisory locks on this system (Windows): nothing to hold
            yield
            return
        with open(self.directory / "config.json", "rb") as handle:
            try:
                _lock(handle)
            except BlockingIOError:
                raise RunError(
                    f"{self.directory} is in use: another process is training in it (its "
                    "config.json is locked); wait for that process to end, or stop it, then "
                    "continue with `" + resume_command(self.directory) + "`"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def check_writable(self) -> None:
        """A ``RunError`` naming the run's directory, or its ``checkpoints`` or ``tensorboard``
        folder, when this process cannot write there: known before training, not at the
        first record or save."""
        for path in (self.directory, self.directory / "checkpoints", self.directory / "tensorboard"):
            if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
                raise RunError(f"cannot write in {path} (permission denied); nothing was changed")

    def close(self) -> None:
        """Close the TensorBoard writer and the checkpoints (each, even when the other fails).
        A later ``log`` or ``checkpoints`` opens them again."""
        self._open.close()


class _Open:
    """What a :class:`Run` holds open, apart from the run, so that a finalizer can close it."""

    def __init__(self):
        self.writer: Any = None
        self.checkpoints: Checkpoints | None = None

    def close(self) -> None:
        writer, checkpoints = self.writer, self.checkpoints
        self.writer = self.checkpoints = None
        try:
            if writer is not None:
                writer.close()
        finally:
            if checkpoints is not None:
                checkpoints.close()


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def show(directory: str | os.PathLike) -> str:
    """A run's experiment, configuration, progress, final metrics and where its plots are.

    Example:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as d:
        ...     Run.create(os.path.join(d, "demo"), "demo", {"seed": 0}).finish({"accuracy": 0.9})
        ...     print(show(os.path.join(d, "demo")).replace(d, "D"))  # doctest: +ELLIPSIS
        run D/demo
        experiment: demo
        config:
          seed = 0
        checkpoints: none
        final metrics:
          accuracy: 0.9
        ...
    """
    run = Run(directory)
    lines = [f"run {run.directory}", f"experiment: {run.experiment}", "config:"]
    lines += [f"  {key} = {value}" for key, value in _flatten(run.config)]
    steps = run.checkpoints.steps() if (run.directory / "checkpoints").exists() else []
    lines.append(f"checkpoints: {', '.join(map(str, steps)) if steps else 'none'}")
    final = run.final()
    if final:
        lines.append("final metrics:")
        lines += [
            f"  {key}: {_format(value)}" for key, value in final.items() if not isinstance(value, list | dict)
        ]
    else:
        last = run.records()[-1:] or [None]
        lines.append(
            "not finished"
            + (f"; last record: {last[0]}" if last[0] else "; nothing logged yet")
            + f"; continue with `{resume_command(run.directory)}`"
        )
    # its plots (curves, confusion, a sweep's members), summaries and TensorBoard logs
    shown = [p for p in sorted(run.directory.iterdir())
             if p.suffix in (".png", ".md") or p.name == "tensorboard"]
    lines += [f"{path.name}: {path}" for path in shown]
    return "\n".join(lines)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in config.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def compare(directories: Sequence[str | os.PathLike], plot_path: str | os.PathLike | None = None) -> str:
    """A table of the runs' final metrics; with ``plot_path``, one figure overlaying their
    curves (each metric's evaluation records, or training records where there are none).

    Example:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as d:
        ...     for name, accuracy in (("a", 0.9), ("b", 0.8)):
        ...         Run.create(os.path.join(d, name), "demo", {}).finish({"accuracy": accuracy})
        ...     table = compare([os.path.join(d, "a"), os.path.join(d, "b")])
        >>> table.splitlines()[0].split()
        ['run', '|', 'experiment', '|', 'accuracy']
        >>> [row.split("|")[-1].strip() for row in table.splitlines()[2:]]
        ['0.9', '0.8']
    """
    runs = [Run(d) for d in directories]
    finals = [r.final() for r in runs]
    names = sorted({k for f in finals for k, v in f.items() if isinstance(v, int | float)})
    header = ["run", "experiment", *names]
    rows = [
        [str(r.directory), r.experiment, *(_format(f.get(n, "")) for n in names)]
        for r, f in zip(runs, finals)
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    table = [" | ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in [header, *rows]]
    table.insert(1, "-+-".join("-" * w for w in widths))
    if plot_path is not None:
        table.append("\nplot: " + _overlay(runs, Path(plot_path)))
    return "\n".join(table)


def _metric_names(records: Sequence[Mapping[str, Any]], members: bool = False) -> list[str]:
    """The metrics logged as numbers (with ``members``, also a population's lists of them)."""
    return sorted(
        {
            k
            for r in records
            for k, v in r.items()
            if k not in ("step", "split") and (isinstance(v, int | float) or members and _numbers(v))
        }
    )


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, int | float) for v in value)


def _points(records: Sequence[Mapping[str, Any]], name: str, split: str) -> list[tuple[float, float]]:
    """``(step, value)`` of one metric; a population's list of values as their mean."""
    return [
        (r["step"], sum(r[name]) / len(r[name]) if _numbers(r[name]) else r[name])
        for r in records if r.get("split") == split and name in r
    ]


def _overlay(runs: Sequence[Run], path: Path) -> str:
    """The runs' curves in one figure at ``path``; what became of it: the path written,
    none (no run logged a number), or why it was not written (the table stands without)."""
    per_run = [r.records() for r in runs]
    names = _metric_names([r for records in per_run for r in records], members=True)
    if not names:
        return "none (no run logged a number to plot)"
    paths = [run.directory for run in runs]
    labels = [path.name for path in paths]
    if len(set(labels)) < len(labels):  # two runs of one name: their paths, numbered if need be
        labels = [f"{path} #{i}" if paths.count(path) > 1 else str(path) for i, path in enumerate(paths, 1)]
    panels = {}
    for name in names:
        panels[name] = {}
        for label, records in zip(labels, per_run):
            split = "eval" if _points(records, name, "eval") else "train"
            panels[name][f"{label} ({split})"] = _points(records, name, split)
    try:
        return str(plots.curves(panels, path, title="compare"))
    except (OSError, ValueError) as error:  # a folder that cannot be made, a format matplotlib lacks
        return f"not written to {path} ({error})"
