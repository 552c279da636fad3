"""Post-hoc bias (docs/methods.md §6): how much of a map is explained by the baseline or the image itself.

Each is computed over the pixels of one image:

- colour: ``corr(|A_i|, |x_i − x'_i|)`` over channel-pixels; a static baseline puts attribution
  where the image differs from it in colour (black IG lights up bright pixels). NaN without a baseline.
- intensity: ``corr(|A_i|, x_i)``.
- texture: share of ``Σ_c |A_c|`` that falls in smooth regions, the pixels whose grey-level
  Sobel gradient magnitude is at most the image's ``smooth_quantile`` quantile (0.5: half the
  pixels, so 0.5 is the unbiased share).
- frequency: share of the spectral power of ``Σ_c A_c`` (mean removed, so the DC term does not
  count) at radial frequencies above ``high_frequency`` cycles/pixel (0.25 = half the Nyquist
  frequency).
"""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Interval

import uni_lab
from uni_lab.contracts import NonNegative

from .metric_robustness import pearson_rows

SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the grey image, ``(N, H, W)``, edge-replicated."""
    grey = x.mean(1, keepdim=True).double()
    k = torch.stack([SOBEL, SOBEL.T]).unsqueeze(1).to(grey)
    g = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), k)
    return g.norm(dim=1)


def high_frequency_share(maps: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Share of the power of ``(N, H, W)`` maps (mean removed) above ``cutoff`` cycles/pixel."""
    m = maps.double() - maps.double().mean((1, 2), keepdim=True)
    power = torch.fft.fft2(m).abs() ** 2
    h, w = m.shape[1:]
    fy, fx = torch.fft.fftfreq(h, dtype=torch.float64), torch.fft.fftfreq(w, dtype=torch.float64)
    radius = (fy.view(-1, 1) ** 2 + fx.view(1, -1) ** 2).sqrt().to(m.device)
    total = power.sum((1, 2))
    share = (power * (radius > cutoff)).sum((1, 2)) / total.clamp_min(1e-300)
    return torch.where(total > 0, share, torch.full_like(share, float("nan")))


@uni_lab.metric("bias")
def bias(x, attribution, explanation=None, *, smooth_quantile: Annotated[float, Interval(ge=0, le=1)] = 0.5,
         high_frequency: NonNegative = 0.25):
    """Colour, intensity, texture and frequency bias of a map (the paper's Fig. 5 measures)."""
    a = attribution.abs().flatten(1)
    if explanation is not None and explanation.baseline is not None:
        colour = pearson_rows(a, (x - explanation.baseline.to(x)).abs().flatten(1))
    else:
        colour = torch.full((x.shape[0],), float("nan"), dtype=torch.float64)
    intensity = pearson_rows(a, x.flatten(1))
    gm = gradient_magnitude(x).flatten(1)
    smooth = gm <= torch.quantile(gm, smooth_quantile, dim=1, keepdim=True)
    mass = attribution.abs().sum(1).flatten(1).double()
    texture = (mass * smooth).sum(1) / mass.sum(1).clamp_min(1e-300)
    frequency = high_frequency_share(attribution.sum(1), high_frequency)
    return {"colour": colour, "intensity": intensity, "texture": texture, "frequency": frequency}
