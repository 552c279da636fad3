"""What an evaluation computes: plugins, parameters and labels, validated before any work.

A :class:`Plan` is built from names alone (``uni-lab run --metrics ...`` refuses a typo before
its run starts); :meth:`Plan.bind` then checks it against a store's recorded parameters.
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
from ..store import Store, _diff


@dataclass
class Plan:
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

    def bind(self, st: Store, ds: xr.Dataset, recompute: bool) -> None:
        """The store keeps one parameter set per metric and attack: others are refused unless
        ``recompute``, which drops the old results (metrics) or resets their flags (attacks)."""
        recorded = json.loads(ds.attrs.get("uni_lab_evaluation", "{}"))
        changed = {}
        for (kind, name), p in self.params.items():
            old = recorded.get(_owner(kind, name))
            if old is not None and old != semantic(p):
                changed[(kind, name)] = _diff(old, semantic(p))
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
        recorded.update({_owner(k, n): semantic(p) for (k, n), p in self.params.items()})
        st.update_attrs({"uni_lab_evaluation": json.dumps(recorded, sort_keys=True)})


def plan(metrics=(), attacks=(), corruptions=(), *, severities=SEVERITIES, perturbed_metrics=PERTURBED_METRICS,
         sets=None, output: str = "prob") -> Plan:
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
    return Plan(metric_ps, attack_ps, corruption_ps, perturbed_ps, severities, params)


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
