"""The speech experiments on a reduced budget: unseen voices recognised well above chance."""

import re

import numpy as np
import pytest

from experiments import spoken_commands, spoken_digits
from fnn import pipeline, speech
from fnn.config import ConfigError
from fnn.pipeline import TrainConfig

ACCENTS = ("en", "en-us")


def test_command_words_are_recognised_in_unseen_voices(tmp_path):
    config = spoken_commands.Config(
        words=("yes", "no", "stop", "go"),
        data=speech.VoiceSplit(accents=ACCENTS, train_variants=("m1", "m2", "f1", "f3"),
                               test_variants=("m3", "f2"), copies=4, cache=str(tmp_path)),
        train=TrainConfig(epochs=8, batch_size=16),
    )
    values = spoken_commands.run(config)
    final = values["final"]
    assert final["test_utterances"] == 2 * 2 * 4  # 2 accents x 2 test variants x 4 words
    assert final["test_accuracy"] > 0.75  # chance is 0.25
    assert values["confusion_matrix"].sum() == 16
    assert "on unseen voices" in values["report"][1]


def digits_config(tmp_path, **options):
    data = speech.VoiceSplit(accents=ACCENTS, train_variants=("m1", "m2", "f1", "f3"), test_variants=("m3",),
                             copies=30, test_copies=8, cache=str(tmp_path))
    return spoken_digits.Config(data=data, max_digits=3, hidden=48, channels=64, examples=3,
                                train=TrainConfig(epochs=12, batch_size=16, learning_rate=3e-3), **options)


def test_digit_strings_are_transcribed_by_ctc_in_a_run_directory(tmp_path):
    run, values = pipeline.start(spoken_digits.EXPERIMENT, digits_config(tmp_path / "cache"), tmp_path / "run",
                                 progress=False)
    final = values["final"]
    assert final["test_strings"] == 2 * 8
    assert final["digit_error_rate"] < 0.5  # an untrained model deletes nearly everything: rate ~1
    assert set("".join(values["decoded"])) <= set(speech.DIGIT_SYMBOLS)
    assert (run.directory / "confusion.png").exists() and (run.directory / "final.json").exists()
    history = values["history"]
    losses = [r["loss"] for r in history if r.get("split") == "train"]
    assert losses[-1] < losses[0] / 2
    assert "reference -> decoded" in values["report"][2]


def test_transcripts_that_cannot_fit_the_model_are_refused_before_training(tmp_path):
    config = digits_config(tmp_path, stack=40)  # 0.4 s per output step: too few for three digits
    with pytest.raises(ValueError, match=r"spoken-digits: utterance \d+'s transcript of \d labels needs at least"):
        spoken_digits.data(config)
    # a validation split of no string: the run failed at its first evaluation, after training
    with pytest.raises(ValueError, match=r"valid_fraction: 0.001 of the \d+ training strings is none"):
        spoken_digits.data(digits_config(tmp_path, valid_fraction=0.001))


def test_a_validation_split_without_every_word_is_a_config_error(tmp_path):
    """It failed inside scikit-learn, in its own parameter names."""
    data = speech.VoiceSplit(accents=("en-us",), train_variants=("m1", "f1"), test_variants=("m3",), copies=1,
                             cache=str(tmp_path))
    config = spoken_commands.Config(words=("yes", "no"), data=data, valid_fraction=0.25)
    with pytest.raises(ConfigError, match=re.escape("valid_fraction=0.25: split: holding out 0.25 of 4 examples "
                                                    "leaves 1 held out and 3 kept, but each part needs one of each "
                                                    "of the 2 classes")):
        spoken_commands.data(config)


def test_labels_and_the_digit_confusion_matrix():
    labels, mask = spoken_digits.encode(["30o", "7"])
    assert labels.tolist() == [[4, 1, 11], [8, 0, 0]] and mask.sum(1).tolist() == [3, 1]
    assert spoken_digits.decode([4, 1, 11]) == "30o"
    with pytest.raises(ValueError, match="transcript '3x' has symbols outside"):
        spoken_digits.encode(["3x"])
    matrix = spoken_digits.digit_confusion(["123", "45"], ["173", "456"])
    none = len(speech.DIGIT_SYMBOLS)
    assert matrix[1, 1] == 1 and matrix[2, 7] == 1 and matrix[none, 6] == 1 and matrix.sum() == 6
    assert np.trace(matrix) == 4
