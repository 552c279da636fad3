"""The shape of F_c along each stored path, read from the trace (no model involved).

``uni-lab evaluate`` can store the same numbers as the ``monotonicity`` and ``curvature``
metrics (plus the gradient cosine, which needs the model); when a store has them they are
used, otherwise they are derived here from ``trace_prob``/``trace_logit``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from uni_lab.plot import is_conformant


def second_difference(row: np.ndarray) -> float:
    row = row[np.isfinite(row)]
    return float(np.abs(np.diff(row, 2)).mean()) if row.size >= 3 else float("nan")


def stored_metric(ds: xr.Dataset, names) -> xr.DataArray | None:
    """The first of ``names`` that the store holds (evaluate's variable names)."""
    for name in names:
        if name in ds.data_vars:
            return ds[name]
    return None


def path_table(ds: xr.Dataset) -> pd.DataFrame:
    """One row per finished (model, method, image) that has a path trace."""
    from uni_lab.summary import monotone_fraction

    f = ds.uni.score_trace().load()
    mono = monotone_fraction(f)
    stored = {"monotone_fraction": stored_metric(ds, ("monotonicity_fraction", "metric_monotonicity_fraction")),
              "conformant": stored_metric(ds, ("monotonicity_conformant", "metric_monotonicity_conformant")),
              "second_difference": stored_metric(ds, ("curvature_second_difference",
                                                      "metric_curvature_second_difference")),
              "grad_cosine": stored_metric(ds, ("curvature_grad_cosine", "metric_curvature_grad_cosine"))}
    rows = []
    for model in map(str, ds.model.values):
        for method in map(str, ds.xai_method.values):
            for image in map(str, ds.image.values):
                at = {"model": model, "xai_method": method, "image": image}
                if not bool(ds["done"].sel(at)):
                    continue
                row = f.sel(at).values.astype(float)
                if not np.isfinite(row).any():
                    continue  # no path (saliency, ...): nothing to be monotone
                derived = {"monotone_fraction": float(mono.sel(at)), "conformant": is_conformant(row),
                           "second_difference": second_difference(row), "grad_cosine": float("nan")}
                for key, var in stored.items():
                    if var is not None and all(d in var.dims for d in at):
                        value = float(var.sel(at))
                        derived[key] = value if np.isfinite(value) else derived[key]
                rows.append({"model": model, "method": method, "image": image, **derived, "steps": int(np.isfinite(row).sum() - 1),
                             "completeness_error": float(ds["completeness_error"].sel(at)),
                             "F_c(baseline)": float(row[np.isfinite(row)][0]),
                             "F_c(input)": float(row[np.isfinite(row)][-1])})
    return pd.DataFrame(rows)
