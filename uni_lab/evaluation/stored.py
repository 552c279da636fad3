"""What a store gives back to an evaluation: its methods re-runnable, its model reloaded and
verified, and batches of its inputs and explanations as tensors."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from ..errors import PluginError, StoreError
from ..explanation import Explanation
from ..methods import Method
from ..models import Classifier, create_model
from ..registry import get, registry
from ..schema import MAP, METHOD, TRACE_KEYS, condition, explanation_variables

PROB_TOLERANCE = 1e-3  # reloaded vs stored F_c(x): device and batch-order noise, far below a different model


class MethodCall:
    """A stored method, re-runnable: ``explain(model, x, target, seeds=None, **overrides)``."""

    def __init__(self, method: Method):
        self.method = method

    def accepts(self, name: str) -> bool:
        m = self.method
        while m is not None:
            if name in m.explainer.params:
                return True
            m = m.inner
        return False

    def __call__(self, model, x, target, seeds=None, **overrides) -> Explanation:
        return _override(self.method, overrides)(model, x, target, seeds=seeds)


def _override(method: Method, overrides: dict) -> Method:
    """``overrides`` go to the outermost method that has each parameter (``steps`` of a wrapped IG)."""
    if not overrides:
        return method
    own = {k: v for k, v in overrides.items() if k in method.explainer.params}
    rest = {k: v for k, v in overrides.items() if k not in own}
    if rest and method.inner is None:
        raise PluginError(f"method '{method.spec}' has no parameter {', '.join(sorted(rest))}.")
    return dataclasses.replace(method, params={**method.params, **own},
                               inner=_override(method.inner, rest) if rest else method.inner)


def check_plugins_present(ds: xr.Dataset, given=()) -> None:
    """Every plugin the store's run used must be registered here; one that is not is named with the
    file it came from and the flag that loads it (a store is not self-contained code)."""
    recorded = json.loads(ds.attrs.get("uni_lab_plugins", "{}"))
    index = registry.index()
    for key, where in recorded.items():
        kind, name = key.split(":", 1)
        if name in index[kind] or (kind == "model" and name in given):
            continue
        source = where.get("file") or where.get("origin", "?").split(":")[0]
        raise PluginError(f"this store was made with {kind} '{name}' from {source}, which is not registered here; "
                          f"load it with --plugins {source} (uni_lab.evaluate: import it first).")


def method_from_config(spec: str, cfg: dict) -> Method:
    """The :class:`~uni_lab.methods.Method` a store recorded (``uni_lab_config["methods"][spec]``)."""
    explainer = get("explainer", cfg["explainer"])
    params = explainer.resolved_params(cfg.get("params", {}))
    baseline, bparams, inner = None, {}, None
    if "baseline" in cfg:
        baseline = get("baseline", cfg["baseline"])
        bparams = baseline.resolved_params(cfg.get("baseline_params", {}))
        params.pop("baseline", None)
    if "inner" in cfg:
        inner = method_from_config(spec[spec.find("(") + 1:spec.rfind(")")], cfg["inner"])
        params.pop("inner", None)
    path, pparams = None, {}
    if "path" in explainer.params:  # recorded only where it is not the implicit straight line
        path = get("path", cfg.get("path", "straight"))
        pparams = path.resolved_params(cfg.get("path_params", {}))
        params.pop("path", None)
    return Method(spec, explainer, params, baseline, bparams, inner, path, pparams)


def load_model(name: str, described: dict, given: dict) -> Classifier:
    """The model a store names: passed in, a registered model's embedded weights, or a weights file."""
    if name in given:
        return given[name]
    weights = described.get("weights")
    fix = f"pass it in: uni_lab.evaluate(store, models=[classifier]) with classifier.name == '{name}'."
    if weights == "random" and "seed" in described:  # drawn from the run's seed: rebuilt, then verified
        clf = create_model(name, weights="random", seed=described["seed"])
    elif weights == "random":
        raise StoreError(f"model '{name}' in this store has random weights of an unrecorded draw, which cannot be "
                         f"rebuilt; {fix}")
    elif weights and Path(weights).is_file():
        clf = create_model(name, weights=weights)
    elif name in registry.index()["model"]:
        clf = create_model(name)
        if clf.describe()["weights"] != weights:
            raise StoreError(f"the store's '{name}' used weights '{weights}', the embedded ones are "
                             f"'{clf.describe()['weights']}'; {fix}")
    else:
        raise StoreError(f"cannot reload model '{name}' (weights '{weights}' are not a file here); {fix}")
    clf.input_size = tuple(described.get("input_size", clf.input_size))
    return clf


def verify_model(clf, ds: xr.Dataset, name: str, ids, dev, batch_size: int) -> None:
    """The reloaded model must reproduce the stored classes and F_c(x): evaluation of another
    model's maps would be meaningless and silent. The stored inputs are checked first, so a
    missing or damaged input chunk is named as such, not blamed on the model. Batch by batch:
    a store of any size is never loaded whole."""
    ids = list(ids)
    bad, missing = [], []
    predicted = "predicted" if "predicted" in ds else "target"  # a run with labels explains the label
    for s in range(0, len(ids), batch_size):
        part = ids[s:s + batch_size]
        try:
            sub = ds[list({"input": 0, "target": 0, "prob_input": 0, predicted: 0})].sel(model=name, image=part).load()
        except Exception as exc:  # a damaged chunk surfaces as a codec or zarr error
            raise StoreError(f"store '{ds.encoding.get('source', '')}': the stored inputs of images {part} cannot be "
                             f"read ({exc.__class__.__name__}); run `uni-lab check --repair` on it, then rerun "
                             "`uni-lab run` to rewrite them.") from exc
        x = torch.from_numpy(sub["input"].values).float()
        finite = torch.isfinite(x).flatten(1).all(1).numpy()
        missing += [i for i, ok in zip(part, finite) if not ok]
        with torch.no_grad():
            logits = clf(x.to(dev)).float().cpu()
        target = torch.from_numpy(sub["target"].values).long()
        pred = torch.from_numpy(sub[predicted].values).long()
        prob = logits.softmax(-1).gather(1, target.view(-1, 1)).squeeze(1).double().numpy()
        ok = (logits.argmax(-1) == pred).numpy() & (np.abs(prob - sub["prob_input"].values) <= PROB_TOLERANCE)
        bad += [i for i, good, fin in zip(part, ok, finite) if fin and not good]
    if missing:
        raise StoreError(f"the stored input of images {missing[:5]} (model '{name}') is missing or damaged; run "
                         "`uni-lab check --repair` on the store, then rerun its `uni-lab run` command to rewrite it.")
    if bad:
        raise StoreError(f"model '{name}' as reloaded does not reproduce the stored predictions for images {bad}; "
                         "evaluate with the model the store was made with (uni_lab.evaluate(..., models=[clf])).")


@dataclass
class Batch:
    """Clean inputs and stored explanations of some images of one (model, method)."""

    ids: list
    x: torch.Tensor
    target: torch.Tensor
    seeds: torch.Tensor
    explanation: Explanation

    @classmethod
    def load(cls, ds: xr.Dataset, model: str, method: str, ids: list, seeds: dict, dev) -> "Batch":
        sub = ds[["input", "target"]].sel(model=model, image=ids).load()
        x = torch.from_numpy(sub["input"].transpose("image", *MAP).values).float().to(dev)
        target = torch.from_numpy(sub["target"].values).long().to(dev)
        exp = read_explanation(ds, "clean", {"model": model, METHOD: method}, ids, dev)
        return cls(list(ids), x, target, torch.tensor([seeds[i] for i in ids]), exp)

    def take(self, ids: list) -> "Batch":
        idx = [self.ids.index(i) for i in ids]
        return Batch(list(ids), self.x[idx], self.target[idx], self.seeds[idx], take(self.explanation, idx))


def take(e: Explanation, idx: list[int]) -> Explanation:
    """The explanation of some images of a batch (by position)."""
    pick = (lambda t: None if t is None else t[idx])
    return Explanation(e.attribution[idx], pick(e.baseline), None if e.trace is None else
                       {k: v[idx] for k, v in e.trace.items()}, pick(e.completeness_error))


def read_explanation(ds: xr.Dataset, kind: str, sel: dict, ids: list, dev) -> Explanation:
    """An :class:`Explanation` from the variables stored under condition ``kind`` (NaN baseline or
    trace → ``None``)."""
    sub = ds[explanation_variables(kind)].sel({**sel, "image": ids}).load()
    p = condition(kind).prefix

    def tensor(name, dims):
        return torch.from_numpy(np.ascontiguousarray(sub[p + name].transpose("image", *dims).values)).to(dev)

    attribution = tensor("attribution", MAP).float()
    baseline = tensor("baseline", MAP).float()
    baseline = None if torch.isnan(baseline).all() else baseline
    trace = {k: tensor(f"trace_{k}", ("step",)) for k in TRACE_KEYS}
    keep = torch.isfinite(trace["alpha"]).any(0)
    trace = None if not keep.any() else {k: v[:, :int(keep.nonzero().max()) + 1] for k, v in trace.items()}
    err = tensor("completeness_error", ())
    return Explanation(attribution, baseline, trace, None if torch.isnan(err).all() else err)


def explanation_values(exp: Explanation, j: int, steps: int, p: str) -> dict:
    """One image's explanation as ``{variable: array}``, traces NaN-padded to the store's steps."""
    values = {f"{p}attribution": exp.attribution[j].detach().float().cpu().numpy()}
    if exp.baseline is not None:
        values[f"{p}baseline"] = exp.baseline[j].detach().float().cpu().numpy()
    if exp.trace is not None:
        for k, tr in exp.trace.items():
            row = np.full(steps, np.nan)
            tr = tr[j].detach().double().cpu().numpy()
            if tr.shape[0] > steps:
                raise StoreError(f"a path of {tr.shape[0]} points does not fit the store's {steps} steps.")
            row[:tr.shape[0]] = tr
            values[f"{p}trace_{k}"] = row
    if exp.completeness_error is not None:
        values[f"{p}completeness_error"] = float(exp.completeness_error[j])
    return values
