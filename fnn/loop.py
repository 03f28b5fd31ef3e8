"""The training loop of a pipeline: the compiled step over a batch dataset, with logging,
evaluation, checkpoints, resumption, a progress bar and a clean stop on Ctrl-C.

``train_loop`` is what ``fit`` is for a run that lives in a run directory::

    state, history = train_loop(step, state, data, run=run, log_every=50,
                                evaluate=lambda s: fnn.evaluate(eval_step, s, test_batches),
                                eval_every=500, checkpoint_every=500)

If ``run`` already holds a checkpoint, the loop starts from it: the train state, the
position in ``data`` and the metrics not yet logged all come back, so the finished run
is bit-for-bit the run that was never interrupted (on CPU, where XLA is deterministic).
On SIGINT or SIGTERM the loop finishes the current step, saves a checkpoint and raises
:class:`Interrupted`, whose message says how to resume.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn.checkpoint import check_savable
from fnn.data import Prefetch
from fnn.distributed import gather_ints
from fnn.runs import resume_command
from fnn.train import Batch, MetricsWindow, TrainState, step_of

if TYPE_CHECKING:
    from fnn.distributed import DataParallel

Evaluate = Callable[[TrainState], dict[str, float]]


class Interrupted(Exception):  # noqa: N818  (a stop the user asked for, not an error)
    """Training stopped on a signal after saving a checkpoint; ``str()`` says how to resume.

    ``train_loop`` raises it after SIGINT (Ctrl-C) or SIGTERM, once the step in flight has
    finished and a checkpoint of it is saved; ``fnn run`` and ``fnn resume`` print it. A
    Ctrl-C outside the loop (while the data load or a program compiles) is one too, with
    ``step`` None: the run continues from its latest checkpoint, if it has one.

    Example:
        >>> import signal
        >>> from fnn.loop import Interrupted
        >>> stop = Interrupted("runs/digits", step=120, signum=signal.SIGTERM)
        >>> print(stop)
        SIGTERM: stopped after step 120 and saved a checkpoint; continue with `fnn resume runs/digits`
        >>> stop.step, stop.directory
        (120, 'runs/digits')
    """

    def __init__(self, directory: str, step: int | None, signum: int):
        self.directory, self.step, self.signum = directory, step, signum
        name = signal.Signals(signum).name
        done = "outside training" if step is None else f"after step {step} and saved a checkpoint"
        super().__init__(f"{name}: stopped {done}; continue with `{resume_command(directory)}`")


class _Stop:
    """Catch SIGINT/SIGTERM while training (main thread only) and remember the first one.

    With several processes a signal reaches one of them, and all must stop after the same
    step (or the others wait forever in the next step's collectives while it saves). JAX's
    preemption service agrees on that step: it catches SIGTERM itself, so SIGTERM is left
    to it, and a Ctrl-C is passed on to it as a SIGTERM; ``stop_after(step)`` asks it."""

    def __init__(self, processes: int = 1) -> None:
        self.signum: int | None = None
        self.service = processes > 1 and _preemption_service() is not None

    def stop_after(self, step: int) -> bool:
        """Whether to stop after ``step``: on a signal here, or, with several processes, at
        the step JAX's preemption service has them all stop after (called at every step)."""
        if self.service:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self.signum = self.signum or signal.SIGTERM
                return True
            return False
        return self.signum is not None

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Stop]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        signals = (signal.SIGINT,) if self.service else (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.getsignal(s) for s in signals}

        def handler(signum, frame):
            if self.signum is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now
            self.signum = signum
            if self.service:
                os.kill(os.getpid(), signal.SIGTERM)  # a preemption notice, which every process hears

        for s in previous:
            signal.signal(s, handler)
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _preemption_service() -> Any:
    """JAX's preemption sync manager of a multi-process run (None when it has none)."""
    from jax._src import distributed

    return getattr(distributed.global_state, "preemption_sync_manager", None)


def _check_processes_agree(total: int, start: int, batch: Any = None) -> None:
    """A ``ValueError`` unless every process has as many batches, starts at the same step,
    and has batches of the same shapes (``batch``: its first): a process that ran out of
    batches first would leave the others waiting in a collective, and rows of other counts
    make a global batch whose loss no process computes."""
    leaves = jax.tree.leaves(batch)
    layout = zlib.crc32(repr([(np.shape(a), str(getattr(a, "dtype", type(a)))) for a in leaves]).encode())
    rows = np.shape(leaves[0])[0] if leaves and np.ndim(leaves[0]) else 0
    seen = gather_ints([total, start, layout, rows])
    if (seen != seen[0]).any():
        each = ", ".join(f"process {i}: {int(n)} batches of {int(r)} rows from step {int(s)}"
                         for i, (n, s, _, r) in enumerate(seen))
        raise ValueError(f"train_loop: the processes must have as many batches, of the same shapes (each "
                         f"its own rows of the global batch), and start at the same step; {each}")


def _progress(enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]} ex/s"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        transient=False,
    )


def _mean_loss(loss: float | list[float]) -> str:
    """The progress bar's loss: a population's mean over the members that have not diverged.

    Example:
        >>> _mean_loss(0.5), _mean_loss([0.5, 1.0]), _mean_loss([0.5, float("nan"), 1.0])
        ('0.5000', '0.7500', '0.7500 (1 diverged)')
    """
    values = np.asarray(loss, np.float64)
    finite = values[np.isfinite(values)]
    mean = f"{float(np.mean(finite)):.4f}" if finite.size else "nan"
    lost = values.size - finite.size
    return mean + (f" ({lost} diverged)" if values.ndim and lost else "")


def train_loop(
    step: Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]],
    state: TrainState,
    data: Any,
    *,
    run: Any | None = None,
    log_every: int = 50,
    evaluate: Evaluate | None = None,
    eval_every: int = 0,
    checkpoint_every: int = 0,
    progress: bool = True,
    log: Callable[[dict[str, Any]], None] | None = None,
    parallel: DataParallel | None = None,
    stats: dict[str, float] | None = None,
) -> tuple[TrainState, list[dict[str, Any]]]:
    """Train ``state`` with ``step`` over every batch of ``data`` (a ``grain.MapDataset`` of
    batches, e.g. from ``fnn.data.loader``).

    Args:
        step: the compiled train step (``fnn.make_train_step``).
        state: the initial train state; with a checkpoint in ``run``, only its structure is used.
        data: the batches, ``len(data)`` of them; batch ``k`` is trained on at step ``k``.
        run: an ``fnn.runs.Run`` to log to, checkpoint into and resume from; ``None`` keeps
            everything in memory.
        log_every: steps per training record (the mean of their metrics).
        evaluate: ``evaluate(state) -> metrics``, run every ``eval_every`` steps and at the end.
        eval_every: steps between evaluations; 0: only at the end.
        checkpoint_every: steps between checkpoints; 0: only at the end (and on a signal).
        progress: show a progress bar (step, loss, examples/s, ETA).
        log: also called with every record.
        parallel: the ``fnn.distributed.DataParallel`` layout the step was made with: batches
            are split among its devices as they are prefetched, and a restored state is
            laid out on them.
        stats: a dict that the loop fills with ``seconds`` (the loop's wall time),
            ``training_seconds`` (the same less evaluation and checkpoints),
            ``input_wait_seconds`` (the time it spent waiting for the next batch) and
            ``input_wait_fraction`` (wait / training). The device runs ahead of the host, so
            the wait is an upper bound on the time the step was starved of data.

    Returns the final state and every record (training and evaluation) of the run,
    including those logged before a resumption.

    Example:
        >>> import tempfile, jax, jax.numpy as jnp, numpy as np, optax, fnn
        >>> from fnn.data import loader
        >>> from fnn.loop import train_loop
        >>> from fnn.runs import Run
        >>> x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
        >>> y = x @ np.array([[1.0], [-2.0], [0.5]], np.float32)
        >>> model, opt = fnn.Dense(1), optax.sgd(0.1)
        >>> state = fnn.init_train_state(model, opt, jax.random.key(0), x[:16])
        >>> step = fnn.make_train_step(model, opt, fnn.losses.mean_squared_error)
        >>> data = loader((x, y), 16, seed=0, epochs=10)              # 40 batches
        >>> with tempfile.TemporaryDirectory() as d, Run.create(d, "regression", {"lr": 0.1}) as run:
        ...     state, records = train_loop(step, state, data, run=run, log_every=20,
        ...                                 progress=False)
        ...     saved = run.checkpoints.latest()
        >>> fnn.train.step_of(state), saved, [r["step"] for r in records]
        (40, 40, [20, 40])
        >>> records[-1]["loss"] < 0.01 < records[0]["loss"]
        True
    """
    for name, value in (
        ("log_every", log_every),
        ("eval_every", eval_every),
        ("checkpoint_every", checkpoint_every),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if name == "log_every" else 0):
            raise ValueError(
                f"train_loop: {name} must be an int >= {1 if name == 'log_every' else 0}, got {value!r}"
            )
    per_call = getattr(step, "steps_per_call", 1)
    if per_call != 1:
        raise ValueError(
            f"train_loop: the step takes {per_call} steps a call (steps_per_call={per_call}); train_loop "
            "counts, logs, checkpoints and resumes one step a call: make the step with steps_per_call=1, "
            "or run the several-step one with fnn.fit"
        )
    total = len(data)
    if total == 0:  # nothing would be trained, evaluated or saved
        raise ValueError("train_loop: the data hold no batches")
    if run is not None:
        check_savable(state)  # before training, not at the first save
    window = MetricsWindow(log_every, population=bool(getattr(step, "population", False)))
    writes = jax.process_index() == 0  # every process saves its part of a checkpoint; one logs
    data_state = None
    if run is not None and run.checkpoints.latest() is not None:
        state, extra = run.checkpoints.restore(state)
        if parallel is not None:
            state = parallel.put_state(state)
        data_state = extra.get("data")
        window.load(extra.get("pending", []))
        if writes:
            run.rewind(step_of(state))
    elif run is not None and writes and run.records():
        run.rewind(step_of(state))  # stopped before its first checkpoint: it starts again from here
    start = step_of(state)
    if start > total:
        raise ValueError(f"train_loop: the state is at step {start} but the data hold only {total} batches")
    processes = jax.process_count()
    if processes > 1:
        _check_processes_agree(total, start, data[start] if start < total else None)
    # (another process may be rewinding the records: what is past the start is not this run's)
    history = [r for r in run.records() if r["step"] <= start] if run is not None else []

    def record(r: dict[str, Any]) -> None:
        history.append(r)
        if run is not None and writes:
            run.log(r)
        if log is not None:
            log(r)

    def save() -> None:
        if run is not None:
            window.check(at)  # a diverged state stops the run before it can replace a good checkpoint
            run.checkpoints.save(state, {"data": batches.state(), "pending": window.to_json()})

    batches = Prefetch(data, state=data_state or {"next_index": start},
                       put=parallel.put_batch if parallel is not None else None)
    examples = None
    stopper = _Stop(processes)
    # without a run directory there is nothing to save: Ctrl-C stops as it always does
    catching = stopper.installed() if run is not None else contextlib.nullcontext()
    with catching, _progress(progress) as bar:
        task = (
            bar.add_task(
                getattr(run, "experiment", "train"), total=total, completed=start, loss="-", speed="-"
            )
            if bar is not None
            else None
        )
        clock, clock_step = time.perf_counter(), start
        began, waited, elsewhere = clock, 0.0, 0.0
        at = start
        while True:
            asked = time.perf_counter()
            batch = next(batches, None)
            waited += time.perf_counter() - asked
            if batch is None:
                break
            state, metrics = step(state, batch)
            at += 1
            if examples is None:  # per step: the batch, times the members of a population
                shape = jax.tree.leaves(batch)[0].shape
                examples = shape[0] * (shape[1] if jnp.ndim(state.step) else 1)
            if window.add(metrics) or at == total:
                r = window.flush(at)
                record(r)
                if bar is not None:
                    now = time.perf_counter()
                    speed = examples * (at - clock_step) / max(now - clock, 1e-9)
                    clock, clock_step = now, at
                    loss = "-" if "loss" not in r else _mean_loss(r["loss"])
                    bar.update(task, completed=at, loss=loss, speed=f"{speed:,.0f}")
            aside = time.perf_counter()
            if evaluate is not None and ((eval_every and at % eval_every == 0) or at == total):
                record({"step": at, "split": "eval", **evaluate(state)})
            if (checkpoint_every and at % checkpoint_every == 0) or at == total:
                save()
            elsewhere += time.perf_counter() - aside
            if run is not None and stopper.stop_after(at):
                if at < total:  # at the total, the final checkpoint is saved above
                    save()
                raise Interrupted(str(run.directory), at, stopper.signum)
        # caught before the first step, or after the last (with several processes, a signal
        # stops them at the step the preemption service picks, or not at all: one process
        # alone must not stop)
        if stopper.signum is not None and not stopper.service:
            raise Interrupted(str(run.directory), at, stopper.signum)
        if bar is not None:
            bar.update(task, completed=at)
    if stats is not None:
        jax.block_until_ready(state)
        seconds = time.perf_counter() - began
        training = max(seconds - elsewhere, 1e-9)
        stats.update(seconds=seconds, training_seconds=training, input_wait_seconds=waited,
                     input_wait_fraction=waited / training)
    return state, history
