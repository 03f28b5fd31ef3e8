"""One process of a two-process data-parallel run (``jax.distributed`` on CPU, gloo).

``python -m tests.multidevice.multiprocess PROCESS_ID PORT OUT``: joins the run
coordinated on ``localhost:PORT``, where each process has 2 CPU devices (a mesh of 4),
and trains twice, with replicated parameters and with FSDP. Each time it reads only its
own half of every global batch and writes the final parameters (gathered from all
processes) and the losses to ``OUT/<layout>_<PROCESS_ID>.npz``.
"""

import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

import fnn  # noqa: E402
from tests.multidevice import common  # noqa: E402


def train(process_id: int, out: str, fsdp: bool) -> None:
    parallel = fnn.distributed.DataParallel.over(fsdp=fsdp, min_size=512)
    step = fnn.make_train_step(common.MODEL, common.OPTIMIZER, common.LOSS, parallel=parallel)
    state = parallel.put_state(common.initial_state())
    half = common.BATCH // 2
    losses = []
    for x, y in common.batches():
        mine = slice(process_id * half, (process_id + 1) * half)  # this process's rows only
        state, metrics = step(state, parallel.put_batch((x[mine], y[mine])))
        losses.append(float(metrics["loss"]))  # replicated: every process holds it
    params = multihost_utils.process_allgather(state.params, tiled=True)
    flat = {"/".join(k.key for k in path): np.asarray(v) for path, v in jax.tree_util.tree_leaves_with_path(params)}
    layout = "fsdp" if fsdp else "replicated"
    np.savez(os.path.join(out, f"{layout}_{process_id}.npz"), losses=np.array(losses), **flat)


def main(process_id: int, port: int, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    fnn.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    train(process_id, out, fsdp=False)
    train(process_id, out, fsdp=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
