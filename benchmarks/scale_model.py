"""The benchmark's model, as a plugin file (``--plugins benchmarks/scale_model.py``).

``cnn64``: a small ReLU CNN for 64² RGB input (three stride-2 convolutions of 8, 16 and 32
channels, global average pooling, 10 classes) with random weights drawn from a fixed seed, so
that every process (the runs compared, torchrun's ranks, a killed run and its resume) builds
the same net (``--weights random`` would draw new weights in each process). Small, so that on
a 2-core machine a 5,000-image run takes minutes and the store's share of it shows.
"""
import torch
from torch import nn

import uni_lab


@uni_lab.model("cnn64")
def cnn64(weights=None):
    """A small seeded random-weights CNN for 64² input (benchmarks only)."""
    with torch.random.fork_rng():  # the global RNG stays as it was
        torch.manual_seed(13)
        net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    return uni_lab.Classifier(net, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(64, 64),
                              name="cnn64", weights="seeded")
