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
from fnn.layers.conv import Conv, ConvTranspose
from fnn.layers.dropout import Dropout
from fnn.layers.linear import Dense, Embedding
from fnn.layers.normalization import BatchNorm, GroupNorm, LayerNorm, RMSNorm
from fnn.layers.pooling import AvgPool, GlobalAvgPool, GlobalMaxPool, MaxPool
from fnn.layers.reshape import Flatten, Reshape

__all__ = [
    "ACTIVATIONS", "AvgPool", "BatchNorm", "Conv", "ConvTranspose", "Dense", "Dropout",
    "Embedding", "Flatten", "GlobalAvgPool", "GlobalMaxPool", "GroupNorm", "LayerNorm",
    "MaxPool", "RMSNorm", "Reshape", "activation", "elu", "gelu", "leaky_relu", "log_softmax",
    "relu", "sigmoid", "silu", "softmax", "softplus", "tanh",
]
