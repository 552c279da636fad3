"""Faithfulness metrics (docs/methods.md §6): does removing what the map calls important change ``F_c``?

- ``mufidelity`` (Bhatt et al. 2020): over random subsets ``S`` of a coarse grid of cells, the
  Pearson correlation between ``Σ_{i∈S} A_i`` and ``F_c(x) − F_c(x_[S ← x̄_S])``, ``x̄`` black.
- ``deletion`` / ``insertion`` (Petsiuk et al. 2018): pixels in order of attribution
  (``Σ_c A_c``, most positive first) are set to black, or inserted into a blurred copy of the
  image, ``H·W/32`` pixels a step; the score is the area under ``F_c`` (softmax probability,
  as Petsiuk et al. define it) over the fraction of pixels changed.
"""
from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch
import xarray as xr
from annotated_types import Ge, Interval

import uni_lab
from uni_lab.contracts import Count, NonNegative
from uni_lab.engine import OUTPUTS, scores
from uni_lab.errors import InputError
from uni_lab.fastview import fast_view
from uni_lab.ops import gaussian_blur

from .metric_robustness import pearson_rows

SUBSET_SALT = 31


def class_scores(model, x, target, output: str = "prob", batch: int = 64) -> torch.Tensor:
    """``F_c`` for a flat batch, in no-grad passes of at most ``batch`` images, through the
    model's fast view (batch norm folded: the same function to float rounding, 1.8× faster)."""
    out = []
    model = fast_view(model, x)
    with torch.no_grad():
        for s in range(0, x.shape[0], batch):
            prob, logit = scores(model(x[s:s + batch]), target[s:s + batch])
            out.append(prob if output == "prob" else logit)
    return torch.cat(out).double()


def cell_subsets(n_images: int, seeds=None, *, n_subsets: int = 128, grid: int = 9,
                 fraction: float = 0.2) -> torch.Tensor:
    """Boolean ``(N, n_subsets, grid, grid)``: which cells each subset removes, drawn per image seed."""
    if grid < 1 or n_subsets < 2 or not 0 < fraction < 1:
        raise InputError("mufidelity needs grid >= 1, n_subsets >= 2 and 0 < fraction < 1.")
    cells = grid * grid
    size = max(1, int(round(fraction * cells)))
    seeds = [0] * n_images if seeds is None else torch.as_tensor(seeds).tolist()
    out = torch.zeros(n_images, n_subsets, cells, dtype=torch.bool)
    for i, seed in enumerate(seeds):
        g = torch.Generator().manual_seed((int(seed) + SUBSET_SALT) % (1 << 63))
        for s in range(n_subsets):
            out[i, s, torch.randperm(cells, generator=g)[:size]] = True
    return out.view(n_images, n_subsets, grid, grid)


def cells_to_pixels(cells: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Expand ``(..., grid, grid)`` cell masks to ``(..., h, w)``; cell edges at ``round(k·h/grid)``."""
    grid = cells.shape[-1]
    rows = torch.bucketize(torch.arange(h), torch.tensor([round(k * h / grid) for k in range(1, grid)]), right=True)
    cols = torch.bucketize(torch.arange(w), torch.tensor([round(k * w / grid) for k in range(1, grid)]), right=True)
    return cells[..., rows, :][..., cols]


@uni_lab.metric("mufidelity")
def mufidelity(model, x, target, attribution, seeds=None, *, n_subsets: Annotated[int, Ge(2)] = 128, grid: Count = 9,
               fraction: Annotated[float, Interval(gt=0, lt=1)] = 0.2, output: Literal[OUTPUTS] = "prob",
               internal_batch_size: Count = 64):
    """MuFidelity (Bhatt et al. 2020): correlation of subset attribution sums with output drops."""
    n, _, h, w = x.shape
    masks = cells_to_pixels(cell_subsets(n, seeds, n_subsets=n_subsets, grid=grid, fraction=fraction), h, w).to(x.device)
    full = class_scores(model, x, target, output)
    values = []
    for i in range(n):
        sums = (attribution[i].sum(0).double() * masks[i]).flatten(1).sum(1)  # (S,)
        removed = x[i].unsqueeze(0) * (~masks[i]).unsqueeze(1).to(x.dtype)  # black where S is removed
        drops = full[i] - class_scores(model, removed, target[i].expand(n_subsets), output, internal_batch_size)
        values.append(pearson_rows(sums.unsqueeze(0), drops.unsqueeze(0).to(sums)))
    return {"mufidelity": torch.cat(values)}


def pixel_order(attribution: torch.Tensor) -> torch.Tensor:
    """Pixel indices ``(N, H·W)`` from most to least important (``Σ_c A_c``, ties in raster order)."""
    return torch.argsort(attribution.sum(1).flatten(1), dim=1, descending=True, stable=True)


def replacement_curve(model, start, end, order, target, n_steps: int, batch: int = 64):
    """``F_c`` (probability) as pixels of ``end`` replace those of ``start`` in ``order``: ``(N, n_steps + 1)``."""
    n, c, h, w = start.shape
    counts = [round(k * h * w / n_steps) for k in range(n_steps + 1)]
    curves = []
    for i in range(n):
        rank = torch.empty(h * w, dtype=torch.long, device=start.device)
        rank[order[i]] = torch.arange(h * w, device=start.device)
        taken = torch.stack([rank < m for m in counts]).view(-1, 1, h, w).to(start.dtype)  # (K+1, 1, H, W)
        frames = start[i] * (1 - taken) + end[i] * taken
        curves.append(class_scores(model, frames, target[i].expand(len(counts)), "prob", batch))
    return torch.stack(curves), np.array(counts) / (h * w)


def _area(curve: torch.Tensor, fractions: np.ndarray) -> torch.Tensor:
    return torch.trapezoid(curve, torch.as_tensor(fractions, dtype=curve.dtype, device=curve.device), dim=1)


def _curve_array(curve: torch.Tensor, fractions: np.ndarray) -> xr.DataArray:
    return xr.DataArray(curve.cpu().numpy(), dims=("image", "fraction"), coords={"fraction": fractions})


def _check_steps(n_steps: int, h: int, w: int):
    """The upper bound is the image's pixel count, known only with the input (>= 1 is declared)."""
    if not 1 <= n_steps <= h * w:
        raise InputError(f"deletion/insertion need 1 <= n_steps <= {h * w} (pixels), got {n_steps}.")


@uni_lab.metric("deletion")
def deletion(model, x, target, attribution, *, n_steps: Count = 32, internal_batch_size: Count = 64):
    """Deletion AUC (Petsiuk et al. 2018): most important pixels set to black first; lower is better."""
    _check_steps(n_steps, *x.shape[2:])
    curve, fr = replacement_curve(model, x, torch.zeros_like(x), pixel_order(attribution), target, n_steps,
                                  internal_batch_size)
    return {"deletion": _area(curve, fr), "curve": _curve_array(curve, fr)}


@uni_lab.metric("insertion")
def insertion(model, x, target, attribution, *, n_steps: Count = 32, blur_sigma: NonNegative = 5.0,
              internal_batch_size: Count = 64):
    """Insertion AUC (Petsiuk et al. 2018): most important pixels inserted into a blurred image first; higher is better."""
    _check_steps(n_steps, *x.shape[2:])
    # Petsiuk et al. blur with σ = 5 px in an 11-tap kernel; ours keeps σ and truncates at 3σ instead.
    curve, fr = replacement_curve(model, gaussian_blur(x, blur_sigma), x, pixel_order(attribution), target, n_steps,
                                  internal_batch_size)
    return {"insertion": _area(curve, fr), "curve": _curve_array(curve, fr)}
