"""Recognise spoken command words (yes, no, up, down, ..., and the ten digits) said by voices
never heard in training.

The utterances are synthesised offline by eSpeak NG (``fnn.speech``): 8 English
accents, each spoken with 16 training variants (vocal tracts), every word twice at a
random rate and pitch, with a random gain, a leading silence of up to 0.1 s and white
noise at 30, 20 or 10 dB SNR or none. The test set is every word once by the same
accents with 6 other variants, so no test voice is heard in training; 10% of the
training utterances are held out for validation. The model sees a log-mel spectrogram
(``fnn.audio.LogMel``: 25 ms frames every 10 ms, 40 bands, normalised per utterance)
of the first ``max_seconds`` of each utterance.

The model is a small convolutional network over time and frequency: three 3x3
convolutions (the first with stride 2) with max pooling, a max over time and
frequency, and a dense classifier. Striding the first convolution makes a step 6.5
times cheaper on the CPU than a stride of 1 (0.075 s against 0.49 s for a batch of 64)
for a fraction of a point of accuracy.

Measured with the defaults (20 epochs, adam) on a 2-core CPU, on the 960 test
utterances of the 48 unseen voices (chance 5%): 96.4-97.4% test accuracy over five
runs (``train.seed`` 0 and 1). In the latest two the train stage took 62 s and the whole
run about 80 s (a first run also synthesises and caches the 6,080 utterances, about
25 s); the strided first convolution takes fnn's gradient rule (``BENCHMARKS.md``,
"Strided convolutions"). The hardest voices
score 85-90%: the ``klatt2`` variant, the only test variant made by the Klatt
synthesiser, and the breathy ``f2`` and ``f5`` in the Caribbean accent (``en-029``).

Run: fnn run spoken-commands [train.epochs=20] [data.copies=2] [train.seed=0]
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from fnn import audio, speech
from fnn.pipeline import Experiment, Pipeline, TrainConfig


@dataclasses.dataclass(frozen=True)
class Config:
    words: tuple[str, ...] = speech.COMMANDS + speech.DIGITS
    data: speech.VoiceSplit = speech.VoiceSplit()
    max_seconds: float = 1.2  # longer utterances are cut
    n_mels: int = 40
    channels: int = 16  # of the first convolution; doubled at each of the next two
    dropout: float = 0.2
    valid_fraction: float = 0.1
    train: TrainConfig = TrainConfig(epochs=20, batch_size=64)

    def __post_init__(self):
        # the model's three convolutions and two poolings need 7 frames (85 ms) and 7 bands
        fnn.config.check_at_least(self, (("max_seconds", 0.1), ("n_mels", 7), ("channels", 1)))
        speech.log_mel(self.n_mels)  # the mel filters fit the FFT
        fnn.config.check_that(self, (
            ("words", len(set(self.words)) == len(self.words) >= 2, "two or more distinct words"),
            ("dropout", 0 <= self.dropout < 1, "in [0, 1)"),
            ("valid_fraction", 0 < self.valid_fraction < 1, "in (0, 1)"),
        ))


def make_model(config: Config) -> fnn.Layer:
    c = config.channels
    return fnn.serial(
        fnn.Fn(lambda x: x[..., None]),  # [batch, frames, mels] -> [..., 1 channel]
        fnn.Conv(c, (3, 3), strides=(2, 2)), jax.nn.relu, fnn.MaxPool((2, 2)),  # a quarter of each axis
        fnn.Conv(2 * c, (3, 3)), jax.nn.relu, fnn.MaxPool((2, 2)),
        fnn.Conv(4 * c, (3, 3)), jax.nn.relu,
        fnn.GlobalMaxPool(),
        fnn.Dropout(config.dropout),
        fnn.Dense(len(config.words)),
    )


def features(utterances: speech.Utterances, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """Log-mel features of the first ``max_seconds`` of each utterance (padding frames zero)."""
    front = speech.log_mel(config.n_mels)
    samples = int(config.max_seconds * speech.SAMPLE_RATE)
    waves, _ = utterances.padded(samples)
    x, _ = audio.featurize(waves, np.minimum(utterances.lengths, samples), utterances.sample_rate, front)
    return x, np.array([config.words.index(t) for t in utterances.transcripts], np.int32)


# -- the stages ------------------------------------------------------------------------


def data(config: Config) -> dict:
    """Synthesised utterances (cached), their features, and a validation split of the training voices."""
    train, test = config.data.datasets("commands", words=config.words)
    x, y = features(train, config)
    try:
        (x_train, y_train), valid = fnn.data.split(x, y, test_fraction=config.valid_fraction,
                                                   seed=config.data.seed)
    except ValueError as error:  # too few utterances held out or kept for every word
        raise fnn.config.ConfigError(f"valid_fraction={config.valid_fraction}: {error}") from None
    intro = [f"{len(train):,} training utterances by {len(set(train.voices))} voices, {len(test):,} test "
             f"utterances by {len(set(test.voices))} unseen voices; {len(config.words)} words; "
             f"{x.shape[1]} frames x {x.shape[2]} mel bands each"]
    return {"train_set": (x_train, y_train), "eval_set": valid, "test_set": features(test, config),
            "test_voices": test.voices, "intro": intro}


def model(config: Config) -> dict:
    return {"model": make_model(config), "loss": fnn.losses.softmax_cross_entropy,
            "metrics": {"accuracy": fnn.metrics.accuracy}}


def report(model, state, test_set, test_voices, test, intro, config: Config, run=None) -> dict:
    """Test accuracy, per voice and overall, and the confusion matrix (plotted in the run)."""
    x_test, y_test = test_set
    logits = fnn.pipeline.predict(model, state, x_test, policy=config.train.precision)
    predicted = np.asarray(jnp.argmax(logits, -1))
    confusion = np.asarray(fnn.metrics.confusion_matrix(predicted, y_test, len(config.words)))
    correct = predicted == y_test
    by_voice = {v: float(correct[[t == v for t in test_voices]].mean()) for v in sorted(set(test_voices))}
    worst = sorted(by_voice.items(), key=lambda kv: kv[1])[:3]
    if run is not None:
        fnn.plots.confusion_matrix(confusion, run.directory / "confusion.png", title="spoken commands",
                                   labels=config.words)
    lines = [*intro,
             f"test accuracy {test['accuracy']:.4f} ({int(correct.sum())}/{len(y_test)}) on unseen voices",
             "hardest test voices: " + ", ".join(f"{v} {a:.2f}" for v, a in worst)]
    final = {"test_accuracy": test["accuracy"], "test_loss": test["loss"], "test_utterances": len(y_test),
             "worst_voice_accuracy": worst[0][1]}
    return {"final": final, "confusion_matrix": confusion, "report": lines}


PIPELINE = Pipeline(data, model, fnn.pipeline.optimizer, fnn.pipeline.batches, fnn.pipeline.train,
                    fnn.pipeline.test, report)
EXPERIMENT = Experiment(
    "spoken-commands", "recognise 20 spoken command words by unseen eSpeak NG voices (CNN on log-mels)",
    Config(), PIPELINE,
)


def run(config: Config = Config(), **options) -> dict:
    """Run the pipeline (no run directory unless ``run=`` is given); returns its values."""
    return EXPERIMENT(config, **options)


if __name__ == "__main__":
    fnn.cli.experiment_main("spoken-commands", program=True)
