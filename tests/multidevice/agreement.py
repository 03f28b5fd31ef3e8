"""One process of a two-process run whose processes must agree (``jax.distributed`` on CPU).

``python -m tests.multidevice.agreement PROCESS_ID PORT OUT``: checks that states made from
different seeds or of other structures, and data of different lengths or shapes, are
refused by name on every process, then
trains in one run directory, where process 0 alone receives SIGTERM after step 2: both
processes must stop after the same step with one checkpoint, and the records be written
once. Prints ``agreed`` at the end.
"""

import os
import signal
import sys
import time

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils

import fnn
from fnn.distributed import ParallelError
from fnn.loop import Interrupted, train_loop
from fnn.runs import Run

MODEL = fnn.serial(fnn.Dense(8), fnn.relu, fnn.Dense(3))
OPTIMIZER = optax.adam(1e-2)
BATCH, STEPS = 4, 60


def state(seed: int = 0):
    return fnn.init_train_state(MODEL, OPTIMIZER, jax.random.key(seed), jax.ShapeDtypeStruct((BATCH, 5), np.float32))


class Data:
    """This process's half of each global batch."""

    def __init__(self, steps: int, whole: bool = False):
        rng = np.random.default_rng(0)
        self.x = rng.normal(size=(steps, BATCH, 5)).astype(np.float32)
        self.y = rng.integers(0, 3, size=(steps, BATCH)).astype(np.int32)
        half, me = BATCH // 2, jax.process_index()
        self.rows = slice(None) if whole else slice(me * half, (me + 1) * half)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, k):
        return self.x[k, self.rows], self.y[k, self.rows]


def main(process_id: int, port: int, out: str) -> None:
    fnn.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    parallel = fnn.distributed.DataParallel.over()
    step = fnn.make_train_step(MODEL, OPTIMIZER, fnn.losses.softmax_cross_entropy, parallel=parallel)
    try:  # process 1 made its state from another seed
        parallel.put_state(state(seed=process_id))
        raise AssertionError("different states were accepted")
    except ParallelError as error:
        assert "the processes passed different values at params/dense_0/w" in str(error), error
    try:  # process 1 has fewer batches: it would leave the loop first and process 0 wait for ever
        train_loop(step, parallel.put_state(state()), Data(6 - 3 * process_id), progress=False, parallel=parallel)
        raise AssertionError("different lengths were accepted")
    except ValueError as error:
        assert "process 0: 6 batches of 2 rows from step 0, process 1: 3 batches of 2 rows from step 0" \
            in str(error), error
    try:  # process 1 passes the whole batch: the logged loss was no process's
        train_loop(step, parallel.put_state(state()), Data(6, whole=process_id == 1), progress=False,
                   parallel=parallel)
        raise AssertionError("batches of other shapes were accepted")
    except ValueError as error:
        assert "process 0: 6 batches of 2 rows from step 0, process 1: 6 batches of 4 rows" in str(error), error
    try:  # process 1 built a deeper model: the checksums' allgather aborted both in C++
        deeper = fnn.serial(fnn.Dense(8), fnn.relu, fnn.Dense(8), fnn.relu, fnn.Dense(3))
        parallel.put_state(fnn.init_train_state(deeper if process_id else MODEL, OPTIMIZER, jax.random.key(0),
                                                jax.ShapeDtypeStruct((BATCH, 5), np.float32)))
        raise AssertionError("states of other structures were accepted")
    except ParallelError as error:
        assert "different structure or shapes (process 0: 15 arrays, process 1: 21 arrays)" in str(error), error

    directory = os.path.join(out, "run")
    run = Run.create(directory, "agreement", {}) if process_id == 0 else None
    multihost_utils.sync_global_devices("run created")
    run = run or Run(directory)

    def log(record):  # SIGTERM reaches process 0 only, as a preemption notice reaches one host
        if process_id == 0 and record["step"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # steps of a real size: the notice reaches the other process meanwhile

    try:
        train_loop(step, parallel.put_state(state()), Data(STEPS), run=run, log_every=1, log=log,
                   progress=False, parallel=parallel)
        raise AssertionError("training was not stopped")
    except Interrupted as stop:
        stopped = stop.step
    assert 2 <= stopped < STEPS, stopped
    every = multihost_utils.process_allgather(np.array([stopped]))
    assert (np.asarray(every) == stopped).all(), every  # the same step on both
    assert run.checkpoints.steps() == [stopped], run.checkpoints.steps()
    multihost_utils.sync_global_devices("records written")
    assert [r["step"] for r in run.records()] == list(range(1, stopped + 1))  # once each, by process 0
    print("agreed", flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
