"""Speech: eSpeak NG synthesis and its cache, the log-mel front end against NumPy, CTC against
brute-force enumeration, decoding and scoring."""

import itertools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import audio, ctc, speech
from fnn.config import ConfigError

# -- synthesis and the cache ---------------------------------------------------------------

TINY = speech.SpeechSpec(task="commands", voices=(("en-us", "m1"), ("en", "f3")), words=("yes", "stop"),
                         copies=2, seed=3)


def test_synthesis_is_deterministic_and_labelled():
    a = speech.synthesize(TINY)
    with speech.Synthesizer() as synth:  # eSpeak used in this process first: no effect on synthesize
        for voice in ("en+m3", "en-us+klatt", "en-029+f2"):
            synth.say("three one four", voice)
    b = speech.synthesize(TINY)
    assert a.transcripts == ("yes", "stop") * 4
    assert a.voices[:2] == ("en-us+m1", "en-us+m1") and a.voices[-1] == "en+f3"
    assert a.sample_rate == speech.SAMPLE_RATE == 16_000
    np.testing.assert_array_equal(a.audio, b.audio)
    assert a.audio.dtype == np.float32 and np.isfinite(a.audio).all()
    seconds = a.lengths / a.sample_rate
    assert ((seconds > 0.2) & (seconds < 1.5)).all()
    # the same word by the same voice differs between copies (rate, pitch, gain, shift, noise)
    assert not np.array_equal(a[0][:1000], a[2][:1000])


def test_digit_strings_have_the_requested_lengths_and_symbols():
    spec = speech.SpeechSpec(task="digits", voices=(("en-us", "m2"),), copies=30, min_digits=2, max_digits=4)
    utterances = speech.synthesize(spec)
    lengths = {len(t) for t in utterances.transcripts}
    assert lengths <= {2, 3, 4} and len(lengths) == 3
    assert set("".join(utterances.transcripts)) <= set(speech.DIGIT_SYMBOLS)
    # a longer string takes longer to say, on average
    n = np.array([len(t) for t in utterances.transcripts])
    assert utterances.lengths[n == 4].mean() > utterances.lengths[n == 2].mean()


def test_padded_audio_and_mask():
    u = speech.synthesize(TINY)
    waves, mask = u.padded()
    assert waves.shape == (8, u.lengths.max()) and (mask.sum(1) == u.lengths).all()
    np.testing.assert_array_equal(waves[1, : u.lengths[1]], u[1])
    cut, cut_mask = u.padded(1000)
    assert cut.shape == (8, 1000) and cut_mask.all()


def test_noise_is_added_at_the_requested_snr():
    rng = np.random.default_rng(0)
    signal = np.sin(np.arange(16000) * 0.05).astype(np.float32)
    for snr in (30.0, 10.0, 0.0):
        noisy = speech.add_noise(signal, snr, rng)
        measured = 10 * np.log10(np.mean(signal**2) / np.mean((noisy - signal) ** 2))
        assert measured == pytest.approx(snr, abs=0.2)
    assert speech.add_noise(signal, None, rng) is signal
    for snr in (float("nan"), float("-inf"), float("inf")):
        with pytest.raises(speech.SpeechError, match=f"snr_db must be a finite number of decibels .* got {snr}"):
            speech.add_noise(signal, snr, rng)


def test_resample_refuses_rates_that_are_not_positive_ints():
    assert speech.resample(np.zeros(22050, np.float32), 22050, 16000).shape == (16000,)
    for rates, name in (((0, 16000), "rate"), ((22050, -1), "new_rate"), ((22050.5, 16000), "rate"),
                        ((True, 16000), "rate"), ((22050, True), "new_rate")):
        with pytest.raises(speech.SpeechError, match=f"resample: {name} must be a positive int"):
            speech.resample(np.zeros(100, np.float32), *rates)


def test_the_cache_is_reused_and_a_corrupt_file_is_made_again(tmp_path, monkeypatch):
    first = speech.dataset(TINY, tmp_path)
    (path,) = tmp_path.glob("commands-*.npz")
    assert path.name == f"commands-{TINY.key()}.npz"

    def no_synthesis(spec):
        raise AssertionError("synthesised although the cache holds the data")

    with monkeypatch.context() as m:
        m.setattr(speech, "synthesize", no_synthesis)
        again = speech.dataset(TINY, tmp_path)
    np.testing.assert_array_equal(again.audio, first.audio)
    assert again.transcripts == first.transcripts and again.voices == first.voices

    # flip bytes inside the stored audio: the checksum catches it, the data are made again
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    with pytest.raises(speech.SpeechError, match="corrupt|unreadable"):
        speech.load(path)
    with pytest.warns(UserWarning, match="synthesising it again"):
        remade = speech.dataset(TINY, tmp_path)
    np.testing.assert_array_equal(remade.audio, first.audio)
    speech.load(path)  # the file is whole again

    path.write_bytes(b"not a zip file")  # truncated or overwritten
    with pytest.raises(speech.SpeechError, match="unreadable"):
        speech.load(path)
    with pytest.warns(UserWarning, match="unreadable"):
        speech.dataset(TINY, tmp_path)


def _rewrite(path, meta, arrays):
    """Write a cache file by hand: ``save``'s format with the given metadata and arrays."""
    import io
    import json

    buffer = io.BytesIO()
    np.savez(buffer, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    path.write_bytes(buffer.getvalue())


def test_a_cache_file_that_holds_other_data_is_made_again(tmp_path):
    first = speech.dataset(TINY, tmp_path)
    (path,) = tmp_path.glob("commands-*.npz")
    other = speech.SpeechSpec(**{**TINY.__dict__, "words": ("no",)})
    other_data = speech.dataset(other, tmp_path)
    (other_path,) = set(tmp_path.glob("commands-*.npz")) - {path}
    u, key = first, TINY.key()

    def whole(audio=u.audio, offsets=u.offsets, transcripts=u.transcripts, voices=u.voices, rate=16000,
              key=key):
        arrays = {"audio": audio, "offsets": offsets}
        meta = {"transcripts": list(transcripts), "voices": list(voices), "sample_rate": rate,
                "sha256": speech._digest(arrays), "key": key}
        return meta, arrays

    swapped = u.offsets.copy()
    swapped[[1, 2]] = swapped[[2, 1]]  # falling offsets: no longer caught when a uint64 difference wraps

    def other_entry():
        path.write_bytes(other_path.read_bytes())  # another spec's file copied to this name

    cases = {
        rf"holds another dataset \(spec key '{other.key()}', not '{key}'\)": other_entry,
        r"its audio is float64\[\d+\], not float32\[samples\]": lambda: speech.save(
            speech.Utterances(u.audio.astype(np.float64), u.offsets, u.transcripts, u.voices, 16000), path,
            TINY.key()),
        "its 8 transcripts, 8 voices and offsets int64\\[4\\] do not divide": lambda: _rewrite(
            path, *whole(offsets=u.offsets[:4])),
        "offsets .* do not divide its 100 samples": lambda: _rewrite(path, *whole(audio=u.audio[:100])),
        "8 transcripts, 7 voices": lambda: _rewrite(path, *whole(voices=u.voices[:7])),
        "offsets uint64\\[9\\] do not divide": lambda: _rewrite(path, *whole(offsets=swapped.astype(np.uint64))),
        "offsets int8\\[9\\] do not divide": lambda: _rewrite(
            path, *whole(audio=u.audio[:100], offsets=np.array([0, 50, -6, 60, 70, 80, 90, 95, 100], np.int8))),
        "holds audio at 8000 Hz, not fnn's 16000 Hz": lambda: _rewrite(path, *whole(rate=8000)),
        "its metadata is a list, not an object": lambda: _rewrite(path, [1, 2], whole()[1]),
        "its metadata has no list of transcripts": lambda: _rewrite(
            path, {k: v for k, v in whole()[0].items() if k != "transcripts"}, whole()[1]),
        "its sample rate is '16000'": lambda: _rewrite(path, *whole(rate="16000")),
        r"written without its spec's key \(by an older fnn\)": lambda: _rewrite(path, *whole(key=None)),
        "unreadable: 'meta is not a file in the archive'": lambda: np.savez(path, audio=u.audio, offsets=u.offsets),
    }
    for message, damage in cases.items():
        damage()
        with pytest.raises(speech.SpeechError, match=message):
            speech.load(path, TINY.key())
        with pytest.warns(UserWarning, match=message + ".*synthesising it again"):
            remade = speech.dataset(TINY, tmp_path)
        assert remade.transcripts == first.transcripts and remade.voices == first.voices, message
        np.testing.assert_array_equal(remade.audio, first.audio)
        assert remade.audio.dtype == np.float32
        speech.load(path, TINY.key())  # the file is whole again
    assert speech.dataset(other, tmp_path).transcripts == other_data.transcripts  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, other_path.name])


def test_a_cache_that_cannot_be_written_is_passed_by(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match=r"speech cache .*file/commands-\w+\.npz could not be written "
                                         r"\(\[Errno 17\] File exists.*data\.cache=none"):
        made = speech.dataset(TINY, blocked)
    assert made.transcripts == TINY.words * 4 and blocked.read_text().startswith("a file")

    def full_disk(file, **arrays):
        file.write(b"half a file")
        raise OSError(28, "No space left on device")

    unsearchable = tmp_path / "locked"
    real_exists = type(unsearchable).exists

    def exists(path, *args, **kwargs):  # what a folder without search permission does to a non-root user
        if path.parent == unsearchable:
            raise PermissionError(13, "Permission denied", str(path))
        return real_exists(path, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(type(unsearchable), "exists", exists)
        m.setattr(speech, "save", lambda *a: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
        with pytest.warns(UserWarning, match="locked/commands-.* could not be written .*Permission denied"):
            assert speech.dataset(TINY, unsearchable).transcripts == made.transcripts

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(OSError, match="No space left"):  # save itself raises, and leaves nothing
        speech.save(made, tmp_path / "cache" / "u.npz")
    assert list((tmp_path / "cache").iterdir()) == []
    with pytest.warns(UserWarning, match="could not be written .*No space left on device"):
        again = speech.dataset(TINY, tmp_path / "cache")
    np.testing.assert_array_equal(again.audio, made.audio)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_part_file_left_by_a_killed_save_is_removed_by_the_next_save(tmp_path):
    import os
    import time

    path = tmp_path / "u.npz"
    old, new = tmp_path / ".u.npz.abc123.tmp", tmp_path / ".u.npz.def456.tmp"  # a writer may still be on
    other = tmp_path / ".v.npz.abc123.tmp"  # another entry's
    for part in (old, new, other):
        part.write_bytes(b"half a file")
    hours_ago = time.time() - 2 * speech.STALE_PART_S
    os.utime(old, (hours_ago, hours_ago))
    os.utime(other, (hours_ago, hours_ago))
    utterances = speech.Utterances(np.zeros(4, np.float32), np.array([0, 4]), ("yes",), ("en+m1",), 16000)
    speech.save(utterances, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [new.name, other.name, path.name]


def test_another_spec_gets_another_cache_file():
    other = speech.SpeechSpec(**{**TINY.__dict__, "seed": 4})
    assert other.key() != TINY.key()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(task="music", voices=(("en", "m1"),)), "task must be 'commands' or 'digits'"),
        (dict(voices=()), "at least one voice"),
        (dict(voices=(("en", "m1"),), copies=0), "copies must be at least 1"),
        (dict(task="digits", voices=(("en", "m1"),), min_digits=3, max_digits=2), "min_digits <= max_digits"),
        (dict(voices=(("en", "m1"),), pitch=(80, 20)), r"pitch must be a range \(low, high\) with low <= high, \[0, 100\]"),
        (dict(voices=(("en", "m1"),), rate=(0, 100)), r"rate must be a range .*>= 1, got \(0, 100\)"),
        (dict(voices=(("en", "m1"),), gain=(1, -1)), "gain must be a range"),
        (dict(voices=(("en", "m1"),), max_shift=-1), "max_shift must be a finite number of seconds >= 0, got -1"),
        (dict(voices=(("en", "m1"),), snr_db=()), "snr_db needs at least one noise level"),
        (dict(voices=(("en", "m1"),), snr_db=(None, float("nan"))), r"every snr_db must be a finite .* got \(None, nan\)"),
        (dict(voices=(("en", "m1"),), snr_db=(float("-inf"),)), "every snr_db must be a finite number"),
        (dict(voices=(("en", "m1"),), max_shift=float("inf")), "max_shift must be a finite number of seconds >= 0"),
        (dict(voices=(("en", "m1"),), max_shift=None), "max_shift must be a finite number of seconds >= 0, got None"),
        (dict(voices=(("en", "m1"),), snr_db=("10",)), r"every snr_db must be a finite number .* got \('10',\)"),
        (dict(voices=(("en", "m1"),), words=("yes", " ")), r"every word must be a non-empty string, got \('yes', ' '\)"),
    ],
)
def test_bad_specs_are_refused(kwargs, message):
    with pytest.raises(speech.SpeechError, match=message):
        speech.SpeechSpec(**kwargs)


def test_unknown_voices_and_empty_text_are_refused():
    with speech.Synthesizer() as synth, pytest.raises(speech.SpeechError, match="no voice variant 'nobody'"):
        synth.say("yes", "en+nobody")
    with speech.Synthesizer() as synth:
        with pytest.raises(speech.SpeechError, match="no voice 'xx-nowhere'"):
            synth.say("yes", "xx-nowhere")
        with pytest.raises(speech.SpeechError, match="the text '  ' is empty"):
            synth.say("  ", "en")
        assert len(synth.say("yes", "en")) > 1000  # still usable after the errors


def test_every_voice_of_the_split_exists_and_no_test_variant_is_trained_on():
    split = speech.VoiceSplit()
    assert not set(split.train_variants) & set(split.test_variants)
    with speech.Synthesizer() as synth:
        for accent, variant in speech.voices(split.accents, split.train_variants + split.test_variants):
            assert len(synth.say("one", f"{accent}+{variant}")) > 1000
    with pytest.raises(ConfigError, match=r"\['m1'\] are both training and test voices"):
        speech.VoiceSplit(train_variants=("m1", "m2"), test_variants=("m1",))
    for name in ("accents", "train_variants", "test_variants", "snr_db"):  # failed at synthesis, after the run began
        with pytest.raises(ConfigError, match=f"data.{name} must list at least one"):
            speech.VoiceSplit(**{name: ()})


def test_unknown_voices_are_refused_before_anything_is_synthesised(monkeypatch):
    """They were refused only when their first utterance was said: an unknown test variant
    after the whole training set, with a SpeechError that the fnn command does not catch."""
    def say(*args, **kwargs):
        raise AssertionError("synthesised before the voices were checked")

    monkeypatch.setattr(speech.Synthesizer, "say", say)
    small = dict(accents=("en-us",), train_variants=("m1",), test_variants=("m3",), copies=1, cache="none")
    for key, value, says in (("test_variants", ("m3", "nosuch"), "data.test_variants: eSpeak NG has no voice "
                                                                 "variant 'nosuch'"),
                             ("train_variants", ("bad",), "data.train_variants: eSpeak NG has no voice variant"),
                             ("accents", ("en-us", "xx-nosuch"), "data.accents: eSpeak NG has no accent 'xx-nosuch'"),
                             ("accents", ("en+m1",), "data.accents: eSpeak NG has no accent 'en+m1'")):
        with pytest.raises(ConfigError, match=re.escape(says)):
            speech.VoiceSplit(**{**small, key: value}).datasets("commands", words=("yes", "no"))
    spec = speech.SpeechSpec(voices=(("en-us", "m1"), ("en", "nosuch")), words=("yes",))
    with pytest.raises(speech.SpeechError, match=re.escape("eSpeak NG has no voice 'en+nosuch'")):
        speech.synthesize(spec)
    speech.VoiceSplit().check_voices()  # the defaults all exist


# -- the log-mel front end -----------------------------------------------------------------


def numpy_log_mel(wave, sample_rate=16000, n_fft=512, win=400, hop=160, n_mels=40, fmin=20.0):
    """The front end written out plainly in NumPy, loop by loop, for comparison."""
    mel = lambda f: 2595 * math.log10(1 + f / 700)
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)
    points = [hz(mel(fmin) + i * (mel(sample_rate / 2) - mel(fmin)) / (n_mels + 1)) for i in range(n_mels + 2)]
    window = np.array([0.5 - 0.5 * math.cos(2 * math.pi * (n + 1) / (win + 1)) for n in range(win)])
    bins = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    rows = []
    for start in range(0, len(wave) - win + 1, hop):
        power = np.abs(np.fft.rfft(wave[start : start + win] * window, n_fft)) ** 2
        energies = []
        for m in range(n_mels):
            lo, mid, hi = points[m], points[m + 1], points[m + 2]
            weights = np.clip(np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)), 0, None)
            energies.append(np.log(max(float(weights @ power), 1e-6)))
        rows.append(energies)
    features = np.array(rows)
    return (features - features.mean(0)) / np.sqrt(features.var(0) + 1e-5)


def test_log_mel_matches_a_numpy_reference():
    wave = speech.synthesize(TINY)[1].astype(np.float64)
    expected = numpy_log_mel(wave)
    got = audio.LogMel()({}, jnp.asarray(wave[None], jnp.float32))[0]
    assert got.shape == expected.shape == ((len(wave) - 400) // 160 + 1, 40)
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-3)


def test_padding_does_not_change_the_real_frames():
    u = speech.synthesize(TINY)
    waves, mask = u.padded()
    layer = audio.LogMel()
    front = jax.jit(lambda x: layer({}, x))
    features, frame_mask = front((jnp.asarray(waves), jnp.asarray(mask)))
    for i in (0, 1):
        alone = front(jnp.asarray(u[i][None]))[0]
        n = alone.shape[0]
        assert int(frame_mask[i].sum()) == n == int(layer.frames(u.lengths[i]))
        np.testing.assert_allclose(np.asarray(features[i, :n]), np.asarray(alone), atol=1e-4)
        assert not np.asarray(features[i, n:]).any()


def test_log_mel_removes_the_gain_and_is_differentiable():
    wave = jnp.asarray(speech.synthesize(TINY)[0][None])
    front = jax.jit(lambda a: audio.LogMel()({}, a))
    np.testing.assert_allclose(np.asarray(front(0.1 * wave)), np.asarray(front(wave)), atol=2e-3)
    grad = jax.grad(lambda a: front(a).sum() + (front(a) ** 2).mean())(wave)
    assert grad.shape == wave.shape and bool(jnp.isfinite(grad).all())
    model = fnn.serial(audio.LogMel(n_mels=16), fnn.SequencePool("mean"), fnn.Dense(3))
    params, _ = model.init(jax.random.key(0), wave)
    assert model(params, wave).shape == (1, 3)


def test_mel_filterbank_peaks_at_its_centres():
    bank = audio.mel_filterbank(512, 10, 16000, 0.0, 8000.0)
    centres = audio.mel_to_hz(np.linspace(0, audio.hz_to_mel(8000.0), 12))[1:-1]
    peaks = bank.argmax(0) * 16000 / 512
    np.testing.assert_allclose(peaks, centres, atol=16000 / 512)
    with pytest.raises(ValueError, match="128 mel filters over 257 FFT bins leave filter 3 .* covering no bin"):
        audio.mel_filterbank(512, 128, 16000, 20.0)  # a band that would always read log(floor)
    assert (np.diff(peaks) > 0).all() and bank.min() == 0.0 and bank.max() <= 1.0
    with pytest.raises(ValueError, match="fmin < fmax <= sample_rate / 2"):
        audio.mel_filterbank(512, 10, 16000, 0.0, 9000.0)


def test_mel_filterbank_of_an_odd_fft_sits_on_its_bins():
    sample_rate, n_fft = 16000, 401  # the top bin of an odd FFT is below half the rate
    bank = audio.mel_filterbank(n_fft, 20, sample_rate, 0.0, 8000.0)
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    edges = audio.mel_to_hz(np.linspace(0.0, audio.hz_to_mel(8000.0), 22))
    low, centre, high = edges[:-2], edges[1:-1], edges[2:]
    want = np.maximum(0, np.minimum((freqs[:, None] - low) / (centre - low), (high - freqs[:, None]) / (high - centre)))
    np.testing.assert_allclose(bank, want, atol=1e-6)  # was 0.038 off: bins spread up to 8000 Hz


def test_log_mel_frame_mask_needs_every_sample_of_a_frame():
    front = audio.LogMel(n_mels=16)
    wave = jnp.asarray(np.random.default_rng(0).normal(size=(2, 1600)), jnp.float32)
    left = jnp.arange(1600)[None] >= jnp.array([[100], [0]])  # row 0 left-padded by 100 samples
    _, frame_mask = front({}, (wave, left))
    assert frame_mask.tolist() == [[False] + [True] * 7, [True] * 8]  # was [True] * 7 + [False]
    gap = left.at[1, 700].set(False)  # one sample missing in the middle of row 1
    _, frame_mask = front({}, (wave, gap))
    assert frame_mask[1].tolist() == [True, True, False, False, False, True, True, True]


def test_log_mel_refuses_bad_input():
    front = audio.LogMel()
    with pytest.raises(fnn.ShapeError, match=r"audio of 399 samples is shorter than one frame \(400 samples, 25 ms\)"):
        front({}, jnp.zeros((2, 399)))
    with pytest.raises(fnn.ShapeError, match=r"expects float audio \[batch, samples\], got int16\[2,1000\]"):
        front({}, jnp.zeros((2, 1000), jnp.int16))
    with pytest.raises(ValueError, match="win_length \\(600\\) must not exceed n_fft \\(512\\)"):
        audio.LogMel(win_length=600)
    with pytest.raises(ValueError, match="hop must be a positive int"):
        audio.LogMel(hop=0)


def test_featurize_refuses_another_sample_rate_and_too_short_audio():
    front = audio.LogMel()
    waves = np.zeros((3, 2000), np.float32)
    with pytest.raises(ValueError, match="sampled at 22050 Hz but the front end expects 16000 Hz"):
        audio.featurize(waves, [2000, 2000, 2000], 22050, front)
    with pytest.raises(ValueError, match="utterance 1 has 300 samples, fewer than one frame \\(400\\)"):
        audio.featurize(waves, [2000, 300, 100], 16000, front)
    with pytest.raises(ValueError, match="utterance 2 claims 5000 samples but its row holds 2000"):
        audio.featurize(waves, [2000, 1000, 5000], 16000, front)  # was cut to 2000 in silence
    with pytest.raises(ValueError, match=r"expected int lengths \[3\], one per utterance, got int64\[2\]"):
        audio.featurize(waves, [2000, 1000], 16000, front)
    with pytest.raises(ValueError, match=r"at least one utterance, got shape \(0, 2000\)"):
        audio.featurize(waves[:0], np.zeros(0, int), 16000, front)
    holed = waves.copy()
    holed[1, 700], holed[2, 1500] = np.nan, np.inf  # row 2's inf lies in its padding: no harm
    with pytest.raises(ValueError, match=r"utterance 1 has a NaN or infinite sample \(nan at sample 700\); 1 "):
        audio.featurize(holed, [2000, 1000, 1000], 16000, front)
    assert np.isfinite(audio.featurize(holed, [2000, 600, 1000], 16000, front)[0]).all()
    x, mask = audio.featurize(waves + 0.01, [2000, 1000, 400], 16000, front, batch_size=2)
    assert x.shape == (3, 11, 40) and mask.sum(1).tolist() == [11, 4, 1]


def test_stack_frames_joins_steps_and_their_mask():
    x = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
    mask = jnp.array([[True] * 5, [True, True, True, False, False]])
    y, m = audio.StackFrames(2)({}, (x, mask))
    assert y.shape == (2, 3, 6)
    np.testing.assert_array_equal(np.asarray(y[0, 0]), np.asarray(x[0, :2].reshape(-1)))
    np.testing.assert_array_equal(np.asarray(y[0, 2, 3:]), 0)  # the padded half
    assert m.tolist() == [[True, True, True], [True, True, False]]
    assert audio.StackFrames(2).lengths([5, 3]).tolist() == [3, 2]
    assert audio.StackFrames(4)({}, x).shape == (2, 2, 12)


# -- CTC -------------------------------------------------------------------------------------


def brute_force_ctc(log_probs, labels, blank=0):
    """-log of the summed probability of every frame path that collapses to ``labels``."""
    frames, classes = log_probs.shape
    total = 0.0
    for path in itertools.product(range(classes), repeat=frames):
        if ctc._collapse(path, blank) == list(labels):
            total += math.exp(sum(log_probs[t, k] for t, k in enumerate(path)))
    return -math.log(total)


def test_ctc_loss_equals_brute_force_enumeration_with_padding():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], bool)
    labels = np.array([[1, 2, 0], [2, 2, 0], [1, 1, 2]], np.int32)  # [2, 2] needs 3 frames; [1, 1, 2] 4
    label_mask = np.array([[1, 1, 0], [1, 1, 0], [1, 1, 1]], bool)
    log_probs = np.asarray(jax.nn.log_softmax(logits))
    expected = np.mean([
        brute_force_ctc(log_probs[i, : mask[i].sum()], labels[i, : label_mask[i].sum()]) / label_mask[i].sum()
        for i in range(3)
    ])
    got = ctc.ctc_loss((jnp.asarray(logits), jnp.asarray(mask)), (jnp.asarray(labels), jnp.asarray(label_mask)))
    assert float(got) == pytest.approx(expected, rel=1e-4)
    grad = jax.grad(lambda z: ctc.ctc_loss((z, mask), (labels, label_mask)))(jnp.asarray(logits))
    assert bool(jnp.isfinite(grad).all()) and not np.asarray(grad[1, 3:]).any()  # padding gets no gradient


def test_ctc_refuses_empty_transcripts_and_transcripts_that_do_not_fit():
    logits = jnp.zeros((2, 4, 3))
    with pytest.raises(ValueError, match="utterance 1 has an empty transcript"):
        ctc.ctc_loss(logits, (jnp.array([[1, 2], [1, 0]]), jnp.array([[True, True], [False, False]])))
    # [1, 1, 1] needs 5 frames (a blank between repeats), and there are 4
    with pytest.raises(ValueError, match="utterance 0's transcript of 3 labels needs at least 5 output frames "
                                         "but the model emits 4"):
        ctc.ctc_loss(logits, jnp.array([[1, 1, 1], [1, 2, 1]]))
    with pytest.raises(ValueError, match="labels must be integer ids"):
        ctc.ctc_loss(logits, jnp.zeros((2, 2)))
    assert ctc.required_frames([3, 3, 1, 1, 1]) == 8


@pytest.mark.parametrize("label", [5, -1, 0])  # 5 and -1 gave a negative loss, the blank 0.84
def test_ctc_refuses_labels_outside_the_outputs_and_the_blank(label):
    logits, labels = jnp.zeros((2, 4, 3)), jnp.array([[1, 2], [2, label]])
    with pytest.raises(ValueError, match=rf"utterance 1's transcript holds label {label}; labels must be in "
                                         r"\[0, 3\) \(the outputs per frame\) and not the blank 0"):
        ctc.ctc_loss(logits, labels)
    per_utterance = jax.jit(ctc.ctc_loss)(logits, labels)  # traced: NaN instead
    assert np.isnan(per_utterance)
    padded = (labels, jnp.array([[True, True], [True, False]]))  # a padding label is not read
    assert np.isfinite(jax.jit(ctc.ctc_loss)(logits, padded))
    with pytest.raises(ValueError, match=r"the outputs' mask must be bool\[2,4\], got bool\[2,5\]"):
        ctc.ctc_loss((logits, jnp.ones((2, 5), bool)), labels)
    with pytest.raises(ValueError, match=r"blank must be in \[0, 3\), got 3"):
        ctc.ctc_loss(logits, labels, blank=3)


def test_ctc_is_checked_at_data_time_inside_jit():
    # under jit the lengths are traced: check_targets is what refuses them, before training
    loss = jax.jit(ctc.ctc_loss)(jnp.zeros((1, 2, 3)), jnp.array([[1, 1]]))
    assert bool(loss > 1000)  # impossible alignments: optax's large finite loss, not a NaN
    with pytest.raises(ValueError, match="spoken: utterance 0's transcript"):
        ctc.check_targets([2], [[1, 1]], [2], where="spoken")


def test_greedy_decoding_merges_repeats_and_drops_blanks():
    path = jnp.array([[0, 1, 1, 0, 1, 2, 2, 0]])
    logits = jax.nn.one_hot(path, 3) * 5.0
    assert ctc.greedy_decode(logits) == [[1, 1, 2]]
    assert ctc.greedy_decode(logits, jnp.arange(8)[None] < 4) == [[1]]


def test_beam_search_finds_the_most_probable_labelling():
    rng = np.random.default_rng(1)
    for _ in range(5):
        log_probs = np.asarray(jax.nn.log_softmax(rng.normal(size=(5, 3)) * 2))
        scores = {}
        for path in itertools.product(range(3), repeat=5):
            key = tuple(ctc._collapse(path, 0))
            scores[key] = scores.get(key, 0.0) + math.exp(sum(log_probs[t, k] for t, k in enumerate(path)))
        best = max(scores, key=scores.get)
        assert tuple(ctc.beam_search(log_probs, beam_width=100, prune=-np.inf)) == best
    # the best labelling is not always the collapsed best path: blank-blank (0.36) is the best
    # path, but three paths spell [1] (0.16 + 0.24 + 0.24 = 0.64)
    p = np.log(np.array([[0.6, 0.4], [0.6, 0.4]]))
    assert ctc.greedy_decode(p[None]) == [[]]
    assert ctc.beam_search(p, beam_width=4, prune=-np.inf) == [1]


def test_edit_distance_alignment_and_error_rate():
    assert ctc.edit_distance("kitten", "sitting") == 3
    assert ctc.edit_distance([], [1, 2]) == 2 and ctc.edit_distance([1, 2], []) == 2
    assert ctc.align("123", "13") == [("1", "1"), ("2", None), ("3", "3")]
    assert ctc.align("13", "123") == [("1", "1"), (None, "2"), ("3", "3")]
    assert ctc.error_rate(["123", "45"], ["123", "4"]) == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        ctc.error_rate(["1", "2"], ["1"])


@pytest.mark.parametrize("pad", [np.nan, np.inf, 1e30])
def test_what_the_padding_holds_does_not_reach_the_real_frames(pad):
    rng = np.random.default_rng(0)
    waves = rng.normal(size=(2, 4000)).astype(np.float32)
    mask = np.ones((2, 4000), bool)
    mask[1, 2500:] = False
    clean = waves.copy()
    clean[1, 2500:] = 0.0
    waves[1, 2500:] = pad  # NaN, infinity or a huge value where the mask says padding
    layer = audio.LogMel()
    features, frame_mask = layer({}, (jnp.asarray(waves), jnp.asarray(mask)))
    expected, _ = layer({}, (jnp.asarray(clean), jnp.asarray(mask)))
    assert np.isfinite(np.asarray(features)).all()
    np.testing.assert_allclose(np.asarray(features), np.asarray(expected), atol=1e-5)


def test_stack_frames_joins_zeros_where_the_padding_was():
    x = jnp.array([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    alone = audio.StackFrames(2)({}, x)
    padded = jnp.concatenate([x, jnp.full((1, 1, 2), 9.0)], 1)  # a padded frame that is not zero
    joined, mask = audio.StackFrames(2)({}, (padded, jnp.array([[True, True, True, False]])))
    np.testing.assert_array_equal(joined, alone)  # it held [5, 6, 9, 9]
    assert mask.tolist() == [[True, True]]


def test_ctc_label_mask_may_have_holes():
    logits = jax.random.normal(jax.random.key(0), (1, 6, 4))
    expected = ctc.ctc_loss(logits, jnp.array([[1, 2]]))
    holed = (jnp.array([[1, 3, 2]]), jnp.array([[True, False, True]]))  # the transcript [1, 2]
    np.testing.assert_allclose(ctc.ctc_loss(logits, holed), expected, rtol=1e-6)  # was [1, 3]'s loss
    np.testing.assert_allclose(jax.jit(ctc.ctc_loss)(logits, holed), expected, rtol=1e-6)
    left = (jnp.array([[0, 1, 2]]), jnp.array([[False, True, True]]))
    np.testing.assert_allclose(ctc.ctc_loss(logits, left), expected, rtol=1e-6)
