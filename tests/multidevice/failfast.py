"""One process of a two-process run in which process 1's own code raises mid-training.

``python -m tests.multidevice.failfast PROCESS_ID PORT``: both train inside
``fnn.distributed.fail_fast()``; process 1's data raises at batch 3. Process 1 must end at
once, and process 0, whose next collective then fails, end too: without ``fail_fast``
both waited out JAX's 300 s shutdown timeout and aborted.
"""

import sys

import jax
import numpy as np
import optax

import fnn
from fnn.loop import train_loop

MODEL = fnn.serial(fnn.Dense(8), fnn.relu, fnn.Dense(3))
OPTIMIZER = optax.adam(1e-2)


class Data:
    def __init__(self, steps: int, fails_at: int | None):
        rng = np.random.default_rng(0)
        self.x = rng.normal(size=(steps, 2, 5)).astype(np.float32)
        self.y = rng.integers(0, 3, size=(steps, 2)).astype(np.int32)
        self.fails_at = fails_at

    def __len__(self):
        return len(self.x)

    def __getitem__(self, k):
        if k == self.fails_at:
            raise RuntimeError(f"process {jax.process_index()}'s data cannot read batch {k}")
        return self.x[k], self.y[k]


def main(process_id: int, port: int) -> None:
    fnn.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    parallel = fnn.distributed.DataParallel.over()
    step = fnn.make_train_step(MODEL, OPTIMIZER, fnn.losses.softmax_cross_entropy, parallel=parallel)
    state = parallel.put_state(fnn.init_train_state(MODEL, OPTIMIZER, jax.random.key(0),
                                                    jax.ShapeDtypeStruct((4, 5), np.float32)))
    with fnn.distributed.fail_fast():
        train_loop(step, state, Data(10_000, 3 if process_id == 1 else None), progress=False, parallel=parallel)
    print("trained to the end", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
