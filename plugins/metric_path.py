"""Path metrics (docs/methods.md §1, §6): the shape of ``F_c(γ(α))`` and how well the Riemann sum converges.

All of them read the path trace a path method recorded; methods without a path (saliency,
Guided Backprop) get NaN, which is the honest answer rather than a number of another kind.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import xarray as xr

import uni_lab
from uni_lab.contracts import Count, NonNegative
from uni_lab.engine import OUTPUTS, completeness_error as relative_error, grads_and_scores
from uni_lab.errors import InputError
from uni_lab.summary import monotone_fraction

from .metric_faithfulness import class_scores
from .metric_robustness import spearman_rows

STABILITY_STEPS = (1, 2, 4, 8, 16, 32, 64)


def _nan(n: int) -> torch.Tensor:
    return torch.full((n,), float("nan"), dtype=torch.float64)


def _score_trace(explanation, output: str) -> np.ndarray | None:
    if explanation is None or explanation.trace is None:
        return None
    return explanation.trace["prob" if output == "prob" else "logit"].detach().double().cpu().numpy()


@uni_lab.metric("monotonicity")
def monotonicity(x, explanation, *, output: Literal[OUTPUTS] = "prob"):
    """Share of path steps where F_c does not fall, and conformance: min F_c at α=0, max at α=1 (Akhtar & Jalwana 2023).

    ``spearman`` is the paper's own measure (its Table 1): the Spearman correlation of α_k with
    F_c(γ_k) over the stored path points (NaN for a constant F_c or fewer than two points).
    """
    f = _score_trace(explanation, output)
    if f is None:
        return {"fraction": _nan(x.shape[0]), "conformant": _nan(x.shape[0]), "spearman": _nan(x.shape[0])}
    frac = monotone_fraction(xr.DataArray(f, dims=("image", "step"))).values
    alpha = explanation.trace["alpha"].detach().double().cpu().numpy()
    conformant, rho = [], []
    for row, a in zip(f, alpha):
        ok = np.isfinite(row) & np.isfinite(a)
        rho.append(float(spearman_rows(torch.from_numpy(a[ok][None]), torch.from_numpy(row[ok][None]))[0])
                   if ok.sum() >= 2 else np.nan)
        row = row[np.isfinite(row)]
        conformant.append(float(row[0] <= row.min() and row[-1] >= row.max()) if row.size else np.nan)
    return {"fraction": torch.as_tensor(frac), "conformant": torch.tensor(conformant, dtype=torch.float64),
            "spearman": torch.tensor(rho, dtype=torch.float64)}


@uni_lab.metric("curvature")
def curvature(model, x, target, explanation, *, output: Literal[OUTPUTS] = "prob", tolerance: NonNegative = 1e-3,
              internal_batch_size: Count = 64):
    """Mean |second difference| of F_c along the path, and mean cosine of consecutive path gradients."""
    n = x.shape[0]
    f = _score_trace(explanation, output)
    if f is None:
        return {"second_difference": _nan(n), "grad_cosine": _nan(n)}
    second, cosine = [], []
    for i in range(n):
        ok = np.isfinite(f[i])
        row = f[i][ok]
        second.append(np.abs(np.diff(row, 2)).mean() if row.size >= 3 else np.nan)
        cosine.append(_straight_path_cosine(model, x[i:i + 1], target[i:i + 1], explanation, i, ok, output,
                                            tolerance, internal_batch_size))
    return {"second_difference": torch.tensor(second, dtype=torch.float64),
            "grad_cosine": torch.tensor(cosine, dtype=torch.float64)}


def _straight_path_cosine(model, x, target, explanation, i, ok, output, tolerance, ibs) -> float:
    """Path gradients are not stored, so they are recomputed on the straight line from the stored
    baseline at the stored α. That reconstruction is used only where it reproduces the stored
    logits of c within ``tolerance`` (relative): a curved path (BlurIG, Guided IG) gets NaN, not a
    wrong number."""
    if explanation.baseline is None or ok.sum() < 2:
        return float("nan")
    alphas = explanation.trace["alpha"][i].detach().to(x)[torch.as_tensor(ok)]
    xb = explanation.baseline[i:i + 1].to(x)
    points = xb.unsqueeze(0) + alphas.view(-1, 1, 1, 1, 1) * (x - xb).unsqueeze(0)
    grads, _, logit = grads_and_scores(model, points, target, output, ibs)
    # logits, not probabilities: a saturated softmax would hide a different path
    stored = explanation.trace["logit"][i].detach().double().cpu().numpy()[ok]
    if np.abs(logit[:, 0].double().cpu().numpy() - stored).max() > tolerance * (1 + np.abs(stored).max()):
        return float("nan")
    g = grads[:, 0].flatten(1).double()
    cos = torch.nn.functional.cosine_similarity(g[1:], g[:-1], dim=1)
    return float(cos.mean())


@uni_lab.metric("completeness_error")
def completeness_error(model, x, target, attribution, explanation, *, output: Literal[OUTPUTS] = "prob"):
    """|Σ A − (F_c(x) − F_c(x'))| / |F_c(x) − F_c(x')|, with F_c re-evaluated at x and at the stored baseline."""
    if explanation is None or explanation.baseline is None:
        return {"recomputed": _nan(x.shape[0])}
    n = x.shape[0]
    f = class_scores(model, torch.cat([x, explanation.baseline.to(x)]), torch.cat([target, target]), output)
    return {"recomputed": relative_error(attribution.double(), f[:n] - f[n:])}


def _check_steps(*, steps=STABILITY_STEPS, **_) -> None:
    """A list, which the annotations do not reach: each entry a step count."""
    try:
        ok = len(steps) > 0 and all(int(b) == b and b >= 1 and not isinstance(b, bool) for b in steps)
    except TypeError:
        ok = False
    if not ok:
        raise InputError(f"riemann_stability.steps must be a non-empty list of step counts >= 1, got {steps!r}; "
                         f"e.g. --set riemann_stability.steps=[1,2,4,8].")


@uni_lab.metric("riemann_stability", check=_check_steps)
def riemann_stability(model, x, target, explain, seeds=None, *, steps=STABILITY_STEPS, reference_steps: Count = 256):
    """Spearman correlation and relative L2 error of A at B steps against A at B = 256 (the paper's Figs. 6-7)."""
    steps = [int(b) for b in steps]
    n = x.shape[0]
    coords = {"steps": steps}
    if not explain.accepts("steps"):  # not a Riemann-sum method: nothing converges
        nan = np.full((n, len(steps)), np.nan)
        return {k: xr.DataArray(nan, dims=("image", "steps"), coords=coords) for k in ("spearman", "rel_error")}
    ref = explain(model, x, target, seeds, steps=int(reference_steps)).attribution.flatten(1).double()
    sp, rel = [], []
    for b in steps:
        a = explain(model, x, target, seeds, steps=b).attribution.flatten(1).double()
        sp.append(spearman_rows(ref, a).cpu().numpy())
        rel.append(((a - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-300)).cpu().numpy())
    return {"spearman": xr.DataArray(np.stack(sp, 1), dims=("image", "steps"), coords=coords),
            "rel_error": xr.DataArray(np.stack(rel, 1), dims=("image", "steps"), coords=coords)}
