"""The ``fnn`` command: list, run, resume, show, compare and sweep experiments.

    fnn list                                  the experiments, one line each
    fnn run digits model=mlp train.epochs=5   run one, overriding its configuration
    fnn resume runs/digits-20261130-101500    continue an interrupted run
    fnn show runs/digits-20261130-101500      its config, final metrics and plots
    fnn compare RUN_DIR RUN_DIR ...           a table of final metrics and one plot
    fnn sweep digits --seeds 4 --grid train.learning_rate=1e-3,3e-3
                                              a population trained in one program

Overrides are ``key=value`` (or ``--set key=value``); ``fnn run NAME --keys`` lists
the keys of an experiment with their defaults.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import signal
import sys
from collections.abc import Mapping, Sequence

import jax

from fnn import config as config_lib
from fnn import data, hostmem, pipeline, runs
from fnn.checkpoint import CheckpointError
from fnn.loop import Interrupted
from fnn.speech import SpeechError


def _default_dir(name: str) -> str:
    """``runs/NAME-YYYYmmdd-HHMMSS``, made here; ``-2``, ``-3``, ... when runs started in the
    same second have taken it (``mkdir`` claims a name atomically)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        os.makedirs("runs", exist_ok=True)
    except OSError as error:
        raise runs.RunError(f"cannot make the folder runs/ here ({error.strerror or error}); "
                            "choose a run directory with --dir") from None
    for n in itertools.count(1):
        directory = os.path.join("runs", f"{name}-{stamp}" + (f"-{n}" if n > 1 else ""))
        try:
            os.mkdir(directory)
            return directory
        except FileExistsError:
            continue
        except OSError as error:
            raise runs.RunError(f"cannot make {directory} ({error.strerror or error}); "
                                "choose a run directory with --dir") from None
    raise AssertionError("unreachable")


def _keys_help(experiment: pipeline.Experiment) -> str:
    lines = [f"{experiment.name}: {experiment.description}", "", "configuration (key = default):"]
    lines += [f"  {key} = {value!r}" for key, value in runs._flatten(config_lib.to_dict(experiment.config))]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fnn",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("list", help="the experiments, one line each")

    def overrides(p):
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="configuration overrides")
        p.add_argument(
            "--set",
            dest="sets",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a configuration override (repeatable)",
        )
        p.add_argument("--dir", help="the run directory (default: runs/NAME-DATE-TIME)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar; print only the result")
        p.add_argument("--keys", action="store_true", help="list the configuration keys and exit")

    run = commands.add_parser(
        "run",
        help="run an experiment in a new run directory",
        epilog="`fnn run NAME --keys` lists the experiment's configuration keys and their defaults.",
    )
    run.add_argument("name", help="the experiment (see `fnn list`)")
    overrides(run)
    resume = commands.add_parser("resume", help="continue a run from its latest checkpoint")
    resume.add_argument("directory")
    resume.add_argument("-q", "--quiet", action="store_true")
    show = commands.add_parser("show", help="a run's config, final metrics and plots")
    show.add_argument("directory")
    compare = commands.add_parser(
        "compare", help="final metrics of several runs, and one plot of their curves"
    )
    compare.add_argument("directories", nargs="+")
    compare.add_argument(
        "--plot",
        default=None,
        help="where to write the plot (default: compare.png in the first run's parent directory)",
    )
    sweep = commands.add_parser("sweep", help="train a population (seeds x values) in one compiled program")
    sweep.add_argument("name")
    overrides(sweep)
    sweep.add_argument(
        "--seeds", type=int, default=3, help="members per grid point, seeds 0..N-1 (default 3)"
    )
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="a hyperparameter and its values (repeatable; the product is swept)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fnn`` console script; returns the exit status.

    ``argv`` is the command line after ``fnn`` (default: ``sys.argv[1:]``).

    Example:
        >>> status = main(["run", "xor", "--keys"])
        xor: a 2-4-1 sigmoid network learns XOR by backpropagation
        <BLANKLINE>
        configuration (key = default):
          hidden = 4
          steps = 1000
          learning_rate = 0.5
          momentum = 0.9
          seed = 0
        >>> status
        0
    """
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # overrides may come after options (`fnn run digits -q model=mlp`): argparse leaves them in extra
    stray = [e for e in extra if "=" not in e or e.startswith("-") or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return _dispatch(args)
    except Interrupted as stop:
        print(f"\n{stop}", file=sys.stderr)
        return 128 + stop.signum
    except (config_lib.ConfigError, pipeline.PipelineError, runs.RunError, CheckpointError,
            SpeechError) as error:
        print(f"fnn {args.command}: {error}", file=sys.stderr)
        return 2
    except FloatingPointError as error:  # training diverged: the message names the step, and what to try
        print(f"fnn {args.command}: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the system refused: a full disk, a folder this user cannot write
        print(f"fnn {args.command}: {error}", file=sys.stderr)
        return 1


TRAINING_COMMANDS = ("run", "resume", "sweep")


CACHE_DISABLE_VARIABLE = "FNN_NO_COMPILATION_CACHE"
CACHE_LIMIT = 1 << 30  # bytes; JAX drops the least recently used programs past it


def compilation_cache(environ: Mapping[str, str] = os.environ) -> str | None:
    """Keeps every program this process compiles on disk, and loads it from there when a
    later process compiles the same program (JAX's persistent compilation cache). A
    second ``fnn run digits`` took 19 s instead of 27 s (its train stage, most of which is
    compiling, 9.9-10.1 s instead of 16.2 s; two repeats, the same results).

    The directory is ``jax/`` in fnn's cache (``$FNN_CACHE`` or ``~/.cache/fnn``, where the
    speech experiments keep their audio), and it holds at most 1 GiB.
    ``FNN_NO_COMPILATION_CACHE=1`` turns it off, and a cache directory already given to JAX
    (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``) is kept as it is. An entry that
    cannot be read (a corrupt file) is compiled again, with a warning from JAX that names
    it; deleting the directory clears the cache.

    The ``fnn`` commands that train call it when they start. Returns the directory in use,
    or None.
    """
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    if environ.get(CACHE_DISABLE_VARIABLE, "") not in ("", "0"):
        return None
    path = str(data.cache_dir("jax", environ))
    jax.config.update("jax_compilation_cache_dir", path)
    # every program, not only those that compile for a second or more (JAX's default): a
    # run compiles many small ones (the digits run: 48 programs, 4 of them over a second)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_compilation_cache_max_size", CACHE_LIMIT)
    return path


def _set_up_to_train(argv: Sequence[str]) -> None:
    """When the command line ``argv`` (after ``fnn``) trains: re-executes the process so
    that ``malloc`` backs large blocks with huge pages (``fnn.hostmem``;
    ``FNN_SYSTEM_MALLOC=1`` leaves it alone), then keeps compiled programs on disk
    (``compilation_cache``)."""
    if argv[:1] and argv[0] in TRAINING_COMMANDS and not {"-h", "--help", "--keys"} & set(argv):
        hostmem.exec_with_huge_pages()
        compilation_cache()


def console() -> int:
    """The ``fnn`` console script: ``main()``, a command that trains in a process whose
    ``malloc`` backs large blocks with huge pages and whose compiled programs are kept on
    disk for the next run."""
    _set_up_to_train(sys.argv[1:])
    return main()


def _resolve(args) -> tuple[pipeline.Experiment, object]:
    experiment = pipeline.find(args.name)
    # argparse keeps --set apart from the plain overrides, so their order on the line is lost:
    # a key given both ways, to different values, is refused rather than one silently winning
    plain = {a.split("=", 1)[0].strip(): a for a in args.overrides if "=" in a}
    for assignment in args.sets:
        key = assignment.split("=", 1)[0].strip()
        if key in plain and plain[key] != assignment:
            raise config_lib.ConfigError(
                f"{key} is given as {plain[key]} and as --set {assignment}; give it once"
            )
    config = config_lib.override(experiment.config, [*args.overrides, *args.sets])
    return experiment, config


def _dispatch(args) -> int:
    if args.command == "list":
        known = pipeline.experiments()
        width = max(map(len, known), default=0)
        for name, experiment in known.items():
            print(f"{name.ljust(width)}  {experiment.description}")
        return 0
    if args.command in ("run", "sweep") and args.keys:
        print(_keys_help(pipeline.find(args.name)))
        return 0
    if args.command == "run":
        experiment, config = _resolve(args)
        directory = args.dir or _default_dir(experiment.name)
        if not args.quiet:
            print(f"{experiment.name}: {experiment.description}\nrun directory: {directory}")
        run, values = pipeline.start(experiment, config, directory, progress=not args.quiet)
        _print_final(run, values)
        return 0
    if args.command == "resume":
        run, values = pipeline.resume(args.directory, progress=not args.quiet)
        _print_final(run, values)
        return 0
    if args.command == "show":
        print(runs.show(args.directory))
        return 0
    if args.command == "compare":
        plot = args.plot or os.path.join(os.path.dirname(os.path.abspath(args.directories[0])), "compare.png")
        print(runs.compare(args.directories, plot))
        return 0
    if args.command == "sweep":
        from fnn import sweep

        experiment, config = _resolve(args)
        grid = dict(sweep.parse_grid(config, args.grid))
        sweep.check_sweepable(experiment, config)  # before a default directory is made
        directory = args.dir or _default_dir(f"{experiment.name}-sweep")
        table = sweep.run_sweep(
            experiment, config, directory, seeds=args.seeds, grid=grid, progress=not args.quiet
        )
        print(table)
        return 0
    raise AssertionError(args.command)


def _print_final(run: runs.Run, values: dict) -> None:
    for line in values.get("report", ()):
        print(line)
    final = values["final"]
    shown = ", ".join(f"{k} {runs._format(v)}" for k, v in final.items() if isinstance(v, int | float))
    timing = ", ".join(f"{name} {secs:.1f} s" for name, secs in values.get("stage_seconds", {}).items())
    print(f"final: {shown}\ntime per stage: {timing}")
    print(f"run directory: {run.directory} (fnn show {run.directory})")


def experiment_main(name: str, argv: Sequence[str] | None = None, *, program: bool = False) -> None:
    """``python -m experiments.NAME KEY=VALUE ...``: the same as ``fnn run NAME ...``
    (``experiment_main("xor", ["steps=20", "--dir", "runs/xor"])`` trains and saves a run).
    ``program=True``, which an experiment's ``__main__`` passes, says the process is that
    experiment's program: a command line that trains then first re-executes it with
    ``malloc`` huge pages and keeps its compiled programs on disk, as ``fnn run`` does
    (``fnn.hostmem.exec_with_huge_pages``, ``compilation_cache``).

    Example:
        >>> import contextlib, io
        >>> with contextlib.redirect_stdout(io.StringIO()) as out:
        ...     experiment_main("xor", ["--help"])              # the configuration keys
        >>> out.getvalue().splitlines()[3:5]
        ['  hidden = 4', '  steps = 1000']
        >>> experiment_main("xor", ["steps=many"])  # stderr: fnn run: steps: expected int, got 'many'
        Traceback (most recent call last):
            ...
        SystemExit: 2
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if program:
        _set_up_to_train(["run", *argv])
    if any(a in ("-h", "--help") for a in argv):
        print(_keys_help(pipeline.find(name)))
        return
    status = main(["run", name, *argv])
    if status:
        sys.exit(status)


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(console())
