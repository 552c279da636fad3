"""ROAD (Rong et al. 2022) and pixel flipping (Bach et al. 2015; Samek et al. 2017).

- ``road``: the pixels a map ranks highest (``Σ_c A_c``, most positive first, as ``deletion``),
  a share ``fractions`` of the image at a time (10 % … 90 %), are removed by *noisy linear
  imputation*: every removed pixel is set to the weighted mean of its eight neighbours
  (weight 1/6 for the four direct ones, 1/12 for the diagonal ones, as Rong et al.'s
  reference code), a sparse linear system solved jointly over all removed pixels, plus
  ``N(0, noise²)`` (noise 0.01, seeded per image). Imputation leaks no mask shape to the
  model, so retraining (ROAR) is not needed. Reported: ``F_c`` (probability) at each
  fraction (``curve``), whether the label is kept (``kept``), and their means over the
  fractions (``road``, ``road_accuracy``); removing the most relevant first (``order="morf"``),
  lower is better; ``order="lerf"`` removes the least relevant first (higher is better).
- ``pixel_flipping``: pixels in the same order are replaced, ``H·W / n_steps`` a step, by
  uniform noise (``replacement="uniform"``, Samek et al.'s region perturbation, seeded per
  image) or black (``"black"``: then it is ``deletion``); ``F_c`` along the way (``curve``)
  and its area (``pixel_flipping``; lower is better).

The imputation is written here with scipy's sparse solver rather than imported: the only
maintained implementation is inside Quantus, a test-only dependency (tests compare the two).
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import xarray as xr

import uni_lab
from uni_lab.contracts import Count, NonNegative
from uni_lab.errors import InputError
from uni_lab.seeding import derived_seeds, draw

from .metric_faithfulness import _area, class_scores, pixel_order, replacement_curve

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
NEIGHBOURS = (((0, 1), 1 / 6), ((0, -1), 1 / 6), ((1, 0), 1 / 6), ((-1, 0), 1 / 6),
              ((1, 1), 1 / 12), ((1, -1), 1 / 12), ((-1, 1), 1 / 12), ((-1, -1), 1 / 12))
ROAD_SALT, FLIP_SALT = 41, 43


def linear_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """``image`` ``(C, H, W)`` with the pixels where ``removed`` ``(H, W)`` is true replaced by the
    solution of ``Σ_q w_q (v_p − v_q) = 0`` over each removed pixel's in-image neighbours ``q``."""
    from scipy.sparse import coo_matrix, diags
    from scipy.sparse.linalg import spsolve

    c, h, w = image.shape
    ys, xs = np.nonzero(removed)
    n = len(ys)
    if n == 0:
        return image.copy()
    if n == h * w:
        raise InputError("linear imputation needs at least one kept pixel; use fractions below 1.")
    var = np.full((h, w), -1)
    var[ys, xs] = np.arange(n)
    weight_sum, rhs = np.zeros(n), np.zeros((n, c))
    rows, cols, vals = [], [], []
    for (dy, dx), wt in NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        p, qy, qx = np.nonzero(inside)[0], ny[inside], nx[inside]
        weight_sum[p] += wt
        unknown = removed[qy, qx]
        rows.append(p[unknown]), cols.append(var[qy[unknown], qx[unknown]]), vals.append(np.full(unknown.sum(), -wt))
        rhs[p[~unknown]] += wt * image[:, qy[~unknown], qx[~unknown]].T
    a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)) + diags(weight_sum)
    solved = spsolve(a.tocsc(), rhs).reshape(n, c)
    out = image.copy()
    out[:, ys, xs] = solved.T
    return out


def _ranks(attribution: torch.Tensor) -> torch.Tensor:
    order = pixel_order(attribution)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return rank  # rank[i, p]: 0 for the most important pixel


def _check_fractions(*, fractions=FRACTIONS, **_) -> None:
    """A list, which the annotations do not reach: each entry a fraction of the pixels strictly inside (0, 1)."""
    try:
        ok = len(fractions) > 0 and all(not isinstance(f, bool) and 0 < float(f) < 1 for f in fractions)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"road.fractions must be a non-empty list of fractions in (0, 1), got {fractions!r}; "
                         "e.g. --set road.fractions=[0.1,0.5,0.9].")


@uni_lab.metric("road", check=_check_fractions)
def road(model, x, target, attribution, seeds=None, *, fractions=FRACTIONS, order: Literal["morf", "lerf"] = "morf",
         noise: NonNegative = 0.01, internal_batch_size: Count = 64):
    """ROAD (Rong et al. 2022): F_c as the top-ranked pixels are removed by noisy linear imputation; MoRF, lower is better."""
    fractions = [float(f) for f in fractions]
    n, c, h, w = x.shape
    rank = _ranks(attribution if order == "morf" else -attribution).view(n, h, w).cpu().numpy()
    images = x.detach().double().cpu().numpy()
    frames = []
    for i in range(n):
        for j, f in enumerate(fractions):
            imputed = linear_imputation(images[i], rank[i] < int(f * h * w))
            eps = draw(x[i:i + 1], derived_seeds(None if seeds is None else seeds[i:i + 1], f"road:{j}"), "randn",
                       salt=ROAD_SALT)[0].double().cpu().numpy()
            removed = rank[i] < int(f * h * w)
            imputed[:, removed] += noise * eps[:, removed]
            frames.append(imputed)
    frames_t = torch.from_numpy(np.stack(frames)).to(x)
    tgt = target.repeat_interleave(len(fractions))
    prob = class_scores(model, frames_t, tgt, "prob", internal_batch_size).view(n, -1)
    with torch.no_grad():
        kept = torch.cat([model(frames_t[s:s + internal_batch_size]).argmax(-1)
                          for s in range(0, len(frames_t), internal_batch_size)]).eq(tgt).double().view(n, -1)
    coords = {"road_fraction": fractions}
    as_array = lambda v: xr.DataArray(v.cpu().numpy(), dims=("image", "road_fraction"), coords=coords)
    return {"road": prob.mean(1), "accuracy": kept.mean(1), "curve": as_array(prob), "kept": as_array(kept)}


@uni_lab.metric("pixel_flipping")
def pixel_flipping(model, x, target, attribution, seeds=None, *, n_steps: Count = 32,
                   replacement: Literal["uniform", "black"] = "uniform", internal_batch_size: Count = 64):
    """Pixel flipping (Bach et al. 2015; Samek et al. 2017): F_c as top-ranked pixels are replaced by noise; area, lower is better."""
    h, w = x.shape[2:]
    if int(n_steps) > h * w:  # the bound is the image's pixel count, known only here (>= 1 is declared)
        raise InputError(f"pixel_flipping.n_steps must be at most {h * w} (the pixels), got {n_steps}.")
    end = torch.zeros_like(x) if replacement == "black" else draw(x, seeds, "rand", salt=FLIP_SALT)
    curve, fr = replacement_curve(model, x, end, pixel_order(attribution), target, int(n_steps), internal_batch_size)
    return {"pixel_flipping": _area(curve, fr),
            "curve": xr.DataArray(curve.cpu().numpy(), dims=("image", "flip_fraction"), coords={"flip_fraction": fr})}
