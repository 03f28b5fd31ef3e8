"""The layer catalogue, one module per family."""

from fnn.layers.activations import (
    ACTIVATIONS,
    activation,
    elu,
    gelu,
    leaky_relu,
    log_softmax,
    relu,
    sigmoid,
    silu,
    softmax,
    softplus,
    tanh,
)
from fnn.layers.attention import (
    LearnedPositions,
    MultiHeadAttention,
    SinusoidalPositions,
    dot_product_attention,
    rotary,
    sinusoids,
)
from fnn.layers.conv import Conv, ConvTranspose
from fnn.layers.dropout import Dropout
from fnn.layers.linear import Dense, Embedding
from fnn.layers.normalization import BatchNorm, GroupNorm, LayerNorm, RMSNorm
from fnn.layers.pooling import AvgPool, GlobalAvgPool, GlobalMaxPool, MaxPool
from fnn.layers.recurrent import GRU, LSTM, Bidirectional, Cell, Recurrent, SimpleRNN
from fnn.layers.reshape import Flatten, Reshape
from fnn.layers.sequence import KeepMask, SequencePool, lengths_to_mask
from fnn.layers.transformer import TransformerBlock, TransformerLM, sample

__all__ = [
    "ACTIVATIONS", "AvgPool", "BatchNorm", "Bidirectional", "Cell", "Conv", "ConvTranspose",
    "Dense", "Dropout", "Embedding", "Flatten", "GRU", "GlobalAvgPool", "GlobalMaxPool",
    "GroupNorm", "KeepMask", "LSTM", "LayerNorm", "LearnedPositions", "MaxPool",
    "MultiHeadAttention", "RMSNorm", "Recurrent", "Reshape", "SequencePool", "SimpleRNN",
    "SinusoidalPositions", "TransformerBlock", "TransformerLM", "activation",
    "dot_product_attention", "elu", "gelu", "leaky_relu", "lengths_to_mask", "log_softmax", "relu",
    "rotary", "sample", "sigmoid", "silu", "sinusoids", "softmax", "softplus", "tanh",
]
