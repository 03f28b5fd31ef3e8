"""Recognise connected digit strings ("three oh seven two") said by voices never heard in
training, with a recurrent network trained by CTC.

The task is modelled on that of the TIDIGITS corpus (Leonard, 1984; strings of 1 to 5
and 7 digits); here strings of 1 to 7 digits, 0 said as "zero" or "oh", spoken without
pauses, so the model must find where each digit is as well as which it is. The strings
are synthesised offline by eSpeak NG (``fnn.speech``) with the voices, rates, pitches,
gains, shifts and noise of ``spoken-commands``: 8 accents with 16 training variants,
and the same accents with 6 other variants for the test set.

The model reads log-mel features (``fnn.audio.LogMel``, 10 ms frames):
:class:`fnn.audio.StackFrames` joins every 4 frames into one 40 ms step, a convolution
over time (width 5 steps, 128 channels) looks at 200 ms around each step, two
bidirectional GRU layers read the whole string both ways, and a dense layer scores
the 11 symbols (0-9 and o) plus the CTC blank at each step. Joining frames first keeps
the recurrent layers short: on the CPU a 2-D convolution over the full-rate
spectrogram cost more than the whole rest of the step. The loss is CTC (``fnn.ctc.ctc_loss`` over
``optax.ctc_loss``), so no frame is ever labelled; transcripts are read off by greedy
and by prefix beam-search decoding. The digit error rate (DER) is the edit distance
to the reference over its length, summed over the test strings; string accuracy is
the fraction decoded exactly.

Measured with the defaults (15 epochs, adam) on a 2-core CPU, on the 480 test strings
(1,915 digits) of the 48 unseen voices, over three runs (``train.seed`` 0 and 1): digit
error rate 1.15-1.41% with beam search (greedy: 1.15-1.46%), string accuracy
95.0-95.4%, train stage 186-196 s, whole run 220-235 s. In one run's 22 errors, 9 are
deleted digits, 6 are fives and nines taken for each other, and 3 are inserted digits
(the run's ``confusion.png``).

Run: fnn run spoken-digits [train.epochs=15] [data.copies=20] [hidden=96] [train.seed=0]
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

import fnn
from fnn import audio, ctc, speech
from fnn.pipeline import Experiment, Pipeline, TrainConfig

SYMBOLS = speech.DIGIT_SYMBOLS  # label k + 1 is SYMBOLS[k]; 0 is the blank (fnn.ctc's default)


@dataclasses.dataclass(frozen=True)
class Config:
    data: speech.VoiceSplit = speech.VoiceSplit(copies=20, test_copies=10)
    min_digits: int = 1
    max_digits: int = 7
    n_mels: int = 40
    stack: int = 4  # frames joined into one step (40 ms)
    channels: int = 128  # of the convolution over time
    kernel: int = 5  # its width in steps
    hidden: int = 96  # GRU units per direction
    dropout: float = 0.1
    beam_width: int = 8
    valid_fraction: float = 0.1
    examples: int = 8  # decoded test strings printed next to their references
    train: TrainConfig = TrainConfig(epochs=15, batch_size=32, learning_rate=2e-3)

    def __post_init__(self):
        fnn.config.check_at_least(self, (("min_digits", 1), ("max_digits", self.min_digits), ("n_mels", 1),
                                         ("stack", 1), ("channels", 1), ("kernel", 1), ("hidden", 1),
                                         ("beam_width", 1), ("examples", 0)))
        speech.log_mel(self.n_mels)  # the mel filters fit the FFT
        fnn.config.check_that(self, (("dropout", 0 <= self.dropout < 1, "in [0, 1)"),
                                     ("valid_fraction", 0 < self.valid_fraction < 1, "in (0, 1)")))


def make_model(config: Config) -> fnn.Layer:
    return fnn.serial(
        audio.StackFrames(config.stack),  # [batch, frames / stack, stack * mels]
        fnn.KeepMask(fnn.serial(fnn.Conv(config.channels, (config.kernel,)), jax.nn.relu)),  # conv over time
        fnn.Bidirectional(fnn.GRU(config.hidden)),
        fnn.KeepMask(fnn.Dropout(config.dropout)),
        fnn.Bidirectional(fnn.GRU(config.hidden)),
        fnn.KeepMask(fnn.Dense(len(SYMBOLS) + 1)),
    )


def encode(transcripts) -> tuple[np.ndarray, np.ndarray]:
    """``(labels int32[n, longest], mask bool[n, longest])`` of digit-symbol strings."""
    bad = next((t for t in transcripts if set(t) - set(SYMBOLS)), None)
    if bad is not None:
        raise ValueError(f"spoken-digits: transcript {bad!r} has symbols outside {SYMBOLS!r}")
    width = max(1, max(len(t) for t in transcripts))
    labels = np.zeros((len(transcripts), width), np.int32)
    for i, t in enumerate(transcripts):
        labels[i, : len(t)] = [SYMBOLS.index(s) + 1 for s in t]
    return labels, np.arange(width) < np.array([len(t) for t in transcripts])[:, None]


def decode(ids) -> str:
    return "".join(SYMBOLS[k - 1] for k in ids)


def examples(utterances: speech.Utterances, config: Config) -> tuple:
    """``((features, frame_mask), (labels, label_mask))``, checked to fit CTC after subsampling."""
    front = speech.log_mel(config.n_mels)
    waves, _ = utterances.padded()
    x, mask = audio.featurize(waves, utterances.lengths, utterances.sample_rate, front)
    labels, label_mask = encode(utterances.transcripts)
    frames = audio.StackFrames(config.stack).lengths(mask.sum(1))
    ctc.check_targets(frames, labels, label_mask.sum(1), where="spoken-digits")
    return (x, mask), (labels, label_mask)


# -- the stages ------------------------------------------------------------------------


def data(config: Config) -> dict:
    """Synthesised digit strings (cached), their features and labels, and a validation split."""
    train, test = config.data.datasets("digits", min_digits=config.min_digits, max_digits=config.max_digits)
    train_set = examples(train, config)
    n = len(train)
    if int(n * config.valid_fraction) == 0:  # found here, not by the first evaluation after training
        raise fnn.config.ConfigError(
            f"valid_fraction: {config.valid_fraction} of the {n} training strings is none; raise it "
            "or data.copies"
        )
    order = np.random.default_rng(config.data.seed).permutation(n)
    valid, kept = order[: int(n * config.valid_fraction)], order[int(n * config.valid_fraction) :]
    intro = [f"{n:,} training strings by {len(set(train.voices))} voices, {len(test):,} test strings by "
             f"{len(set(test.voices))} unseen voices; {sum(map(len, test.transcripts)):,} test digits"]
    return {"train_set": jax.tree.map(lambda a: a[kept], train_set),
            "eval_set": jax.tree.map(lambda a: a[valid], train_set),
            "test_set": examples(test, config), "test_transcripts": test.transcripts, "intro": intro}


def model(config: Config) -> dict:
    return {"model": make_model(config), "loss": ctc.ctc_loss}


def digit_confusion(references, hypotheses) -> np.ndarray:
    """Counts of (reference, decoded) digit pairs over minimum-edit alignments; the last row
    and column, "-", count insertions and deletions."""
    index = {s: i for i, s in enumerate(SYMBOLS)}
    none = len(SYMBOLS)
    matrix = np.zeros((none + 1, none + 1), np.int64)
    for ref, hyp in zip(references, hypotheses):
        for r, h in ctc.align(ref, hyp):
            matrix[index.get(r, none), index.get(h, none)] += 1
    return matrix


def report(model, state, test_set, test_transcripts, test, intro, config: Config, run=None) -> dict:
    """Greedy and beam-search digit error rates, string accuracy, a confusion matrix and examples."""
    (x, mask), _ = test_set
    logits, out_mask = fnn.pipeline.predict(model, state, (x, mask), policy=config.train.precision)
    greedy = [decode(h) for h in ctc.greedy_decode(logits, out_mask)]
    beam = [decode(h) for h in ctc.beam_decode(logits, out_mask, beam_width=config.beam_width)]
    refs = list(test_transcripts)
    greedy_der, beam_der = ctc.error_rate(refs, greedy), ctc.error_rate(refs, beam)
    strings = float(np.mean([r == h for r, h in zip(refs, beam)]))
    confusion = digit_confusion(refs, beam)
    if run is not None:
        fnn.plots.confusion_matrix(confusion, run.directory / "confusion.png", labels=[*SYMBOLS, "-"],
                                   title="spoken digits (beam search; -: inserted or deleted)")
    lines = [*intro,
             f"digit error rate on unseen voices: greedy {greedy_der:.4f}, beam search {beam_der:.4f}; "
             f"string accuracy {strings:.4f} ({len(refs)} strings); test CTC loss {test['loss']:.4f}",
             "reference -> decoded (beam search):",
             *(f"  {r:>7} -> {h}{'' if r == h else '   (wrong)'}" for r, h in zip(refs[: config.examples],
                                                                          beam[: config.examples]))]
    final = {"digit_error_rate": beam_der, "greedy_digit_error_rate": greedy_der, "string_accuracy": strings,
             "test_loss": test["loss"], "test_strings": len(refs)}
    return {"final": final, "decoded": beam, "confusion_matrix": confusion, "report": lines}


PIPELINE = Pipeline(data, model, fnn.pipeline.optimizer, fnn.pipeline.batches, fnn.pipeline.train,
                    fnn.pipeline.test, report)
EXPERIMENT = Experiment(
    "spoken-digits", "recognise connected digit strings by unseen eSpeak NG voices (CNN + BiGRU, CTC)",
    Config(), PIPELINE,
)


def run(config: Config = Config(), **options) -> dict:
    """Run the pipeline (no run directory unless ``run=`` is given); returns its values."""
    return EXPERIMENT(config, **options)


if __name__ == "__main__":
    fnn.cli.experiment_main("spoken-digits", program=True)
