"""One process of a two-process data-parallel run (``jax.distributed`` on CPU, gloo).

``python -m tests.multidevice.multiprocess PROCESS_ID PORT OUT``: joins the run
coordinated on ``localhost:PORT``, where each process has 2 CPU devices (a mesh of 4),
and trains twice, with replicated parameters and with FSDP. Each time it reads only its
own half of every global batch, saves a checkpoint after the second step and goes on from
it restored (as a resumed run does), and writes the final parameters (gathered from all
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
    start = common.initial_state()
    state = parallel.put_state(start)
    half = common.BATCH // 2
    losses = []
    for i, (x, y) in enumerate(common.batches()):
        mine = slice(process_id * half, (process_id + 1) * half)  # this process's rows only
        state, metrics = step(state, parallel.put_batch((x[mine], y[mine])))
        losses.append(float(metrics["loss"]))  # replicated: every process holds it
        if i == 1:
            state = resumed(parallel, state, start, os.path.join(out, f"checkpoints_{fsdp}"))
    params = multihost_utils.process_allgather(state.params, tiled=True)
    flat = {"/".join(k.key for k in path): np.asarray(v) for path, v in jax.tree_util.tree_leaves_with_path(params)}
    layout = "fsdp" if fsdp else "replicated"
    np.savez(os.path.join(out, f"{layout}_{process_id}.npz"), losses=np.array(losses), **flat)


def resumed(parallel, state, start, directory):
    """``state`` saved by both processes and restored as a resumed run restores it: into a
    fresh state's template (each process reads every array whole) or into a template laid
    out on the mesh (arrays spanning both processes), then laid out again by ``put_state``.
    The second is the one training goes on with; both must equal ``state``."""
    checkpoints = fnn.checkpoint.Checkpoints(directory)
    checkpoints.save(state)
    whole, _ = checkpoints.restore(start)
    spanning, _ = checkpoints.restore(parallel.put_state(start))
    assert not spanning.params["dense_0"]["w"].is_fully_addressable
    gathered = lambda s: multihost_utils.process_allgather((s.params, s.opt_state), tiled=True)  # noqa: E731
    replicated = lambda a: np.asarray(a.addressable_data(0))  # noqa: E731
    expected = gathered(state)
    for restored in (whole, spanning):
        restored = parallel.put_state(restored)
        for got, want in zip(jax.tree.leaves(gathered(restored)), jax.tree.leaves(expected)):
            np.testing.assert_array_equal(got, want)
        for got, placed in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
            assert got.sharding.is_equivalent_to(placed.sharding, got.ndim), (got.sharding, placed.sharding)
        assert replicated(restored.step) == replicated(state.step)
        np.testing.assert_array_equal(replicated(jax.random.key_data(restored.rng)),
                                      replicated(jax.random.key_data(state.rng)))
    return restored


def main(process_id: int, port: int, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    fnn.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    train(process_id, out, fsdp=False)
    train(process_id, out, fsdp=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
