"""Small image operations that several plugins share."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` with reflect padding; ``sigma`` in pixels.

    The kernel is truncated at ``3σ`` and at the image size (reflect padding cannot reach
    further than the image), so very large ``σ`` on small images blurs as far as it can.
    """
    if sigma <= 0:
        return x.clone()
    n, c, h, w = x.shape
    out = x
    for dim, size in ((2, h), (3, w)):
        radius = max(1, min(int(math.ceil(3 * sigma)), size - 1))
        t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = (k / k.sum()).view(1, 1, -1, 1) if dim == 2 else (k / k.sum()).view(1, 1, 1, -1)
        pad = (0, 0, radius, radius) if dim == 2 else (radius, radius, 0, 0)
        out = F.conv2d(F.pad(out.reshape(n * c, 1, *out.shape[2:]), pad, mode="reflect"), k).view(n, c, h, w)
    return out
