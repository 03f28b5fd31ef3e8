"""Checkpoints of a whole training run through ``orbax-checkpoint``.

A checkpoint holds the :class:`~fnn.TrainState` (parameters, model state, optimizer
state, step and rng) as arrays in orbax's tensorstore format, and beside it a small
JSON record: where the data iterator stands and whatever else the training loop needs
to continue exactly (metrics not yet logged). Nothing is pickled, so loading a
checkpoint never runs code from the file.

Orbax writes each checkpoint into a temporary directory and renames it when complete,
so a crash (even ``kill -9``) during a save leaves the previous checkpoints loadable;
only the last ``keep`` are kept.

Example:
    >>> import tempfile, jax, jax.numpy as jnp, optax, fnn
    >>> state = fnn.init_train_state(fnn.Dense(2), optax.adam(1e-3), jax.random.key(0),
    ...                              jnp.zeros((1, 3)))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     ckpts = Checkpoints(d, keep=2)
    ...     _ = ckpts.save(state, {"data": {"next_index": 0}})
    ...     restored, extra = ckpts.restore(state)
    ...     ckpts.steps(), extra
    ([0], {'data': {'next_index': 0}})
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from fnn.core import path_str
from fnn.train import TrainState, step_of

_log_filter_installed = False
_DELETED = "deleted"  # where orbax moves a checkpoint it removes, for fnn to delete
_METADATA = "_CHECKPOINT_METADATA"  # what orbax writes in a step's folder when the step is whole


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model; the message
    names the checkpoint and the first path that does not fit.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> check_fits({"params/w": jax.ShapeDtypeStruct((2,), jnp.float32)},
        ...            {"params/w": jax.ShapeDtypeStruct((3,), jnp.float32)}, "checkpoint 5")
        Traceback (most recent call last):
        ...
        fnn.checkpoint.CheckpointError: checkpoint 5 does not fit this model at params/w: the checkpoint \
holds float32[2], the model expects float32[3]
    """


def _quiet_orbax() -> None:
    """Orbax logs each save at INFO through absl; keep a run's output to what it says."""
    global _log_filter_installed
    if not _log_filter_installed:
        logging.getLogger("absl").setLevel(logging.WARNING)
        _log_filter_installed = True


def _flat(tree: Any) -> dict[str, Any]:
    """``{"params/dense_0/w": leaf, ...}``; NamedTuples and dicts name their fields alike."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))
    return {path_str(path): leaf for path, leaf in leaves}


def _is_key(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def to_saved(state: Any) -> Any:
    """The state with every typed rng key (``state.rng``, and any other, such as an agent's
    in its memory) as raw key data, which is what orbax can store.

    Example:
        >>> import jax, jax.numpy as jnp, optax, fnn
        >>> state = fnn.init_train_state(fnn.Dense(2), optax.sgd(0.1), jax.random.key(0),
        ...                              jnp.zeros((1, 3)))
        >>> saved = to_saved(state)
        >>> saved.rng.dtype, saved.rng.shape
        (dtype('uint32'), (2,))
        >>> bool(jnp.all(jax.random.key_data(from_saved(saved, state).rng) == saved.rng))
        True
    """

    def raw(leaf):
        if not _is_key(leaf):
            return leaf
        if isinstance(leaf, jax.ShapeDtypeStruct):  # a template made by jax.eval_shape
            data = jax.eval_shape(jax.random.key_data, leaf)
            return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=leaf.sharding)
        return jax.random.key_data(leaf)

    return jax.tree.map(raw, state)


def from_saved(saved: Any, template: Any) -> Any:
    """The inverse of :func:`to_saved`: each key's data wrapped as a key of the
    ``template``'s implementation.

    Example:
        >>> import jax, jax.numpy as jnp, optax, fnn
        >>> state = fnn.init_train_state(fnn.Dense(2), optax.sgd(0.1), jax.random.key(0),
        ...                              jnp.zeros((1, 3)))
        >>> back = from_saved(to_saved(state), state)
        >>> jax.dtypes.issubdtype(back.rng.dtype, jax.dtypes.prng_key)
        True
        >>> bool(jnp.all(jax.random.key_data(back.rng) == jax.random.key_data(state.rng)))
        True
    """
    return jax.tree.map(
        lambda data, like: jax.random.wrap_key_data(data, impl=_key_impl(like)) if _is_key(like) else data,
        saved, template,
    )


def _key_impl(key: Any) -> Any:
    """The implementation of a key array, or of a ``jax.ShapeDtypeStruct`` of one (its
    dtype's, which ``jax.random.key_impl`` reads of an array)."""
    if isinstance(key, jax.ShapeDtypeStruct):
        return key.dtype._impl
    return jax.random.key_impl(key)


def _first_line(error: Exception) -> str:
    """``Type: the first line of the message`` (tensorstore's messages run to pages)."""
    lines = str(error).strip().splitlines() or [""]
    more = " ..." if len(lines) > 1 or len(lines[0]) > 300 else ""
    return f"{type(error).__name__}: {lines[0][:300]}{more}"


def _unreadable(where: str, error: Exception, others: list[int]) -> CheckpointError:
    """The error for a checkpoint that cannot be read: the cause's first line (tensorstore's
    messages run to pages), and the other steps kept, which nothing has touched."""
    message = f"{where} is unreadable: {_first_line(error)}"
    if others:
        message += (f"; the checkpoints of steps {others} are kept as they were: move this one aside "
                    "to resume from the latest of them")
    return CheckpointError(message)


def _skeleton(tree: Any) -> Any:
    """A state's structure as orbax records it: dicts and NamedTuples as mappings, tuples
    as lists, an empty NamedTuple (optax's ``EmptyState``) as None, arrays as "array"."""
    if tree is None or hasattr(tree, "shape"):
        return None if tree is None else "array"
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return {field: _skeleton(getattr(tree, field)) for field in tree._fields} or None
    if isinstance(tree, list | tuple):
        return [_skeleton(item) for item in tree]
    if isinstance(tree, Mapping):
        return {key: _skeleton(item) for key, item in tree.items()}
    return "array"


def _first_difference(saved: Any, expected: Any, path: str = "") -> tuple[str, str, str] | None:
    """The first place two skeletons differ: ``(path, what the checkpoint holds there, what
    the model expects)``."""

    def kind(node):
        if isinstance(node, dict):
            return f"a mapping of {len(node)} entries ({', '.join(map(str, node)) or 'none'})"
        if isinstance(node, list):
            return f"a sequence of {len(node)} parts"
        return "an empty part" if node is None else "an array"

    here = path.rstrip("/") or "the top"
    if isinstance(saved, dict) and isinstance(expected, dict) and set(saved) == set(expected):
        children = [(saved[key], expected[key], f"{path}{key}/") for key in expected]
    elif isinstance(saved, list) and isinstance(expected, list) and len(saved) == len(expected):
        children = [(a, b, f"{path}{i}/") for i, (a, b) in enumerate(zip(saved, expected))]
    elif saved == expected or (saved is None and expected == {}) or (saved == {} and expected is None):
        return None
    else:
        return here, kind(saved), kind(expected)
    for a, b, where in children:
        found = _first_difference(a, b, where)
        if found:
            return found
    return None


def _restore_target(leaf: Any) -> jax.ShapeDtypeStruct:
    """What orbax restores a template leaf as: its shape, dtype and placement (by default this
    process's first device), so that a checkpoint written on other devices, or by several
    processes, reads into this run's layout."""
    sharding = getattr(leaf, "sharding", None)
    if not isinstance(sharding, jax.sharding.Sharding):
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)


def _placed_like(restored: Any, template: Any) -> Any:
    """``restored`` as uncommitted as the ``template``'s array. Orbax commits what it restores
    to a device, while a fresh state (made by ``jit`` from uncommitted inputs) is not
    committed; a compiled step keys its cache on that, so without this a resumed run would
    compile every program again (the tic-tac-toe agent's self-play iteration: 22 s)."""
    if (isinstance(restored, jax.Array) and isinstance(template, jax.Array) and restored.committed
            and not template.committed and len(restored.devices()) == 1):
        return jax.device_put(np.asarray(restored))
    return restored


def check_fits(saved: Mapping[str, Any], expected: Mapping[str, Any], where: str) -> None:
    """Raise a ``CheckpointError`` at the first path whose presence, shape or dtype differ.

    ``saved`` and ``expected`` map paths to anything with ``shape`` and ``dtype``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> w = jax.ShapeDtypeStruct((3, 2), jnp.float32)
        >>> check_fits({"params/w": w}, {"params/w": w}, "checkpoint 5")   # fits: no error
        >>> check_fits({"params/w": w}, {"params/w": w, "params/b": w}, "checkpoint 5")
        Traceback (most recent call last):
        ...
        fnn.checkpoint.CheckpointError: checkpoint 5 does not fit this model: it has no params/b ...
    """
    for path, leaf in expected.items():
        if path not in saved:
            raise CheckpointError(
                f"{where} does not fit this model: it has no {path} "
                f"(the model expects {leaf.dtype}{list(leaf.shape)})"
            )
        got = saved[path]
        if tuple(got.shape) != tuple(leaf.shape) or np.dtype(got.dtype) != np.dtype(leaf.dtype):
            raise CheckpointError(
                f"{where} does not fit this model at {path}: the checkpoint holds "
                f"{np.dtype(got.dtype)}{list(got.shape)}, the model expects "
                f"{np.dtype(leaf.dtype)}{list(leaf.shape)}"
            )
    extra = [path for path in saved if path not in expected]
    if extra:
        raise CheckpointError(
            f"{where} does not fit this model: it holds {extra[0]}, which the model does not have"
        )


def check_savable(state: Any) -> None:
    """Raise a ``CheckpointError`` naming the first array of ``state`` that a checkpoint
    cannot hold: one with no elements (orbax stores none). ``train_loop`` calls it before
    its first step, so a run learns of it before training, not at its first save.

    Example:
        >>> import jax.numpy as jnp
        >>> check_savable({"memory": {"buffer": jnp.zeros((0, 4))}})
        Traceback (most recent call last):
        ...
        fnn.checkpoint.CheckpointError: a checkpoint cannot hold memory/buffer, float32[0, 4]: it has no ...
    """
    for path, leaf in _flat(state).items():  # shapes alone: a typed key array is empty when its data is
        if 0 in tuple(leaf.shape):
            raise CheckpointError(
                f"a checkpoint cannot hold {path}, {leaf.dtype}{list(leaf.shape)}: it has no "
                "elements; give it at least one (a buffer of one row), or keep it out of the state"
            )


class Checkpoints:
    """The checkpoints of one run, in ``directory`` (one sub-directory per step).

    Args:
        directory: where the checkpoints live; created when missing.
        keep: how many of the latest checkpoints to keep.

    Example:
        >>> import tempfile, jax, jax.numpy as jnp, optax, fnn
        >>> def at(step, width=2):
        ...     made = fnn.init_train_state(fnn.Dense(width), optax.sgd(0.1), jax.random.key(0),
        ...                                 jnp.zeros((1, 3)))
        ...     return made._replace(step=jnp.array(step, jnp.int32))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     ckpts = Checkpoints(d, keep=2)                      # the two latest are kept
        ...     saved = [ckpts.save(at(step), {"epoch": step // 10}) for step in (10, 20, 30)]
        ...     kept, (restored, extra) = ckpts.steps(), ckpts.restore(at(0))
        ...     try:
        ...         ckpts.restore(at(0, width=4))
        ...     except CheckpointError as error:
        ...         message = str(error)
        >>> kept, int(restored.step), extra
        ([20, 30], 30, {'epoch': 3})
        >>> print(message)
        checkpoint .../30 does not fit this model at params/b: the checkpoint holds float32[2], ...
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3):
        import orbax.checkpoint as ocp

        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
            raise ValueError(f"Checkpoints: keep must be a positive int, got {keep!r}")
        _quiet_orbax()
        self.directory = os.path.abspath(os.fspath(directory))
        self._ocp = ocp
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=False, create=True,
                todelete_subdir=_DELETED,  # an old checkpoint leaves whole, in one rename
            ),
            item_handlers={"state": ocp.StandardCheckpointHandler(), "extra": ocp.JsonCheckpointHandler()},
        )

    def steps(self) -> list[int]:
        """The steps that have a complete checkpoint, oldest first.

        A checkpoint that is not complete is left out: one being written is in a temporary
        folder, one that orbax removes is first renamed out of the way, and a step folder
        without orbax's ``_CHECKPOINT_METADATA`` (what a removal stopped half-way left, before
        removals were renames) is not one. Another process (``fnn show``) may list the
        checkpoints of a run training now: a checkpoint removed while they are listed is
        listed again without it."""
        for attempt in range(5):
            try:
                self._manager.reload()
                steps = self._manager.all_steps()
                break
            except FileNotFoundError:  # removed while it was read: the listing is out of date
                if attempt == 4:
                    raise
        return sorted(s for s in steps if os.path.isfile(os.path.join(self.directory, str(s), _METADATA)))

    def latest(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, state: TrainState, extra: Mapping[str, Any] | None = None) -> int:
        """Write ``state`` (at its own ``state.step``) and the JSON-able ``extra``; returns the
        step. A step already saved is left as it is; a step below the latest checkpoint, or a
        state holding an empty array (which orbax cannot store), is a ``CheckpointError``."""
        ocp = self._ocp
        step = step_of(state)
        steps = self.steps()
        if step in steps:
            return step
        if steps and step < steps[-1]:
            raise CheckpointError(
                f"cannot save step {step} in {self.directory}: it is below the latest checkpoint, "
                f"step {steps[-1]} (checkpoints only move forward; save the run into another directory)"
            )
        check_savable(state)
        try:
            self._remove_incomplete(steps)
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(to_saved(state)),
                    extra=ocp.args.JsonSave(dict(extra or {})),
                ),
            )
            self._manager.wait_until_finished()
            if jax.process_index() == 0:  # the checkpoints orbax removed (with several processes: one)
                shutil.rmtree(os.path.join(self.directory, _DELETED), ignore_errors=True)
        except Exception as error:  # a full disk, a read-only folder: orbax and tensorstore raise many kinds
            raise CheckpointError(
                f"cannot save step {step} in {self.directory}: {_first_line(error)}"
                + (f"; the checkpoints of steps {steps} are kept as they were" if steps else "")
            ) from error
        return step

    def _remove_incomplete(self, complete: list[int]) -> None:
        """Delete the step folders that are not complete checkpoints (what a removal stopped
        half-way left): orbax would count them against ``keep``, and skip saving their step."""
        left = [s for s in self._manager.all_steps() if s not in complete]
        if left and jax.process_index() == 0:
            for s in left:
                shutil.rmtree(os.path.join(self.directory, str(s)), ignore_errors=True)
        if left:
            self._manager.reload()

    def restore(self, template: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
        """The checkpoint at ``step`` (default: the latest) as a state shaped like ``template``.

        ``template`` may hold arrays or ``jax.ShapeDtypeStruct``s (``jax.eval_shape`` of the
        initial state). The arrays are placed as the template's are (where it has no
        placement: on this process's first device), whichever devices or processes wrote the
        checkpoint; ``DataParallel.put_state`` lays them out again for a run on several.
        Raises ``CheckpointError`` when there is no checkpoint, when it cannot be read, or
        when its arrays do not fit the template, naming the first path that differs.
        """
        ocp = self._ocp
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise CheckpointError(f"no checkpoint of step {step} in {self.directory}; it has steps {steps}")
        where = f"checkpoint {os.path.join(self.directory, str(step))}"
        saved_template = to_saved(template)
        try:
            metadata = self._manager.item_metadata(step)["state"]
            tree = metadata.tree if hasattr(metadata, "tree") else metadata
        except Exception as error:  # orbax and tensorstore raise many kinds
            raise _unreadable(where, error, [s for s in steps if s != step]) from error
        if tree is None:
            raise CheckpointError(f"{where} is unreadable: it holds no state metadata")
        saved_paths = _flat(tree)
        scale = template.loss_scale if isinstance(template, TrainState) else None
        saved_scale = any(path.startswith("loss_scale/") for path in saved_paths)
        fill = None  # the template's scale, for a checkpoint written before states carried one
        if scale is not None and not saved_scale:
            if any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(scale)):
                raise CheckpointError(
                    f"{where} holds no loss scale (written before train states carried one), and an "
                    "abstract template has none to start from; restore it into fnn.init_train_state(...)'s"
                )
            saved_template, fill = saved_template._replace(loss_scale=None), scale  # as a fresh run starts
        elif scale is None and saved_scale:
            raise CheckpointError(
                f"{where} holds a float16 run's loss scale and the template has none; make the "
                "template with fnn.init_train_state(..., policy=...) for that run's policy"
            )
        check_fits(saved_paths, _flat(saved_template), where)
        abstract = jax.tree.map(_restore_target, saved_template)
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract),
                    extra=ocp.args.JsonRestore(),
                ),
            )
        except Exception as error:
            # the same arrays in another arrangement (adam's state read into adamw's): not damage
            difference = _first_difference(_skeleton(tree), _skeleton(saved_template))
            if difference is not None:
                at, held, expected = difference
                raise CheckpointError(
                    f"{where} does not fit this model at {at}: the checkpoint holds {held} there, the "
                    f"model expects {expected} (was it trained with another optimizer?)"
                ) from error
            raise _unreadable(where, error, [s for s in steps if s != step]) from error
        state = jax.tree.unflatten(jax.tree.structure(saved_template), jax.tree.leaves(restored["state"]))
        state = jax.tree.map(_placed_like, state, saved_template)
        if fill is not None:
            state = state._replace(loss_scale=fill)
        return from_saved(state, template), dict(restored["extra"] or {})

    def close(self) -> None:
        self._manager.close()
