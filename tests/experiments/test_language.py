"""The language experiments on a reduced budget: they learn, well past their baselines."""

import re

import numpy as np
import pytest

from experiments import char_lm, text_classify
from fnn.pipeline import TrainConfig

TINY_LM = dict(steps=150, batch_size=16, length=64, width=64, layers=1, heads=2, dropout=0.0,
               eval_every=75, eval_windows=128, sample_length=40, learning_rate=5e-3)


@pytest.mark.parametrize("model,precision", [("transformer", "float32"), ("lstm", "float32"),
                                             ("transformer", "bfloat16")])
def test_char_models_beat_the_unigram_baseline_and_write_text(model, precision):
    values = char_lm.run(char_lm.Config(model=model, precision=precision, **TINY_LM))
    result = {**values, **values["final"]}
    assert result["unigram_bits_per_char"] == pytest.approx(4.37, abs=0.01)
    assert result["valid_bits_per_char"] < result["unigram_bits_per_char"] - 0.8
    assert [r["step"] for r in result["curve"]] == [75, 150]
    assert result["curve"][1]["valid_bits_per_char"] < result["curve"][0]["valid_bits_per_char"]
    assert result["sample"].startswith("The ") and len(result["sample"]) == 44


@pytest.mark.parametrize(
    "override, says",
    [
        ("steps=0", "steps must be at least 1, got 0"),
        ("heads=-2", "heads must be at least 1, got -2"),
        ("held_out_every=1", "held_out_every must be at least 2, got 1"),
        ("learning_rate=0", "learning_rate must be positive, got 0.0"),
        ("dropout=1", "dropout must be in [0, 1), got 1.0"),
        ("temperature=-0.5", "temperature must be positive, got -0.5"),
        ("model=lstm dropout=0.5", "dropout must be 0 for model=lstm, which has none, got 0.5"),
    ],
)
def test_char_lm_rejects_bad_config_values_by_name(override, says):
    import fnn

    with pytest.raises(fnn.config.ConfigError, match=re.escape(says)):
        fnn.config.override(char_lm.Config(), override.split())


@pytest.mark.parametrize("steps, warmup", [(1, 0), (60, 30), (100, 50), (1000, 100)])
def test_char_lm_warms_up_for_100_steps_or_half_a_shorter_run(steps, warmup):
    config = char_lm.Config(steps=steps, learning_rate=4e-3)
    rate = char_lm.schedule(config)
    if warmup:
        assert float(rate(0)) == 0.0 and float(rate(warmup // 2)) == pytest.approx(2e-3)
    assert float(rate(warmup)) == pytest.approx(4e-3)
    assert float(rate(steps)) == pytest.approx(4e-4)


def test_unigram_bits_is_the_cross_entropy_of_smoothed_counts():
    train, valid = np.array([0, 0, 0, 1]), np.array([0, 1])
    p = np.array([4, 2, 1]) / 7  # add-one counts over a vocabulary of 3
    assert char_lm.unigram_bits(train, valid, 3) == pytest.approx(-(np.log2(p[0]) + np.log2(p[1])) / 2)


def test_eval_windows_are_spread_and_shifted():
    x, y = char_lm.eval_windows(np.arange(1000), 10, 5)
    assert x.shape == y.shape == (5, 10)
    np.testing.assert_array_equal(y, x + 1)
    assert x[0, 0] == 0 and x[-1, -1] == 998  # the last window ends where the last target is the last id


def test_char_lm_refuses_a_prompt_the_vocabulary_lacks_before_training():
    import fnn

    with pytest.raises(fnn.config.ConfigError, match=re.escape("prompt has characters the addresses never use: ['~']")):
        char_lm.data(char_lm.Config(prompt="Th~"))


def test_char_lm_refuses_a_window_longer_than_the_held_out_text_before_training():
    import fnn

    # was an IndexError in eval_windows, in the train stage, after the model was made
    config = char_lm.Config(model="lstm", held_out_every=200, length=31000)
    with pytest.raises(fnn.config.ConfigError, match=re.escape("length must be less than the 30,913 held-out "
                                                               "characters (held_out_every=200), got 31000")):
        char_lm.data(config)


def test_generate_rejects_a_prompt_longer_than_half_a_window():
    with pytest.raises(ValueError, match="the prompt must have 1 to 32 characters, got 40"):
        char_lm.generate(None, None, np.zeros(40, np.int32), char_lm.Config(length=64), None)


@pytest.mark.parametrize(
    "options, margin",
    [
        (dict(model="bag", train=TrainConfig(epochs=2, learning_rate=3e-3)), 0.25),
        (dict(model="rnn", max_words=60, hidden=32, train=TrainConfig(epochs=1, learning_rate=3e-3)), 0.15),
        (dict(model="bag", label="party", train=TrainConfig(epochs=2, learning_rate=3e-3)), 0.05),
    ],
    ids=["era-bag", "era-rnn", "party-bag"],
)
def test_classifiers_beat_the_majority_baseline_on_unseen_addresses(options, margin):
    result = text_classify.run(text_classify.Config(**options))["final"]
    assert 0.45 < result["majority_baseline"] < 0.55
    assert result["test_accuracy"] > result["majority_baseline"] + margin


def test_text_classify_tests_no_paragraph_a_training_address_repeats_and_honours_the_optimizer():
    made = text_classify.data(text_classify.Config())
    (ids, mask), _ = made["test_set"]
    (train_ids, train_mask), _ = made["train_set"]
    seen = {tuple(row[m]) for row, m in zip(np.asarray(train_ids), np.asarray(train_mask))}
    assert not any(tuple(row[m]) in seen for row, m in zip(np.asarray(ids), np.asarray(mask)))
    assert "leaving out 36 that a training address repeats word for word" in made["intro"][0]
    # adam (the default) is AdamW; sgd and rmsprop are what they say (sgd ran as AdamW before)
    params = {"w": np.zeros(2, np.float32)}
    adam = text_classify.optimizer(text_classify.Config())["optimizer"].init(params)
    sgd = text_classify.optimizer(text_classify.Config(train=TrainConfig(optimizer="sgd", momentum=0.5)))
    assert "weight_decay" in adam.hyperparams
    assert float(sgd["optimizer"].init(params).hyperparams["momentum"]) == 0.5


@pytest.mark.parametrize("min_words, left", [(1000, 3), (3000, 0)])
def test_text_classify_refuses_a_min_words_that_leaves_fewer_paragraphs_than_a_batch(min_words, left):
    import fnn

    # 3 paragraphs failed in the loader, not naming min_words; none failed in fnn.text.pad
    config = text_classify.Config(min_words=min_words, max_words=min_words)
    with pytest.raises(fnn.config.ConfigError, match=re.escape(
            f"min_words={min_words} leaves {left} training paragraphs, fewer than a batch (train.batch_size=64); "
            "the longest has 1,345 words")):
        text_classify.data(config)
    vocab = fnn.text.WordVocab.from_texts(["a few words"], max_size=10)
    with pytest.raises(fnn.config.ConfigError, match=re.escape("min_words=20 leaves 0 held-out paragraphs")):
        text_classify.paragraphs([], vocab, text_classify.Config(), what="held-out paragraphs")
