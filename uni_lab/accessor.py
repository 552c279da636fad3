"""``ds.uni``: what figures, notebooks and users read from a store, registered by ``import uni_lab``.

The readers every figure script and notebook shares (finished methods, evaluation values where
their flag is set, the parameters behind them, a provenance caption) live here, so a notebook
reads a store exactly as the figures do. Torch-free (xarray and numpy only), so opening a store
in a notebook does not need the models. Names follow :mod:`uni_lab.schema`.
"""
from __future__ import annotations

import json

import numpy as np
import xarray as xr

from .errors import StoreError
from .schema import flag_of


def config_of(ds: xr.Dataset) -> dict:
    """The run configuration a store records (models, methods with every parameter, images, seed)."""
    try:
        return json.loads(ds.attrs["uni_lab_config"])
    except (KeyError, ValueError) as exc:
        raise StoreError("this is not a uni_lab store (no uni_lab_config attribute).") from exc


@xr.register_dataset_accessor("uni")
class UniAccessor:
    """``ds.uni.sel(method="uni", image="chelsea")``: ``Dataset.sel`` keeps ``method`` for its
    own keyword (nearest-neighbour lookup), so selecting on the ``method`` dim by keyword needs
    this accessor or a dict, ``ds.sel({"method": "uni"})``."""

    def __init__(self, ds: xr.Dataset):
        self._ds = ds

    def sel(self, **labels) -> xr.Dataset:
        return self._ds.sel(labels)

    @property
    def config(self) -> dict:
        return config_of(self._ds)

    def done_items(self) -> list[tuple[str, str, str]]:
        """``(model, method, image)`` of every finished item."""
        done = self._ds["done"].values
        return [(self._ds.model.values[a], self._ds.method.values[b], self._ds.image.values[c])
                for a, b, c in zip(*np.nonzero(done))]

    def done_methods(self, model=None, image=None) -> list[str]:
        """Methods with at least one finished item (of ``model``, of ``image``, or any)."""
        done = self._ds["done"]
        at = {d: v for d, v in (("model", model), ("image", image)) if v is not None}
        done = done.sel(at) if at else done
        axes = [d for d in done.dims if d != "method"]
        any_done = done.any(axes) if axes else done
        return [str(m) for m in self._ds.method.values if bool(any_done.sel({"method": m}))]

    def doubts(self) -> list[dict]:
        """Doubtful results (:mod:`uni_lab.doubts`): ``{kind, model, method, images, message}`` each;
        the ones the run recorded, or found anew where items were done since."""
        from .doubts import of

        return of(self._ds)

    def evaluated(self, var: str) -> xr.DataArray | None:
        """An evaluation variable where its ``done_*`` flag is set (NaN elsewhere); None if absent."""
        ds = self._ds
        if var not in ds.data_vars:
            return None
        flag = flag_of(ds[var])
        return ds[var].where(ds[flag]) if flag in ds.data_vars else ds[var]

    def is_evaluated(self, flag: str, **labels) -> bool:
        """The evaluation flag ``flag`` (``done_mufidelity``, ...) is set for every finished item,
        at ``labels`` of its further dims (``severity=[1, 3, 5]``)."""
        ds = self._ds
        if flag not in ds.data_vars:
            return False
        values = ds[flag]
        for dim, wanted in labels.items():
            if dim not in values.dims or not set(np.atleast_1d(wanted)) <= set(values[dim].values.tolist()):
                return False
            values = values.sel({dim: wanted})
        return bool(values.where(ds["done"], True).all())

    def evaluation_params(self, var: str) -> str:
        """``name(p=v, ...)``: the parameters an evaluation variable was computed with (its attrs)."""
        attrs = self._ds[var].attrs
        params = json.loads(attrs.get("uni_lab_params", "{}"))
        shown = ", ".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "output")
        return f"{attrs.get('uni_lab_metric', var)}({shown})"

    def method_steps(self, method: str):
        """The Riemann steps B a method ran with (of a wrapped method's inner one), None for none."""
        entry = self._config().get("methods", {}).get(method, {})
        while entry:
            if "steps" in entry.get("params", {}):
                return entry["params"]["steps"]
            entry = entry.get("inner")
        return None

    def method_label(self, method: str) -> str:
        """A method name as registered, with the parameters that distinguish it (not steps/output)."""
        entry = self._config().get("methods", {}).get(method, {})
        params = dict(entry.get("baseline_params", {}))
        params.update({k: v for k, v in entry.get("params", {}).items() if k not in ("steps", "output")})
        if not params:
            return method
        return f"{method} ({', '.join(f'{k}={v}' for k, v in sorted(params.items()))})"

    def caption(self, methods=None, extra: str = "", steps=None) -> str:
        """One line of provenance from the store's attrs: model, output, seed, B, method parameters."""
        ds, cfg = self._ds, self._config()
        methods = list(methods if methods is not None else ds.method.values)
        models = ", ".join(cfg.get("models", {}) or map(str, ds.model.values))
        if steps is None:
            steps = sorted({s for s in (self.method_steps(m) for m in methods) if s is not None})
        parts = [f"model: {models}", f"output: {cfg.get('output', '?')}", f"seed {cfg.get('seed', '?')}"]
        if steps:
            parts.append("B = " + "/".join(map(str, steps)))
        parts.append("methods: " + "; ".join(self.method_label(m) for m in methods))
        parts.append(f"store: {ds.attrs.get('store_path', '?')}")
        if extra:
            parts.append(extra)
        return " · ".join(parts)

    def _config(self) -> dict:
        # captions of a dataset that is not (or no longer) a whole store read what it has
        return json.loads(self._ds.attrs.get("uni_lab_config", "{}"))
