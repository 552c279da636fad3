"""The static baselines of docs/methods.md §2 (the unlearned one lives in ``uni.py``)."""
import torch

import uni_lab
from uni_lab.contracts import NonNegative
from uni_lab.ops import gaussian_blur
from uni_lab.seeding import draw


@uni_lab.baseline("black")
def black(x, model, target):
    """All zeros in pixel space."""
    return torch.zeros_like(x)


@uni_lab.baseline("white")
def white(x, model, target):
    """All ones in pixel space."""
    return torch.ones_like(x)


@uni_lab.baseline("mean")
def mean(x, model, target):
    """The image's per-channel mean, broadcast over the image."""
    return x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()


@uni_lab.baseline("uniform", random=True)
def uniform(x, model, target, seeds=None):
    """U(0, 1) noise, seeded per image."""
    return draw(x, seeds, "rand", salt=11)


@uni_lab.baseline("gaussian", random=lambda p: p["sigma"] > 0)
def gaussian(x, model, target, seeds=None, *, sigma: NonNegative = 0.15):
    """The image plus N(0, σ²) noise, clipped to [0, 1], seeded per image."""
    return (x + sigma * draw(x, seeds, "randn", salt=13)).clamp(0, 1)


@uni_lab.baseline("blur")
def blur(x, model, target, *, sigma: NonNegative = 10.0):
    """Gaussian blur of the image, σ in pixels (Sturmfels et al. 2020)."""
    return gaussian_blur(x, sigma)
