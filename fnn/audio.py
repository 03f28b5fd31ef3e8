"""Audio front end in JAX: framing, a window, the FFT, a mel filterbank and a log.

:class:`LogMel` turns waveforms ``[batch, samples]`` into log-mel spectrograms
``[batch, frames, mels]``, the input most speech models take. It is a layer like any
other (no parameters), so it can sit at the front of a model and run on the device
inside the compiled step, or run once over a dataset with :func:`featurize`. With a
mask of the real samples it returns the masked sequence ``(features, frame_mask)``,
which the recurrent layers and :class:`StackFrames` carry on.

A frame is ``win_length`` samples under a Hann window, every ``hop`` samples, zero-padded
to ``n_fft`` for the FFT; the power spectrum is summed into ``n_mels`` triangular bands
equally spaced on the mel scale (``2595 log10(1 + f / 700)``), and the log is taken of
each band's energy. With ``normalize`` each utterance's bands are shifted and scaled to
zero mean and unit variance over its real frames, which removes the gain of the
recording.

Example:
    >>> import jax.numpy as jnp, fnn
    >>> front = fnn.audio.LogMel(sample_rate=16000)
    >>> audio = jnp.sin(jnp.arange(16000.0) * 2 * jnp.pi * 440 / 16000)[None]  # 1 s of 440 Hz
    >>> front({}, audio).shape
    (1, 98, 40)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core import Layer, ShapeError, shape_str
from fnn.layers._common import positive_int
from fnn.layers.sequence import join_mask, split_mask, zero_padding


def hz_to_mel(hz: Any) -> Any:
    """The mel scale (O'Shaughnessy, 1987): ``2595 log10(1 + hz / 700)``.

    Example:
        >>> round(float(hz_to_mel(1000.0)), 1)
        1000.0
    """
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel: Any) -> Any:
    """The inverse of :func:`hz_to_mel`: ``700 (10 ** (mel / 2595) - 1)``.

    Example:
        >>> round(float(mel_to_hz(hz_to_mel(440.0))), 6)
        440.0
    """
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """``float32[n_fft // 2 + 1, n_mels]``: triangular filters whose centres are equally spaced
    in mels between ``fmin`` and ``fmax`` (default: half the sample rate), each rising to 1
    at its centre frequency (to less where the centre falls between the FFT's bins). A
    filter so narrow that it covers no bin is a ``ValueError``: fewer mels or a longer FFT.

    Example:
        >>> bank = mel_filterbank(512, 40, 16000)
        >>> bank.shape, bool((bank.max(0) > 0.5).all())
        ((257, 40), True)
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"mel_filterbank: need 0 <= fmin < fmax <= sample_rate / 2, got {fmin}, {fmax}")
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)  # the FFT's bins (an odd n_fft stops short of fs / 2)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    low, centre, high = edges[:-2], edges[1:-1], edges[2:]
    rising = (freqs[:, None] - low) / (centre - low)
    falling = (high - freqs[:, None]) / (high - centre)
    bank = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    empty = np.flatnonzero(bank.max(0) == 0)
    if empty.size:
        raise ValueError(
            f"mel_filterbank: {n_mels} mel filters over {n_fft // 2 + 1} FFT bins leave filter "
            f"{empty[0]} (centre {centre[empty[0]]:.0f} Hz) covering no bin; use fewer mels or a larger n_fft"
        )
    return bank


def frame_count(samples: Any, win_length: int, hop: int) -> Any:
    """How many whole frames fit in ``samples`` samples (0 when fewer than ``win_length``).

    Example:
        >>> frame_count([16000, 399], win_length=400, hop=160).tolist()
        [98, 0]
    """
    samples = np.asarray(samples)
    return np.where(samples >= win_length, (samples - win_length) // hop + 1, 0)


@dataclasses.dataclass(frozen=True)
class LogMel(Layer):
    """Log-mel spectrogram of waveforms: ``[batch, samples] -> [batch, frames, n_mels]``.

    Args:
        sample_rate: the audio's rate in Hz; :func:`featurize` refuses audio at another.
        n_fft: FFT size (>= ``win_length``; the frame is zero-padded to it).
        win_length: samples per frame (400 = 25 ms at 16 kHz).
        hop: samples between frame starts (160 = 10 ms at 16 kHz).
        n_mels: mel bands.
        fmin, fmax: the band edges in Hz (``fmax`` None: half the sample rate).
        normalize: per utterance, zero mean and unit variance of each band over real frames.
        floor: energies are clipped below at ``floor`` before the log.

    Shapes: ``audio: float[batch, samples]`` or ``(audio, mask bool[batch, samples])`` ->
    ``float32[batch, frames, n_mels]`` or ``(features, frame_mask bool[batch, frames])``,
    with ``frames = (samples - win_length) // hop + 1``. A frame is real when all its
    samples are; padded frames come out as zeros.

    Example:
        >>> import jax.numpy as jnp
        >>> front_end = LogMel()                              # 25 ms frames every 10 ms at 16 kHz
        >>> front_end({}, jnp.zeros((2, 1600))).shape         # 0.1 s of audio
        (2, 8, 40)
        >>> mask = jnp.arange(1600) < jnp.array([[1600], [800]])
        >>> features, frame_mask = front_end({}, (jnp.zeros((2, 1600)), mask))
        >>> frame_mask.sum(1).tolist()
        [8, 3]
    """

    sample_rate: int = 16_000
    n_fft: int = 512
    win_length: int = 400
    hop: int = 160
    n_mels: int = 40
    fmin: float = 20.0
    fmax: float | None = None
    normalize: bool = True
    floor: float = 1e-6

    def __post_init__(self):
        for field in ("sample_rate", "n_fft", "win_length", "hop", "n_mels"):
            positive_int(self, field, getattr(self, field))
        if self.win_length > self.n_fft:
            raise ValueError(f"LogMel: win_length ({self.win_length}) must not exceed n_fft ({self.n_fft})")
        if not self.floor > 0:
            raise ValueError(f"LogMel: floor must be positive, got {self.floor}")
        mel_filterbank(self.n_fft, self.n_mels, self.sample_rate, self.fmin, self.fmax)  # checks the band

    def frames(self, samples: Any) -> Any:
        """Frames in ``samples`` samples."""
        return frame_count(samples, self.win_length, self.hop)

    def _check(self, x: Any) -> tuple[Any, Any]:
        audio, mask = split_mask(self, x) if isinstance(x, tuple | list) else (x, None)
        if len(audio.shape) != 2 or not jnp.issubdtype(audio.dtype, jnp.floating):
            raise ShapeError(f"LogMel expects float audio [batch, samples], got {shape_str(audio)}")
        if audio.shape[1] < self.win_length:
            raise ShapeError(
                f"LogMel: audio of {audio.shape[1]} samples is shorter than one frame "
                f"({self.win_length} samples, {1000 * self.win_length / self.sample_rate:g} ms)"
            )
        return audio, mask

    def init_params(self, key, x):
        self._check(x)
        return {}

    def forward(self, params, x, *, key=None, train=False):
        audio, mask = self._check(x)
        audio = zero_padding(audio.astype(jnp.float32), mask)  # padding reaches no frame's gradient
        n_frames = int(self.frames(audio.shape[1]))
        starts = jnp.arange(n_frames) * self.hop
        frames = audio[:, starts[:, None] + jnp.arange(self.win_length)[None, :]]  # [batch, frames, win]
        window = jnp.hanning(self.win_length + 2)[1:-1].astype(jnp.float32)  # no zero ends
        frames = frames * window[None, None]
        power = jnp.abs(jnp.fft.rfft(frames, n=self.n_fft)) ** 2
        bank = jnp.asarray(mel_filterbank(self.n_fft, self.n_mels, self.sample_rate, self.fmin, self.fmax))
        features = jnp.log(jnp.maximum(power @ bank, self.floor))
        if mask is None:
            frame_mask = jnp.ones(features.shape[:2], bool)
        else:
            # a frame is real when all its samples are: count them with a running sum
            real = jnp.pad(jnp.cumsum(mask, axis=1, dtype=jnp.int32), ((0, 0), (1, 0)))
            frame_mask = real[:, starts + self.win_length] - real[:, starts] == self.win_length
        if self.normalize:
            features = normalize(features, frame_mask)
        features = jnp.where(frame_mask[..., None], features, 0.0)
        return join_mask(features, None if mask is None else frame_mask)


def normalize(features: jax.Array, mask: jax.Array, epsilon: float = 1e-5) -> jax.Array:
    """Each row's features shifted and scaled to zero mean and unit variance over its real
    frames (``mask``), feature by feature.

    Shapes: ``features: [batch, frames, features]``, ``mask: bool[batch, frames]``.

    Example:
        >>> import jax.numpy as jnp
        >>> out = normalize(jnp.array([[[1.0], [3.0], [9.0]]]), jnp.array([[True, True, False]]))
        >>> [round(float(v), 3) for v in out[0, :2, 0]]
        [-1.0, 1.0]
    """
    features = zero_padding(features, mask)  # a padded frame's NaN or infinity reaches no sum or gradient
    m = mask[..., None]
    count = jnp.maximum(m.sum(1, keepdims=True), 1).astype(features.dtype)
    mean = features.sum(1, keepdims=True) / count
    var = (jnp.where(m, features - mean, 0) ** 2).sum(1, keepdims=True) / count
    return (features - mean) * jax.lax.rsqrt(var + epsilon)


@dataclasses.dataclass(frozen=True)
class StackFrames(Layer):
    """Joins every ``n`` consecutive frames into one: ``[batch, time, f] -> [batch, ceil(time / n), n * f]``.

    A cheap way to shorten a sequence before a recurrent layer: the step count drops
    ``n``-fold and no information is lost. The time axis is zero-padded to a multiple
    of ``n``; with a mask, a joined frame is real when any of its frames is, and holds
    zeros where its padded frames were (whatever the padding held).

    Example:
        >>> import jax.numpy as jnp, fnn
        >>> x, mask = jnp.ones((1, 5, 2)), jnp.array([[True, True, True, False, False]])
        >>> y, m = fnn.audio.StackFrames(2)({}, (x, mask))
        >>> y.shape, m.tolist()
        ((1, 3, 4), [[True, True, False]])
    """

    n: int = 2

    def __post_init__(self):
        positive_int(self, "n", self.n)

    def forward(self, params, x, *, key=None, train=False):
        x, mask = split_mask(self, x)
        if len(x.shape) != 3:
            raise ShapeError(f"StackFrames expects [batch, time, features], got {shape_str(x)}")
        batch, time, features = x.shape
        pad = -time % self.n
        if mask is not None:  # a real joined frame holds zeros where its padding was, as alone
            x = jnp.where(mask[..., None], x, jnp.zeros((), x.dtype))
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0))).reshape(batch, (time + pad) // self.n, self.n * features)
        if mask is not None:
            mask = jnp.pad(mask, ((0, 0), (0, pad))).reshape(batch, -1, self.n).any(-1)
        return join_mask(x, mask)

    def lengths(self, lengths: Any) -> Any:
        """The real steps out of rows with ``lengths`` real steps."""
        return -(-np.asarray(lengths) // self.n)


def featurize(audio: np.ndarray, lengths: np.ndarray, sample_rate: int, front_end: LogMel,
              batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``front_end`` over padded ``audio [n, samples]`` with ``lengths`` real samples per row, in
    batches; returns ``(features float32[n, frames, n_mels], frame_mask bool[n, frames])``.

    Raises ``ValueError`` if ``sample_rate`` is not the front end's, or naming the first
    utterance too short for one frame or with a NaN or infinite sample.

    Example:
        >>> import numpy as np
        >>> features, frame_mask = featurize(np.zeros((3, 1600), np.float32), np.array([1600, 800, 400]),
        ...                                  16000, LogMel())
        >>> features.shape, frame_mask.sum(1).tolist()
        ((3, 8, 40), [8, 3, 1])
    """
    if sample_rate != front_end.sample_rate:
        raise ValueError(
            f"featurize: the audio is sampled at {sample_rate} Hz but the front end expects "
            f"{front_end.sample_rate} Hz; resample it first (fnn.speech.resample)"
        )
    audio, lengths = np.asarray(audio), np.asarray(lengths)
    if audio.ndim != 2 or not len(audio):
        raise ValueError(f"featurize: expected padded audio [utterances, samples] with at least one "
                         f"utterance, got shape {audio.shape}")
    if lengths.shape != audio.shape[:1] or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"featurize: expected int lengths [{len(audio)}], one per utterance, got "
                         f"{lengths.dtype}{list(lengths.shape)}")
    beyond = np.flatnonzero(lengths > audio.shape[1])
    if beyond.size:
        i = int(beyond[0])
        raise ValueError(f"featurize: utterance {i} claims {int(lengths[i])} samples but its row holds "
                         f"{audio.shape[1]}; {beyond.size} length(s) exceed the padded audio")
    mask = np.arange(audio.shape[1]) < lengths[:, None]
    bad = np.flatnonzero((mask & ~np.isfinite(audio)).any(1))
    if bad.size:
        i = int(bad[0])
        j = int(np.flatnonzero(~np.isfinite(audio[i, : lengths[i]]))[0])
        raise ValueError(f"featurize: utterance {i} has a NaN or infinite sample ({audio[i, j]} at sample "
                         f"{j}); {bad.size} utterance(s) have one")
    short = np.flatnonzero(front_end.frames(lengths) == 0)
    if short.size:
        i = int(short[0])
        raise ValueError(
            f"featurize: utterance {i} has {int(lengths[i])} samples, fewer than one frame "
            f"({front_end.win_length}); {short.size} utterance(s) are that short"
        )
    apply = jax.jit(lambda a, m: front_end({}, (a, m)))
    outputs = [
        apply(audio[i : i + batch_size], mask[i : i + batch_size]) for i in range(0, len(audio), batch_size)
    ]
    return (np.concatenate([np.asarray(f) for f, _ in outputs]),
            np.concatenate([np.asarray(m) for _, m in outputs]))
