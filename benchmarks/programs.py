"""A fingerprint of the program each benchmark model's fnn train step compiles to.

A change that should not touch the training step (a check at trace time, a new error
message) can be shown to leave it alone: run this before and after the change and
compare. Each line is a model, its steps per call (1, and the suite's K), a hash of the
lowered StableHLO with its source locations taken out (they name lines of fnn's files,
which any edit moves), and the text's length. Lowering traces the step but compiles
nothing, so it takes seconds.

    PYTHONPATH=. .venv/bin/python -m benchmarks.programs > after.txt
    git stash; PYTHONPATH=. .venv/bin/python -m benchmarks.programs > before.txt; git stash pop
    diff before.txt after.txt && echo "the same programs"
"""

from __future__ import annotations

import argparse
import hashlib
import re

from benchmarks import models
from benchmarks.frameworks import fnn_models


def fingerprint(name: str, steps_per_call: int = 1) -> tuple[str, int]:
    """``(hash, length)`` of the lowered train step of benchmark model ``name``."""
    bench = fnn_models.make(name, models.batch_for(name), steps_per_call)
    text = bench.lower(bench.state, bench.batch).as_text()
    text = re.sub(r"#loc\d*|loc\(.*?\)", "", text)  # where each op came from, not what it is
    return hashlib.sha256(text.encode()).hexdigest()[:16], len(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(models.SPECS), choices=list(models.SPECS))
    args = parser.parse_args(argv)
    for name in args.models:
        for k in (1, fnn_models.STEPS_PER_CALL):
            digest, length = fingerprint(name, k)
            print(f"{name:12} K={k:<3} {digest} {length:>7} characters")


if __name__ == "__main__":
    main()
