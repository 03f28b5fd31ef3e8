"""Settings for the test processes.

The suite compiles some thousand small XLA programs and runs each a few times, so on a
CPU most of its time is compilation. ``--xla_backend_optimization_level=1`` lowers the
LLVM optimisation level of XLA's CPU backend from its default of 2 for the tests' own
process and the processes they start. Compiles are faster (three compile-heavy tests took
18-31% less time) and the programs compute the same functions; no fast-math is enabled.
What users run and what ``benchmarks/`` measures is compiled at the default level.
XLA reads the flag when its CPU backend starts, at the first computation, after this.

The ``fnn`` commands the tests start keep no compiled programs on disk
(``FNN_NO_COMPILATION_CACHE=1``, see ``fnn.cli.compilation_cache``) unless a test turns
it on.
"""

import os

TEST_XLA_FLAGS = "--xla_backend_optimization_level=1"

if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
os.environ.setdefault("FNN_NO_COMPILATION_CACHE", "1")
