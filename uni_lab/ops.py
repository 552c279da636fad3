"""Small image operations that several plugins share."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import InputError


PADDINGS = {"reflect": "reflect", "zeros": "constant"}
ROUNDINGS = ("up", "nearest")


def gaussian_blur(x: torch.Tensor, sigma: float, *, padding: str = "reflect", truncate: float = 3.0,
                  rounding: str = "up") -> torch.Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` over H and W; ``sigma`` in pixels.

    The kernel ``exp(−t²/2σ²)``, normalised to sum 1, reaches ``truncate·σ`` pixels from its
    centre, rounded up (default) or to the nearest integer (``rounding="nearest"``, how
    ``scipy.ndimage.gaussian_filter`` sizes it). ``padding="reflect"`` (default) mirrors the
    image at its border and so cannot reach further than the image: the radius is also capped
    at the image size, and very large ``σ`` on small images blurs as far as it can.
    ``padding="zeros"`` treats the outside as black, with no cap (scipy's ``mode="constant"``).
    The defaults (reflect, 3σ, up) are what every caller in the toolkit used before there were options.
    """
    if padding not in PADDINGS or rounding not in ROUNDINGS or not truncate > 0:
        raise InputError(f"gaussian_blur needs padding in {tuple(PADDINGS)}, rounding in {ROUNDINGS} and "
                         f"truncate > 0; got padding='{padding}', rounding='{rounding}', truncate={truncate}.")
    if sigma <= 0:
        return x.clone()
    n, c, h, w = x.shape
    reach = truncate * sigma
    radius = int(math.ceil(reach)) if rounding == "up" else int(reach + 0.5)
    out = x
    for dim, size in ((2, h), (3, w)):
        r = max(1, min(radius, size - 1)) if padding == "reflect" else radius  # scipy: radius 0 is the identity
        t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = (k / k.sum()).view(1, 1, -1, 1) if dim == 2 else (k / k.sum()).view(1, 1, 1, -1)
        pad = (0, 0, r, r) if dim == 2 else (r, r, 0, 0)
        out = F.conv2d(F.pad(out.reshape(n * c, 1, *out.shape[2:]), pad, mode=PADDINGS[padding]), k).view(n, c, h, w)
    return out
