"""fnn: a functional neural-network library on JAX.

A model is an immutable layer description with two pure functions, ``init`` and
``apply``; parameters and state are plain nested dicts; training is one compiled step.
"""

from fnn import (
    audio,
    autodiff,
    checkpoint,
    cli,
    config,
    ctc,
    data,
    distributed,
    hostmem,
    initializers,
    loop,
    losses,
    metrics,
    pipeline,
    plots,
    precision,
    rl,
    runs,
    speech,
    text,
)
from fnn.autodiff import reverse_mode_only
from fnn.core import (
    Fn,
    Identity,
    Layer,
    LayerError,
    Node,
    Parallel,
    Remat,
    Residual,
    Serial,
    ShapeError,
    fan_in_concat,
    fan_in_sum,
    fan_out,
    identity,
    parallel,
    remat,
    residual,
    serial,
)
from fnn.layers import *  # noqa: F403  (the catalogue's __all__)
from fnn.layers import __all__ as _layers
from fnn.summary import Summary, summary
from fnn.train import (
    TrainState,
    evaluate,
    fit,
    init_train_state,
    make_eval_step,
    make_train_step,
    per_example_grads,
)

__version__ = "0.1.0"

__all__ = [
    "Fn", "Identity", "Layer", "LayerError", "Node", "Parallel", "Remat", "Residual", "Serial",
    "ShapeError", "Summary", "TrainState", "audio", "autodiff", "checkpoint", "cli", "config", "ctc", "data",
    "distributed", "evaluate", "hostmem", "fan_in_concat", "fan_in_sum",
    "fan_out", "fit", "identity", "init_train_state", "initializers", "loop", "losses",
    "make_eval_step", "make_train_step", "metrics", "parallel", "per_example_grads", "pipeline",
    "plots", "precision", "remat", "residual", "reverse_mode_only", "rl", "runs", "serial", "speech",
    "summary", "text", *_layers,
]
