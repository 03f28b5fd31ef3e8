"""Text to ids and back: character, byte and word vocabularies; padded and LM batches.

Everything here is NumPy on the host: tokenising happens once, before training, and
the batches that come out are plain arrays for the compiled step.

Example:
    >>> import fnn
    >>> vocab = fnn.text.CharVocab.from_text("hello world")
    >>> vocab.decode(vocab.encode("hold"))
    'hold'
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import re
import sys
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from fnn.core import is_count, is_seed


def _check_ids(ids: Iterable[int], size: int, what: str) -> np.ndarray:
    """``ids`` as a flat integer array, each in ``[0, size)``."""
    ids = np.asarray(ids if hasattr(ids, "__len__") else list(ids)).reshape(-1)
    if ids.size == 0:  # nothing to decode (a CTC decode that emitted nothing): no dtype to check
        return ids.astype(np.int64)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{what}: ids must be integers, got {ids.dtype}")
    bad = (ids < 0) | (ids >= size)
    if bad.any():
        raise ValueError(
            f"{what}: ids must be in [0, {size}), got {ids[bad][0]} ({int(bad.sum())} out of range)"
        )
    return ids


@dataclasses.dataclass(frozen=True)
class CharVocab:
    """One id per character seen in a text, in sorted order.

    A character not in the vocabulary is an error naming it, unless the vocabulary
    has an ``unknown`` character to map it to.

    Example:
        >>> vocab = CharVocab.from_text("hello")
        >>> vocab.size, vocab.encode("hole").tolist(), vocab.decode([1, 3, 2, 0])
        (4, [1, 3, 2, 0], 'hole')
    """

    chars: str
    unknown: str | None = None

    def __post_init__(self):
        if not self.chars:
            raise ValueError("CharVocab: chars is empty")
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("CharVocab: chars must not repeat")
        if self.unknown is not None and (len(self.unknown) != 1 or self.unknown not in self.chars):
            raise ValueError(f"CharVocab: the unknown character must be one of chars, got {self.unknown!r}")

    @classmethod
    def from_text(cls, text: str, unknown: str | None = None) -> CharVocab:
        if unknown is not None and len(unknown) != 1:
            raise ValueError(f"CharVocab: the unknown character must be one character, got {unknown!r}")
        chars = set(text) | ({unknown} if unknown is not None else set())
        if not chars:
            raise ValueError("CharVocab.from_text: the text is empty")
        return cls("".join(sorted(chars)), unknown)

    @property
    def size(self) -> int:
        return len(self.chars)

    @functools.cached_property
    def _table(self) -> tuple[np.ndarray, np.ndarray]:
        """The code points in increasing order, and each one's id."""
        codes = np.array([ord(c) for c in self.chars], np.int64)
        order = np.argsort(codes)
        return codes[order], order.astype(np.int32)

    def encode(self, text: str) -> np.ndarray:
        """``int32[len(text)]``."""
        # surrogatepass: a lone surrogate (from JSON's escapes) is a character like any other
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32).astype(np.int64)
        sorted_codes, ids = self._table
        slot = np.minimum(np.searchsorted(sorted_codes, codes), len(sorted_codes) - 1)
        known = sorted_codes[slot] == codes
        if not known.all():
            if self.unknown is None:
                position = int(np.argmin(known))
                raise ValueError(
                    f"CharVocab: character {text[position]!r} at position {position} is not in the vocabulary"
                )
            return np.where(known, ids[slot], self.chars.index(self.unknown)).astype(np.int32)
        return ids[slot]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in _check_ids(ids, self.size, "CharVocab"))


@dataclasses.dataclass(frozen=True)
class ByteVocab:
    """The 256 byte values of a UTF-8 encoding: every text encodes, nothing is unknown (a
    lone surrogate, which UTF-8 cannot hold, is encoded as the three bytes of its code point
    all the same, and decodes as replacement characters).

    Example:
        >>> ByteVocab().encode("é").tolist(), ByteVocab().decode([195, 169])
        ([195, 169], 'é')
    """

    size: int = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8", "surrogatepass"), np.uint8).astype(np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(_check_ids(ids, 256, "ByteVocab").astype(np.uint8)).decode("utf-8", errors="replace")


@functools.cache
def _word_pattern() -> re.Pattern:
    """Words: runs of letters and digits in any script, with the combining marks that follow
    them (a Devanagari vowel sign, a decomposed accent) and inner apostrophes; every other
    character but white space is a token of its own. Python's ``\\w`` leaves the marks out,
    so their class is built from the Unicode database (once, on first use)."""
    spans: list[list[int]] = []
    for code in range(sys.maxunicode + 1):
        if unicodedata.category(chr(code)).startswith("M"):
            if spans and spans[-1][1] == code - 1:
                spans[-1][1] = code
            else:
                spans.append([code, code])

    def chars(spans: list[list[int]]) -> str:
        return "[" + "".join(f"\\U{low:08x}-\\U{high:08x}" for low, high in spans) + "]"

    # the marks beyond the first 2**16 code points only where such a character is (twice as fast)
    marks = (f"(?:{chars([s for s in spans if s[1] < 2**16])}"
             f"|(?=[\\U00010000-\\U0010ffff]){chars([s for s in spans if s[0] >= 2**16])})")
    word = rf"[^\W_]+(?:{marks}+[^\W_]*)*"  # marks and letters are disjoint: no backtracking
    return re.compile(rf"{word}(?:'{word})*|[^\s]")


def words(text: str) -> list[str]:
    """Lower-cased words (with inner apostrophes and combining marks) and punctuation marks,
    in order. The text is put in Unicode's composed form (NFC) first, so an accent typed as
    a letter plus a combining mark reads as the accented letter.

    Example:
        >>> words("Don't panic, Arthur!")
        ["don't", 'panic', ',', 'arthur', '!']
        >>> words("Café naïve") == words("Cafe\\u0301 nai\\u0308ve") == ['café', 'naïve']
        True
        >>> words("नमस्ते दुनिया")
        ['नमस्ते', 'दुनिया']
    """
    return _word_pattern().findall(unicodedata.normalize("NFC", text.lower()))


PAD, UNKNOWN = "<pad>", "<unk>"


@dataclasses.dataclass(frozen=True)
class WordVocab:
    """The most frequent words of a corpus; id 0 is padding, id 1 any other word.

    Example:
        >>> vocab = WordVocab.from_texts(["the cat sat", "the dog"], max_size=4)
        >>> vocab.tokens
        ('<pad>', '<unk>', 'the', 'cat')
        >>> vocab.encode("the cat ran").tolist(), vocab.decode([2, 3, 1])
        ([2, 3, 1], 'the cat <unk>')
    """

    tokens: tuple[str, ...]

    def __post_init__(self):
        if self.tokens[:2] != (PAD, UNKNOWN):
            raise ValueError(f"WordVocab: tokens must start with {PAD!r}, {UNKNOWN!r}")

    @classmethod
    def from_texts(cls, texts: Iterable[str], max_size: int = 10_000, min_count: int = 1) -> WordVocab:
        """Words ordered by frequency (ties alphabetically), at most ``max_size`` ids in all."""
        if max_size < 3:
            raise ValueError(f"WordVocab: max_size must be >= 3 (padding, unknown, one word), got {max_size}")
        counts = collections.Counter(w for text in texts for w in words(text))
        ranked = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls((PAD, UNKNOWN, *ranked[: max_size - 2]))

    @property
    def size(self) -> int:
        return len(self.tokens)

    @functools.cached_property
    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.tokens)}

    def encode(self, text: str) -> np.ndarray:
        index = self.index
        return np.array([index.get(w, 1) for w in words(text)], np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.tokens[i] for i in _check_ids(ids, self.size, "WordVocab") if i != 0)


def pad(
    sequences: Sequence[np.ndarray], length: int | None = None, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int32[n, length], mask bool[n, length])``: right-padded, longer ones cut.

    ``length`` defaults to the longest sequence. Empty sequences are an error: they
    have no step to predict from.

    Example:
        >>> ids, mask = pad([np.array([5, 6, 7]), np.array([8])])
        >>> ids.tolist(), mask.sum(1).tolist()
        ([[5, 6, 7], [8, 0, 0]], [3, 1])
    """
    if not len(sequences):
        raise ValueError("pad: no sequences")
    lengths = np.array([len(s) for s in sequences])
    if (lengths == 0).any():
        raise ValueError(f"pad: sequence {int(np.argmin(lengths))} is empty")
    for row, s in enumerate(sequences):
        _check_int32(f"pad: sequence {row}", s)
    length = int(lengths.max()) if length is None else length
    ids = np.full((len(sequences), length), pad_id, np.int32)
    for row, s in enumerate(sequences):
        ids[row, : min(len(s), length)] = s[:length]
    return ids, np.arange(length) < lengths[:, None]


def _check_stream(what: str, ids: Any, batch_size: Any, length: Any) -> np.ndarray:
    """``ids`` as a 1-d array long enough for one window; ``batch_size`` and ``length``
    positive ints."""
    for name, n in (("batch_size", batch_size), ("length", length)):
        if not is_count(n):
            raise ValueError(f"{what}: {name} must be a positive int, got {n!r}")
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) < length + 1:
        raise ValueError(f"{what}: need a 1-d stream of at least {length + 1} ids, got shape {ids.shape}")
    _check_int32(f"{what}: the stream", ids)
    return ids


def _check_int32(what: str, ids: Any) -> None:
    """A ``TypeError`` unless ``ids`` are integers, a ``ValueError`` unless they fit the int32
    batches made of them."""
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{what}: ids must be integers, got {ids.dtype}")
    low, high = (ids.min(), ids.max()) if ids.size else (0, 0)
    if low < -(2**31) or high >= 2**31:
        raise ValueError(f"{what}: ids must fit int32, got {low if low < -(2**31) else high}")


def lm_windows(
    ids: np.ndarray, batch_size: int, length: int, *, seed: int = 0, steps: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Random windows of a token stream for next-token prediction: ``(x, y)``, both
    ``int32[batch_size, length]`` with ``y[:, t] = x[:, t + 1]`` in the stream.

    Yields ``steps`` batches, or forever when ``steps`` is None.

    Example:
        >>> import numpy as np
        >>> x, y = next(lm_windows(np.arange(20), batch_size=2, length=4, seed=0))
        >>> x.tolist(), y.tolist()
        ([[13, 14, 15, 16], [10, 11, 12, 13]], [[14, 15, 16, 17], [11, 12, 13, 14]])
    """
    ids = _check_stream("lm_windows", ids, batch_size, length)
    if not is_seed(seed):
        raise ValueError(f"lm_windows: seed must be an int in [0, 2**32), got {seed!r}")
    rng = np.random.default_rng(seed)
    offsets = np.arange(length + 1)
    count = 0
    while steps is None or count < steps:
        starts = rng.integers(0, len(ids) - length, batch_size)
        window = ids[starts[:, None] + offsets]
        yield window[:, :-1].astype(np.int32), window[:, 1:].astype(np.int32)
        count += 1


def lm_loader(ids: np.ndarray, batch_size: int, length: int, *, seed: int, steps: int) -> Any:
    """``lm_windows`` as a ``grain.MapDataset`` of ``steps`` batches: batch ``k`` holds
    windows at random starts drawn from ``(seed, k)``, so any batch can be read on its own
    (what a resumed run needs; see ``fnn.loop``).

    Example:
        >>> data = lm_loader(np.arange(100), 4, 8, seed=0, steps=10)
        >>> x, y = data[3]
        >>> len(data), x.shape, bool((y == x + 1).all())
        (10, (4, 8), True)
    """
    import grain

    ids = _check_stream("lm_loader", ids, batch_size, length)
    if not is_seed(seed):
        raise ValueError(f"lm_loader: seed must be an int in [0, 2**32), got {seed!r}")
    if not is_count(steps):
        raise ValueError(f"lm_loader: steps must be a positive int, got {steps!r}")
    steps = int(steps)
    offsets = np.arange(length + 1)

    def batch(k: int) -> tuple[np.ndarray, np.ndarray]:
        starts = np.random.default_rng([seed, int(k)]).integers(0, len(ids) - length, batch_size)
        window = ids[starts[:, None] + offsets]
        return window[:, :-1].astype(np.int32), window[:, 1:].astype(np.int32)

    return grain.MapDataset.range(steps).map(batch)


def lm_streams(ids: np.ndarray, batch_size: int, length: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Consecutive windows of ``batch_size`` parallel streams, for truncated backpropagation
    through time: row ``b`` of batch ``k + 1`` continues row ``b`` of batch ``k``.

    The stream is cut into ``batch_size`` equal parts (the remainder dropped); one pass.

    Example:
        >>> import numpy as np
        >>> for x, y in lm_streams(np.arange(14), batch_size=2, length=3):
        ...     print(x.tolist(), y.tolist())
        [[0, 1, 2], [6, 7, 8]] [[1, 2, 3], [7, 8, 9]]
        [[3, 4, 5], [9, 10, 11]] [[4, 5, 6], [10, 11, 12]]
    """
    ids = _check_stream("lm_streams", ids, batch_size, length)
    per_stream = (len(ids) - 1) // batch_size
    if per_stream < length:
        raise ValueError(f"lm_streams: {len(ids)} ids are too few for {batch_size} streams of {length} steps")
    x = ids[: batch_size * per_stream].reshape(batch_size, per_stream)
    y = ids[1 : batch_size * per_stream + 1].reshape(batch_size, per_stream)
    for start in range(0, per_stream - length + 1, length):
        yield x[:, start : start + length].astype(np.int32), y[:, start : start + length].astype(np.int32)
