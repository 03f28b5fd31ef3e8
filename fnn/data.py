"""Data: loading the data sets that ship with fnn's dependencies, splitting and batching.

Arrays stay NumPy on the host until a compiled step takes them; batches are tuples
``(inputs, targets)``. :func:`loader` builds the training input pipeline on ``grain``:
a random-access dataset of whole batches, so that where a run stands in its data is
one integer that a checkpoint can hold, and :class:`Prefetch` makes batches ahead of the
step that needs them (and moves them to an accelerator).
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from fnn.core import is_count, is_seed


def cache_dir(name: str, environ: Mapping[str, str] = os.environ) -> Path:
    """``name`` in fnn's cache: ``$FNN_CACHE``, or ``~/.cache/fnn`` when that is unset or
    empty. The speech experiments keep their synthesised audio in ``speech``, the commands
    that train their compiled programs in ``jax``.

    Example:
        >>> str(cache_dir("speech", {"FNN_CACHE": "my-cache"}))
        'my-cache/speech'
        >>> cache_dir("jax", {"FNN_CACHE": ""}) == Path.home() / ".cache" / "fnn" / "jax"
        True
    """
    return Path(environ.get("FNN_CACHE") or Path.home() / ".cache" / "fnn") / name


def check_finite(name: str, array: np.ndarray) -> None:
    """Raise if a floating-point (bfloat16 included) or complex array holds NaN or infinity,
    naming the array and the first bad index.

    Example:
        >>> import numpy as np
        >>> check_finite("images", np.array([1.0, np.nan]))
        Traceback (most recent call last):
        ...
        ValueError: images holds 1 NaN or infinite values (first at (1,))
    """
    if jax.numpy.issubdtype(array.dtype, jax.numpy.inexact):  # numpy's own test misses bfloat16
        bad = ~np.isfinite(array)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{name} holds {int(bad.sum())} NaN or infinite values (first at {first})")


def check_dataset(name: str, arrays: Sequence[np.ndarray]) -> None:
    """Raise unless ``arrays`` are non-empty, finite and equally long.

    Example:
        >>> import numpy as np
        >>> check_dataset("train", [np.zeros((3, 2)), np.zeros(2)])
        Traceback (most recent call last):
        ...
        ValueError: train: arrays differ in length: [3, 2]
    """
    if example_count(name, arrays) == 0:
        raise ValueError(f"{name}: the data set is empty")
    for i, array in enumerate(arrays):
        check_finite(f"{name}[{i}]", array)


def example_count(name: str, arrays: Sequence[Any]) -> int:
    """The examples in ``arrays``, which must be arrays with a leading example axis, all
    equally long (a ``ValueError`` naming ``name`` otherwise)."""
    for i, array in enumerate(arrays):
        if np.ndim(array) == 0:
            raise ValueError(
                f"{name}[{i}] is {type(array).__name__} {array!r}, not an array with a leading example axis "
                "(a Python list is a pytree of its items: pass np.asarray(the_list))"
            )
    if not arrays:
        raise ValueError(f"{name}: no arrays given")
    lengths = [len(a) for a in arrays]
    if len(set(lengths)) != 1:
        raise ValueError(f"{name}: arrays differ in length: {lengths}")
    return lengths[0]


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8x8 handwritten digits bundled with scikit-learn.

    Returns ``images: float32[1797, 8, 8, 1]`` scaled to [0, 1] and ``labels: int32[1797]``.

    Example:
        >>> images, labels = load_digits()
        >>> images.shape, labels.shape, float(images.max())
        ((1797, 8, 8, 1), (1797,), 1.0)
    """
    from sklearn import datasets  # here, not at the top: importing scikit-learn takes ~2 s

    bunch = datasets.load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[..., None]
    labels = bunch.target.astype(np.int32)
    check_dataset("digits", (images, labels))
    return images, labels


def split(
    inputs: np.ndarray, labels: np.ndarray, *, test_fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A shuffled train/test split that keeps the class proportions of ``labels``; each part
    needs an example of every class, and ``seed`` (scikit-learn's ``random_state``) must be
    below 2**32.

    Example:
        >>> import numpy as np
        >>> (xtr, ytr), (xte, yte) = split(np.zeros((10, 2)), np.arange(10) % 2,
        ...                                test_fraction=0.2, seed=0)
        >>> len(xtr), len(xte)
        (8, 2)
        >>> split(np.zeros((10, 2)), np.arange(10) % 2, test_fraction=0.1, seed=0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: split: holding out 0.1 of 10 examples leaves 1 held out and 9 kept, but each ...
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"split: test_fraction must be in (0, 1), got {test_fraction!r}")
    if not is_seed(seed):
        raise ValueError(f"split: seed must be an int in [0, 2**32) (scikit-learn's random_state), "
                         f"got {seed!r}")
    inputs, labels = np.asarray(inputs), np.asarray(labels)  # lists too, as scikit-learn takes them
    check_dataset("split", (inputs, labels))
    n = len(labels)
    axis = 0 if np.ndim(labels) > 1 else None  # one-hot labels: a class is a row, as scikit-learn counts
    classes = np.unique(labels, axis=axis)
    held_out = int(np.ceil(test_fraction * n))  # as scikit-learn rounds it
    needs = f"each part needs one of each of the {len(classes)} classes"
    if min(held_out, n - held_out) < len(classes):
        raise ValueError(f"split: holding out {test_fraction} of {n} examples leaves {held_out} held out and "
                         f"{n - held_out} kept, but {needs}")
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        inputs, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    # scikit-learn rounds each class's share down, so a rare class can miss a part
    for part, y in (("held-out", y_test), ("kept", y_train)):
        present = {np.asarray(c).tobytes() for c in np.unique(y, axis=axis)}
        for c in classes:
            if np.asarray(c).tobytes() not in present:
                count = int(np.all(np.reshape(labels == c, (n, -1)), axis=1).sum())
                raise ValueError(
                    f"split: holding out {test_fraction} of {n} examples leaves the {part} part without "
                    f"class {c.tolist()} ({count} of the {n} examples); {needs}: hold out "
                    f"{'more' if part == 'held-out' else 'less'}, or gather more examples of that class"
                )
    return (x_train, y_train), (x_test, y_test)


def batches(
    arrays: Sequence[np.ndarray],
    batch_size: int,
    *,
    seed: int | None = None,
    epochs: int = 1,
    drop_remainder: bool = True,
) -> Iterator[tuple[np.ndarray, ...]]:
    """Batches of ``arrays`` (sliced together along their first axis) for ``epochs`` epochs.

    Args:
        arrays: equally long arrays, e.g. ``(images, labels)``, or pytrees of them
            (``((images, masks), labels)``); each batch has their structure.
        batch_size: examples per batch.
        seed: shuffle each epoch with this seed; ``None`` keeps the order.
        epochs: passes over the data.
        drop_remainder: skip the last, smaller batch of each epoch (keeps one compiled
            shape for training); keep it for evaluation.

    Example:
        >>> import numpy as np
        >>> [b[0].tolist() for b in batches((np.arange(5),), 2, drop_remainder=False)]
        [[0, 1], [2, 3], [4]]
    """
    if not is_count(batch_size):
        raise ValueError(f"batches: batch_size must be a positive int, got {batch_size!r}")
    if not is_count(epochs):
        raise ValueError(f"batches: epochs must be a positive int, got {epochs!r}")
    if seed is not None and not is_seed(seed):
        raise ValueError(f"batches: seed must be None or an int in [0, 2**32), got {seed!r}")
    batch_size, epochs = int(batch_size), int(epochs)
    leaves, structure = jax.tree.flatten(tuple(arrays))  # an entry may be a pytree: ((x1, x2), y)
    check_dataset("batches", leaves)
    n = len(leaves[0])
    if drop_remainder and batch_size > n:
        raise ValueError(f"batches: batch_size {batch_size} is larger than the data set ({n} examples)")
    rng = np.random.default_rng(seed)
    stop = n - n % batch_size if drop_remainder else n
    for _ in range(epochs):
        order = rng.permutation(n) if seed is not None else np.arange(n)
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            yield jax.tree.unflatten(structure, [a[index] for a in leaves])


def stack_batches(batches: Iterable[Any], k: int, *, device: bool = True) -> Iterator[Any]:
    """Groups of ``k`` consecutive batches stacked on a new leading axis, for a train step
    made with ``steps_per_call=k``; with ``device`` each group is moved to the device as it
    is made, so the step finds its ``k`` batches staged there. A last group of fewer than
    ``k`` batches is dropped (it would need a program of its own).

    Example:
        >>> import numpy as np
        >>> groups = stack_batches(batches((np.arange(10),), 2), 2, device=False)
        >>> [g[0].tolist() for g in groups]
        [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
    """
    if not is_count(k):
        raise ValueError(f"stack_batches: k must be a positive int, got {k!r}")
    k = int(k)
    iterator = iter(batches)
    while True:
        group = list(itertools.islice(iterator, k))
        if len(group) < k:
            return
        stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *group)
        yield jax.device_put(stacked) if device else stacked


def loader(
    arrays: Sequence[Any],
    batch_size: int,
    *,
    seed: int,
    epochs: int = 1,
    drop_remainder: bool = True,
    transform: Callable[[tuple, np.random.Generator], tuple] | None = None,
) -> Any:
    """A ``grain.MapDataset`` whose element ``k`` is the ``k``-th batch of training.

    Each epoch visits the examples in a fresh order drawn from ``(seed, epoch)``;
    ``transform(batch, rng)`` (data augmentation) gets a generator that grain derives
    from ``seed`` and the batch's index. Any batch can be computed on its own, so a run
    resumed at step ``k`` reads exactly the batches an uninterrupted run would have
    read: ``dataset[k:]``.

    Args:
        arrays: a tuple (or any pytree) of equally long arrays, e.g. ``(images, labels)``
            or ``((ids, mask), labels)``; each batch has the same structure.
        batch_size: examples per batch.
        seed: the shuffling seed.
        epochs: passes over the data; ``len(dataset)`` is the number of batches in all.
        drop_remainder: leave out each epoch's last, smaller batch.
        transform: an optional random map applied to each batch.

    Example:
        >>> import numpy as np
        >>> data = loader((np.arange(10), np.arange(10) % 2), 4, seed=0, epochs=2)
        >>> len(data), [x.tolist() for x, _ in data][:2]
        (4, [[4, 6, 2, 7], [3, 5, 9, 0]])
    """
    import grain

    if not is_count(batch_size):
        raise ValueError(f"loader: batch_size must be a positive int, got {batch_size!r}")
    if not is_count(epochs):
        raise ValueError(f"loader: epochs must be a positive int, got {epochs!r}")
    if not is_seed(seed):
        raise ValueError(f"loader: seed must be an int in [0, 2**32), got {seed!r}")
    batch_size, epochs, seed = int(batch_size), int(epochs), int(seed)
    leaves = jax.tree.leaves(arrays)
    check_dataset("loader", leaves)
    n = len(leaves[0])
    if drop_remainder and batch_size > n:
        raise ValueError(f"loader: batch_size {batch_size} is larger than the data set ({n} examples)")
    per_epoch = n // batch_size if drop_remainder else -(-n // batch_size)

    @functools.lru_cache(maxsize=2)
    def order(epoch: int) -> np.ndarray:
        return np.random.default_rng([seed, epoch]).permutation(n)

    def batch(k: int) -> tuple:
        epoch, b = divmod(int(k), per_epoch)
        index = order(epoch)[b * batch_size : (b + 1) * batch_size]
        return jax.tree.map(lambda a: a[index], arrays)

    dataset = grain.MapDataset.range(per_epoch * epochs).map(batch)
    if transform is not None:
        dataset = dataset.random_map(transform, seed=seed)
    return dataset


class Prefetch:
    """Iterate a batch dataset from position ``start``, keeping ``size`` batches ready ahead
    of the consumer.

    Batch ``k`` is read as ``dataset[k]`` in the calling thread: JAX runs a step
    asynchronously, so the host makes the next batches while the device works, and the
    ``size`` batches made ahead cover the moments the host waits for the device (a logged
    loss). Batches go to ``device`` (default: JAX's default device), or through ``put`` when
    given (e.g. ``DataParallel.put_batch``, which splits each batch among several devices).
    On a CPU device they stay the host's arrays: the step reads them as they are, where a
    ``jax.device_put`` per batch waits on the busy CPU runtime (0.8 ms a batch while
    text-classify trained, against 0.06 ms alone, in a one-off measurement; the cost to
    whole runs is in ``benchmarks/input_pipeline.py``).

    ``state()`` is the position after the batches consumed so far (not those made ahead),
    ``{"next_index": k}``; a new ``Prefetch(dataset, state=...)`` continues from there.
    ``size=0`` makes each batch when it is asked for. A batch whose making raises raises
    in its turn, after the batches before it, and is not counted as consumed: the next
    call tries it again.

    Example:
        >>> import numpy as np
        >>> data = loader((np.arange(6),), 2, seed=0)
        >>> it = Prefetch(data)
        >>> _ = next(it); it.state()
        {'next_index': 1}
        >>> [b[0].tolist() for b in Prefetch(data, state=it.state())]
        [[5, 4], [0, 1]]
    """

    def __init__(self, dataset: Any, *, state: dict | None = None, size: int = 2,
                 device: jax.Device | None = None, put: Callable[[Any], Any] | None = None):
        start = 0 if state is None else state.get("next_index")
        if not isinstance(start, int) or not 0 <= start <= len(dataset):
            raise ValueError(
                f"Prefetch: data state {state!r} does not fit a dataset of {len(dataset)} batches"
            )
        if not is_count(size, least=0):
            raise ValueError(f"Prefetch: size must be a non-negative int (batches made ahead), got {size!r}")
        if put is None:
            target = device if device is not None else jax.config.jax_default_device
            platform = target.platform if isinstance(target, jax.Device) else target or jax.default_backend()
            put = _on_host if platform == "cpu" else functools.partial(jax.device_put, device=device)
        self._dataset, self._put, self._size = dataset, put, int(size)
        self._consumed = self._next = start  # the batches handed out; the next one to make
        self._queue: collections.deque = collections.deque()  # (index, batch, error) made ahead
        self._make(self._size)

    def _make(self, count: int) -> None:
        """Make batches ahead until ``count`` are queued; a batch that fails is queued as its
        error, and nothing after it is made."""
        while len(self._queue) < count and self._next < len(self._dataset):
            if self._queue and self._queue[-1][2] is not None:
                return
            k, self._next = self._next, self._next + 1
            try:
                self._queue.append((k, self._put(self._dataset[k]), None))
            except Exception as error:  # raised in its turn, after the batches before it
                self._queue.append((k, None, error))

    def __iter__(self) -> Prefetch:
        return self

    def __next__(self) -> Any:
        self._make(1)
        if not self._queue:
            raise StopIteration
        k, item, error = self._queue.popleft()
        if error is not None:  # the next call makes batch k again: nothing is skipped
            self._queue.clear()
            self._next = k
            raise error
        self._consumed += 1
        self._make(self._size)
        return item

    def state(self) -> dict:
        return {"next_index": self._consumed}


def _on_host(batch: Any) -> Any:
    """A batch for a CPU device: its arrays as they are (a step reads host memory)."""
    return batch
