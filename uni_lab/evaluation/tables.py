"""The per-method table an evaluation returns: means of its scalar variables."""
from __future__ import annotations

import numpy as np
import xarray as xr

from ..schema import LABEL_DIMS, METHOD, flag_of, input_flag, is_metric


def metric_table(ds: xr.Dataset):
    """Mean over images of every scalar evaluation variable, one row per (model, method).

    Attack variables get one column per attack (``robustness_topk[fgsm_attribution]``), averaged
    over the images where the attack was accepted (a rejected attack returns ``x`` itself, whose
    map trivially matches), with the accepted share as ``attack_accepted[...]``. Corruption
    variables are averaged over corruptions and severities (``...[corruptions]``). Variables
    with further dims (stability steps, deletion curves) are left to the figures.
    """
    import pandas as pd

    names = [v for v in ds.data_vars if is_metric(v, ds[v])]
    names = [v for v in names if set(ds[v].dims) <= set(LABEL_DIMS)]
    needed = names + sorted({flag_of(ds[v]) for v in names})
    attacked = input_flag("attack")  # set with the attacked input: the attack was computed there
    if attacked in ds.data_vars:
        needed += ["attack_linf", attacked]
    # One read of each variable: selecting from the lazy store cell by cell rereads its chunks.
    ds = ds[list(dict.fromkeys(needed))].load()
    rows = []
    for model in ds.model.values:
        for method in ds[METHOD].values:
            row = {"model": str(model), "method": str(method)}
            if attacked in ds.data_vars:
                moved = ds["attack_linf"].sel({"model": model, METHOD: method}) > 0
                for a in ds.attack.values:
                    done = ds[attacked].sel({"model": model, METHOD: method, "attack": a})
                    row[f"attack_accepted[{a}]"] = _mean(moved.sel(attack=a).where(done))
            for v in names:
                da = ds[v].sel({"model": model, METHOD: method})
                flag = ds[flag_of(ds[v])].sel({"model": model, METHOD: method})
                da = da.where(flag)
                if "attack" in da.dims:
                    da = da.where(moved)
                if "attack" in da.dims:
                    for a in da.attack.values:
                        row[f"{v}[{a}]"] = _mean(da.sel(attack=a))
                elif "corruption" in da.dims:
                    row[f"{v}[corruptions]"] = _mean(da)
                else:
                    row[v] = _mean(da)
            if len(row) > 2:
                rows.append(row)
    return pd.DataFrame(rows)


def _mean(da: xr.DataArray) -> float:
    vals = np.asarray(da.values, dtype=float)
    return float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
