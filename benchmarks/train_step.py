"""The benchmark suite under its earlier name: ``python -m benchmarks.train_step`` runs
``benchmarks.suite`` with the same options (see there).

    .venv/bin/python -m benchmarks.train_step --models mlp-small --rounds 9
"""

from __future__ import annotations

import sys

from benchmarks.suite import main

if __name__ == "__main__":
    main(sys.argv[1:])
