"""Captum on uni_lab's terms, both ways.

Inward: the helpers the Captum-backed plugins share (``lime``, ``kernel_shap``,
``gradient_shap``, ``deeplift_shap``, ``occlusion``, ``grad_cam``, ``infidelity``): the
forward function a Captum attribution class sees, per-image seeding of Captum's draws from
the global random generators, and channel-less maps spread over the three channels.

Outward: :class:`UNI`, :class:`IG` and :func:`attribution_class` make any registered
uni_lab method a Captum attribution class (``UNI(forward_func).attribute(inputs,
target=..., n_steps=...)``), so Captum's ``NoiseTunnel`` and metrics wrap it.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from .engine import check_output
from .seeding import derived_seeds


class Scores(torch.nn.Module):
    """``F(x)`` as Captum sees it: the classifier's softmax or its logits, pixel space in."""

    def __init__(self, model, output: str = "prob"):
        super().__init__()
        self.model = model
        self.output = check_output(output)

    def forward(self, x):
        logits = self.model(x)
        return logits.softmax(-1) if self.output == "prob" else logits


@contextlib.contextmanager
def seeded(seed):
    """Captum draws from torch's and numpy's global generators; ``seed`` fixes both for one call,
    and both are restored afterwards. ``None`` leaves them alone (an unseeded in-memory call)."""
    if seed is None:
        yield
        return
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed) % (1 << 63))
        np.random.seed(int(seed) % (1 << 32))
        try:
            yield
        finally:
            np.random.set_state(state)


def image_seeds(seeds, tag: str, n: int) -> list:
    """One seed per image for the stream ``tag`` (``None`` each when the call has no seeds): an
    image's draws never depend on the batch it is in."""
    derived = derived_seeds(seeds, tag)
    return [None] * n if derived is None else derived.tolist()


def spread(map_: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """``(N, 1, H, W)`` → ``(N, C, H, W)`` with each channel ``map / C``: maps without channels
    (XRAI, Grad-CAM) are stored so that ``Σ_c A_c`` is the map itself."""
    return (map_ / channels).expand(-1, channels, -1, -1).contiguous()
