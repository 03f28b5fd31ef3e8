"""Training on many devices and many processes with JAX's own runtime.

:class:`DataParallel` lays a training run out on a one-axis device mesh
(``jax.sharding.Mesh``): every batch is split along that axis, one slice per device, and
the parameters and optimizer state are either replicated on every device (data
parallelism) or, with ``fsdp=True``, split along the same axis (fully sharded data
parallelism: each device keeps 1/n of every large array and XLA gathers a layer's
weights when the step needs them). The train step stays the one ``make_train_step``
builds; ``parallel=`` only tells it the layout, and XLA's partitioner inserts the
collectives (the gradient all-reduce, the weight all-gathers)::

    parallel = fnn.distributed.DataParallel.over(fsdp=True)        # all devices, one "data" axis
    state = parallel.put_state(fnn.init_train_state(model, optimizer, key, x))
    step = fnn.make_train_step(model, optimizer, loss, parallel=parallel)
    state, metrics = step(state, parallel.put_batch((x, y)))

Several processes (one per host, or several on one host) run the same program after
:func:`initialize`, which calls ``jax.distributed.initialize``; ``jax.devices()`` then
lists every process's devices, the mesh spans them all, and each process hands
``put_batch`` only its own part of the global batch (its rows, in process order)::

    fnn.distributed.initialize("10.0.0.1:1234", num_processes=2, process_id=0)   # on host 0
    fnn.distributed.initialize("10.0.0.1:1234", num_processes=2, process_id=1)   # on host 1

On CPUs the processes exchange gradients through gloo; on GPUs and TPUs through the
platform's own collectives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import os
import sys
import traceback
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fnn.core import path_str


class ParallelError(ValueError):
    """A layout that does not fit: a batch that does not divide among the devices, a
    leaf that is not where it should be.

    Example:
        >>> from fnn.distributed import DataParallel
        >>> DataParallel.over(axis="batch", devices=[])
        Traceback (most recent call last):
        ...
        fnn.distributed.ParallelError: DataParallel.over: no devices given
    """


def initialize(
    coordinator_address: str,
    num_processes: int,
    process_id: int,
    *,
    local_device_ids: Sequence[int] | None = None,
    timeout_s: int = 300,
) -> None:
    """Join a multi-process run: ``jax.distributed.initialize`` with CPU collectives
    through gloo (on GPUs and TPUs the platform's own are used).

    Call it in every process before anything else touches JAX's devices.
    ``coordinator_address`` is ``host:port`` of process 0, reachable from all processes.
    Then ``DataParallel.over()`` spans every process's devices, and each process passes
    ``put_batch`` only its own rows. Process 1 of 2 on a second host runs::

        fnn.distributed.initialize("10.0.0.1:1234", num_processes=2, process_id=1)

    Each process waits up to ``timeout_s`` seconds for all to join (JAX's
    ``initialization_timeout``), then fails; a process given another ``num_processes``
    than process 0 was is refused once it has joined. A process id outside
    ``range(num_processes)`` is refused before JAX is touched:

        >>> from fnn.distributed import initialize
        >>> initialize("localhost:1234", num_processes=2, process_id=2)
        Traceback (most recent call last):
        ...
        fnn.distributed.ParallelError: initialize: process_id must be in [0, 2), got 2
    """
    if not isinstance(num_processes, int) or num_processes < 1:
        raise ParallelError(f"initialize: num_processes must be a positive int, got {num_processes!r}")
    if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
        raise ParallelError(f"initialize: process_id must be in [0, {num_processes}), got {process_id!r}")
    if not isinstance(timeout_s, int) or isinstance(timeout_s, bool) or timeout_s < 1:
        raise ParallelError(f"initialize: timeout_s must be a positive int, got {timeout_s!r}")
    if process_id == 0:
        _check_port_free(coordinator_address)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address, num_processes=num_processes, process_id=process_id,
        local_device_ids=local_device_ids, initialization_timeout=timeout_s,
    )
    if jax.process_count() != num_processes:  # the coordinator's count is the run's
        raise ParallelError(
            f"initialize: process {process_id} was given num_processes={num_processes}, but the run "
            f"process 0 coordinates at {coordinator_address} has {jax.process_count()}; give every "
            "process the same num_processes"
        )


@contextlib.contextmanager
def fail_fast() -> Iterator[None]:
    """In a run of several processes, end this process at once (exit status 1, after
    printing the error) when the block raises: the others then fail in their next
    collective within seconds and, each in its own ``fail_fast``, end too.

    Without it, a process whose own code raises (its data, its model) does not die: at exit
    JAX's shutdown waits for the others, which wait for it in their collective, until
    JAX's shutdown timeout (300 s) aborts them all. Wrap each process's training in it::

        with fnn.distributed.fail_fast():
            state, history = fnn.loop.train_loop(step, state, data, run=run, parallel=parallel)

    A polite stop (``fnn.loop.Interrupted``: a SIGTERM stops every process after the same
    step) and ``SystemExit(0)`` pass through, as does everything in a single process.
    """
    try:
        yield
    except BaseException as error:
        from fnn.loop import Interrupted

        polite = isinstance(error, Interrupted) or (isinstance(error, SystemExit) and not error.code)
        if polite or jax.process_count() == 1:
            raise
        traceback.print_exc()
        print(f"fnn: process {jax.process_index()} of {jax.process_count()} failed; ending it now, so "
              "that the other processes stop too", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def _check_port_free(coordinator_address: str) -> None:
    """A ``ParallelError`` when the coordinator's port is taken on this host. JAX's
    coordinator binds it with ``SO_REUSEPORT``: beside another coordinator it starts without
    a word (and the older run is aborted), and beside another program its error never says
    the port is in use, while the other processes wait on that program."""
    import socket

    port = coordinator_address.rpartition(":")[2]
    if not port.isdigit():
        raise ParallelError(f"initialize: coordinator_address must be host:port, got {coordinator_address!r}")
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 here
            continue
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed run's TIME_WAIT is free
            try:
                probe.bind((host, int(port)))
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise ParallelError(
                        f"initialize: port {port} of {coordinator_address} is in use on this host (another "
                        "run's coordinator, or another program); choose a free port for process 0"
                    ) from None


def gather_ints(values: Sequence[int]) -> np.ndarray:
    """Every process's ``values`` (the same count on each), one row per process, in process
    order: ``int64[processes, len(values)]``. For checks that the processes agree."""
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.array(values, np.int64))).reshape(-1, len(values))


def _check_same_everywhere(state: Any) -> None:
    """A ``ParallelError`` naming the first leaf of ``state`` whose value differs between the
    processes (compared by a checksum of each process's own values): replicated parameters
    made from different seeds would train apart without a word."""

    def local(leaf: Any) -> bool:
        return not (isinstance(leaf, jax.Array) and not leaf.is_fully_addressable)

    def checksum(leaf: Any) -> int:
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        return zlib.crc32(np.ascontiguousarray(np.asarray(leaf)).tobytes())

    leaves = [(path, leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(state) if local(leaf)]
    layout = [(path_str(path), np.shape(leaf), str(leaf.dtype)) for path, leaf in leaves]
    seen = gather_ints([len(leaves), zlib.crc32(repr(layout).encode())])  # the same count everywhere
    if (seen != seen[0]).any():
        each = ", ".join(f"process {i}: {int(n)} arrays" for i, (n, _) in enumerate(seen))
        raise ParallelError(
            f"put_state: the processes passed states of different structure or shapes ({each}); each "
            "process must build the same model and optimizer from the same configuration"
        )
    if not leaves:
        return
    sums = gather_ints([checksum(leaf) for _, leaf in leaves])
    differs = (sums != sums[0]).any(axis=0)
    if differs.any():
        path = path_str(leaves[int(np.argmax(differs))][0])
        raise ParallelError(
            f"put_state: the processes passed different values at {path} ({int(differs.sum())} of "
            f"{len(leaves)} arrays differ); each process must pass the same state, e.g. made from the "
            "same seed"
        )


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """A run laid out on a one-axis mesh: batches split along ``axis``; parameters and
    optimizer state replicated, or split along ``axis`` too with ``fsdp``.

    Args:
        mesh: a ``jax.sharding.Mesh`` with the axis ``axis`` (see :meth:`over`).
        axis: the mesh axis that batches (and, with ``fsdp``, parameters) are split along.
        fsdp: split every parameter and optimizer-state array with at least ``min_size``
            elements along its first dimension that the number of devices divides; others
            stay replicated.
        min_size: arrays smaller than this stay replicated under ``fsdp`` (biases, norms:
            gathering them costs more than keeping copies).

    Example:
        >>> parallel = DataParallel.over(fsdp=True)   # every device (here: one CPU)
        >>> parallel.size, parallel.spec((512, 256))  # one device: nothing to split
        (1, P())
        >>> parallel.batch_sharding().spec
        P('data',)

    On 8 devices, ``spec((512, 256))`` is ``PartitionSpec('data',)`` under ``fsdp``: each
    device holds 64 of the 512 rows.
    """

    mesh: Mesh
    axis: str = "data"
    fsdp: bool = False
    min_size: int = 2**10

    def __post_init__(self):
        if self.axis not in self.mesh.axis_names:
            raise ParallelError(f"DataParallel: the mesh has no axis {self.axis!r}; its axes are "
                                f"{self.mesh.axis_names}")
        if not isinstance(self.min_size, int) or self.min_size < 0:
            raise ParallelError(f"DataParallel: min_size must be an int >= 0, got {self.min_size!r}")

    @classmethod
    def over(
        cls, devices: Sequence[jax.Device] | None = None, *, axis: str = "data", fsdp: bool = False,
        min_size: int = 2**10,
    ) -> DataParallel:
        """The layout over ``devices`` (default: every device of every process)."""
        devices = list(jax.devices() if devices is None else devices)
        if not devices:
            raise ParallelError("DataParallel.over: no devices given")
        return cls(Mesh(np.array(devices), (axis,)), axis, fsdp, min_size)

    @property
    def size(self) -> int:
        """The number of devices along the axis."""
        return self.mesh.shape[self.axis]

    # -- where each array lives ---------------------------------------------------------

    def spec(self, shape: Sequence[int]) -> P:
        """The partition spec of a parameter or optimizer-state array of ``shape``."""
        if not self.fsdp or self.size == 1 or math.prod(shape) < max(self.min_size, 1):
            return P()
        for dim, length in enumerate(shape):
            if length % self.size == 0:
                return P(*([None] * dim), self.axis)
        return P()

    def batch_sharding(self, stacked: bool = False) -> NamedSharding:
        """Batches split along their first axis (the second, for ``steps_per_call`` stacks)."""
        return NamedSharding(self.mesh, P(None, self.axis) if stacked else P(self.axis))

    def put_state(self, state: Any) -> Any:
        """``state`` placed on the mesh (each process passes the same values, e.g. from the same
        seed; values that differ are a ``ParallelError`` naming the first that does). A leaf
        that is already an array spanning several processes (a state restored from a
        multi-process checkpoint) is moved on the mesh as it is. Keys stay replicated."""
        if jax.process_count() > 1:
            _check_same_everywhere(state)

        def place(value: Any, spec: P) -> jax.Array:
            sharding = NamedSharding(self.mesh, spec)
            if isinstance(value, jax.Array) and not value.is_fully_addressable:
                if value.sharding.is_equivalent_to(sharding, value.ndim):
                    return value
                return jax.jit(lambda a: a, out_shardings=sharding)(value)
            value = np.asarray(value)
            return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

        def put(leaf: Any) -> jax.Array:
            if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
                # a key's raw data has a trailing axis that JAX requires replicated
                data = place(jax.random.key_data(leaf), P())
                return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
            return place(leaf, self.spec(np.shape(leaf)))

        return jax.tree.map(put, state)

    def put_batch(self, batch: Any, *, stacked: bool = False) -> Any:
        """A global batch from this process's part of it (all of it, with one process).

        With several processes each passes its own rows (process ``i`` the ``i``-th of
        ``jax.process_count()`` equal parts); the global batch is their concatenation.
        With ``stacked``, the batch is ``K`` batches stacked on a leading axis
        (``fnn.data.stack_batches``) and the split is along the second axis.
        """
        sharding = self.batch_sharding(stacked)
        devices_here = len(self.mesh.local_devices)
        axis = 1 if stacked else 0

        def put(leaf: Any) -> jax.Array:
            leaf = np.asarray(leaf)
            if leaf.ndim <= axis or leaf.shape[axis] % devices_here:
                raise ParallelError(
                    f"put_batch: a batch of {leaf.shape[axis] if leaf.ndim > axis else 'no'} rows "
                    f"(array {leaf.dtype}{list(leaf.shape)}) does not divide among this process's "
                    f"{devices_here} devices; make the batch size a multiple of {devices_here}"
                )
            return jax.make_array_from_process_local_data(sharding, leaf)

        return jax.tree.map(put, batch)

    # -- inside the compiled step -------------------------------------------------------

    def constrain_state(self, tree: Any) -> Any:
        """Pin a state's leaves to their layout inside a compiled function, so that an updated
        state keeps the layout of the state it came from."""

        def constrain(leaf: jax.Array) -> jax.Array:
            if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                return leaf
            return jax.lax.with_sharding_constraint(leaf, NamedSharding(self.mesh, self.spec(leaf.shape)))

        return jax.tree.map(constrain, tree)

    def constrain_batch(self, batch: Any) -> Any:
        """Pin a batch's leaves inside a compiled step to the split along their first axis;
        a ``ParallelError`` when one does not divide among the devices (as ``put_batch``
        refuses it)."""

        def constrain(leaf: jax.Array) -> jax.Array:
            if leaf.ndim == 0 or leaf.shape[0] % self.size:
                raise ParallelError(
                    f"train step: a batch of {leaf.shape[0] if leaf.ndim else 'no'} rows (array "
                    f"{leaf.dtype}{list(leaf.shape)}) does not divide among the layout's {self.size} "
                    f"devices; make the batch size a multiple of {self.size}"
                )
            return jax.lax.with_sharding_constraint(leaf, self.batch_sharding())

        return jax.tree.map(constrain, batch)
