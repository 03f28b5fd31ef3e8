"""Host memory for compiled steps on the CPU: huge pages for the blocks a step allocates.

XLA's CPU runtime allocates each call's temporaries (the activations a train step keeps
for its backward pass) as one block, with ``malloc`` on a worker thread, and frees it
when the call ends. glibc maps such a block (over 32 MiB; always over 64 MiB on a worker
thread) fresh from the kernel on every call and unmaps it afterwards, so every step
page-faults once per 4 KiB page it touches. The benchmark transformer (``benchmarks/``,
a 79 MiB block) takes about 20,000 page faults a step this way.

With the glibc tunable ``glibc.malloc.hugetlb=1`` (glibc 2.35 and later), ``malloc``
asks the kernel for transparent huge pages (2 MiB) for the memory it maps: one fault per
2 MiB where the kernel has huge pages to give (on the benchmark transformer, 322 faults a
step instead of 20,232). Many distributions (Ubuntu among them; the kernel's own
default is ``always``) set transparent huge pages to ``madvise``: only memory that asks
for them gets them, which is the case this tunable serves.
Tunables are read once, when a process starts; so ``exec_with_huge_pages()``
re-executes the running program with the tunable set. The ``fnn`` commands that train
(``run``, ``resume``, ``sweep``, and ``python -m experiments.NAME``) do so when they
start; ``FNN_SYSTEM_MALLOC=1`` turns it off. ``benchmarks/host_memory.py`` measures what
it changes: 1.36x the steps/s on the benchmark transformer, and no change beyond noise
on the models whose temporaries are smaller.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable

TUNABLE = "glibc.malloc.hugetlb=1"
DISABLE_VARIABLE = "FNN_SYSTEM_MALLOC"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the C library when it is glibc, else None."""
    name, version = platform.libc_ver()
    if name != "glibc" or not version:
        return None
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def thp_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's transparent-huge-page mode (``always``, ``madvise`` or ``never``), or
    None where there is none to read."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def huge_pages_set(environ: dict | None = None) -> bool:
    """Whether this process started with ``glibc.malloc.hugetlb`` set in ``GLIBC_TUNABLES``."""
    tunables = (os.environ if environ is None else environ).get("GLIBC_TUNABLES", "")
    return any(t.startswith("glibc.malloc.hugetlb=") for t in tunables.split(":"))


def why_not(environ: dict | None = None) -> str | None:
    """Why ``exec_with_huge_pages`` would leave the process as it is, or None if it would
    re-execute it."""
    environ = os.environ if environ is None else environ
    if environ.get(DISABLE_VARIABLE, "") not in ("", "0"):
        return f"{DISABLE_VARIABLE} is set"
    if huge_pages_set(environ):
        return "GLIBC_TUNABLES already sets glibc.malloc.hugetlb"
    version = glibc_version()
    if version is None or version < (2, 35):
        return "the C library is not glibc 2.35 or later"
    mode = thp_mode()
    if mode != "madvise":
        return f"transparent huge pages are {mode or 'not available'} (only 'madvise' needs the tunable)"
    return None


def exec_with_huge_pages(execve: Callable = os.execve) -> None:
    """Re-executes the running program (``sys.orig_argv``) with ``glibc.malloc.hugetlb=1``
    added to ``GLIBC_TUNABLES``, so that ``malloc`` backs large blocks with huge pages
    (see the module docstring); returns without doing anything when ``why_not()`` gives a
    reason. The process keeps its id, its arguments and its standard streams (Python opens
    other files not to be inherited, so they close); whatever it did before is done again,
    so call this first thing.
    """
    if why_not() is not None:
        return
    environ = dict(os.environ)
    environ["GLIBC_TUNABLES"] = ":".join(t for t in (environ.get("GLIBC_TUNABLES", ""), TUNABLE) if t)
    sys.stdout.flush()
    sys.stderr.flush()
    execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
