"""Shared fixtures: tiny models the tests build and train themselves, in seconds."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import uni_lab


class TinyCNN(nn.Module):
    """A small ReLU CNN over 3×16×16 inputs with 4 classes."""

    def __init__(self, classes: int = 4, bias: bool = True):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=bias), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1, stride=2, bias=bias), nn.ReLU())
        self.head = nn.Linear(8 * 8 * 8, classes, bias=bias)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def make_data(n: int = 64, seed: int = 0):
    """Images whose class is the brightest quadrant: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=g) * 0.5
    y = torch.randint(0, 4, (n,), generator=g)
    for i, c in enumerate(y.tolist()):
        r, col = divmod(c, 2)
        x[i, :, r * 8:(r + 1) * 8, col * 8:(col + 1) * 8] += 0.5
    return x, y


def train_tiny(bias: bool = True, steps: int = 60, seed: int = 0) -> uni_lab.Classifier:
    torch.manual_seed(seed)
    net = TinyCNN(bias=bias)
    x, y = make_data(seed=seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return uni_lab.wrap(net, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(16, 16), name="tiny")


@pytest.fixture(scope="session")
def tiny_model():
    return train_tiny()


@pytest.fixture(scope="session")
def tiny_batch():
    return make_data(n=4, seed=1)


@pytest.fixture(scope="session")
def real_model():
    return uni_lab.create_model("efficientnet_lite0")
