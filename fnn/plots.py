"""Figures of a run, drawn with matplotlib (Agg backend, PNG files): learning curves and
confusion matrices."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Curve = Sequence[tuple[float, float]]  # (step, value) points


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(
    panels: Mapping[str, Mapping[str, Curve]],
    path: str | os.PathLike,
    *,
    title: str = "",
    xlabel: str = "step",
) -> Path:
    """One panel per metric, one line per label: ``panels[metric][label] = [(x, y), ...]``.

    Example:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = curves({"loss": {"train": [(1, 2.0), (2, 1.0)]}}, os.path.join(d, "c.png"))
        ...     p.stat().st_size > 0
        True
    """
    plt = _pyplot()
    names = [name for name, lines in panels.items() if any(len(points) for points in lines.values())]
    if not names:
        raise ValueError(f"curves: nothing to plot for {path}")
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        for label, points in panels[name].items():
            if len(points):
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="." if len(points) < 30 else None, label=label)
        ax.set_xlabel(xlabel)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(plt, fig, path)


def confusion_matrix(
    matrix: np.ndarray, path: str | os.PathLike, *, labels: Sequence[str] | None = None, title: str = ""
) -> Path:
    """A confusion matrix (rows: true class, columns: predicted) as a heat map with counts.

    Shapes: ``matrix: int[classes, classes]`` (e.g. ``fnn.metrics.confusion_matrix``);
    ``labels``: one name per class. Returns the path written.

    Example:
        >>> import tempfile, os
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = confusion_matrix([[5, 1], [0, 4]], os.path.join(d, "m.png"), labels=["no", "yes"])
        ...     p.name, p.stat().st_size > 0
        ('m.png', True)
    """
    plt = _pyplot()
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion_matrix: expected a square matrix, got shape {matrix.shape}")
    n = matrix.shape[0]
    labels = [str(i) for i in range(n)] if labels is None else list(labels)
    if len(labels) != n:
        raise ValueError(f"confusion_matrix: {len(labels)} labels for {n} classes")
    fig, ax = plt.subplots(figsize=(1 + 0.45 * n, 1 + 0.45 * n))
    ax.imshow(matrix, cmap="Blues")
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                color = "white" if matrix[i, j] > matrix.max() / 2 else "black"
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(n), labels, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    return _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` (making its folder) and close it."""
    fig.tight_layout()
    path = Path(path)
    if not path.suffix:  # matplotlib writes a PNG at path.png: name the file it writes
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
