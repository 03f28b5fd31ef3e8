"""Character-level language models: an LSTM and a small transformer, in bits per character.

CORPUS_DOC

A language model gives the probability of each next character given the ones before;
its quality on held-out text is the cross-entropy in bits per character (bpc): the
number of bits an ideal coder driven by the model would spend per character. A
unigram model, which knows only how often each character occurs, is the baseline.

Two models, chosen with ``--model``:

* ``lstm``: embedding -> LSTM (Hochreiter and Schmidhuber, 1997) -> linear readout,
  trained by backpropagation through time over windows of ``length`` characters.
* ``transformer``: a decoder-only transformer (Vaswani et al., 2017) with causal
  self-attention, pre-norm blocks and learned positions.

Both train with Adam on random windows of the training text, are evaluated on every
window of the held-out text, and then continue a prompt by sampling, so you can read
what they learned.

Measured with the defaults (1,000 steps of 64 windows of 64 characters, seed 0) on a
2-core CPU: the transformer (2 blocks, width 128, 0.43 M parameters) reaches 1.86
bits/char on the held-out addresses, the LSTM (128 units, 0.12 M parameters) 2.28,
against the unigram baseline's 4.37. Whole runs (data, compilation, training,
checkpoints, sampling) took 315 s and 123 s on a machine that ran the raw-JAX
benchmark at about 55% of the speed of the one where training alone took 150 s and
56 s. With ``precision=bfloat16`` the transformer reaches the same 1.855 bits/char (520 s
for the whole run, 478 s of user CPU, with another job on the machine for most of it).

Run: fnn run char-lm [model=transformer|lstm] [steps=1000] [seed=0] [precision=bfloat16]
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fnn
from experiments import corpus
from fnn.pipeline import Experiment, Pipeline

__doc__ = __doc__.replace("CORPUS_DOC", corpus.DESCRIPTION)


@dataclasses.dataclass(frozen=True)
class Config:
    model: str = dataclasses.field(default="transformer", metadata={"choices": ("transformer", "lstm")})
    steps: int = 1000
    batch_size: int = 64
    length: int = 64  # characters per training window
    learning_rate: float = 4e-3
    width: int = 128  # LSTM hidden size, or the transformer's d_model
    layers: int = 2  # transformer blocks
    heads: int = 4
    dropout: float = 0.0  # the transformer's (10 million characters: at this budget the models underfit)
    held_out_every: int = 10  # every 10th address is held-out text, never trained on
    eval_every: int = 250
    eval_windows: int = 1024  # held-out windows scored at each evaluation (spread over all of it)
    sample_length: int = 300
    prompt: str = "The "
    temperature: float = 0.8
    seed: int = 0
    # what the model computes in while training and evaluating (fnn.precision); the
    # parameters stay float32, and sampling runs in float32
    precision: str = dataclasses.field(default="float32", metadata={"choices": fnn.precision.DTYPES})

    def __post_init__(self):
        fnn.config.check_choices(self)
        # held_out_every 1 would hold every address out and leave nothing to train on
        fnn.config.check_at_least(self, (
            ("steps", 1), ("batch_size", 1), ("length", 1), ("width", 1), ("layers", 1), ("heads", 1),
            ("held_out_every", 2), ("eval_every", 1), ("eval_windows", 1), ("sample_length", 0),
        ))
        fnn.config.check_seeds(self, ["seed"])
        fnn.config.check_that(self, (
            ("learning_rate", self.learning_rate > 0, "positive"),
            ("dropout", 0 <= self.dropout < 1, "in [0, 1)"),
            ("dropout", self.model == "transformer" or self.dropout == 0, "0 for model=lstm, which has none"),
            ("temperature", self.temperature > 0, "positive"),
            # the sample continues the prompt in windows of length // 2 characters of context
            ("prompt", 1 <= len(self.prompt) <= self.length // 2,
             f"1 to length // 2 = {self.length // 2} characters"),
            ("heads", self.model != "transformer" or self.width % self.heads == 0,
             f"a divisor of width {self.width} (the transformer's d_model)"),
        ))


def make_model(config: Config, vocab_size: int) -> fnn.Layer:
    if config.model == "lstm":
        return fnn.serial(
            fnn.Embedding(vocab_size, 64), fnn.Recurrent(fnn.LSTM(config.width)), fnn.Dense(vocab_size)
        )
    return fnn.TransformerLM(
        vocab_size,
        config.width,
        config.heads,
        config.layers,
        max_len=config.length,
        dropout=config.dropout,
    )


def unigram_bits(train: np.ndarray, valid: np.ndarray, vocab_size: int) -> float:
    """Bits per character of the add-one smoothed character frequencies of ``train`` on ``valid``."""
    counts = np.bincount(train, minlength=vocab_size) + 1.0
    return float(-np.mean(np.log2(counts[valid] / counts.sum())))


def eval_windows(ids: np.ndarray, length: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` windows spread evenly over ``ids`` (all of them if fewer fit), as ``(x, y)``
    with ``y`` shifted by one: the same held-out characters at every evaluation. ``ids`` must
    be longer than ``length`` (the data stage checks the held-out text is)."""
    starts = np.unique(np.linspace(0, len(ids) - length - 1, count).astype(int))
    window = ids[starts[:, None] + np.arange(length + 1)]
    return window[:, :-1], window[:, 1:]


def generate(model: fnn.Layer, params, prompt: np.ndarray, config: Config, key: jax.Array) -> np.ndarray:
    """``prompt`` continued by ``config.sample_length`` sampled characters.

    The models were trained on windows of ``config.length`` characters, so the text is
    written in rounds: each continues the last ``length // 2`` characters (its context)
    by up to ``length // 2`` more, never asking a model about a position it was not
    trained on.
    """
    if not 1 <= len(prompt) <= config.length // 2:
        raise ValueError(f"the prompt must have 1 to {config.length // 2} characters, got {len(prompt)}")
    tokens = np.asarray(prompt)
    while len(tokens) < len(prompt) + config.sample_length:
        context = tokens[-(config.length // 2) :]
        steps = min(config.length - len(context), len(prompt) + config.sample_length - len(tokens))
        out = fnn.sample(
            model,
            params,
            context[None],
            steps,
            key=jax.random.fold_in(key, len(tokens)),
            temperature=config.temperature,
            use_cache=isinstance(model, fnn.TransformerLM),
        )
        tokens = np.concatenate([tokens, np.asarray(out[0, len(context) :])])
    return tokens


# -- the stages ------------------------------------------------------------------------


def data(config: Config) -> dict:
    """The training and held-out character streams, the vocabulary and the unigram baseline."""
    kept, held_out = corpus.split(corpus.speeches(), config.held_out_every)
    train_text = "\n\n".join(s.text for s in kept)
    valid_text = "\n\n".join(s.text for s in held_out)
    vocab = fnn.text.CharVocab.from_text(train_text + valid_text)
    unknown = sorted(set(config.prompt) - set(vocab.chars))
    if unknown:  # found here, not after training, when the sample stage encodes the prompt
        raise fnn.config.ConfigError(f"prompt has characters the addresses never use: {unknown}")
    train, valid = vocab.encode(train_text), vocab.encode(valid_text)
    for text, ids in (("training", train), ("held-out", valid)):  # a window is length + 1 characters
        if config.length >= len(ids):
            raise fnn.config.ConfigError(f"length must be less than the {len(ids):,} {text} characters "
                                         f"(held_out_every={config.held_out_every}), got {config.length}")
    baseline = unigram_bits(train, valid, vocab.size)
    intro = [
        f"{len(kept)} addresses ({len(train):,} characters) to train on, {len(held_out)} held out "
        f"({len(valid):,}); {vocab.size} distinct characters",
        f"unigram baseline: {baseline:.3f} bits/char on the held-out text",
    ]
    return {"train_ids": train, "valid_ids": valid, "vocab": vocab, "baseline": baseline, "intro": intro}


def bits_per_char(outputs, targets) -> jax.Array:
    return fnn.losses.softmax_cross_entropy(outputs, targets) / math.log(2)


def schedule(config: Config) -> optax.Schedule:
    """The learning rate: a linear warm-up from 0 over 100 steps (half the run when it is
    shorter: the cosine after the warm-up needs steps of its own), then a cosine decay that
    reaches a tenth of ``learning_rate`` at step ``steps``, one after the last (steps count
    from 0). At the last of the default 1,000 steps it is 0.100003 of ``learning_rate``; a
    short run ends higher, at 0.186 of it when ``steps`` is 10.

    Example:
        >>> rate = schedule(Config(steps=10, learning_rate=1.0))
        >>> [round(float(rate(step)), 3) for step in (0, 5, 9, 10)]
        [0.0, 1.0, 0.186, 0.1]
    """
    warmup = min(100, config.steps // 2)
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, config.steps,
                                              config.learning_rate / 10)


def model(config: Config, vocab) -> dict:
    return {
        "model": make_model(config, vocab.size),
        "optimizer": optax.chain(optax.clip_by_global_norm(1.0),
                                 optax.adamw(schedule(config), weight_decay=0.01)),
        "loss": fnn.losses.softmax_cross_entropy,
        "metrics": {"bits_per_char": bits_per_char},
    }


def train(model, optimizer, loss, metrics, train_ids, valid_ids, config: Config, run=None,
          progress: bool = False) -> dict:
    """Adam on random windows of the training text; every ``eval_every`` steps, bits per
    character on the same spread of held-out windows."""
    x_spec = jax.ShapeDtypeStruct((config.batch_size, config.length), jnp.int32)
    policy = fnn.precision.policy(config.precision)
    state = fnn.init_train_state(model, optimizer, jax.random.key(config.seed), x_spec, policy=policy)
    step = fnn.make_train_step(model, optimizer, loss, metrics=metrics, policy=policy)
    eval_step = fnn.make_eval_step(model, loss, metrics=metrics, policy=policy)
    held_out = eval_windows(valid_ids, config.length, config.eval_windows)

    def evaluate(state):
        return fnn.evaluate(eval_step, state, fnn.pipeline.loader_in_order(held_out, 128))

    batches = fnn.text.lm_loader(train_ids, config.batch_size, config.length, seed=config.seed,
                                 steps=config.steps)
    state, history = fnn.loop.train_loop(
        step, state, batches, run=run, log_every=config.eval_every, evaluate=evaluate,
        eval_every=config.eval_every, checkpoint_every=config.eval_every, progress=progress,
        stats=(stats := {}),
    )
    return {"state": state, "history": history, "parameters": fnn.summary(model, x_spec).total_params,
            "loop_stats": stats}


def sample(model, state, vocab, config: Config, run=None) -> dict:
    """The prompt continued by the trained model (also written to the run's sample.txt)."""
    key = jax.random.key(config.seed + 1)
    tokens = generate(model, state.params, vocab.encode(config.prompt), config, key)
    text = vocab.decode(tokens)
    if run is not None:
        (run.directory / "sample.txt").write_text(text + "\n")
    return {"sample": text}


def report(history, baseline, sample, parameters, intro, config: Config) -> dict:
    train = {r["step"]: r for r in history if r["split"] == "train"}
    curve = [
        {"step": r["step"], "train_bits_per_char": train[r["step"]]["bits_per_char"],
         "valid_bits_per_char": r["bits_per_char"]}
        for r in history if r["split"] == "eval"
    ]
    lines = [*intro]
    lines += [f"step {c['step']:5d}  train {c['train_bits_per_char']:.3f} bits/char  "
              f"held-out {c['valid_bits_per_char']:.3f}" for c in curve]
    lines.append(f"held-out {curve[-1]['valid_bits_per_char']:.3f} bits/char against the unigram "
                 f"baseline's {baseline:.3f}; {parameters:,} parameters")
    lines.append(f"sample (temperature {config.temperature}):\n{sample}")
    final = {"valid_bits_per_char": curve[-1]["valid_bits_per_char"], "unigram_bits_per_char": baseline,
             "parameters": parameters}
    return {"final": final, "curve": curve, "report": lines}


PIPELINE = Pipeline(data, model, train, sample, report)
EXPERIMENT = Experiment(
    "char-lm", "character-level LSTM or transformer language model of the State of the Union addresses",
    Config(), PIPELINE,
)


def run(config: Config = Config(), **options) -> dict:
    """Train, evaluate in bits per character, and sample; returns the pipeline's values."""
    return EXPERIMENT(config, **options)


if __name__ == "__main__":
    fnn.cli.experiment_main("char-lm", program=True)
