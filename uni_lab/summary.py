"""Per-method summaries computed from a store (never from a model)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from . import doubts
from .schema import METHOD


def monotone_fraction(prob: xr.DataArray) -> xr.DataArray:
    """Share of path steps with ``F_c(γ_k) ≥ F_c(γ_{k−1})`` along ``step`` (NaN-padded steps ignored)."""
    prev, cur = prob.isel(step=slice(None, -1)).values, prob.isel(step=slice(1, None)).values
    valid = np.isfinite(prev) & np.isfinite(cur)
    up = (cur >= prev) & valid
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(valid.sum(-1) > 0, up.sum(-1) / valid.sum(-1), np.nan)
    return xr.DataArray(frac, dims=prob.dims[:-1], coords={d: prob.coords[d] for d in prob.dims[:-1]})


SEED_VAR = "seed_stability_spearman_min"


def summarize(ds: xr.Dataset) -> pd.DataFrame:
    """Mean completeness error, monotone-step fraction, F_c at the baseline and seconds per image,
    over the done images of each (model, method); where the store holds the ``seed_stability``
    metric, the mean over images of its worst pair's Spearman (``seed_spearman_min``); where
    the run was given labels, the model's accuracy on those images (``accuracy``).

    Where results are doubtful (:mod:`uni_lab.doubts`), a ``doubt`` column names the doubt next to
    the numbers it voids, and ``df.attrs["doubts"]`` holds the doubts, whose messages
    :func:`format_table` prints under the table."""
    done = ds["done"].load()
    mono = monotone_fraction(ds["trace_prob"].load())
    # each variable read once, not once per (model, method)
    columns = {"completeness_error": ds["completeness_error"].load(), "monotone_fraction": mono,
               "F_c(baseline)": ds["prob_baseline"].load(), "seconds_per_image": ds["seconds"].load()}
    if SEED_VAR in ds:  # NaN: not measured (a method without a random part is not re-run)
        columns["seed_spearman_min"] = ds[SEED_VAR].load()
    accuracy = labelled = None
    if "label" in ds.coords and "predicted" in ds and bool((ds["label"] >= 0).any()):
        labelled = ds["label"].values >= 0
        accuracy = (ds["predicted"] == ds["label"]).load()
    rows = []
    for model in ds.model.values:
        for method in ds[METHOD].values:
            sel = {"model": model, METHOD: method}
            mask = done.sel(sel).values
            if not mask.any():
                continue

            def mean(var):
                vals = np.asarray(var.sel(sel).values, dtype=float)[mask]
                return float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")

            row = {"model": str(model), "method": str(method), "images": int(mask.sum())}
            if accuracy is not None:  # over the images of this (model, method) that are done and labelled
                ok = mask & labelled
                row["accuracy"] = float(accuracy.sel(model=model).values[ok].mean()) if ok.any() else float("nan")
            rows.append({**row, **{name: mean(var) for name, var in columns.items()}})
    df = pd.DataFrame(rows)
    found = doubts.of(ds)
    if found and not df.empty:
        # next to the counts, before the means: a completeness error of 0 from a zero map must not read as good
        cells = [doubts.tag(found, r.model, r.method, r.images) for r in df.itertuples()]
        df.insert(int(df.columns.get_loc("images")) + 1, "doubt", cells)
    df.attrs["doubts"] = found
    return df


def format_table(df: pd.DataFrame) -> str:
    """The table, then one ``doubt:`` line per doubtful result (see :mod:`uni_lab.doubts`)."""
    if df.empty:
        return "(no finished items)"
    table = df.to_string(index=False, float_format=lambda v: f"{v:.4g}")
    return "\n".join([table, *(f"doubt: {d['message']}" for d in df.attrs.get("doubts", []))])
