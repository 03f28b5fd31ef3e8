"""Connectionist temporal classification (Graves et al., 2006): the loss, its checks, decoding
and scoring.

A CTC model emits, at each of its ``T`` output frames, a distribution over the labels
plus a *blank*. A transcript of ``L`` labels is read off a frame sequence by merging
repeated labels and dropping blanks, so the loss sums over every alignment of the
transcript to the frames, and no frame-level labels are needed. A transcript fits in
``T`` frames only if ``T >= L + (number of adjacent repeated labels)``, since a blank must
separate each repeat; :func:`check_targets` says which utterance breaks that before
training starts, instead of a loss of about ``1e5`` divided by the transcript's length.

Decoding: :func:`greedy_decode` takes the best label of each frame; :func:`beam_search`
is the prefix beam search, which sums the probabilities of all frame sequences that
collapse to the same prefix. :func:`edit_distance` and :func:`align` score a decoded
sequence against its reference (the label error rate is the summed edit distance
over the summed reference lengths).

Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> logits = jnp.log(jnp.array([[[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8]]]) + 1e-9)
    >>> greedy_decode(logits)
    [[1, 2]]
    >>> edit_distance([1, 2, 3], [1, 3])
    1
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn.core import shape_str
from fnn.layers.sequence import zero_padding


def _split(outputs: Any, name: str) -> tuple[Any, Any]:
    if isinstance(outputs, tuple | list):
        if len(outputs) != 2:
            raise ValueError(
                f"ctc_loss: {name} must be an array or a pair (array, mask), got {shape_str(outputs)}"
            )
        return outputs
    return outputs, None


def required_frames(labels: Sequence[int]) -> int:
    """The fewest frames that can spell ``labels``: their count plus one blank per adjacent repeat.

    Example:
        >>> required_frames([1, 1, 2])
        4
    """
    labels = list(labels)
    return len(labels) + sum(a == b for a, b in zip(labels, labels[1:]))


def check_targets(
    frames: Any, labels: Any, label_lengths: Any, *, where: str = "ctc",
    num_classes: int | None = None, blank: int = 0,
) -> None:
    """Raise ``ValueError`` naming the first utterance whose transcript is empty, does not
    fit in its ``frames`` output frames, or (given ``num_classes``) holds a label outside
    ``[0, num_classes)`` or the ``blank``.

    Args:
        frames: ``int[n]``, the real output frames of each utterance.
        labels: ``int[n, max_labels]``, padded transcripts.
        label_lengths: ``int[n]``, each transcript's length.
        num_classes: the model's outputs per frame, blank included.
        blank: the blank's id.

    Example:
        >>> check_targets([3, 4], [[1, 2], [1, 1]], [2, 2])
        >>> check_targets([3, 1], [[1, 2], [1, 1]], [2, 2])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ctc: utterance 1's transcript of 2 labels needs at least 3 output frames ...
    """
    frames, labels, label_lengths = (np.asarray(a) for a in (frames, labels, label_lengths))
    for i in range(len(label_lengths)):
        n = int(label_lengths[i])
        if n == 0:
            raise ValueError(f"{where}: utterance {i} has an empty transcript; CTC needs at least one label")
        if num_classes is not None:
            bad = [int(k) for k in labels[i, :n] if not 0 <= k < num_classes or k == blank]
            if bad:
                raise ValueError(
                    f"{where}: utterance {i}'s transcript holds label {bad[0]}; labels must be in "
                    f"[0, {num_classes}) (the outputs per frame) and not the blank {blank}"
                )
        need = required_frames(labels[i, :n])
        if need > frames[i]:
            raise ValueError(
                f"{where}: utterance {i}'s transcript of {n} labels needs at least {need} output frames "
                f"but the model emits {int(frames[i])} for it; shorten the transcript or subsample less"
            )


def ctc_loss(outputs: Any, targets: Any, *, blank: int = 0) -> jax.Array:
    """Mean over the batch of each utterance's CTC loss divided by its transcript's length.

    Shapes: ``outputs``: ``logits [batch, frames, labels]`` or ``(logits, mask bool[batch,
    frames])``; ``targets``: ``labels int[batch, max_labels]`` or ``(labels, label_mask
    bool[batch, max_labels])``. Masks are True at real entries, anywhere in a row (a
    transcript is its real labels in order). Called outside ``jit``
    (on concrete arrays), it also runs :func:`check_targets`; under ``jit`` an utterance
    whose real labels include one outside ``[0, labels)`` or the blank has a NaN loss.

    Example:
        >>> import jax.numpy as jnp
        >>> logits = jnp.zeros((1, 4, 3))  # uniform over blank and two labels
        >>> # 15 of the 3**4 frame sequences spell [1, 2]: the loss is -log(15 / 81) / 2
        >>> round(float(ctc_loss(logits, jnp.array([[1, 2]]))), 4)
        0.8432
    """
    logits, mask = _split(outputs, "outputs")
    labels, label_mask = _split(targets, "targets")
    if len(logits.shape) != 3 or len(labels.shape) != 2 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"ctc_loss: expected logits [batch, frames, labels] and labels int[batch, max_labels], "
            f"got {shape_str(logits)} and {shape_str(labels)}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"ctc_loss: labels must be integer ids, got {shape_str(labels)}")
    num_classes = logits.shape[-1]
    if not 0 <= blank < num_classes:
        raise ValueError(f"ctc_loss: blank must be in [0, {num_classes}), got {blank!r}")
    mask = jnp.ones(logits.shape[:2], bool) if mask is None else mask
    label_mask = jnp.ones(labels.shape, bool) if label_mask is None else label_mask
    for name, m, like in (("outputs", mask, logits.shape[:2]), ("targets", label_mask, labels.shape)):
        if tuple(m.shape) != tuple(like):
            raise ValueError(
                f"ctc_loss: the {name}' mask must be bool[{','.join(map(str, like))}], got {shape_str(m)}"
            )
    # the real labels in order at the front (a mask with holes, or left-padded), as optax reads them
    order = jnp.argsort(~label_mask, axis=1, stable=True)
    labels, label_mask = (jnp.take_along_axis(a, order, axis=1) for a in (labels, label_mask))
    if not any(isinstance(a, jax.core.Tracer) for a in (mask, labels, label_mask)):
        check_targets(np.asarray(mask).sum(1), labels, np.asarray(label_mask).sum(1), where="ctc_loss",
                      num_classes=num_classes, blank=blank)
    per_utterance = optax.ctc_loss(
        zero_padding(logits.astype(jnp.float32), mask), 1.0 - mask.astype(jnp.float32), labels,
        1.0 - label_mask.astype(jnp.float32), blank_id=blank,
    )
    # Under jit a label out of range (or the blank) cannot raise: its utterance's loss is NaN.
    bad = label_mask & ((labels < 0) | (labels >= num_classes) | (labels == blank))
    per_utterance = jnp.where(bad.any(1), jnp.nan, per_utterance)
    return jnp.mean(per_utterance / jnp.maximum(label_mask.sum(1, dtype=per_utterance.dtype), 1))


def _collapse(path: Sequence[int], blank: int) -> list[int]:
    out, previous = [], None
    for k in path:
        if k != previous and k != blank:
            out.append(int(k))
        previous = k
    return out


def greedy_decode(logits: Any, mask: Any = None, *, blank: int = 0) -> list[list[int]]:
    """The best label of each real frame, repeats merged and blanks dropped, per utterance.

    Shapes: ``logits: [batch, frames, labels]`` (label ``blank`` is the CTC blank),
    ``mask: bool[batch, frames]`` (None: every frame is real).

    Example:
        >>> import jax.numpy as jnp
        >>> best = jnp.array([[1, 1, 0, 1, 2]])              # the best label per frame
        >>> greedy_decode(jnp.eye(3)[best])                  # 1 1 merged; the blank splits 1 _ 1
        [[1, 1, 2]]
    """
    best = np.asarray(jnp.argmax(logits, -1))
    mask = np.ones(best.shape, bool) if mask is None else np.asarray(mask)
    return [_collapse(row[m], blank) for row, m in zip(best, mask)]


def beam_search(log_probs: Any, *, beam_width: int = 8, blank: int = 0, prune: float = -12.0) -> list[int]:
    """Prefix beam search over one utterance's ``log_probs [frames, labels]`` (log-softmax).

    Keeps the ``beam_width`` most probable prefixes, each with the probability of the
    frame sequences that spell it ending in a blank and ending in its last label, so
    that a repeated label is only counted when a blank came between. Labels with a
    log-probability below ``prune`` at a frame are not extended there.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> log_probs = jax.nn.log_softmax(4 * jnp.eye(3)[jnp.array([1, 1, 0, 1, 2])])
        >>> beam_search(log_probs, beam_width=4)
        [1, 1, 2]
    """
    log_probs = np.asarray(log_probs, np.float64)
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}
    for frame in log_probs:
        following: dict[tuple[int, ...], list[float]] = defaultdict(lambda: [-math.inf, -math.inf])
        candidates = [k for k in np.flatnonzero(frame > prune) if k != blank]
        for prefix, (p_blank, p_label) in beams.items():
            total = np.logaddexp(p_blank, p_label)
            entry = following[prefix]
            entry[0] = np.logaddexp(entry[0], total + frame[blank])
            for k in candidates:
                p = frame[k]
                extended = following[(*prefix, int(k))]
                if prefix and prefix[-1] == k:
                    extended[1] = np.logaddexp(extended[1], p_blank + p)  # a new k after a blank
                    entry[1] = np.logaddexp(entry[1], p_label + p)  # the same k held on
                else:
                    extended[1] = np.logaddexp(extended[1], total + p)
        ranked = sorted(following.items(), key=lambda kv: -np.logaddexp(*kv[1]))[:beam_width]
        beams = {prefix: (b, n) for prefix, (b, n) in ranked}
    best = max(beams.items(), key=lambda kv: np.logaddexp(*kv[1]))[0]
    return list(best)


def beam_decode(logits: Any, mask: Any = None, *, beam_width: int = 8, blank: int = 0) -> list[list[int]]:
    """:func:`beam_search` over each utterance's real frames.

    Shapes: ``logits: [batch, frames, labels]``, ``mask: bool[batch, frames]`` (None: every
    frame is real); returns one list of labels per utterance.

    Example:
        >>> import jax.numpy as jnp
        >>> logits = 4 * jnp.eye(3)[jnp.array([[1, 1, 0, 1, 2], [2, 2, 2, 0, 0]])]
        >>> beam_decode(logits, jnp.array([[True] * 5, [True, True, False, False, False]]))
        [[1, 1, 2], [2]]
    """
    log_probs = np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), -1))
    mask = np.ones(log_probs.shape[:2], bool) if mask is None else np.asarray(mask)
    return [beam_search(lp[m], beam_width=beam_width, blank=blank) for lp, m in zip(log_probs, mask)]


def align(reference: Sequence[Any], hypothesis: Sequence[Any]) -> list[tuple[Any, Any]]:
    """A minimum-edit alignment as pairs ``(ref, hyp)``: equal (a match), different (a
    substitution), ``(ref, None)`` (a deletion) or ``(None, hyp)`` (an insertion).

    Example:
        >>> align("abc", "axc"), align("ab", "b")
        ([('a', 'a'), ('b', 'x'), ('c', 'c')], [('a', None), ('b', 'b')])
    """
    ref, hyp = list(reference), list(hypothesis)
    d = np.zeros((len(ref) + 1, len(hyp) + 1), np.int64)
    d[:, 0] = np.arange(len(ref) + 1)
    d[0, :] = np.arange(len(hyp) + 1)
    for i in range(1, len(ref) + 1):
        for j in range(1, len(hyp) + 1):
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1, d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]))
    pairs, i, j = [], len(ref), len(hyp)
    while i or j:
        if i and j and d[i, j] == d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
            pairs.append((ref[i - 1], hyp[j - 1]))
            i, j = i - 1, j - 1
        elif i and d[i, j] == d[i - 1, j] + 1:
            pairs.append((ref[i - 1], None))
            i -= 1
        else:
            pairs.append((None, hyp[j - 1]))
            j -= 1
    return pairs[::-1]


def edit_distance(reference: Sequence[Any], hypothesis: Sequence[Any]) -> int:
    """Substitutions + deletions + insertions that turn ``reference`` into ``hypothesis``.

    Example:
        >>> edit_distance("kitten", "sitting")
        3
    """
    return sum(r != h for r, h in align(reference, hypothesis))


def error_rate(references: Sequence[Sequence[Any]], hypotheses: Sequence[Sequence[Any]]) -> float:
    """Summed edit distance over summed reference length (the label or word error rate).

    Example:
        >>> error_rate([[1, 2, 3], [4]], [[1, 3], [4, 4]])            # 2 edits in 4 labels
        0.5
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"error_rate: {len(references)} references but {len(hypotheses)} hypotheses")
    total = sum(len(r) for r in references)
    if total == 0:
        raise ValueError("error_rate: the references are all empty")
    return sum(edit_distance(r, h) for r, h in zip(references, hypotheses)) / total
