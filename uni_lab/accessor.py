"""``ds.uni`` and ``da.uni``: what figures, notebooks and users read from a store, registered by ``import uni_lab``.

The readers every figure script and notebook shares (finished methods, evaluation values where
their flag is set, the parameters behind them, class names, a provenance caption) live here, so a
notebook reads a store exactly as the figures do; the plots of :mod:`uni_lab.plot` are reached from
here too (``ds.uni.plot_grid()``, ``ds.attribution.sel(...).uni.plot()``). Torch-free (xarray and
numpy only), so opening a store in a notebook does not need the models; only the class names of a
store written before they were recorded are looked up in timm. Names follow :mod:`uni_lab.schema`.
"""
from __future__ import annotations

import json

import numpy as np
import xarray as xr

from .errors import InputError, StoreError
from .schema import METHOD, flag_of


def config_of(ds: xr.Dataset) -> dict:
    """The run configuration a store records (models, methods with every parameter, images, seed)."""
    try:
        return json.loads(ds.attrs["uni_lab_config"])
    except (KeyError, ValueError) as exc:
        raise StoreError("this is not a uni_lab store (no uni_lab_config attribute).") from exc


# The attribute of ``target`` in which a run records its models' class names: JSON, model -> names.
CLASS_NAMES_ATTR = "class_names"


def class_label(names: list[str] | None, index: int) -> str:
    """``class 1: goldfish``: the number and the first of the class's synonyms (the number alone
    without names)."""
    if names and 0 <= index < len(names):
        return f"class {index}: {names[index].split(',')[0]}"
    return f"class {index}"


class _Shared:
    """What both accessors offer: selection with ``method=`` as an alias of the dim, and the map grid."""

    def __init__(self, obj):
        self._obj = obj

    def sel(self, **labels):
        """``.uni.sel(method="uni", image="chelsea")``: ``method=`` is an alias of the methods dim
        ``xai_method`` (its name up to schema 2), kept so that code written then still runs. Plain
        xarray selects on the dim itself: ``ds.sel(xai_method="uni", image="chelsea")``."""
        if "method" in labels and "method" not in self._obj.dims:
            if METHOD in labels:
                raise InputError("pass the method once: method= is an alias of xai_method=.")
            labels[METHOD] = labels.pop("method")
        return self._obj.sel(labels)

    def plot_grid(self, **kwargs):
        """Methods × images, the maps of :func:`uni_lab.plot.grid` (its keywords); returns the figure."""
        from .plot import grid

        return grid(self._obj, **kwargs)


@xr.register_dataarray_accessor("uni")
class UniArrayAccessor(_Shared):
    """``ds.attribution.uni``: selection with the ``method=`` alias and plots of stored maps the right way up."""

    def plot(self, **kwargs):
        """One stored map or image, row 0 at the top (:func:`uni_lab.plot.show`; xarray's own ``.plot()``
        puts ``y = 0`` at the bottom, so a stored image comes out upside down)."""
        from .plot import show

        return show(self._obj, **kwargs)


@xr.register_dataset_accessor("uni")
class UniAccessor(_Shared):
    """``ds.uni``: the readers of a whole store (its configuration, finished items, evaluations)."""

    @property
    def _ds(self) -> xr.Dataset:
        return self._obj

    def plot_paths(self, **kwargs):
        """F_c along α per method, one panel per image (:func:`uni_lab.plot.path_traces`); the figure."""
        from .plot import path_traces

        return path_traces(self._obj, **kwargs)

    def class_names(self, model: str) -> list[str] | None:
        """The class names of ``model`` the run recorded, else (a store written before they were)
        ImageNet-1k's for a model the configuration shows to be a 1000-class ImageNet model, else None."""
        recorded = self._ds["target"].attrs.get(CLASS_NAMES_ATTR) if "target" in self._ds.variables else None
        if recorded is not None:
            return json.loads(recorded).get(model)
        return _inferred_class_names(self._config().get("models", {}).get(model, {}), model)

    def class_label(self, model: str, index: int) -> str:
        """``class 285: Egyptian cat`` (``class 285`` for a model without names)."""
        return class_label(self.class_names(model), index)

    def score_trace(self) -> xr.DataArray:
        """F_c(γ_k) along each path in the output the store explained (probability, or the logit)."""
        return self._ds["trace_logit"] if self._config().get("output") == "logit" else self._ds["trace_prob"]

    @property
    def config(self) -> dict:
        return config_of(self._ds)

    def done_items(self) -> list[tuple[str, str, str]]:
        """``(model, method, image)`` of every finished item."""
        done = self._ds["done"].values
        return [(self._ds.model.values[a], self._ds[METHOD].values[b], self._ds.image.values[c])
                for a, b, c in zip(*np.nonzero(done))]

    def done_methods(self, model=None, image=None) -> list[str]:
        """Methods with at least one finished item (of ``model``, of ``image``, or any)."""
        done = self._ds["done"]
        at = {d: v for d, v in (("model", model), ("image", image)) if v is not None}
        done = done.sel(at) if at else done
        axes = [d for d in done.dims if d != METHOD]
        any_done = done.any(axes) if axes else done
        return [str(m) for m in self._ds[METHOD].values if bool(any_done.sel({METHOD: m}))]

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
        methods = list(methods if methods is not None else ds[METHOD].values)
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


def _inferred_class_names(entry: dict, model: str) -> list[str] | None:
    """A store records the model's description, not its head: a description with ``num_classes``
    (or ``class_names``) says so itself; otherwise only the embedded EfficientNet-Lite models with
    their embedded weights are known to be ImageNet-1k classifiers (plugins/models.py)."""
    if entry.get("class_names"):
        return list(entry["class_names"])
    if "num_classes" in entry:
        imagenet = entry["num_classes"] == 1000 and entry.get("weights") != "random"
    else:
        imagenet = (str(entry.get("name", model)).startswith("efficientnet_lite")
                    and str(entry.get("weights", "")).startswith("efficientnet-lite"))
    if not imagenet:
        return None
    from .models import imagenet_class_names  # timm's bundled ImageNetInfo: no network

    return imagenet_class_names()
