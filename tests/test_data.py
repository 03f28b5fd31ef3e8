"""Loading, splitting and batching."""

import re

import jax
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


def test_split_refuses_a_part_without_every_class_and_a_seed_scikit_learn_refuses():
    x = np.arange(100, dtype=np.float32)[:, None]
    y = (np.arange(100) % 4).astype(np.int32)
    for fraction, held_out in ((0.02, 2), (0.98, 98)):  # were scikit-learn's errors in its own words
        with pytest.raises(ValueError, match=rf"split: holding out {fraction} of 100 examples leaves {held_out} "
                                             rf"held out and {100 - held_out} kept, but each part needs one of "
                                             rf"each of the 4 classes"):
            fnn.data.split(x, y, test_fraction=fraction, seed=0)
    assert len(fnn.data.split(x, y, test_fraction=0.04, seed=2**32 - 1)[1][1]) == 4
    rows = np.array([[0, 1], [2, 3]] * 4)  # two classes, counted by rows as scikit-learn does
    assert len(fnn.data.split(np.zeros((8, 1)), rows, test_fraction=0.25, seed=0)[1][1]) == 2
    with pytest.raises(ValueError, match=r"split: seed must be an int in \[0, 2\*\*32\)"):
        fnn.data.split(x, y, test_fraction=0.2, seed=2**32)


def test_split_refuses_a_part_that_misses_a_rare_class():
    """scikit-learn rounds each class's held-out share down: a class of 4 in 1000 examples got
    no held-out example, and the split returned without a word."""
    y = np.repeat(np.arange(5), [400, 300, 200, 96, 4])
    with pytest.raises(ValueError, match=re.escape(
            "split: holding out 0.1 of 1000 examples leaves the held-out part without class 4 (4 of the "
            "1000 examples); each part needs one of each of the 5 classes")):
        fnn.data.split(np.zeros((1000, 3)), y, test_fraction=0.1, seed=0)
    rows = np.eye(5)[y]  # one-hot labels: a class is a row
    with pytest.raises(ValueError, match=re.escape("without class [0.0, 0.0, 0.0, 0.0, 1.0] (4 of the")):
        fnn.data.split(np.zeros((1000, 3)), rows, test_fraction=0.1, seed=0)
    (_, y_train), (_, y_test) = fnn.data.split(np.zeros((1000, 3)), y, test_fraction=0.25, seed=0)
    assert set(y_train) == set(y_test) == set(range(5))
    with pytest.raises(ValueError, match="without class 4"):  # lists, as scikit-learn takes them
        fnn.data.split(np.zeros((1000, 3)).tolist(), y.tolist(), test_fraction=0.1, seed=0)


def test_seeds_of_2_to_the_32_are_refused():
    """NumPy reads ``[seed, epoch]`` in 32-bit words, dropping a trailing zero: seed 2**32's
    first epoch was seed 0's second."""
    data = (np.arange(10),)
    with pytest.raises(ValueError, match=re.escape("loader: seed must be an int in [0, 2**32), got 4294967296")):
        fnn.data.loader(data, 2, seed=2**32)
    with pytest.raises(ValueError, match=re.escape("batches: seed must be None or an int in [0, 2**32)")):
        next(fnn.data.batches(data, 2, seed=2**32))
    assert len(fnn.data.loader(data, 2, seed=2**32 - 1)) == 5


def test_batches_keep_the_structure_of_a_nested_data_set():
    x1, x2, y = np.arange(8)[:, None], np.arange(16).reshape(8, 2), np.arange(8) % 2
    first = next(fnn.data.batches(((x1, x2), y), 4))  # was "arrays differ in length: [2, 8]"
    assert [a.shape for a in jax.tree.leaves(first)] == [(4, 1), (4, 2), (4,)]
    assert isinstance(first, tuple) and isinstance(first[0], tuple)


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
        ((np.array([0.0, 1.0, np.inf], jax.numpy.bfloat16),), 1, r"holds 1 NaN or infinite values \(first at \(2,\)\)"),
        ((np.array([0.0, np.nan * 1j]),), 1, r"holds 1 NaN or infinite values \(first at \(1,\)\)"),
        ((np.zeros(4),), 0, "batch_size must be a positive int"),
        ((np.zeros(4),), 8, "larger than the data set"),
    ],
)
def test_bad_data_is_a_clear_error(arrays, size, message):
    with pytest.raises(ValueError, match=message):
        list(fnn.data.batches(arrays, size))


class _Counted:
    """A batch dataset that counts the batches read from it."""

    def __init__(self, data):
        self.data, self.read = data, []

    def __len__(self):
        return len(self.data)

    def __getitem__(self, k):
        self.read.append(k)
        return self.data[k]


def test_prefetch_reads_each_batch_once_size_ahead_and_resumes_from_its_state():
    data = _Counted(fnn.data.loader((np.arange(12.0, dtype=np.float32),), 2, seed=3, epochs=2))  # 12 batches
    it = fnn.data.Prefetch(data, size=3)
    assert data.read == [0, 1, 2]  # made ahead before the first is asked for
    first = [next(it) for _ in range(4)]
    assert data.read == list(range(7)) and it.state() == {"next_index": 4}
    rest = list(fnn.data.Prefetch(data.data, state=it.state()))
    every = [data.data[k] for k in range(12)]
    for got, want in zip(first + rest, every, strict=True):
        np.testing.assert_array_equal(got[0], want[0])
    assert it.state() == {"next_index": 4}  # what was made ahead is not consumed
    with pytest.raises(ValueError, match="does not fit a dataset of 12 batches"):
        fnn.data.Prefetch(data, state={"next_index": 13})


class _Failing(_Counted):
    """Batch ``bad`` fails the first ``times`` times it is read."""

    def __init__(self, data, bad, times):
        super().__init__(data)
        self.bad, self.times = bad, times

    def __getitem__(self, k):
        if k == self.bad and self.times:
            self.times -= 1
            raise OSError(f"batch {k} could not be read")
        return super().__getitem__(k)


def test_prefetch_raises_a_failing_batch_in_its_turn_and_skips_nothing():
    data = fnn.data.loader((np.arange(6.0, dtype=np.float32),), 1, seed=0)  # 6 batches
    every = [data[k][0].tolist() for k in range(6)]
    it = fnn.data.Prefetch(_Failing(data, bad=3, times=1), size=2)
    got = [next(it)[0].tolist() for _ in range(3)]  # batch 3 fails while batch 1 is handed out
    with pytest.raises(OSError, match="batch 3 could not be read"):
        next(it)
    assert it.state() == {"next_index": 3}  # the failed batch is not consumed
    got += [b[0].tolist() for b in it]  # made again: it reads now
    assert got == every  # before, batch 1 was lost to the error and batches 4, 5 silently dropped
    it = fnn.data.Prefetch(_Failing(data, bad=2, times=5), size=2)
    assert [next(it)[0].tolist() for _ in range(2)] == every[:2]
    for _ in range(2):  # a batch that keeps failing keeps raising; iteration never ends early
        with pytest.raises(OSError, match="batch 2"):
            next(it)


def test_prefetch_of_size_zero_makes_each_batch_when_asked():
    data = _Counted(fnn.data.loader((np.arange(6.0, dtype=np.float32),), 2, seed=0))
    it = fnn.data.Prefetch(data, size=0)
    assert data.read == []
    assert len(list(it)) == 3 and data.read == [0, 1, 2]  # before, it yielded no batch at all
    for size in (-1, 1.5, True):
        with pytest.raises(ValueError, match="Prefetch: size must be a non-negative int"):
            fnn.data.Prefetch(data, size=size)


def test_prefetch_leaves_batches_on_the_host_for_a_cpu_device_and_puts_them_otherwise(monkeypatch):
    data = fnn.data.loader((np.ones((8, 3), np.float32), np.zeros(8, np.int32)), 4, seed=0)
    cpu = jax.devices("cpu")[0]
    for it in (fnn.data.Prefetch(data), fnn.data.Prefetch(data, device=cpu)):
        assert all(isinstance(a, np.ndarray) for a in jax.tree.leaves(next(it)))  # no copy per batch
    put = fnn.data.Prefetch(data, put=lambda b: ("put", b))
    assert next(put)[0] == "put"
    # an accelerator: each batch is copied to it ahead of the step (here a stand-in that is
    # the CPU device under another platform name)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    batch = next(fnn.data.Prefetch(data))
    assert all(isinstance(a, jax.Array) for a in jax.tree.leaves(batch))
    with jax.default_device(cpu):  # an explicit default device is honoured
        assert isinstance(next(fnn.data.Prefetch(data))[0], np.ndarray)


def test_loader_and_batches_refuse_a_missing_seed_and_no_epochs():
    x = np.zeros((8, 2), np.float32)
    with pytest.raises(ValueError, match=r"loader: seed must be an int in \[0, 2\*\*32\), got None"):
        fnn.data.loader((x,), 2, seed=None)
    with pytest.raises(ValueError, match=r"loader: seed must be an int in \[0, 2\*\*32\), got -1"):
        fnn.data.loader((x,), 2, seed=-1)  # numpy's generator refused it at the first batch
    with pytest.raises(ValueError, match=r"batches: seed must be None or an int in \[0, 2\*\*32\), got -1"):
        list(fnn.data.batches((x,), 2, seed=-1))
    with pytest.raises(ValueError, match="batches: batch_size must be a positive int, got True"):
        list(fnn.data.batches((x,), True))
    # NumPy integers count as integers (a size computed with numpy was refused)
    assert len(fnn.data.loader((x,), np.int64(2), seed=np.int32(0), epochs=np.int64(2))) == 8
    assert len(list(fnn.data.batches((x,), np.int64(4), epochs=np.int64(2)))) == 4
    assert len(list(fnn.data.stack_batches(fnn.data.batches((x,), 2), np.int64(2), device=False))) == 2
    with pytest.raises(ValueError, match=r"loader\[0\] is float 1.0, not an array with a leading example axis .* np.asarray"):
        fnn.data.loader(([1.0, 2.0, 3.0], [0, 1, 0]), 2, seed=0)  # a list is a pytree of its items
    for epochs in (0, -1):
        with pytest.raises(ValueError, match=f"batches: epochs must be a positive int, got {epochs}"):
            list(fnn.data.batches((x,), 2, epochs=epochs))
