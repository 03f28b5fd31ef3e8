"""Loading, splitting and batching."""

import numpy as np
import pytest
from sklearn import datasets

import fnn


def test_load_digits_matches_the_bundled_data():
    images, labels = fnn.data.load_digits()
    raw = datasets.load_digits()
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.float32
    assert labels.dtype == np.int32 and set(labels.tolist()) == set(range(10))
    np.testing.assert_allclose(images[..., 0] * 16, raw.images)
    assert 0.0 <= images.min() and images.max() == 1.0


def test_split_is_stratified_disjoint_and_seeded():
    x = np.arange(100, dtype=np.float32)[:, None]
    y = (np.arange(100) % 4).astype(np.int32)
    (xtr, ytr), (xte, yte) = fnn.data.split(x, y, test_fraction=0.2, seed=3)
    assert len(xte) == 20 and np.bincount(yte).tolist() == [5, 5, 5, 5]
    assert not set(xtr[:, 0]) & set(xte[:, 0])
    (_, _), (xte2, _) = fnn.data.split(x, y, test_fraction=0.2, seed=3)
    np.testing.assert_array_equal(xte, xte2)
    with pytest.raises(ValueError, match="test_fraction must be in"):
        fnn.data.split(x, y, test_fraction=1.5, seed=0)


def test_batches_cover_each_epoch_once_and_shuffle_by_seed():
    x = np.arange(10)
    epoch = [b[0] for b in fnn.data.batches((x,), 3, seed=0, drop_remainder=False)]
    assert sorted(np.concatenate(epoch).tolist()) == list(range(10))
    again = [b[0] for b in fnn.data.batches((x,), 3, seed=0, drop_remainder=False)]
    assert all((a == b).all() for a, b in zip(epoch, again))
    dropped = list(fnn.data.batches((x, x), 3, seed=1, epochs=2))
    assert len(dropped) == 6 and all(len(b[0]) == 3 and (b[0] == b[1]).all() for b in dropped)


@pytest.mark.parametrize(
    "arrays, size, message",
    [
        ((np.zeros(4), np.zeros(5)), 2, "differ in length"),
        ((np.zeros(0),), 2, "empty"),
        ((np.array([0.0, np.nan, 1.0]),), 1, r"batches\[0\] holds 1 NaN or infinite values \(first at \(1,\)\)"),
        ((np.zeros(4),), 0, "batch_size must be a positive int"),
        ((np.zeros(4),), 8, "larger than the data set"),
    ],
)
def test_bad_data_is_a_clear_error(arrays, size, message):
    with pytest.raises(ValueError, match=message):
        list(fnn.data.batches(arrays, size))
