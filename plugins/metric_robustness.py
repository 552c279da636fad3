"""Robustness (docs/methods.md §6): how much an attribution map moves when the input is perturbed.

Maps are compared pixel by pixel as ``Σ_c |A_c|`` (Ghorbani et al. 2019 and Adebayo et al.
2018 compare absolute saliency summed over channels), so a sign flip in one channel does not
count as a change of importance. The rank helpers here are shared by the sanity and
stability metrics.
"""
from __future__ import annotations

import torch
from scipy.stats import rankdata

import uni_lab
from uni_lab.contracts import PixelCount
from uni_lab.errors import InputError


def pixel_map(attribution: torch.Tensor) -> torch.Tensor:
    """``Σ_c |A_c|`` flattened: ``(N, H·W)``."""
    return attribution.abs().sum(1).flatten(1)


def pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (NaN for a constant row)."""
    a = a.double() - a.double().mean(1, keepdim=True)
    b = b.double() - b.double().mean(1, keepdim=True)
    denom = a.norm(dim=1) * b.norm(dim=1)
    out = (a * b).sum(1) / denom
    return torch.where(denom > 0, out, torch.full_like(out, float("nan")))


def spearman_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation row by row; ties get their average rank (as scipy.stats.spearmanr)."""
    ra = torch.from_numpy(rankdata(a.detach().double().cpu().numpy(), axis=1))
    rb = torch.from_numpy(rankdata(b.detach().double().cpu().numpy(), axis=1))
    return pearson_rows(ra, rb)


def topk_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean ``(N, F)`` marking the ``k`` largest entries of each row."""
    if not 0 < k < values.shape[1]:
        raise InputError(f"top-k needs 0 < k < {values.shape[1]} (the number of pixels), got k={k}; "
                         "set a smaller k, e.g. --set robustness.k=100.")
    idx = values.topk(k, dim=1).indices
    return torch.zeros_like(values, dtype=torch.bool).scatter_(1, idx, True)


def topk_intersection(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """Fraction of the ``k`` largest entries of each row of ``a`` that are also among those of ``b``."""
    return (topk_mask(a, k) & topk_mask(b, k)).sum(1).double() / k


@uni_lab.metric("robustness")
def robustness(attribution, reference, *, k: PixelCount = 1000):
    """Spearman rank correlation and top-k intersection between A(x) and A(x + δ) (Ghorbani et al. 2019)."""
    pa, pr = pixel_map(attribution), pixel_map(reference)
    return {"spearman": spearman_rows(pr, pa), "topk": topk_intersection(pr, pa, int(k))}
