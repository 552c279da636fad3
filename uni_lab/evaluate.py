"""Metrics, attacks and corruptions for an existing store, without recomputing its maps.

``evaluate(store, metrics=..., attacks=..., corruptions=...)`` reloads the model named in the
store's configuration (checking that it reproduces the stored predictions), rebuilds each
method from the recorded parameters, and reads the stored attributions, baselines and path
traces. New maps are computed only where a metric needs them by definition: of attacked and
corrupted inputs, at other step counts (``riemann_stability``) or of a randomised model
(``sanity``).

Each input is evaluated under conditions: ``clean`` (the stored item), ``attack`` (dim
``attack``: an input perturbed against this method, stored with its map) and ``corruption``
(dims ``corruption``, ``severity``: an ImageNet-C copy of the input, shared by all methods).
Variables written:

- ``attack_input``, ``attack_attribution``, ``attack_baseline``, ``attack_trace_*``,
  ``attack_completeness_error``, ``attack_prob``, ``attack_label_kept``, ``attack_linf``,
  ``done_attack`` ``(model, method, image, attack, ...)``;
- ``corruption_input``, ``corruption_prob``, ``corruption_label_kept``, ``corruption_linf``,
  ``done_corruption_input`` ``(model, image, corruption, severity, ...)``, and the maps
  ``corruption_attribution`` ... ``done_corruption`` ``(model, method, image, corruption, severity, ...)``;
- per metric ``m`` and key ``k``: ``m_k`` ``(model, method, image[, extra])`` with ``done_m``,
  and ``attack_m_k`` / ``corruption_m_k`` on perturbed inputs, parameters in their attrs.

Values are written before their ``done_*`` flag, so an interrupted evaluation leaves no item
marked done that is not complete, and rerunning the same command finishes the rest. The
parameters of every metric and attack are kept in the store attribute ``uni_lab_evaluation``;
asking for other values is refused unless ``recompute=True``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from . import fastview
from .defaults import DEFAULT_BATCH, PERTURBED_METRICS, SEVERITIES
from .errors import InputError, PluginError, StoreError, UniLabError
from .accessor import config_of
from .explanation import Explanation
from .methods import NON_SEMANTIC, Method, parse_sets, route_params
from .models import Classifier, create_model, resolve_device
from .registry import Plugin, get, registry
from .seeding import image_seed
from .locks import evaluation_lock
from .schema import (ITEM, LABEL_DIMS, MAP, TRACE_KEYS, Variable, explanation_variables, flag_of, input_flag, is_metric,
                     maps_flag, metric_flag, metric_variable, perturbed_variables, prefix)
from .store import Store, _diff
PROB_TOLERANCE = 1e-3  # reloaded vs stored F_c(x): device and batch-order noise, far below a different model


@dataclass(frozen=True)
class Condition:
    """Where an input comes from: the stored item, an attack on it, or a corruption of it."""

    kind: str  # "clean" | "attack" | "corruption"
    labels: tuple = ()  # ((dim, label), ...)

    @property
    def prefix(self) -> str:
        return prefix(self.kind)

    @property
    def dims(self) -> tuple:
        return tuple(d for d, _ in self.labels)

    def sel(self, model, method=None, **extra) -> dict:
        out = {"model": model, **dict(self.labels), **extra}
        if method is not None:
            out["method"] = method
        return out


CLEAN = Condition("clean")


@dataclass
class EvalResult:
    path: Path
    table: "object"  # pandas.DataFrame


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
    if weights == "random":
        raise StoreError(f"model '{name}' in this store has random weights, which cannot be rebuilt; {fix}")
    if weights and Path(weights).is_file():
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


def _verify_model(clf, ds: xr.Dataset, name: str, ids, dev, batch_size: int) -> None:
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


def _names(kind: str, requested, corruption: bool | None = None) -> list[Plugin]:
    """Plugins by name; ``all`` is every registered one (attacks and corruptions told apart by ``severity``)."""
    if isinstance(requested, str):
        requested = [r.strip() for r in requested.split(",") if r.strip()]
    requested = list(requested or [])

    def fits(p):
        return corruption is None or ("severity" in p.params) == corruption

    if "all" in requested:
        return [p for p in registry.list(kind) if fits(p)]
    plugins = [get(kind, r) for r in requested]
    wrong = [p.name for p in plugins if not fits(p)]
    if wrong:
        what, other = ("a corruption", "--attacks") if corruption else ("an attack", "--corruptions")
        raise PluginError(f"{', '.join(wrong)}: not {what} (no severity parameter decides it); list it under {other}.")
    return plugins


def _params(plugin: Plugin, routed: dict, output: str) -> dict:
    params = plugin.resolved_params(routed.get((plugin.kind, plugin.name), {}))
    if "output" in plugin.params and "output" not in routed.get((plugin.kind, plugin.name), {}):
        params["output"] = output  # metrics and attacks explain the same F_c as the stored maps
    return plugin.validate(params)


def _semantic(params: dict) -> dict:
    return json.loads(json.dumps({k: v for k, v in params.items() if k not in NON_SEMANTIC and k != "severity"},
                                 default=str))


def evaluate(store, metrics=(), attacks=(), corruptions=(), *, severities=SEVERITIES,
             perturbed_metrics=PERTURBED_METRICS, sets=None, models=None, methods=None, images=None,
             batch_size: int = DEFAULT_BATCH, device: str | None = None, recompute: bool = False,
             progress: bool = True) -> EvalResult:
    """Compute ``metrics`` on the stored maps and ``perturbed_metrics`` on ``attacks``/``corruptions``.

    Names are lists or comma strings; ``"all"`` takes every registered one. ``sets``:
    ``{"mufidelity.n_subsets": 64}`` or ``["mufidelity.n_subsets=64"]``. ``models``: Classifier
    objects for models the store cannot reload (random or in-memory weights). ``methods`` and
    ``images`` restrict the work to some of the store's labels. Returns the store's path and
    the per-method table of :func:`metric_table`.
    """
    if batch_size < 1:
        raise InputError("batch_size must be at least 1.")
    st = Store(store)
    if not st.exists():
        raise StoreError(f"no store at '{store}'; create one with `uni-lab run --out {store}`.")
    with evaluation_lock(st):
        ds = st.open()
        # Maps are recomputed as the run computed them: stores older than the fast view ran without it.
        with fastview.using(config_of(ds).get("fast_view", "off") == "on"):
            return _evaluate(st, ds, metrics, attacks, corruptions, severities, perturbed_metrics, sets, models,
                             methods, images, batch_size, device, recompute, progress)


@dataclass
class Plan:
    """What an evaluation computes: plugins and their parameters, validated before any work."""

    metrics: list
    attacks: list
    corruptions: list
    perturbed: list
    severities: list
    params: dict  # (kind, name) -> resolved parameters


def plan(metrics=(), attacks=(), corruptions=(), *, severities=SEVERITIES, perturbed_metrics=PERTURBED_METRICS,
         sets=None, output: str = "prob") -> Plan:
    """Resolve names and parameters (types and the plugins' own checks); raises before anything is computed,
    so ``uni-lab run --metrics ...`` can refuse a typo before its run starts."""
    sets = parse_sets(sets) if isinstance(sets, (list, tuple)) else dict(sets or {})
    routed = route_params(sets)
    metric_ps = _names("metric", metrics)
    attack_ps, corruption_ps = _names("attack", attacks, False), _names("attack", corruptions, True)
    perturbed_ps = _names("metric", perturbed_metrics) if (attack_ps or corruption_ps) else []
    try:
        severities = sorted({int(s) for s in severities})
    except (TypeError, ValueError) as exc:
        raise InputError(f"severities must be integers among {SEVERITIES}, got {severities!r}.") from exc
    if not set(severities) <= set(SEVERITIES) or (corruption_ps and not severities):
        raise InputError(f"severities must be among {SEVERITIES}, got {severities}.")
    params = {("metric", p.name): _params(p, routed, output) for p in metric_ps + perturbed_ps}
    params.update({("attack", p.name): _params(p, routed, output) for p in attack_ps + corruption_ps})
    unused = [f"{name}.{k}" for (kind, name), ps in routed.items() if kind in ("metric", "attack")
              and (kind, name) not in params for k in ps]
    if unused:
        raise PluginError(f"--set {', '.join(unused)}: that plugin is not among the metrics, attacks and corruptions "
                          "asked for (--metrics/--attacks/--corruptions/--perturbed-metrics), so it would change nothing.")
    return Plan(metric_ps, attack_ps, corruption_ps, perturbed_ps, severities, params)


def _evaluate(st, ds, metrics, attacks, corruptions, severities, perturbed_metrics, sets, models, methods, images,
              batch_size, device, recompute, progress) -> EvalResult:
    config = config_of(ds)
    given = {c.name: c for c in (models if isinstance(models, (list, tuple)) else [models] if models else [])}
    check_plugins_present(ds, given=given)
    todo = plan(metrics, attacks, corruptions, severities=severities, perturbed_metrics=perturbed_metrics, sets=sets,
                output=config.get("output", "prob"))
    metric_ps, attack_ps, corruption_ps, perturbed_ps = todo.metrics, todo.attacks, todo.corruptions, todo.perturbed
    severities, params = todo.severities, todo.params
    _check_params(st, ds, params, recompute)

    dev = resolve_device(device)
    all_methods = [str(m) for m in ds.method.values]
    specs = _subset("method", all_methods, methods)
    ids = _subset("image", [str(i) for i in ds.image.values], images)
    seeds = {i: image_seed(config.get("seed", 0), i) for i in ids}
    coords = {"attack": [p.name for p in attack_ps], "corruption": [p.name for p in corruption_ps],
              "severity": severities}  # only the asked ones: a later evaluation grows the dim
    job = _Job(st, params, dev, coords)
    for model_name in [str(m) for m in ds.model.values]:
        clf = load_model(model_name, config["models"][model_name], given).to(dev)
        done = ds["done"].sel(model=model_name).load()
        written = [i for i in ids if bool(done.sel(image=i).any())]
        if not written:
            continue
        _verify_model(clf, ds, model_name, written, dev, batch_size)
        job.model, job.model_name = clf, model_name
        conditions = [Condition("attack", (("attack", p.name),)) for p in attack_ps]
        conditions += [Condition("corruption", (("corruption", p.name), ("severity", s)))
                       for p in corruption_ps for s in severities]
        plugin_of = {p.name: p for p in attack_ps + corruption_ps}
        for spec in specs:
            method = method_from_config(spec, config["methods"][spec])
            job.method, job.call = spec, MethodCall(method)
            item_ids = [i for i in ids if bool(done.sel({"method": spec, "image": i}))]
            bar = tqdm(total=len(item_ids) * (1 + len(conditions)), desc=f"evaluate {model_name} {spec}",
                       unit="item", disable=not progress, leave=False)
            for s in range(0, len(item_ids), batch_size):
                batch = _Batch.load(job.ds, model_name, spec, item_ids[s:s + batch_size], seeds, dev)
                job.metrics(CLEAN, batch, [p for p in metric_ps if not p.accepts("reference")])
                bar.update(len(batch.ids))
                for cond in conditions:
                    plugin = plugin_of[dict(cond.labels)[cond.kind]]
                    perturbed = job.perturb(cond, plugin, batch)
                    job.metrics(cond, batch, perturbed_ps, perturbed)
                    bar.update(len(batch.ids))
            bar.close()
    return EvalResult(st.path, metric_table(st.open_lazy()))


def _subset(dim: str, labels: list[str], wanted) -> list[str]:
    if wanted is None:
        return labels
    wanted = [w.strip() for w in wanted.split(",")] if isinstance(wanted, str) else list(wanted)
    unknown = [w for w in wanted if w not in labels]
    if unknown:
        raise InputError(f"the store has no {dim} {unknown}; its {dim}s are: {', '.join(labels)}.")
    return wanted


def _owner(kind: str, name: str) -> str:
    return f"{kind}:{name}"


def _check_params(st: Store, ds: xr.Dataset, params: dict, recompute: bool) -> None:
    """The store keeps one parameter set per metric and attack; others need ``recompute``."""
    recorded = json.loads(ds.attrs.get("uni_lab_evaluation", "{}"))
    changed = {}
    for (kind, name), p in params.items():
        old = recorded.get(_owner(kind, name))
        if old is not None and old != _semantic(p):
            changed[(kind, name)] = _diff(old, _semantic(p))
    if changed and not recompute:
        what = "; ".join(f"{k} {n} ({', '.join(d)})" for (k, n), d in changed.items())
        raise StoreError(f"store '{st.path}' holds results for other parameters of {what}. "
                         "Pass --recompute to replace them, or evaluate a copy of the store.")
    for kind, name in changed:
        if kind == "metric":
            st.drop_variables([v for v in ds.data_vars if ds[v].attrs.get("uni_lab_metric") == name])
        else:  # an attack or corruption: its label's flags go back to not-done everywhere
            dim = "corruption" if "severity" in get("attack", name).params else "attack"
            for flag in [v for v in ds.data_vars if v.startswith("done_") and dim in ds[v].dims]:
                if name in [str(x) for x in ds[dim].values]:
                    shape = [ds.sizes[d] for d in ds[flag].dims if d != dim]
                    st.write_region({flag: np.zeros(shape, dtype=bool)}, {dim: name})
    recorded.update({_owner(k, n): _semantic(p) for (k, n), p in params.items()})
    st.update_attrs({"uni_lab_evaluation": json.dumps(recorded, sort_keys=True)})


@dataclass
class _Batch:
    """Clean inputs and stored explanations of some images of one (model, method)."""

    ids: list
    x: torch.Tensor
    target: torch.Tensor
    seeds: torch.Tensor
    explanation: Explanation

    @classmethod
    def load(cls, ds: xr.Dataset, model: str, method: str, ids: list, seeds: dict, dev) -> "_Batch":
        sub = ds[["input", "target"]].sel(model=model, image=ids).load()
        x = torch.from_numpy(sub["input"].transpose("image", *MAP).values).float().to(dev)
        target = torch.from_numpy(sub["target"].values).long().to(dev)
        exp = read_explanation(ds, "clean", {"model": model, "method": method}, ids, dev)
        return cls(list(ids), x, target, torch.tensor([seeds[i] for i in ids]), exp)

    def take(self, ids: list) -> "_Batch":
        idx = [self.ids.index(i) for i in ids]
        e = self.explanation
        pick = (lambda t: None if t is None else t[idx])
        exp = Explanation(e.attribution[idx], pick(e.baseline), None if e.trace is None else
                          {k: v[idx] for k, v in e.trace.items()}, pick(e.completeness_error))
        return _Batch(list(ids), self.x[idx], self.target[idx], self.seeds[idx], exp)


def read_explanation(ds: xr.Dataset, kind: str, sel: dict, ids: list, dev) -> Explanation:
    """An :class:`Explanation` from the variables stored under condition ``kind`` (NaN baseline or
    trace → ``None``)."""
    sub = ds[explanation_variables(kind)].sel({**sel, "image": ids}).load()
    p = prefix(kind)

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


def _explanation_values(exp: Explanation, j: int, steps: int, p: str) -> dict:
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


class _Job:
    """Per-store state of one evaluation: the model and method at hand, and how to write."""

    def __init__(self, st: Store, params: dict, dev, coords: dict):
        self.st, self.params, self.dev, self.coords = st, params, dev, coords
        self.model = self.model_name = self.method = self.call = None
        self.ds = st.open_lazy()  # reopened only when variables are added

    # -- bookkeeping -------------------------------------------------------------------------
    def pending(self, flag: str, cond: Condition, ids: list, with_method: bool = True) -> list:
        ds = self.ds
        if flag not in ds.variables:
            return list(ids)
        sel = cond.sel(self.model_name, self.method if with_method else None)
        done = ds[flag].sel(sel).sel(image=ids).values
        return [i for i, d in zip(ids, np.atleast_1d(done)) if not d]

    def ensure(self, specs: dict, cond: Condition, extra: dict | None = None) -> None:
        """Create the variables if missing; every label this evaluation will use exists from the start."""
        coords = {**{d: self.coords[d] for d in cond.dims}, **(extra or {})}
        ds = self.ds
        if all(n in ds.variables for n in specs) and all(
                d in ds.dims and set(np.asarray(v).tolist()) <= set(ds[d].values.tolist()) for d, v in coords.items()):
            return  # the common case after the first batch: nothing to add, no metadata to reread
        if self.st.add_variables(specs, coords):
            self.ds = self.st.open_lazy()

    def write(self, values: dict, flag: str, cond: Condition, image: str, with_method: bool = True) -> None:
        labels = {**cond.sel(self.model_name, self.method if with_method else None), "image": image}
        self.st.write_region(values, labels, self.ds)
        self.st.write_region({flag: True}, labels, self.ds)  # last: the item is complete

    # -- perturbed inputs and their maps ------------------------------------------------------
    def perturb(self, cond: Condition, plugin: Plugin, batch: _Batch) -> dict:
        """Perturbed inputs and their maps for ``batch`` (computed where not stored yet)."""
        p = cond.prefix
        steps = self.ds.sizes["step"]
        with_method = cond.kind == "attack"  # an attack aims at one method; a corruption is shared by all
        flag = input_flag(cond.kind)
        self.ensure(perturbed_variables(cond.kind), cond)
        todo = self.pending(flag, cond, batch.ids, with_method)
        fresh = {}
        if todo:
            sub = batch.take(todo)
            xp = self._run_attack(cond, plugin, sub)
            with torch.no_grad():
                logits = self.model(xp).float()
            kept = (logits.argmax(-1) == sub.target).double().cpu().numpy()
            prob = logits.softmax(-1).gather(1, sub.target.view(-1, 1)).squeeze(1).double().cpu().numpy()
            linf = (xp - sub.x).abs().flatten(1).max(1).values.double().cpu().numpy()
            if not with_method:
                for j, i in enumerate(todo):
                    self.write({f"{p}input": xp[j].cpu().numpy(), f"{p}prob": prob[j], f"{p}label_kept": kept[j],
                                f"{p}linf": linf[j]}, flag, cond, i, with_method=False)
            fresh = {"x": xp, "ids": todo, "extra": (prob, kept, linf)}
        return self._maps(cond, batch, fresh, steps)

    def _run_attack(self, cond: Condition, plugin: Plugin, sub: _Batch) -> torch.Tensor:
        params = dict(self.params[("attack", plugin.name)])
        params.update({k: v for k, v in cond.labels if k == "severity"})
        try:
            xp = plugin(model=self.model, x=sub.x, target=sub.target, seeds=sub.seeds,
                        explanation=sub.explanation, **params)
        except UniLabError:
            raise
        except Exception as exc:
            raise UniLabError(f"{cond.kind} '{plugin.name}' failed on images {sub.ids} of method '{self.method}' "
                              f"({exc.__class__.__name__}: {exc}); nothing was stored for them.") from exc
        if not torch.is_tensor(xp) or xp.shape != sub.x.shape or not torch.isfinite(xp).all() \
                or xp.min() < -1e-6 or xp.max() > 1 + 1e-6:
            raise UniLabError(f"{cond.kind} '{plugin.name}' must return finite pixels in [0, 1] shaped "
                              f"{tuple(sub.x.shape)}; nothing was stored.")
        return xp.detach().to(sub.x)

    def _maps(self, cond: Condition, batch: _Batch, fresh: dict, steps: int) -> dict:
        """The method's maps of the perturbed inputs: from the store, or computed now."""
        p = cond.prefix
        with_method = cond.kind == "attack"
        todo = self.pending(maps_flag(cond.kind), cond, batch.ids)
        if todo:
            if with_method:
                xp, target, seeds = fresh["x"], batch.take(todo).target, batch.take(todo).seeds
            else:
                ds = self.ds
                xp = torch.from_numpy(ds[f"{p}input"].sel(cond.sel(self.model_name)).sel(image=todo)
                                      .transpose("image", *MAP).values).to(batch.x)
                target, seeds = batch.take(todo).target, batch.take(todo).seeds
            try:
                exp = self.call(self.model, xp, target, seeds)
            except UniLabError:
                raise
            except Exception as exc:
                raise UniLabError(f"method '{self.method}' failed on the {cond.kind}ed images {todo} "
                                  f"({exc.__class__.__name__}: {exc}); nothing was stored for them.") from exc
            for j, i in enumerate(todo):
                values = _explanation_values(exp, j, steps, p)
                if with_method:
                    prob, kept, linf = (v[fresh["ids"].index(i)] for v in fresh["extra"])
                    values.update({f"{p}input": xp[j].cpu().numpy(), f"{p}prob": prob, f"{p}label_kept": kept,
                                   f"{p}linf": linf})
                self.write(values, maps_flag(cond.kind), cond, i)
        ds = self.ds
        sel = cond.sel(self.model_name, self.method)
        exp = read_explanation(ds, cond.kind, sel, batch.ids, self.dev)
        in_sel = sel if with_method else cond.sel(self.model_name)
        xp = torch.from_numpy(ds[f"{p}input"].sel(in_sel).sel(image=batch.ids).transpose("image", *MAP).values)
        return {"x": xp.to(batch.x), "explanation": exp}

    # -- metrics ---------------------------------------------------------------------------------
    def metrics(self, cond: Condition, batch: _Batch, plugins: list, perturbed: dict | None = None) -> None:
        for plugin in plugins:
            flag = metric_flag(plugin.name, cond.kind)
            todo = self.pending(flag, cond, batch.ids)
            if not todo:
                continue
            idx = [batch.ids.index(i) for i in todo]
            sub = batch.take(todo)
            x, exp = sub.x, sub.explanation
            if perturbed is not None:
                pe = perturbed["explanation"]
                x = perturbed["x"][idx]
                exp = Explanation(pe.attribution[idx], None if pe.baseline is None else pe.baseline[idx],
                                  None if pe.trace is None else {k: v[idx] for k, v in pe.trace.items()},
                                  None if pe.completeness_error is None else pe.completeness_error[idx])
            params = self.params[("metric", plugin.name)]
            try:
                out = plugin(model=self.model, x=x, target=sub.target, attribution=exp.attribution, explanation=exp,
                             seeds=sub.seeds, method=self.method, explain=self.call,
                             reference=sub.explanation.attribution if perturbed is not None else None,
                             x_reference=sub.x if perturbed is not None else None, **params)
            except UniLabError:
                raise
            except Exception as exc:
                raise UniLabError(f"metric '{plugin.name}' failed on method '{self.method}', images {todo} "
                                  f"({cond.kind}) ({exc.__class__.__name__}: {exc}); nothing was stored for them.") from exc
            columns = _metric_columns(plugin.name, out, len(todo), cond.kind)
            meta = {"uni_lab_metric": plugin.name, "uni_lab_params": json.dumps(_semantic(params), sort_keys=True)}
            specs = {name: Variable(ITEM + cond.dims + dims, "f8", plugin.description, meta=meta)
                     for name, (dims, _, _) in columns.items()}
            specs[flag] = Variable(ITEM + cond.dims, "bool", fill=False, meta={"uni_lab_metric": plugin.name})
            extra = {d: c for _, (_, coords, _) in columns.items() for d, c in coords.items()}
            self.ensure(specs, cond, extra)
            ds = self.ds
            values = {}
            for name, (dims, coords, arr) in columns.items():
                da = xr.DataArray(arr, dims=("image",) + dims, coords=coords)
                values[name] = da.reindex({d: ds[d].values for d in dims}).values  # shared dims may hold more labels
            for j, i in enumerate(todo):
                self.write({name: v[j] for name, v in values.items()}, flag, cond, i)


def _metric_columns(metric: str, out: dict, n: int, kind: str = "clean") -> dict:
    """``{variable: (extra dims, their coords, values (n, ...))}`` from what a metric returned, named
    for condition ``kind``."""
    if not isinstance(out, dict) or not out:
        raise PluginError(f"metric '{metric}' must return a non-empty dict of named values.")
    columns = {}
    for key, value in out.items():
        name = metric_variable(metric, key, kind)
        if isinstance(value, xr.DataArray):
            if value.dims[0] != "image":
                raise PluginError(f"metric '{metric}' returned '{key}' with dims {value.dims}; the first must be 'image'.")
            dims = tuple(value.dims[1:])
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


def metric_table(ds: xr.Dataset):
    """Mean over images of every scalar evaluation variable, one row per (model, method).

    Attack variables get one column per attack (``robustness_topk[fgsm_attribution]``), averaged
    over the images where the attack was accepted (a rejected attack returns ``x`` itself, whose
    map trivially matches), with the accepted share as ``attack_accepted[...]``. Corruption
    variables are averaged over corruptions and severities (``...[corruptions]``). Variables
    with further dims (stability steps, deletion curves) are left to the figures.
    """
    import pandas as pd

    names = [v for v in ds.data_vars if is_metric(v, ds[v].attrs)]
    names = [v for v in names if set(ds[v].dims) <= set(LABEL_DIMS)]
    needed = names + sorted({flag_of(v, ds[v].attrs) for v in names})
    if "done_attack" in ds.data_vars:
        needed += ["attack_linf", "done_attack"]
    # One read of each variable: selecting from the lazy store cell by cell rereads its chunks.
    ds = ds[list(dict.fromkeys(needed))].load()
    rows = []
    for model in ds.model.values:
        for method in ds.method.values:
            row = {"model": str(model), "method": str(method)}
            if "done_attack" in ds.data_vars:
                moved = ds["attack_linf"].sel({"model": model, "method": method}) > 0
                for a in ds.attack.values:
                    done = ds["done_attack"].sel({"model": model, "method": method, "attack": a})
                    row[f"attack_accepted[{a}]"] = _mean(moved.sel(attack=a).where(done))
            for v in names:
                da = ds[v].sel({"model": model, "method": method})
                flag = ds[flag_of(v, ds[v].attrs)].sel({"model": model, "method": method})
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
