"""Classify scikit-learn's 8x8 handwritten digits with an MLP or a small convolutional net.

The data are the 1,797 digits of the UCI "Optical Recognition of Handwritten Digits"
set (Alpaydin and Kaynak, 1998) that ship with scikit-learn: 32x32 bitmaps written by
43 people, reduced to 8x8 grids whose entries count the pixels set in each 4x4 block
(0 to 16, scaled here to [0, 1]). Of them, 20% are held out, stratified by class, and
never trained on.

Two models, chosen with ``--model``:

* ``mlp``: a multilayer perceptron on the 64 pixel values, two hidden layers with
  dropout. It knows nothing of the image's layout: shuffle the pixels the same way in
  every image and it would learn as well.
* ``cnn``: a small convolutional network in the spirit of LeCun et al.'s LeNet (1989,
  1998): two 3x3 convolutions, max pooling, then a dense classifier with dropout.
  Convolutions share their weights across positions, so a stroke detector learned in
  one place works everywhere.

Training minimises the softmax cross-entropy with minibatches, using SGD with
momentum, Adam (Kingma and Ba, 2015) or RMSProp (Tieleman and Hinton, 2012). By
default each training image of the CNN is shifted by up to one pixel at random (data
augmentation). The MLP trains on the images as they are: it cannot reuse at one
position what it learned at another, and the shifts cost it about two points of test
accuracy (92-94% against 97-98% over seeds 0-2).

Measured over seeds 0-2 with the defaults (20 epochs, adam, relu) on a 2-core CPU:
CNN 99.2-99.7% test accuracy in about 5 s, MLP 97.2-98.3% in about 1 s. Sigmoid
units learn more slowly (MLP 92-94% in 20 epochs): the sigmoid's slope is at most 1/4
and vanishes where it saturates, so gradients shrink layer by layer.

Run: python -m experiments.digits [--model cnn|mlp] [--optimizer adam|sgd|rmsprop]
         [--activation relu|tanh|sigmoid] [--epochs 20] [--seed 0]
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fnn
from experiments.cli import parse_config


@dataclasses.dataclass(frozen=True)
class Config:
    model: str = dataclasses.field(default="cnn", metadata={"choices": ("cnn", "mlp")})
    optimizer: str = dataclasses.field(default="adam", metadata={"choices": ("adam", "sgd", "rmsprop")})
    activation: str = dataclasses.field(default="relu", metadata={"choices": ("relu", "tanh", "sigmoid")})
    learning_rate: float | None = None  # None: the optimizer's default below
    epochs: int = 20
    batch_size: int = 64
    width: int = 256  # units per hidden layer of the MLP
    dropout: float = 0.25
    augment: bool | None = None  # shift training images by up to one pixel; None: for the CNN only
    test_fraction: float = 0.2
    seed: int = 0  # the split, the initial weights, the batch order and the augmentation
    print_every: int = 5  # print the training metrics every this many epochs


LEARNING_RATES = {"adam": 1e-3, "sgd": 0.05, "rmsprop": 1e-3}
NUM_CLASSES = 10


def make_model(config: Config) -> fnn.Layer:
    act = fnn.activation(config.activation)
    if config.model == "mlp":
        return fnn.serial(
            fnn.Flatten(),
            fnn.Dense(config.width), act, fnn.Dropout(config.dropout),
            fnn.Dense(config.width), act, fnn.Dropout(config.dropout),
            fnn.Dense(NUM_CLASSES),
        )
    if config.model == "cnn":
        return fnn.serial(
            fnn.Conv(32, (3, 3)), act,  # 8x8x1  -> 8x8x32
            fnn.Conv(64, (3, 3)), act,  # 8x8x32 -> 8x8x64
            fnn.MaxPool((2, 2)),  # -> 4x4x64
            fnn.Flatten(),  # -> 1024
            fnn.Dense(128), act, fnn.Dropout(config.dropout),
            fnn.Dense(NUM_CLASSES),
        )
    raise ValueError(f"unknown model {config.model!r}; choose cnn or mlp")


def make_optimizer(config: Config) -> optax.GradientTransformation:
    if config.optimizer not in LEARNING_RATES:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; choose one of {', '.join(LEARNING_RATES)}")
    lr = config.learning_rate or LEARNING_RATES[config.optimizer]
    if config.optimizer == "sgd":
        return optax.sgd(lr, momentum=0.9)
    if config.optimizer == "adam":
        return optax.adam(lr)
    return optax.rmsprop(lr)


def random_shifts(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image moved by -1, 0 or +1 pixels along each axis, the gap filled with 0."""
    n, height, width, _ = images.shape
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
    dy = rng.integers(0, 3, n)  # where the 8x8 window starts in the 10x10 padded image
    dx = rng.integers(0, 3, n)
    rows = (dy[:, None] + np.arange(height))[:, :, None]  # [n, 8, 1]
    cols = (dx[:, None] + np.arange(width))[:, None, :]  # [n, 1, 8]
    return padded[np.arange(n)[:, None, None], rows, cols]


def run(config: Config, *, verbose: bool = False) -> dict:
    """Train one model and return its test metrics; with ``verbose``, print as it goes."""
    say = print if verbose else (lambda *args: None)

    images, labels = fnn.data.load_digits()
    (x_train, y_train), (x_test, y_test) = fnn.data.split(
        images, labels, test_fraction=config.test_fraction, seed=config.seed
    )
    model = make_model(config)
    optimizer = make_optimizer(config)
    x_spec = jax.ShapeDtypeStruct((config.batch_size, *x_train.shape[1:]), jnp.float32)
    if verbose:
        say(fnn.summary(model, x_spec))
        say()

    loss = fnn.losses.softmax_cross_entropy
    metrics = {"accuracy": fnn.metrics.accuracy}
    state = fnn.init_train_state(model, optimizer, jax.random.key(config.seed), x_spec)
    train_step = fnn.make_train_step(model, optimizer, loss, metrics=metrics)
    eval_step = fnn.make_eval_step(model, loss, metrics=metrics)

    batches = fnn.data.batches((x_train, y_train), config.batch_size, seed=config.seed, epochs=config.epochs)
    augment = config.model == "cnn" if config.augment is None else config.augment
    if augment:
        rng = np.random.default_rng(config.seed)
        batches = ((random_shifts(x, rng), y) for x, y in batches)

    steps_per_epoch = len(x_train) // config.batch_size

    def log(record):  # called by fnn.fit once per epoch with the epoch's mean metrics
        epoch = record["step"] // steps_per_epoch
        if epoch == 1 or epoch % config.print_every == 0 or epoch == config.epochs:
            say(f"epoch {epoch:3d}  train loss {record['loss']:.4f}  train accuracy {record['accuracy']:.4f}")

    start = time.perf_counter()
    state, history = fnn.fit(train_step, state, batches, log_every=steps_per_epoch, log=log)
    test = fnn.evaluate(eval_step, state, fnn.data.batches((x_test, y_test), 512, drop_remainder=False))
    seconds = time.perf_counter() - start  # training and evaluation, compilation included

    logits, _ = jax.jit(model.apply)(state.params, state.model_state, x_test)
    confusion = fnn.metrics.confusion_matrix(jnp.argmax(logits, -1), y_test, NUM_CLASSES)
    return {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "test_examples": len(y_test),
        "confusion_matrix": np.asarray(confusion),
        "history": history,  # one record per epoch: step, loss, accuracy (training)
        "seconds": seconds,
    }


def main() -> None:
    config = parse_config(Config, __doc__.splitlines()[0])

    lr = config.learning_rate or LEARNING_RATES[config.optimizer]
    print(f"digits: {config.model}, {config.optimizer} (lr {lr:g}), {config.activation}, "
          f"{config.epochs} epochs of batch {config.batch_size}, seed {config.seed}\n")
    result = run(config, verbose=True)
    correct = round(result["test_accuracy"] * result["test_examples"])
    print(f"\ntest accuracy {result['test_accuracy']:.4f} ({correct}/{result['test_examples']}), "
          f"trained in {result['seconds']:.1f} s")
    print("confusion matrix (rows: true digit, columns: predicted):")
    print(result["confusion_matrix"])


if __name__ == "__main__":
    main()
