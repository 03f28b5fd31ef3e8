"""Speech synthesised offline with eSpeak NG: spoken command words and digit strings.

fnn's speech experiments train on audio that nobody recorded: the ``espeakng-loader``
wheel carries the eSpeak NG formant synthesiser (``libespeak-ng``) and its voice data,
and :class:`Synthesizer` drives the library's C API through ``ctypes``. A *voice* is an
accent (``en``, ``en-us``, ``en-gb-scotland``...) with a variant (``m3``, ``f2``,
``klatt``...): different vocal tracts and pronunciations. Each utterance is spoken at its
own rate and pitch, then augmented with a gain, a time shift and additive noise at a
chosen signal-to-noise ratio. Every random choice comes from a seed, so a dataset is a
pure function of its :class:`SpeechSpec`; :func:`dataset` caches it on disk under a hash
of that spec and regenerates a cache file that is missing, unreadable or corrupt.

Example:
    >>> utterances = dataset(SpeechSpec(task="commands", voices=(("en-us", "m1"),), copies=1,
    ...                                 words=("yes", "no")), cache_dir=None)
    >>> utterances.transcripts, utterances.sample_rate
    (('yes', 'no'), 16000)
"""

from __future__ import annotations

import _ctypes
import ctypes
import dataclasses
import glob
import hashlib
import json
import math
import os
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fnn import audio, data
from fnn.config import ConfigError, check_at_least, check_seeds
from fnn.core import is_count, is_real

COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Connected digit strings say 0 as "zero" or "oh", as people do; their symbols are 0-9 and o.
DIGIT_WORDS = {**{str(i): w for i, w in enumerate(DIGITS)}, "o": "oh"}
DIGIT_SYMBOLS = "0123456789o"
_DIGIT_P = np.array([0.5] + [1.0] * 9 + [0.5]) / 10  # 0 is said "zero" or "oh" equally often

ACCENTS = ("en", "en-us", "en-029", "en-gb-scotland", "en-gb-x-rp", "en-us-nyc", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd")
# Variants (vocal tracts); the test voices use variants no training voice uses.
TRAIN_VARIANTS = ("m1", "m2", "m4", "m5", "m6", "f1", "f3", "f4", "klatt", "klatt3", "Andy", "Annie",
                  "max", "linda", "steph", "edward")
TEST_VARIANTS = ("m3", "m7", "f2", "f5", "klatt2", "Alex")
SAMPLE_RATE = 16_000  # the rate fnn resamples eSpeak's 22,050 Hz output to
STALE_PART_S = 3600  # a part file of the cache this old was left by a killed save, not one writing


class SpeechError(ValueError):
    """Synthesis failed or a speech dataset is unusable; the message says which utterance.

    Example:
        >>> SpeechSpec(task="commands", voices=())
        Traceback (most recent call last):
            ...
        fnn.speech.SpeechError: a speech dataset needs at least one voice
        >>> with Synthesizer() as synth:
        ...     synth.say("yes", "en-us+nobody")
        Traceback (most recent call last):
            ...
        fnn.speech.SpeechError: eSpeak NG has no voice variant 'nobody' (in 'en-us+nobody')
    """


# -- eSpeak NG through ctypes --------------------------------------------------------------

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class Synthesizer:
    """A private instance of the eSpeak NG library, initialised in synchronous mode.

    ``say(text, voice, rate, pitch)`` returns int16 samples at ``sample_rate`` (22,050 Hz).
    Two things make eSpeak NG's output vary from run to run, and both are pinned here:

    * The library keeps state in globals that carry from one utterance to the next (the
      same call gives slightly different audio the second time) and that
      ``espeak_Terminate`` does not reset. So each ``Synthesizer`` loads its own copy of
      the library, from a temporary file, which starts from the library's initial state.
    * Variants with breath noise (``f2``, ``f3``, ``f5``...) draw it from the library's
      random generator, which it seeds from the clock. ``say`` reseeds it with ``seed``
      (``espeak_ng_SetRandSeed``) before every utterance.

    So the same calls in the same order give the same audio, in any process. Close it
    (or use it as a context manager) to unload the copy.

    Example:
        >>> import numpy as np
        >>> with Synthesizer() as synth:
        ...     audio = synth.say("yes", "en-us+m3", rate=150, pitch=40, seed=0)
        ...     synth.sample_rate, audio.dtype, audio.ndim, 0.1 < len(audio) / synth.sample_rate < 2
        (22050, dtype('int16'), 1, True)
        >>> with Synthesizer() as synth:                 # a fresh copy says it the same way
        ...     np.array_equal(synth.say("yes", "en-us+m3", rate=150, pitch=40, seed=0), audio)
        True
    """

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as error:  # pragma: no cover - a dependency of fnn
            raise SpeechError("speech synthesis needs the espeakng-loader package") from error
        with tempfile.TemporaryDirectory() as directory:  # a new path: a new, private copy
            private = Path(directory) / "libespeak-ng.so"
            shutil.copyfile(espeakng_loader.get_library_path(), private)
            self.lib = ctypes.CDLL(str(private), mode=os.RTLD_LOCAL)
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                          ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self.lib.espeak_Info.restype = ctypes.c_char_p
        self.lib.espeak_Info.argtypes = [ctypes.c_void_p]
        data_path = espeakng_loader.get_data_path()
        self.sample_rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), 0)
        if self.sample_rate <= 0:
            raise SpeechError(f"eSpeak NG failed to initialise with its data at {data_path}")
        self.version = self.lib.espeak_Info(None).decode()
        self.variants = frozenset(os.listdir(Path(data_path) / "voices" / "!v"))
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept alive as long as the library may call it
        self.lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Terminate this copy of the library and unload it."""
        if self.lib is not None:
            self.lib.espeak_Terminate()
            _ctypes.dlclose(self.lib._handle)
            self.lib = None

    def __enter__(self) -> Synthesizer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _collect(self, wav, count, events) -> int:
        if wav and count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0  # go on

    def has_voice(self, accent: str, variant: str = "") -> bool:
        """Whether eSpeak NG has the accent ``accent`` (``"en-us"``) and the variant ``variant``
        (``"m3"``; empty: any), as :meth:`say` would need them.

        Example:
            >>> with Synthesizer() as synth:
            ...     synth.has_voice("en-us", "m3"), synth.has_voice("xx-nowhere"), synth.has_voice("en", "x")
            (True, False, False)
        """
        if "+" in accent or (variant and variant not in self.variants):
            return False
        with self._lock:
            return self.lib.espeak_SetVoiceByName(accent.encode()) == 0

    def say(self, text: str, voice: str, *, rate: int = 175, pitch: int = 50, seed: int = 0) -> np.ndarray:
        """``text`` spoken by ``voice`` (``"en-us+m3"``) at ``rate`` words/min and ``pitch`` (0-100),
        with the voice's breath noise (if it has any) drawn from ``seed``."""
        if not text.strip():
            raise SpeechError(f"nothing to say: the text {text!r} is empty")
        variant = voice.partition("+")[2]
        if variant and variant not in self.variants:  # eSpeak would quietly use another
            raise SpeechError(f"eSpeak NG has no voice variant {variant!r} (in {voice!r})")
        with self._lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise SpeechError(f"eSpeak NG has no voice {voice!r}")
            self.lib.espeak_SetParameter(_RATE, int(rate), 0)
            self.lib.espeak_SetParameter(_PITCH, int(pitch), 0)
            self.lib.espeak_ng_SetRandSeed(int(seed))
            self._chunks = []
            encoded = text.encode()
            status = self.lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                                           None, None)
            if status != 0 or self.lib.espeak_Synchronize() != 0:
                raise SpeechError(f"eSpeak NG failed to say {text!r} with voice {voice!r} (status {status})")
            chunks, self._chunks = self._chunks, []
        if not chunks:
            raise SpeechError(f"eSpeak NG produced no audio for {text!r} with voice {voice!r}")
        return np.concatenate(chunks)


def resample(audio: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """``audio`` (float) at ``new_rate``, by polyphase filtering (SciPy).

    Example:
        >>> import numpy as np
        >>> resample(np.zeros(22050, np.float32), 22050, 16000).shape      # one second
        (16000,)
    """
    from scipy.signal import resample_poly

    for name, value in (("rate", rate), ("new_rate", new_rate)):
        if not is_count(value):
            raise SpeechError(f"resample: {name} must be a positive int of samples per second, got {value!r}")
    g = math.gcd(rate, new_rate)
    return resample_poly(audio, new_rate // g, rate // g).astype(np.float32)


# -- augmentation --------------------------------------------------------------------------


def add_noise(audio: np.ndarray, snr_db: float | None, rng: np.random.Generator) -> np.ndarray:
    """``audio`` plus white noise ``snr_db`` decibels below the signal's power (None: clean).

    Example:
        >>> import numpy as np
        >>> clean = np.ones(1000, np.float32)
        >>> noisy = add_noise(clean, 20.0, np.random.default_rng(0))
        >>> round(float(10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2))))
        20
    """
    if snr_db is None:
        return audio
    if not (is_real(snr_db) and math.isfinite(snr_db)):
        raise SpeechError(f"snr_db must be a finite number of decibels or None (clean), got {snr_db}")
    power = float(np.mean(audio**2))
    noise = rng.standard_normal(audio.shape).astype(np.float32)
    return audio + noise * np.float32(np.sqrt(power / 10 ** (snr_db / 10)))


def augment(audio: np.ndarray, rng: np.random.Generator, spec: SpeechSpec) -> np.ndarray:
    """Random gain, a leading silence of up to ``spec.max_shift`` seconds, then noise.

    Example:
        >>> import numpy as np
        >>> spec = SpeechSpec(voices=(("en", "m1"),), snr_db=(None,), gain=(0.5, 0.5), max_shift=0.1)
        >>> out = augment(np.ones(1000, np.float32), np.random.default_rng(0), spec)
        >>> shift = len(out) - 1000                              # up to 0.1 s * 16,000 samples
        >>> out.dtype, 0 <= shift <= 1600, bool((out[:shift] == 0).all()), bool((out[shift:] == 0.5).all())
        (dtype('float32'), True, True, True)
        >>> noisy = augment(np.ones(1000, np.float32), np.random.default_rng(0),
        ...                 SpeechSpec(voices=(("en", "m1"),), snr_db=(10.0,)))
        >>> bool((noisy[:len(noisy) - 1000] != 0).any())         # the noise covers the silence too
        True
    """
    gain = rng.uniform(*spec.gain)
    shift = int(rng.integers(0, int(spec.max_shift * SAMPLE_RATE) + 1))
    audio = np.concatenate([np.zeros(shift, np.float32), audio * np.float32(gain)])
    snr = spec.snr_db[int(rng.integers(len(spec.snr_db)))]
    return add_noise(audio, snr, rng).astype(np.float32)


# -- datasets ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SpeechSpec:
    """Everything that decides a synthesised dataset; its hash names the cache file.

    Args:
        task: ``"commands"`` (one word per utterance from ``words``) or ``"digits"``
            (connected digit strings of ``min_digits`` to ``max_digits`` digits).
        voices: ``(accent, variant)`` pairs that speak.
        copies: utterances per word and voice (commands) or strings per voice (digits).
        rate, pitch: ranges the rate (words/min) and pitch (0-100) are drawn from.
        snr_db: noise levels drawn from per utterance; ``None`` is clean.
        gain: range of the random gain.
        max_shift: the longest leading silence, in seconds.
        seed: the seed of every random choice.

    Example:
        >>> import dataclasses
        >>> spec = SpeechSpec(task="commands", voices=(("en-us", "m1"),), copies=1, words=("yes", "no"))
        >>> spec.rate, spec.snr_db, len(spec.key())
        ((130, 230), (None, 30.0, 20.0, 10.0), 16)
        >>> spec.key() == SpeechSpec(task="commands", voices=(("en-us", "m1"),), words=("yes", "no")).key()
        True
        >>> dataclasses.replace(spec, seed=1).key() == spec.key()    # another seed: another dataset
        False
        >>> SpeechSpec(task="digits", voices=(("en", "m1"),), min_digits=3, max_digits=2)
        Traceback (most recent call last):
            ...
        fnn.speech.SpeechError: need 1 <= min_digits <= max_digits, got 3, 2
    """

    task: str = "commands"
    voices: tuple[tuple[str, str], ...] = ()
    copies: int = 1
    words: tuple[str, ...] = COMMANDS + DIGITS
    min_digits: int = 1
    max_digits: int = 7
    rate: tuple[int, int] = (130, 230)
    pitch: tuple[int, int] = (25, 75)
    snr_db: tuple[float | None, ...] = (None, 30.0, 20.0, 10.0)
    gain: tuple[float, float] = (0.25, 1.0)
    max_shift: float = 0.1
    seed: int = 0

    def __post_init__(self):
        if self.task not in ("commands", "digits"):
            raise SpeechError(f"task must be 'commands' or 'digits', got {self.task!r}")
        if not self.voices:
            raise SpeechError("a speech dataset needs at least one voice")
        if self.copies < 1:
            raise SpeechError(f"copies must be at least 1, got {self.copies}")
        if not 1 <= self.min_digits <= self.max_digits:
            raise SpeechError(f"need 1 <= min_digits <= max_digits, got {self.min_digits}, {self.max_digits}")
        if self.task == "commands" and not self.words:
            raise SpeechError("the commands task needs at least one word")
        for name, low_bound, high_bound in (("rate", 1, None), ("pitch", 0, 100), ("gain", 1e-6, None)):
            pair = getattr(self, name)
            if (len(pair) != 2 or not low_bound <= pair[0] <= pair[1]
                    or (high_bound is not None and pair[1] > high_bound)):
                where = f"[{low_bound}, {high_bound}]" if high_bound is not None else f">= {low_bound}"
                raise SpeechError(f"{name} must be a range (low, high) with low <= high, {where}, got {pair}")
        if self.task == "commands" and not all(isinstance(w, str) and w.strip() for w in self.words):
            raise SpeechError(f"every word must be a non-empty string, got {self.words}")
        if not (is_real(self.max_shift) and 0 <= self.max_shift < math.inf):
            raise SpeechError(f"max_shift must be a finite number of seconds >= 0, got {self.max_shift}")
        if not self.snr_db:
            raise SpeechError("snr_db needs at least one noise level (None is clean)")
        if not all(snr is None or (is_real(snr) and math.isfinite(snr)) for snr in self.snr_db):
            raise SpeechError(
                f"every snr_db must be a finite number of decibels or None (clean), got {self.snr_db}")

    def key(self) -> str:
        """A short hash of the spec and the synthesiser's version: the cache file's name."""
        from importlib.metadata import version

        fields = json.dumps(dataclasses.asdict(self), sort_keys=True)
        synthesizer = version("espeakng-loader")  # the wheel fixes the library and its voices
        return hashlib.sha256(f"{fields}|{synthesizer}|v2".encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Utterances:
    """Variable-length audio with its transcripts and speakers.

    ``audio`` is every utterance's float32 samples end to end; utterance ``i`` is
    ``audio[offsets[i]:offsets[i + 1]]``. A transcript is a word (commands) or a
    string of digit symbols such as ``"30o7"`` (digits; ``o`` is "oh").

    Example:
        >>> import numpy as np
        >>> utterances = Utterances(np.arange(1, 6, dtype=np.float32), np.array([0, 2, 5]),
        ...                         ("yes", "no"), ("en+m1", "en+f1"), 16000)
        >>> len(utterances), utterances[1].tolist(), utterances.lengths.tolist()
        (2, [3.0, 4.0, 5.0], [2, 3])
        >>> audio, mask = utterances.padded()
        >>> audio.tolist(), mask.tolist()
        ([[1.0, 2.0, 0.0], [3.0, 4.0, 5.0]], [[True, True, False], [True, True, True]])
        >>> utterances.padded(2)[0].tolist()
        [[1.0, 2.0], [3.0, 4.0]]
    """

    audio: np.ndarray
    offsets: np.ndarray
    transcripts: tuple[str, ...]
    voices: tuple[str, ...]
    sample_rate: int

    def __len__(self) -> int:
        return len(self.transcripts)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.audio[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def padded(self, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(audio float32[n, length], mask bool[n, length])``, zero-padded or cut at ``length``
        samples (default: the longest)."""
        length = int(self.lengths.max()) if length is None else length
        out = np.zeros((len(self), length), np.float32)
        for i in range(len(self)):
            clip = self[i][:length]
            out[i, : len(clip)] = clip
        return out, np.arange(length) < np.minimum(self.lengths, length)[:, None]


def _scripts(spec: SpeechSpec, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """``(voice, transcript, text to say)`` of every utterance, in a seeded order."""
    scripts = []
    for accent, variant in spec.voices:
        voice = f"{accent}+{variant}"
        for _ in range(spec.copies):
            if spec.task == "commands":
                scripts += [(voice, word, word) for word in spec.words]
            else:
                n = int(rng.integers(spec.min_digits, spec.max_digits + 1))
                symbols = "".join(rng.choice(list(DIGIT_SYMBOLS), n, p=_DIGIT_P))
                scripts.append((voice, symbols, " ".join(DIGIT_WORDS[s] for s in symbols)))
    return scripts


def synthesize(spec: SpeechSpec) -> Utterances:
    """Generate the dataset of ``spec``, with a fresh
    :class:`Synthesizer` and each utterance's noise seeded from ``spec.seed``, so the same
    spec always gives the same audio.

    Example:
        >>> import numpy as np
        >>> spec = SpeechSpec(task="digits", voices=(("en", "m1"),), copies=3, max_digits=3)
        >>> utterances = synthesize(spec)
        >>> utterances.transcripts, utterances.voices, utterances.sample_rate
        (('300', '89', '75'), ('en+m1', 'en+m1', 'en+m1'), 16000)
        >>> utterances.audio.dtype, np.array_equal(synthesize(spec).audio, utterances.audio)
        (dtype('float32'), True)
    """
    rng = np.random.default_rng(spec.seed)
    clips, transcripts, voices = [], [], []
    with Synthesizer() as synth:
        missing = [f"{a}+{v}" for a, v in spec.voices if not synth.has_voice(a, v)]
        if missing:  # found before any utterance is made
            raise SpeechError(f"eSpeak NG has no voice {missing[0]!r} (the accent or the variant is unknown)")
        for voice, transcript, text in _scripts(spec, rng):
            rate = int(rng.integers(spec.rate[0], spec.rate[1] + 1))
            pitch = int(rng.integers(spec.pitch[0], spec.pitch[1] + 1))
            seed = int(rng.integers(2**31))
            raw = synth.say(text, voice, rate=rate, pitch=pitch, seed=seed).astype(np.float32) / 32768.0
            clips.append(augment(resample(raw, synth.sample_rate, SAMPLE_RATE), rng, spec))
            transcripts.append(transcript)
            voices.append(voice)
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in clips])]).astype(np.int64)
    return Utterances(np.concatenate(clips), offsets, tuple(transcripts), tuple(voices), SAMPLE_RATE)


def default_cache_dir() -> Path:
    """``$FNN_CACHE`` or ``~/.cache/fnn``, with ``speech/`` below it (``fnn.data.cache_dir``).

    Example:
        >>> import os
        >>> from pathlib import Path
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"FNN_CACHE": "my-cache"}):
        ...     str(default_cache_dir())
        'my-cache/speech'
        >>> with mock.patch.dict(os.environ, {"FNN_CACHE": ""}):
        ...     default_cache_dir() == Path.home() / ".cache" / "fnn" / "speech"
        True
    """
    return data.cache_dir("speech")


def save(utterances: Utterances, path: Path, key: str | None = None) -> None:
    """Write ``utterances`` to ``path`` (.npz) atomically, with a SHA-256 of the arrays inside
    and ``key`` (:meth:`SpeechSpec.key`, when given) to say which dataset it holds.

    A write that fails leaves nothing behind: not the file, nor a part of it. A part that a
    killed process left is removed by the next save of the same file, once it is an hour old.

    Example:
        >>> import pathlib, tempfile, numpy as np
        >>> utterances = Utterances(np.arange(5, dtype=np.float32), np.array([0, 2, 5]),
        ...                         ("yes", "no"), ("en/m1", "en/f1"), 16000)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     save(utterances, pathlib.Path(d) / "u.npz")
        ...     back = load(pathlib.Path(d) / "u.npz")
        >>> back.transcripts, back.voices, back.offsets.tolist(), back[1].tolist()
        (('yes', 'no'), ('en/m1', 'en/f1'), [0, 2, 5], [2.0, 3.0, 4.0])
    """
    arrays = {"audio": utterances.audio, "offsets": utterances.offsets}
    meta = {"transcripts": list(utterances.transcripts), "voices": list(utterances.voices),
            "sample_rate": utterances.sample_rate, "sha256": _digest(arrays), "key": key}
    path.parent.mkdir(parents=True, exist_ok=True)
    f = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with f:
            np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
        os.replace(f.name, path)
    except BaseException:
        Path(f.name).unlink(missing_ok=True)
        raise
    for part in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # left by a killed save
        try:
            if time.time() - part.stat().st_mtime > STALE_PART_S:
                part.unlink()
        except OSError:  # gone already, or not ours to remove
            pass


def load(path: Path, key: str | None = None) -> Utterances:
    """Read a file written by :func:`save`; raises :class:`SpeechError` if it is unreadable,
    its arrays do not match their checksum, do not fit together (float32 audio, offsets that
    rise from 0 to its end, one per transcript and voice), or, given ``key``, it holds another
    dataset than the spec of that key (another key, or a rate other than ``SAMPLE_RATE``).

    Example:
        A round trip is :func:`save`'s example; a file that is not one is refused:

        >>> import pathlib, tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = (pathlib.Path(d) / "bad.npz").write_bytes(b"not a zip file")
        ...     load(pathlib.Path(d) / "bad.npz")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        fnn.speech.SpeechError: speech cache .../bad.npz is unreadable: ...
    """
    try:
        with open(path, "rb") as file, np.load(file) as f:
            meta = json.loads(f["meta"].tobytes().decode())
            arrays = {"audio": f["audio"], "offsets": f["offsets"]}
    except Exception as error:
        raise SpeechError(f"speech cache {path} is unreadable: {error}") from error
    problem = _problem(meta, arrays, key)
    if problem:
        raise SpeechError(f"speech cache {path} {problem}")
    return Utterances(arrays["audio"], arrays["offsets"], tuple(meta["transcripts"]), tuple(meta["voices"]),
                      meta["sample_rate"])


def _problem(meta: Any, arrays: dict[str, np.ndarray], key: str | None) -> str | None:
    """What is wrong with a cache file's contents, or None."""
    if not isinstance(meta, dict):
        return f"is corrupt: its metadata is a {type(meta).__name__}, not an object"
    for name in ("transcripts", "voices"):
        names = meta.get(name)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return f"is corrupt: its metadata has no list of {name}"
    rate = meta.get("sample_rate")
    if not is_count(rate):
        return f"is corrupt: its sample rate is {rate!r}"
    if _digest(arrays) != meta.get("sha256"):
        return "is corrupt: its arrays do not match their checksum"
    audio, offsets = arrays["audio"], arrays["offsets"]
    n = len(meta["transcripts"])
    if audio.dtype != np.float32 or audio.ndim != 1:
        return f"is corrupt: its audio is {audio.dtype}{list(audio.shape)}, not float32[samples]"
    wide = offsets.astype(np.int64) if np.issubdtype(offsets.dtype, np.integer) else None  # no wrapping
    if (wide is None or offsets.shape != (n + 1,) or len(meta["voices"]) != n or wide[0] != 0
            or wide[-1] != len(audio) or (wide < 0).any() or (np.diff(wide) < 0).any()):
        return (f"is corrupt: its {n} transcripts, {len(meta['voices'])} voices and offsets "
                f"{offsets.dtype}{list(offsets.shape)} do not divide its {len(audio)} samples")
    if key is not None and meta.get("key") != key:
        held = meta.get("key")
        return (f"holds another dataset (spec key {held!r}, not {key!r})" if held is not None
                else "was written without its spec's key (by an older fnn)")
    if key is not None and rate != SAMPLE_RATE:
        return f"holds audio at {rate} Hz, not fnn's {SAMPLE_RATE} Hz"
    return None


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()


def dataset(spec: SpeechSpec, cache_dir: str | Path | None = "default") -> Utterances:
    """The utterances of ``spec``, from the cache when it holds them, else synthesised and cached.

    ``cache_dir``: a directory, ``"default"`` (:func:`default_cache_dir`) or ``None`` (no cache).
    A cache file that cannot be read, fails its checksum or holds another dataset is reported
    with a warning and made again. A cache that cannot be written (a full disk, a read-only
    folder) is reported with a warning, and the synthesised data are returned all the same.

    Example:
        >>> import os, tempfile, numpy as np
        >>> spec = SpeechSpec(task="commands", voices=(("en-us", "m1"),), copies=1, words=("yes", "no"))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     made = dataset(spec, cache_dir=d)               # synthesised and written to d
        ...     cached = dataset(spec, cache_dir=d)             # read back
        ...     os.listdir(d) == [f"commands-{spec.key()}.npz"]
        True
        >>> cached.transcripts, cached.voices, np.array_equal(cached.audio, made.audio)
        (('yes', 'no'), ('en-us+m1', 'en-us+m1'), True)
    """
    if cache_dir is None:
        return synthesize(spec)
    directory = default_cache_dir() if cache_dir == "default" else Path(cache_dir)
    key = spec.key()
    path = directory / f"{spec.task}-{key}.npz"
    try:
        present = path.exists()
    except OSError:  # a folder that cannot be searched: no cache to read, and the save below says so
        present = False
    if present:
        try:
            return load(path, key)
        except SpeechError as error:
            warnings.warn(f"{error}; synthesising it again", stacklevel=2)
    utterances = synthesize(spec)
    try:
        save(utterances, path, key)
    except OSError as error:  # a full disk, a read-only cache, a file where its folder should be
        warnings.warn(f"the speech cache {path} could not be written ({error}); going on without it. "
                      f"Point FNN_CACHE at a writable folder, or turn the cache off (cache_dir=None; "
                      f"data.cache=none in an experiment)", stacklevel=2)
    return utterances


def voices(accents: tuple[str, ...], variants: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Every ``(accent, variant)`` pair.

    Example:
        >>> voices(("en", "en-us"), ("m1", "f1"))
        (('en', 'm1'), ('en', 'f1'), ('en-us', 'm1'), ('en-us', 'f1'))
    """
    return tuple((a, v) for a in accents for v in variants)


def log_mel(n_mels: int) -> audio.LogMel:
    """The speech experiments' front end, ``fnn.audio.LogMel`` at ``SAMPLE_RATE`` with
    ``n_mels`` bands; a ``ConfigError`` naming ``n_mels`` when its filters do not fit the FFT
    (so an experiment's config refuses it before any audio is made).

    Example:
        >>> log_mel(40).n_mels
        40
        >>> log_mel(200)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        fnn.config.ConfigError: n_mels=200: mel_filterbank: 200 mel filters over 257 FFT bins leave ...
    """
    try:
        return audio.LogMel(sample_rate=SAMPLE_RATE, n_mels=n_mels)
    except ValueError as error:
        raise ConfigError(f"n_mels={n_mels}: {error}") from None


@dataclasses.dataclass(frozen=True)
class VoiceSplit:
    """Which voices speak the training and the test utterances (an experiment's ``data``).

    Every accent is spoken with every variant; the test variants are never heard in
    training, so test accuracy measures how a model does on new speakers.

    Args:
        accents, train_variants, test_variants: the voices (see :func:`voices`).
        copies, test_copies: utterances per word or strings per voice, train and test.
        snr_db: noise levels drawn from per utterance (``none``: clean).
        seed: the seed of the synthesis and augmentation (the test set uses ``seed + 1``).
        cache: a directory, ``default`` (the ``speech`` folder of ``$FNN_CACHE`` or
            ``~/.cache/fnn``) or ``none``.

    Example:
        >>> split = VoiceSplit(accents=("en-us",), train_variants=("m1", "f1"), test_variants=("m3",),
        ...                    copies=1, test_copies=1, cache="none")
        >>> train, test = split.datasets("commands", words=("yes", "no"))
        >>> train.transcripts, train.voices
        (('yes', 'no', 'yes', 'no'), ('en-us+m1', 'en-us+m1', 'en-us+f1', 'en-us+f1'))
        >>> test.transcripts, test.voices
        (('yes', 'no'), ('en-us+m3', 'en-us+m3'))
        >>> VoiceSplit(train_variants=("m1", "m3"), test_variants=("m3",))
        Traceback (most recent call last):
            ...
        fnn.config.ConfigError: data: the variants ['m3'] are both training and test voices
    """

    accents: tuple[str, ...] = ACCENTS
    train_variants: tuple[str, ...] = TRAIN_VARIANTS
    test_variants: tuple[str, ...] = TEST_VARIANTS
    copies: int = 2
    test_copies: int = 1
    snr_db: tuple[float | None, ...] = (None, 30.0, 20.0, 10.0)
    seed: int = 0
    cache: str = "default"

    def __post_init__(self):
        check_at_least(self, (("copies", 1), ("test_copies", 1)), prefix="data.")
        check_seeds(self, ["seed"], prefix="data.")
        for name in ("accents", "train_variants", "test_variants", "snr_db"):
            if not getattr(self, name):
                raise ConfigError(f"data.{name} must list at least one, got none")
        shared = sorted(set(self.train_variants) & set(self.test_variants))
        if shared:
            raise ConfigError(f"data: the variants {shared} are both training and test voices")

    def check_voices(self) -> None:
        """A ``ConfigError`` naming the key of an accent or variant that eSpeak NG does not have.
        It loads the library, so the config leaves it to :meth:`datasets`, which calls it first.

        Example:
            >>> VoiceSplit(test_variants=("m3", "nosuch")).check_voices()
            Traceback (most recent call last):
                ...
            fnn.config.ConfigError: data.test_variants: eSpeak NG has no voice variant 'nosuch'
        """
        with Synthesizer() as synth:
            unknown = {"accents": [a for a in self.accents if not synth.has_voice(a)],
                       "train_variants": [v for v in self.train_variants if v not in synth.variants],
                       "test_variants": [v for v in self.test_variants if v not in synth.variants]}
        for key, names in unknown.items():
            if names:
                what = "accent" if key == "accents" else "voice variant"
                raise ConfigError(f"data.{key}: eSpeak NG has no {what} {names[0]!r}")

    def datasets(self, task: str, **spec: Any) -> tuple[Utterances, Utterances]:
        """``(train, test)`` utterances of ``task``; ``spec`` sets other :class:`SpeechSpec` fields.
        Every voice is checked (:meth:`check_voices`) before any utterance is synthesised."""
        self.check_voices()
        train = SpeechSpec(task=task, voices=voices(self.accents, self.train_variants), copies=self.copies,
                           snr_db=self.snr_db, seed=self.seed, **spec)
        test = dataclasses.replace(train, voices=voices(self.accents, self.test_variants),
                                   copies=self.test_copies, seed=self.seed + 1)
        cache = None if self.cache.lower() == "none" else self.cache
        return dataset(train, cache), dataset(test, cache)
