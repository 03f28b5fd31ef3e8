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

The test processes themselves (pytest's, and each pytest-xdist worker) share one JAX
persistent compilation cache, in a temporary directory made for the session and deleted
at its end: many tests compile the same program (the same layer and step built afresh for
each case), and a program one worker compiled is loaded by the other instead of compiled
again. Two groups of test files took 15% and 28% less time with it (10m05s against
11m54s, 3m00s against 4m10s), the whole suite about 9% less (its slowest tests start
processes of their own). Programs with Python callbacks are not cached (JAX cannot save
them); a cached program computes what a fresh compile of the same HLO does.
"""

import os
import shutil
import tempfile

TEST_XLA_FLAGS = "--xla_backend_optimization_level=1"

if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
os.environ.setdefault("FNN_NO_COMPILATION_CACHE", "1")

# the session's cache directory, named by the first process (pytest's) for the workers
# it starts; the processes the tests start do not read it
CACHE_VARIABLE = "FNN_TEST_COMPILATION_CACHE"


def pytest_configure(config):
    import jax

    if CACHE_VARIABLE not in os.environ:
        os.environ[CACHE_VARIABLE] = config.fnn_test_cache = tempfile.mkdtemp(prefix="fnn-test-jax-")
    jax.config.update("jax_compilation_cache_dir", os.environ[CACHE_VARIABLE])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    made = getattr(config, "fnn_test_cache", None)
    if made:
        shutil.rmtree(made, ignore_errors=True)
        del os.environ[CACHE_VARIABLE]
