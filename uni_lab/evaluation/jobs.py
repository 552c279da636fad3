"""How an evaluation computes: one :class:`Job` per model × method, writing through one :class:`Output`."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from ..accessor import config_of
from ..errors import PluginError, named_failure
from ..models import Classifier
from ..schema import ITEM, LABEL_DIMS, METHOD, MetricFlag, MetricValue, Variable
from ..seeding import image_seed
from ..store import Store
from .conditions import CLEAN, Attacked, Condition, Corrupted, Perturbed
from .selection import check_owner, semantic
from .stored import Batch, MethodCall, method_from_config, take, verify_model


class Output:
    """The store an evaluation writes and its open dataset, reopened only when variables are added."""

    def __init__(self, st: Store, coords: dict):
        self.st, self.coords = st, coords  # coords: every condition label this evaluation uses
        self.ds = st.open_lazy()

    def pending(self, flag: str, labels: dict, ids: list) -> list:
        """The images among ``ids`` whose ``flag`` is not set at ``labels``."""
        if flag not in self.ds.variables:
            return list(ids)
        done = self.ds[flag].sel(labels).sel(image=ids).values
        return [i for i, d in zip(ids, np.atleast_1d(done)) if not d]

    def ensure(self, specs: dict, coords: dict) -> None:
        """Create the variables if missing; every label this evaluation will use exists from the start."""
        ds = self.ds
        if all(n in ds.variables for n in specs) and all(
                d in ds.dims and set(np.asarray(v).tolist()) <= set(ds[d].values.tolist()) for d, v in coords.items()):
            return  # the common case after the first batch: nothing to add, no metadata to reread
        if self.st.add_variables(specs, coords):
            self.ds = self.st.open_lazy()

    def write(self, values: dict, flag: str, labels: dict, image: str) -> None:
        at = {**labels, "image": image}
        self.st.write_region(values, at, self.ds)
        self.st.write_region({flag: True}, at, self.ds)  # last: the item is complete


@dataclass(frozen=True)
class Job:
    """One model and one stored method: its metrics under every condition."""

    out: Output
    model: Classifier
    model_name: str
    method: str
    call: MethodCall
    params: dict  # (kind, name) -> resolved parameters, from the plan
    dev: object

    def metrics(self, cond: Condition, batch: Batch, plugins: list, perturbed: Perturbed | None = None) -> None:
        labels = cond.sel(self.model_name, self.method)
        for plugin in plugins:
            flag = MetricFlag(plugin.name, cond.kind).name
            todo = self.out.pending(flag, labels, batch.ids)
            if not todo:
                continue
            sub = batch.take(todo)
            x, exp = sub.x, sub.explanation
            if perturbed is not None:
                idx = [batch.ids.index(i) for i in todo]
                x, exp = perturbed.x[idx], take(perturbed.explanation, idx)
            params = self.params[("metric", plugin.name)]
            with named_failure(f"metric '{plugin.name}' failed on method '{self.method}', images {todo} ({cond.kind})",
                               "nothing was stored for them."):
                out = plugin(model=self.model, x=x, target=sub.target, attribution=exp.attribution, explanation=exp,
                             seeds=sub.seeds, method=self.method, explain=self.call,
                             reference=sub.explanation.attribution if perturbed is not None else None,
                             x_reference=sub.x if perturbed is not None else None, **params)
            columns = _metric_columns(plugin.name, out, len(todo), cond.kind)
            for name in columns:
                check_owner(name, self.out.ds, plugin.name, cond.kind)
            meta = {"uni_lab_metric": plugin.name, "uni_lab_params": json.dumps(semantic(params), sort_keys=True)}
            specs = {name: Variable(ITEM + cond.dims + dims, "f8", plugin.description, meta=meta)
                     for name, (dims, _, _) in columns.items()}
            specs[flag] = Variable(ITEM + cond.dims, "bool", fill=False, meta={"uni_lab_metric": plugin.name})
            extra = {d: c for _, (_, coords, _) in columns.items() for d, c in coords.items()}
            self.out.ensure(specs, {**{d: self.out.coords[d] for d in cond.dims}, **extra})
            ds = self.out.ds
            values = {}
            for name, (dims, coords, arr) in columns.items():
                da = xr.DataArray(arr, dims=("image",) + dims, coords=coords)
                values[name] = da.reindex({d: ds[d].values for d in dims}).values  # shared dims may hold more labels
            for j, i in enumerate(todo):
                self.out.write({name: v[j] for name, v in values.items()}, flag, labels, i)


def compute(st: Store, ds: xr.Dataset, plan) -> None:
    """Every job of ``plan`` (an :class:`~uni_lab.evaluation.EvaluationPlan`) on the store's finished
    items of its methods and images; each model is verified against the stored predictions first."""
    config, todo, ids = config_of(ds), plan.selection, plan.ids
    seeds = {i: image_seed(config.get("seed", 0), i) for i in ids}
    out = Output(st, todo.coords())
    conditions = [Attacked(p) for p in todo.attacks]
    conditions += [Corrupted(p, s) for p in todo.corruptions for s in todo.severities]
    batch_size, dev = plan.config.batch_size, plan.dev
    for model_name, clf in plan.models.items():
        clf = clf.to(dev)
        done = ds["done"].sel(model=model_name).load()
        written = [i for i in ids if bool(done.sel(image=i).any())]
        verify_model(clf, ds, model_name, written, dev, batch_size)
        for spec in plan.specs:
            job = Job(out, clf, model_name, spec, MethodCall(method_from_config(spec, config["methods"][spec])),
                      todo.params, dev)
            item_ids = [i for i in ids if bool(done.sel({METHOD: spec, "image": i}))]
            bar = tqdm(total=len(item_ids) * (1 + len(conditions)), desc=f"evaluate {model_name} {spec}",
                       unit="item", disable=not plan.config.progress, leave=False)
            for s in range(0, len(item_ids), batch_size):
                batch = Batch.load(out.ds, model_name, spec, item_ids[s:s + batch_size], seeds, dev)
                job.metrics(CLEAN, batch, todo.clean_metrics)
                bar.update(len(batch.ids))
                for cond in conditions:
                    job.metrics(cond, batch, todo.perturbed, cond.perturb(job, batch))
                    bar.update(len(batch.ids))
            bar.close()


def _metric_columns(metric: str, out: dict, n: int, kind: str = "clean") -> dict:
    """``{variable: (extra dims, their coords, values (n, ...))}`` from what a metric returned, named
    for condition ``kind``."""
    if not isinstance(out, dict) or not out:
        raise PluginError(f"metric '{metric}' must return a non-empty dict of named values.")
    columns = {}
    for key, value in out.items():
        name = MetricValue(metric, key, kind).name
        if isinstance(value, xr.DataArray):
            if value.dims[0] != "image":
                raise PluginError(f"metric '{metric}' returned '{key}' with dims {value.dims}; the first must be 'image'.")
            dims = tuple(value.dims[1:])
            if set(dims) & set(LABEL_DIMS):  # a stored variable's condition is read from its dims
                raise PluginError(f"metric '{metric}' returned '{key}' with dims {value.dims}; the store's label dims "
                                  f"({', '.join(sorted(set(dims) & set(LABEL_DIMS)))}) are not a metric's, name "
                                  "its own dims otherwise.")
            coords = {d: (value[d].values if d in value.coords else np.arange(value.sizes[d])) for d in dims}
            arr = np.asarray(value.values, dtype=float)
        else:
            arr = value.detach().double().cpu().numpy() if torch.is_tensor(value) else np.asarray(value, dtype=float)
            dims, coords = (), {}
            if arr.ndim != 1:
                raise PluginError(f"metric '{metric}' returned '{key}' of shape {arr.shape}; plain values must be (N,), "
                                  "use an xarray.DataArray (first dim 'image') for more dims.")
        if arr.shape[0] != n:
            raise PluginError(f"metric '{metric}' returned {arr.shape[0]} values of '{key}' for {n} images.")
        columns[name] = (dims, coords, arr)
    return columns
