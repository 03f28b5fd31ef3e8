"""PyTorch (optional: used when ``torch`` is installed): ``nn.Module`` models and
``torch.optim.Adam``, eager; and the same compiled with ``torch.compile`` on request. It runs
where JAX runs: on the GPU when JAX's default backend is a GPU and PyTorch sees one
(``device()``), else on the CPU with every core this process may use.

Images are channels first (NCHW), as torch's convolutions are. ``nn.LSTM`` keeps two bias
vectors (input and hidden); the hidden one is zeroed and frozen, so the trained parameters
are the one-bias LSTM every other framework has.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from benchmarks.models import (
    D_MODEL,
    HEADS,
    LAYERS,
    LEARNING_RATE,
    LSTM_EMBED,
    LSTM_HIDDEN,
    MLP_DIM,
    MLP_WIDTHS,
    SEQ,
    SPECS,
    VOCAB,
    Bench,
)

THREADS = len(os.sched_getaffinity(0))  # as XLA's CPU client: every core this process may use


def device() -> torch.device:
    """Where PyTorch trains: CUDA when JAX's default backend is a GPU and PyTorch sees one
    (so a GPU table compares like with like), else the CPU."""
    import jax

    if jax.default_backend() == "gpu" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


class Block(nn.Module):
    def __init__(self, dropout: float = 0.0):  # on the attention weights and both residual branches
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D_MODEL, eps=1e-6), nn.LayerNorm(D_MODEL, eps=1e-6)
        self.attention = nn.MultiheadAttention(D_MODEL, HEADS, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(D_MODEL, MLP_DIM), nn.GELU(approximate="tanh"), nn.Linear(MLP_DIM, D_MODEL))
        self.drop = nn.Dropout(dropout)

    def forward(self, h, mask):
        a = self.ln1(h)
        h = h + self.drop(self.attention(a, a, a, attn_mask=mask, need_weights=False, is_causal=True)[0])
        return h + self.drop(self.mlp(self.ln2(h)))


class Model(nn.Module):
    def __init__(self, name: str, dropout: float = 0.0):  # the transformer's, embeddings included
        super().__init__()
        self.kind = kind = SPECS[name].kind
        if kind == "lstm":
            self.embed = nn.Embedding(VOCAB, LSTM_EMBED)
            self.rnn = nn.LSTM(LSTM_EMBED, LSTM_HIDDEN, batch_first=True)
            with torch.no_grad():
                self.rnn.bias_hh_l0.zero_()
            self.rnn.bias_hh_l0.requires_grad_(False)
            self.head = nn.Linear(LSTM_HIDDEN, VOCAB)
        elif kind == "transformer":
            self.embed = nn.Embedding(VOCAB, D_MODEL)
            self.pos = nn.Parameter(torch.randn(SEQ, D_MODEL) * 0.02)
            self.blocks = nn.ModuleList([Block(dropout) for _ in range(LAYERS)])
            self.drop = nn.Dropout(dropout)
            self.norm = nn.LayerNorm(D_MODEL, eps=1e-6)
            self.head = nn.Linear(D_MODEL, VOCAB)
            self.register_buffer("mask", torch.triu(torch.ones(SEQ, SEQ, dtype=torch.bool), 1))
        else:
            layers: list[nn.Module] = []
            if kind == "lenet":
                layers = [nn.Conv2d(1, 6, 5, padding="same"), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()]
                widths = (400, 120, 84, 10)
            else:
                widths = MLP_WIDTHS[name]
            for i, (a, b) in enumerate(zip(widths, widths[1:])):
                layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
            self.net = nn.Sequential(*layers)

    def forward(self, x):
        if self.kind == "lstm":
            return self.head(self.rnn(self.embed(x))[0])
        if self.kind == "transformer":
            t = x.shape[1]
            h = self.drop(self.embed(x)) + self.pos[:t]
            for block in self.blocks:
                h = block(h, self.mask[:t, :t])
            return self.head(self.norm(h))
        return self.net(x)


def make(name: str, batch: tuple, compile: bool = False, dropout: float = 0.0) -> Bench:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    where = device()
    if where.type == "cuda":  # JAX's default float32 products on a recent GPU use TF32: so do these
        torch.set_float32_matmul_precision("high")
    model = Model(name, dropout).to(where)  # in training mode, as nn.Module starts
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=LEARNING_RATE)
    x, y = batch
    if SPECS[name].kind == "lenet":
        x = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    x, y = torch.from_numpy(x), torch.from_numpy(y).long()
    if x.dtype == torch.int32:
        x = x.long()
    x, y = x.to(where), y.to(where)

    def loss_of(x, y):
        logits = model(x)
        return functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    forward = torch.compile(loss_of) if compile else loss_of

    def step(state, b):
        optimizer.zero_grad(set_to_none=True)
        loss = forward(*b)
        loss.backward()
        optimizer.step()
        return state, loss

    return Bench(step, None, (x, y), sum(p.numel() for p in trainable), lambda loss: loss.item())


def make_compiled(name: str, batch: tuple) -> Bench:
    return make(name, batch, compile=True)
