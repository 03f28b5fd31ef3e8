"""Data: loading the data sets that ship with fnn's dependencies, splitting and batching.

Arrays stay NumPy on the host until a compiled step takes them; batches are tuples
``(inputs, targets)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from sklearn import datasets
from sklearn.model_selection import train_test_split


def check_finite(name: str, array: np.ndarray) -> None:
    """Raise if a float array holds NaN or infinity, naming the array and the first bad index."""
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{name} holds {int(bad.sum())} NaN or infinite values (first at {first})")


def check_dataset(name: str, arrays: Sequence[np.ndarray]) -> None:
    """Raise unless ``arrays`` are non-empty, finite and equally long."""
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"{name}: arrays differ in length: {[len(a) for a in arrays]}")
    if lengths == {0}:
        raise ValueError(f"{name}: the data set is empty")
    for i, array in enumerate(arrays):
        check_finite(f"{name}[{i}]", array)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8x8 handwritten digits bundled with scikit-learn.

    Returns ``images: float32[1797, 8, 8, 1]`` scaled to [0, 1] and ``labels: int32[1797]``.

    Example:
        >>> images, labels = load_digits()
        >>> images.shape, labels.shape, float(images.max())
        ((1797, 8, 8, 1), (1797,), 1.0)
    """
    bunch = datasets.load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[..., None]
    labels = bunch.target.astype(np.int32)
    check_dataset("digits", (images, labels))
    return images, labels


def split(
    inputs: np.ndarray, labels: np.ndarray, *, test_fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A shuffled train/test split that keeps the class proportions of ``labels``.

    Example:
        >>> import numpy as np
        >>> (xtr, ytr), (xte, yte) = split(np.zeros((10, 2)), np.arange(10) % 2,
        ...                                test_fraction=0.2, seed=0)
        >>> len(xtr), len(xte)
        (8, 2)
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"split: test_fraction must be in (0, 1), got {test_fraction!r}")
    check_dataset("split", (inputs, labels))
    x_train, x_test, y_train, y_test = train_test_split(
        inputs, labels, test_size=test_fraction, random_state=seed, stratify=labels
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
        arrays: equally long arrays, e.g. ``(images, labels)``.
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
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batches: batch_size must be a positive int, got {batch_size!r}")
    check_dataset("batches", arrays)
    n = len(arrays[0])
    if drop_remainder and batch_size > n:
        raise ValueError(f"batches: batch_size {batch_size} is larger than the data set ({n} examples)")
    rng = np.random.default_rng(seed)
    stop = n - n % batch_size if drop_remainder else n
    for _ in range(epochs):
        order = rng.permutation(n) if seed is not None else np.arange(n)
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            yield tuple(a[index] for a in arrays)
