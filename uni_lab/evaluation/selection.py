"""What an evaluation computes: plugins, their parameters and the condition labels, resolved from
names alone (``uni-lab run --metrics ...`` refuses a typo before its run starts), then compared
with what a store recorded (:func:`changed_parameters`, pure) and recorded (:func:`record`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import xarray as xr

from ..defaults import PERTURBED_METRICS, SEVERITIES
from ..errors import InputError, PluginError, StoreError
from ..methods import NON_SEMANTIC, parse_sets, route_params
from ..registry import Plugin, get, registry
from ..schema import RUN_VARIABLES, MetricFlag, condition_in, is_flag, perturbed_variables
from ..store import Store, _diff


@dataclass(frozen=True)
class Selection:
    """Plugins and their resolved parameters; ``params`` maps ``(kind, name)`` to them."""

    metrics: list
    attacks: list
    corruptions: list
    perturbed: list
    severities: list
    params: dict

    @property
    def clean_metrics(self) -> list:
        """Metrics of the stored maps themselves (those comparing to a reference need a perturbation)."""
        return [p for p in self.metrics if not p.accepts("reference")]

    def coords(self) -> dict:
        """The labels of the condition dims: only the asked ones (a later evaluation grows the dim)."""
        return {"attack": [p.name for p in self.attacks], "corruption": [p.name for p in self.corruptions],
                "severity": list(self.severities)}

    def conditions(self) -> list[tuple[str, list]]:
        """``(condition kind, metrics computed under it)`` for every condition asked for."""
        asked = [("clean", self.clean_metrics)]
        return asked + [(kind, self.perturbed) for kind, ps in (("attack", self.attacks),
                                                                ("corruption", self.corruptions)) if ps]

    def check_names(self, ds: xr.Dataset) -> None:
        """Every flag this selection sets names one thing: not the variable of another metric or
        condition, in this selection or in the store (a clean metric called ``attack`` would otherwise
        share ``done_attack`` with the attacked inputs). A metric's values are named by the keys it
        returns, known once it has run: :func:`check_owner` checks them before they are written."""
        owners: dict[str, set] = {}
        for kind, metrics in self.conditions():
            if kind != "clean":
                for name in perturbed_variables(kind):
                    owners.setdefault(name, set()).add(f"the {kind} inputs")
            for p in metrics:
                owners.setdefault(MetricFlag(p.name, kind).name, set()).add(f"metric '{p.name}' ({kind})")
        for name, who in owners.items():
            if name in RUN_VARIABLES or name in ds.variables:
                who.add(owner_of(name, ds[name]) if name in ds.variables else "the run")
        clashes = {n: sorted(w) for n, w in owners.items() if len(w) > 1}
        if clashes:
            name, who = sorted(clashes.items())[0]
            raise PluginError(f"the variable '{name}' would belong to {' and '.join(who)}; rename the metric (its name "
                              "makes the variable's).")


def owner_of(name: str, var) -> str:
    """Who a stored evaluation variable belongs to, in words (from its attributes and dims)."""
    kind = condition_in(var.dims).kind
    metric = var.attrs.get("uni_lab_metric")
    if metric is None:
        return "the run" if name in RUN_VARIABLES or kind == "clean" else f"the {kind} inputs"
    return f"metric '{metric}' ({kind})"


def check_owner(name: str, ds: xr.Dataset, metric: str, kind: str) -> None:
    """A metric's value is written only into a variable of its own (the store's, if it has one)."""
    mine = f"metric '{metric}' ({kind})"
    other = "the run" if name in RUN_VARIABLES else owner_of(name, ds[name]) if name in ds.variables else mine
    if other != mine:
        raise PluginError(f"{mine} returned '{name}', the variable of {other}; rename the metric or that key; "
                          "nothing was stored for it.")


def select(metrics=(), attacks=(), corruptions=(), *, severities=SEVERITIES, perturbed_metrics=PERTURBED_METRICS,
           sets=None, output: str = "prob") -> Selection:
    """Resolve names and parameters (types and the plugins' own checks); raises before anything is computed."""
    sets = parse_sets(sets) if isinstance(sets, (list, tuple)) else dict(sets or {})
    routed = route_params(sets)
    metric_ps = _named("metric", metrics)
    attack_ps, corruption_ps = _named("attack", attacks, False), _named("attack", corruptions, True)
    perturbed_ps = _named("metric", perturbed_metrics) if (attack_ps or corruption_ps) else []
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
    return Selection(metric_ps, attack_ps, corruption_ps, perturbed_ps, severities, params)


def changed_parameters(selection: Selection, ds: xr.Dataset) -> dict:
    """``{(kind, name): differences}`` of the parameters the store recorded for a plugin and the
    selection's (the store keeps one parameter set per metric, attack and corruption). Reads only."""
    recorded = json.loads(ds.attrs.get("uni_lab_evaluation", "{}"))
    changed = {}
    for (kind, name), p in selection.params.items():
        old = recorded.get(_owner(kind, name))
        if old is not None and old != semantic(p):
            changed[(kind, name)] = _diff(old, semantic(p))
    return changed


def refuse_changed(changed: dict, path) -> None:
    if changed:
        what = "; ".join(f"{k} {n} ({', '.join(d)})" for (k, n), d in changed.items())
        raise StoreError(f"store '{path}' holds results for other parameters of {what}. "
                         "Pass --recompute to replace them, or evaluate a copy of the store.")


def record(selection: Selection, st: Store, ds: xr.Dataset, changed: dict) -> None:
    """The first write of an evaluation: results of ``changed`` parameters are dropped (metrics) or
    their flags reset (attacks, corruptions), then every plugin's parameters recorded."""
    recorded = json.loads(ds.attrs.get("uni_lab_evaluation", "{}"))
    for kind, name in changed:
        if kind == "metric":
            st.drop_variables([v for v in ds.data_vars if ds[v].attrs.get("uni_lab_metric") == name])
        else:  # an attack or corruption: its label's flags go back to not-done everywhere
            dim = "corruption" if "severity" in get("attack", name).params else "attack"
            for flag in [v for v in ds.data_vars if dim in ds[v].dims and is_flag(v, ds[v])]:
                if name in [str(x) for x in ds[dim].values]:
                    shape = [ds.sizes[d] for d in ds[flag].dims if d != dim]
                    st.write_region({flag: np.zeros(shape, dtype=bool)}, {dim: name})
    recorded.update({_owner(k, n): semantic(p) for (k, n), p in selection.params.items()})
    st.update_attrs({"uni_lab_evaluation": json.dumps(recorded, sort_keys=True)})


def _named(kind: str, requested, corruption: bool | None = None) -> list[Plugin]:
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


def semantic(params: dict) -> dict:
    """The parameters that change a result, as JSON values (what the store records)."""
    return json.loads(json.dumps({k: v for k, v in params.items() if k not in NON_SEMANTIC and k != "severity"},
                                 default=str))


def _owner(kind: str, name: str) -> str:
    return f"{kind}:{name}"


def subset(dim: str, labels: list[str], wanted) -> list[str]:
    """The labels of ``dim`` to evaluate: all, or those asked for (each must be in the store)."""
    if wanted is None:
        return labels
    wanted = [w.strip() for w in wanted.split(",")] if isinstance(wanted, str) else list(wanted)
    unknown = [w for w in wanted if w not in labels]
    if unknown:
        raise InputError(f"the store has no {dim} {unknown}; its {dim}s are: {', '.join(labels)}.")
    return wanted
