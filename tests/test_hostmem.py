"""fnn.hostmem: the fnn command re-executes itself with malloc's huge pages, so a compiled
call's large temporary costs a few page faults instead of one per 4 KiB page."""

import os
import subprocess
import sys
import textwrap

import pytest

import fnn
from fnn import hostmem

# Re-executes itself through exec_with_huge_pages, then runs a compiled call with an
# 80 MB temporary (sin(x) before the matmul) and counts the page faults of later calls.
PROBE = textwrap.dedent(
    """
    import os, resource
    import fnn.hostmem
    fnn.hostmem.exec_with_huge_pages()
    import jax, jax.numpy as jnp
    print("tunables", os.environ.get("GLIBC_TUNABLES", "-"))
    x = jnp.ones((5000, 4000))
    f = jax.jit(lambda x: (jnp.sin(x) @ jnp.ones((4000, 8))).sum())
    jax.block_until_ready(f(x))
    faults = []
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        jax.block_until_ready(f(x))
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print("faults", sorted(faults)[2])
    """
)
PAGES = 5000 * 4000 * 4 // 4096  # the temporary's 4 KiB pages


def _probe(**env):
    environ = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hostmem.DISABLE_VARIABLE)}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={**environ, **env})
    return dict(line.split(" ", 1) for line in out.stdout.splitlines())


def test_the_program_reexecutes_itself_with_huge_pages():
    reason = hostmem.why_not({})
    if reason is not None:
        pytest.skip(f"this machine needs no re-execution: {reason}")
    system = _probe(FNN_SYSTEM_MALLOC="1")
    huge = _probe()
    assert system["tunables"] == "-"
    assert huge["tunables"] == hostmem.TUNABLE
    assert int(system["faults"]) > PAGES / 2  # the block is mapped afresh, page by page
    assert int(huge["faults"]) < PAGES / 8, (huge, system)  # mostly in 2 MiB pages


@pytest.fixture
def linux(monkeypatch):
    """A glibc 2.36 machine with transparent huge pages on request, and a fake execve."""
    monkeypatch.setattr(hostmem, "glibc_version", lambda: (2, 36))
    monkeypatch.setattr(hostmem, "thp_mode", lambda: "madvise")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv(hostmem.DISABLE_VARIABLE, raising=False)
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "fnn.cli", "run", "digits"])
    calls = []
    return lambda: (hostmem.exec_with_huge_pages(lambda *a: calls.append(a)), calls)[1]


def test_exec_adds_the_tunable_and_keeps_the_command_line(linux, monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.tcache_count=4")
    [(program, argv, environ)] = linux()
    assert program == sys.executable
    assert argv == [sys.executable, "-m", "fnn.cli", "run", "digits"]
    assert environ["GLIBC_TUNABLES"] == "glibc.malloc.tcache_count=4:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize(
    "setup, reason",
    [
        (lambda mp: mp.setenv("FNN_SYSTEM_MALLOC", "1"), "FNN_SYSTEM_MALLOC is set"),
        (lambda mp: mp.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0"), "already sets"),
        (lambda mp: mp.setattr(hostmem, "glibc_version", lambda: (2, 31)), "not glibc 2.35"),
        (lambda mp: mp.setattr(hostmem, "glibc_version", lambda: None), "not glibc 2.35"),
        (lambda mp: mp.setattr(hostmem, "thp_mode", lambda: "always"), "are always"),
        (lambda mp: mp.setattr(hostmem, "thp_mode", lambda: None), "not available"),
    ],
)
def test_no_exec_when_it_would_change_nothing_or_is_turned_off(linux, monkeypatch, setup, reason):
    setup(monkeypatch)
    assert reason in hostmem.why_not()
    assert linux() == []


def test_fnn_system_malloc_0_does_not_turn_it_off(linux, monkeypatch):
    monkeypatch.setenv("FNN_SYSTEM_MALLOC", "0")
    assert len(linux()) == 1


def test_thp_mode_reads_the_bracketed_mode(tmp_path):
    mode_file = tmp_path / "enabled"
    mode_file.write_text("always [madvise] never\n")
    assert hostmem.thp_mode(str(mode_file)) == "madvise"
    mode_file.write_text("garbage\n")
    assert hostmem.thp_mode(str(mode_file)) is None
    assert hostmem.thp_mode(str(tmp_path / "missing")) is None


@pytest.mark.parametrize(
    "argv, execs",
    [
        (["run", "digits", "-q"], True),
        (["resume", "runs/x"], True),
        (["sweep", "digits", "--seeds", "2"], True),
        (["run", "digits", "--keys"], False),
        (["run", "--help"], False),
        (["list"], False),
        (["show", "runs/x"], False),
        ([], False),
    ],
)
def test_the_fnn_command_sets_it_up_first_when_it_trains(monkeypatch, argv, execs):
    """Huge pages first (a re-execution), then the compilation cache in the process that
    trains."""
    order = []
    monkeypatch.setattr(sys, "argv", ["fnn", *argv])
    monkeypatch.setattr(fnn.hostmem, "exec_with_huge_pages", lambda: order.append("malloc"))
    monkeypatch.setattr(fnn.cli, "compilation_cache", lambda: order.append("cache"))
    monkeypatch.setattr(fnn.cli, "main", lambda: order.append("main") or 0)
    assert fnn.cli.console() == 0
    assert order == (["malloc", "cache", "main"] if execs else ["main"])


def test_experiment_main_sets_it_up_only_for_its_program_when_it_trains(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(fnn.hostmem, "exec_with_huge_pages", lambda: calls.append(1))
    monkeypatch.setattr(fnn.cli, "compilation_cache", lambda: calls.append(2))
    monkeypatch.setattr(sys, "argv", ["xor", "steps=many"])
    with pytest.raises(SystemExit):
        fnn.cli.experiment_main("xor")  # called in-process (as by a test): never re-executes
    fnn.cli.experiment_main("xor", ["--help"], program=True)  # only prints the keys
    assert calls == []
    assert "hidden = 4" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        fnn.cli.experiment_main("xor", program=True)
    assert calls == [1, 2]


def test_every_experiment_program_says_so():
    import pathlib

    for path in pathlib.Path(__file__).parents[1].joinpath("experiments").glob("*.py"):
        for line in path.read_text().splitlines():
            if "fnn.cli.experiment_main(" in line:
                assert "program=True" in line, (path.name, line)
