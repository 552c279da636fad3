"""Seed stability: how much a method's map depends on its random draws (issue 12).

Methods with a random part (UNI's random PGD start, the ``uniform``/``gaussian`` baselines,
SmoothGrad's noise, ...) give one map per seed. This metric recomputes each image's map under
R seed sets and compares them pairwise; a deterministic method (IG from the black baseline)
gives identical maps, Spearman 1 and relative L2 0.
"""
from __future__ import annotations

from itertools import combinations
from typing import Annotated

import torch
from annotated_types import Ge

import uni_lab
from uni_lab.seeding import repeat_seeds

from .metric_robustness import spearman_rows


def seed_sets(seeds, r: int) -> torch.Tensor | None:
    """Seed set ``r`` of a batch: ``r = 0`` is the per-image seeds the run used, ``r ≥ 1`` a stable
    SHA-256 hash of (seed, r) (:func:`~uni_lab.seeding.repeat_seeds`), so set r of an image never
    depends on the batch it is in. Without seeds (an in-memory call) every set is ``None``: draws
    from the global generator, different each time but not reproducible."""
    return repeat_seeds(seeds, "seed_stability", r)


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``‖a − b‖ / mean(‖a‖, ‖b‖)`` row by row (symmetric; 0 for two zero maps)."""
    return (a - b).norm(dim=1) / ((a.norm(dim=1) + b.norm(dim=1)) / 2).clamp_min(1e-300)


def _spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman row by row; rows that are equal element for element get exactly 1 (not 1 ± ulp)."""
    rho = spearman_rows(a, b)
    same = (a == b).all(dim=1).to(rho.device)
    return torch.where(same & torch.isfinite(rho), torch.ones_like(rho), rho)


@uni_lab.metric("seed_stability")
def seed_stability(model, x, target, attribution, explain, seeds=None, *, n_seeds: Annotated[int, Ge(2)] = 3):
    """Spearman and relative L2 between a method's maps under R = ``n_seeds`` seed sets (mean and min over pairs).

    Maps are the signed attributions, all channels flattened (as ``riemann_stability``). All R
    maps are recomputed in the same batch, so they differ only through the seeds; set 0 is the
    run's, and ``rel_l2_stored`` is the relative L2 between its recomputed map and the stored
    one (float noise only: batch composition, device, fast view), the scale below which seed
    differences cannot be told from noise. Per image: ``spearman_mean``, ``spearman_min`` over
    the R(R-1)/2 pairs, ``rel_l2_mean`` and ``rel_l2_max`` with
    ``‖a − b‖ / mean(‖a‖, ‖b‖)``. Spearman is NaN for a constant map (all zeros where F_c
    saturates at probability 1), which has no ranks.
    """
    r_count = int(n_seeds)  # at least 2, as declared: one seed has nothing to compare with
    maps = [explain(model, x, target, seed_sets(seeds, r)).attribution.detach().flatten(1).double()
            for r in range(r_count)]
    pairs = list(combinations(range(r_count), 2))
    rho = torch.stack([_spearman(maps[i], maps[j]) for i, j in pairs], 1)
    rel = torch.stack([_rel_l2(maps[i], maps[j]) for i, j in pairs], 1)
    stored = attribution.detach().flatten(1).double().to(maps[0].device)
    return {"spearman_mean": rho.mean(1), "spearman_min": rho.min(1).values,
            "rel_l2_mean": rel.mean(1), "rel_l2_max": rel.max(1).values, "rel_l2_stored": _rel_l2(maps[0], stored)}
