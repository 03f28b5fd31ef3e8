"""fnn.distributed: data parallelism and FSDP on 8 simulated CPU devices, and a two-process
run through jax.distributed, each against single-device training.

The device count is fixed when JAX starts, so the multi-device checks run in child
processes (``tests/multidevice/``) with ``--xla_force_host_platform_device_count`` set
there; this process keeps its one device.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

import fnn
from fnn.distributed import DataParallel, ParallelError
from tests.conftest import TEST_XLA_FLAGS
from tests.multidevice import common

ROOT = Path(__file__).resolve().parent.parent


def python(*args):
    env = {**os.environ, "XLA_FLAGS": TEST_XLA_FLAGS}  # each child sets its own device count
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(process, timeout=300):
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        pytest.fail(f"timed out:\n{out[-3000:]}")
    assert process.returncode == 0, out[-3000:]
    return out


def test_data_parallel_and_fsdp_on_8_devices_match_one_device():
    out = finish(python("-m", "tests.multidevice.data_parallel"))
    assert "data parallel and fsdp match single-device training" in out


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_end_with_the_parameters_of_one(tmp_path):
    port = free_port()
    processes = [python("-m", "tests.multidevice.multiprocess", str(i), str(port), str(tmp_path)) for i in (0, 1)]
    for process in processes:
        finish(process)
    expected_params, expected_losses = common.reference()
    for layout in ("replicated", "fsdp"):
        first, second = (np.load(tmp_path / f"{layout}_{i}.npz") for i in (0, 1))
        assert sorted(first.files) == sorted(second.files)
        for name in first.files:
            np.testing.assert_array_equal(first[name], second[name], err_msg=f"{layout}: {name}")
        np.testing.assert_allclose(first["losses"], expected_losses, rtol=1e-5)
        for name in first.files:
            if name != "losses":
                layer, leaf = name.split("/")
                np.testing.assert_allclose(first[name], expected_params[layer][leaf], rtol=2e-5, atol=2e-6,
                                           err_msg=f"{layout}: {name}")


def test_two_processes_agree_on_their_state_their_data_and_when_to_stop(tmp_path):
    """A SIGTERM that reached one process stopped it alone: it saved while the other went on
    into the next step's collective, and both waited for ever. States from other seeds
    trained apart in silence, and data of other lengths hung; the records were written once
    per process."""
    port = free_port()
    processes = [python("-m", "tests.multidevice.agreement", str(i), str(port), str(tmp_path)) for i in (0, 1)]
    for process in processes:
        assert "agreed" in finish(process)


def test_a_process_whose_code_raises_ends_the_run_at_once_with_fail_fast():
    """Process 1's data raised mid-training: it waited at exit for process 0, which waited for
    it in a collective, until JAX's shutdown timeout aborted both 5 minutes later."""
    port = free_port()
    began = time.monotonic()
    processes = [python("-m", "tests.multidevice.failfast", str(i), str(port)) for i in (0, 1)]
    outs = [process.communicate(timeout=150)[0] for process in processes]
    assert time.monotonic() - began < 120, outs  # the first collective after the failure ends it
    for i, (process, out) in enumerate(zip(processes, outs)):
        assert process.returncode == 1 and "trained to the end" not in out, out[-3000:]
        assert f"fnn: process {i} of 2 failed; ending it now, so that the other processes stop too" in out
    assert "RuntimeError: process 1's data cannot read batch 3" in outs[1]


def test_a_process_given_another_number_of_processes_is_refused(tmp_path):
    """It joined the run process 0 coordinates and trained in it, believing in a third process."""
    port = free_port()
    code = ("import sys, fnn\n"
            "fnn.distributed.initialize(f'localhost:{sys.argv[1]}', int(sys.argv[2]), int(sys.argv[3]), timeout_s=60)\n"
            "print('joined', flush=True)")
    first = python("-c", code, str(port), "2", "0")
    second = python("-c", code, str(port), "3", "1")
    assert "joined" in finish(first)
    out, _ = second.communicate(timeout=120)
    assert second.returncode == 1 and "joined" not in out
    assert ("ParallelError: initialize: process 1 was given num_processes=3, but the run process 0 "
            f"coordinates at localhost:{port} has 2; give every process the same num_processes") in out


def test_on_one_device_the_layout_changes_nothing():
    parallel = DataParallel.over(fsdp=True, min_size=0)
    step = fnn.make_train_step(common.MODEL, common.OPTIMIZER, common.LOSS, parallel=parallel)
    state = parallel.put_state(common.initial_state())
    for batch in common.batches():
        state, _ = step(state, parallel.put_batch(batch))
    expected, _ = common.reference()
    for got, want in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_bad_layouts_are_refused():
    mesh = Mesh(np.array(jax.devices()), ("data",))
    with pytest.raises(ParallelError, match="the mesh has no axis 'batch'"):
        DataParallel(mesh, axis="batch")
    with pytest.raises(ParallelError, match="min_size must be an int >= 0"):
        DataParallel(mesh, min_size=-1)
    with pytest.raises(ParallelError, match="process_id must be in \\[0, 2\\), got 2"):
        fnn.distributed.initialize("localhost:1", 2, 2)
    with pytest.raises(ParallelError, match="timeout_s must be a positive int, got 0"):
        fnn.distributed.initialize("localhost:1", 2, 1, timeout_s=0)
    with pytest.raises(ParallelError, match="coordinator_address must be host:port, got 'localhost'"):
        fnn.distributed.initialize("localhost", 2, 0)
    with socket.socket() as taken:  # JAX's coordinator started beside it, and never said why it failed
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ParallelError, match=f"port {port} of localhost:{port} is in use on this host"):
            fnn.distributed.initialize(f"localhost:{port}", 2, 0)
    with pytest.raises(ValueError, match="population=True and parallel= cannot be combined"):
        fnn.make_train_step(common.MODEL, common.OPTIMIZER, common.LOSS, population=True,
                            parallel=DataParallel(mesh))


def test_a_population_on_several_devices_is_refused_until_supported():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Config:
        train: fnn.pipeline.TrainConfig = fnn.pipeline.TrainConfig(devices="data")

    with pytest.raises(fnn.config.ConfigError, match="train.devices='data' cannot be combined with a population"):
        fnn.pipeline.train_from(None, common.MODEL, common.OPTIMIZER, [], common.LOSS, Config(), population=True)
