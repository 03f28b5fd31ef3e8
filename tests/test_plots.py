"""``fnn.plots``: the figures a run writes."""

import numpy as np
import pytest

from fnn import plots


def test_figures_make_their_folder_and_take_numpy_points(tmp_path):
    points = np.array([[1, 2.0], [2, 1.5], [3, 1.0]])  # an (n, 2) array, as a run's history gives
    path = plots.curves({"loss": {"train": points, "eval": []}}, tmp_path / "a" / "curves.png")
    assert path.stat().st_size > 0
    path = plots.confusion_matrix(np.array([[5, 1], [0, 4]]), tmp_path / "b" / "c" / "m.png")
    assert path.stat().st_size > 0
    with pytest.raises(ValueError, match="nothing to plot"):
        plots.curves({"loss": {"train": np.zeros((0, 2))}}, tmp_path / "empty.png")
    with pytest.raises(ValueError, match="3 labels for 2 classes"):
        plots.confusion_matrix([[1, 0], [0, 1]], tmp_path / "m.png", labels=["a", "b", "c"])
