"""Method specs (``ig:black``, ``uni``, ``smoothgrad(ig:black)``) and parameter routing.

A spec names an explainer, optionally a baseline after ``:`` (for explainers that take
one), or an inner method in parentheses (for wrappers such as a noise tunnel, which then
receive ``inner``, a callable ``(model, x, target, seeds) -> Explanation``). Parameters come
from ``--set`` keys ``name.param`` (or ``kind.name.param`` where a name is ambiguous).
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import PluginError
from .explanation import Explanation
from .hookspecs import KINDS
from .registry import Plugin, get, registry

# Parameters that change speed or memory, not results: never part of a run's identity.
NON_SEMANTIC = {"internal_batch_size", "unlearn_chunk"}
_SPEC = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(?::\s*([A-Za-z_][\w.\-]*)\s*)?(?:\((.*)\))?\s*$")


def parse_value(text: str):
    """``--set`` values: Python literals where they parse (``0.03``, ``True``, ``[1, 2]``), else strings."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_sets(items) -> dict[str, object]:
    """``["uni.eps=0.03", ...]`` → ``{"uni.eps": 0.03}``, with a clear error for a malformed item."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise PluginError(f"--set expects name.param=value (e.g. uni.eps=0.03), got '{item}'.")
        out[key.strip()] = parse_value(value.strip())
    return out


def route_params(sets: dict[str, object]) -> dict[tuple[str, str], dict]:
    """Assign each ``name.param`` to the one plugin that has it; ambiguity and typos are errors."""
    routed: dict[tuple[str, str], dict] = {}
    index = registry.index()
    for key, value in sets.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] in KINDS:
            plugin = get(parts[0], parts[1])
            plugin.check_params({parts[2]: value})
            routed.setdefault((plugin.kind, plugin.name), {})[parts[2]] = value
            continue
        if len(parts) != 2:
            raise PluginError(f"--set key '{key}' must be name.param or kind.name.param.")
        name, param = parts
        named = [index[k][name] for k in KINDS if name in index[k]]
        if not named:
            known = sorted({n for k in KINDS for n in index[k]})
            raise PluginError(f"--set {key}: no plugin is named '{name}'. Registered names: {', '.join(known)}.")
        having = [p for p in named if param in p.params]
        if not having:
            options = "; ".join(f"{p.kind} {p.name}: {', '.join(sorted(p.params)) or '(none)'}" for p in named)
            raise PluginError(f"--set {key}: '{name}' has no parameter '{param}'. Parameters: {options}.")
        if len(having) > 1:
            choices = " or ".join(f"{p.kind}.{p.name}.{param}" for p in having)
            raise PluginError(f"--set {key} is ambiguous; write {choices}.")
        having[0].check_params({param: value})
        routed.setdefault((having[0].kind, name), {})[param] = value
    return routed


@dataclass
class Method:
    """A resolved method: explainer, baseline or inner method, and every parameter value."""

    spec: str
    explainer: Plugin
    params: dict
    baseline: Plugin | None = None
    baseline_params: dict = field(default_factory=dict)
    inner: "Method | None" = None
    path: Plugin | None = None  # a registered path for explainers that take ``path`` (ig, uni)
    path_params: dict = field(default_factory=dict)

    def __call__(self, model, x, target, seeds=None) -> Explanation:
        kwargs = dict(self.params)
        if self.baseline is not None:
            bparams = self.baseline_params

            def baseline(x_, m_, t_, seeds=None):
                return self.baseline(x_, m_, t_, seeds=seeds, **bparams)

            baseline.plugin_name = self.baseline.name  # named in resolve_baseline's errors
            kwargs["baseline"] = baseline
        if self.inner is not None:
            kwargs["inner"] = self.inner
        if self.path is not None:
            pparams = self.path_params

            def path(x_, b_, alphas):
                return self.path(x_, b_, alphas, **pparams)

            kwargs["path"] = path
        return self.explainer(model, x, target, seeds=seeds, **kwargs)

    def has_random_part(self) -> bool:
        """Whether the map depends on the seed: a plugin it calls (explainer, baseline, path, inner
        method) declared ``random`` at registration, for these parameters (a noise tunnel, a random
        baseline, UNI's uniform PGD start); such methods get ``seed_stability`` in a run."""
        parts = ((self.explainer, self.params), (self.baseline, self.baseline_params), (self.path, self.path_params))
        if any(plugin is not None and plugin.is_random(params) for plugin, params in parts):
            return True
        return self.inner is not None and self.inner.has_random_part()

    def config(self) -> dict:
        """Every parameter that determines the result, for the store's attrs and resume checks."""
        out = {"explainer": self.explainer.name,
               "params": {k: v for k, v in self.params.items() if k not in NON_SEMANTIC}}
        if self.baseline is not None:
            out["baseline"] = self.baseline.name
            out["baseline_params"] = {k: v for k, v in self.baseline_params.items() if k not in NON_SEMANTIC}
        if self.inner is not None:
            out["inner"] = self.inner.config()
        if self.path is not None and (self.path.name, self.path_params) != ("straight", {}):
            # the straight line is every IG's implicit path: stores made before `path` existed stay resumable
            out["path"] = self.path.name
            out["path_params"] = {k: v for k, v in self.path_params.items() if k not in NON_SEMANTIC}
        return out


def resolve(spec: str, routed: dict | None = None, defaults: dict | None = None) -> Method:
    """Parse a spec and bind parameters: explicit ``--set`` values over run-wide defaults over the plugin's own."""
    routed = routed or {}
    m = _SPEC.match(spec)
    if not m:
        raise PluginError(f"cannot parse method '{spec}'; write explainer, explainer:baseline or wrapper(method).")
    name, base_name, inner_spec = m.groups()
    explainer = get("explainer", name)
    params = explainer.resolved_params()
    for key, value in (defaults or {}).items():
        if key in explainer.params:
            params[key] = value
    params.update(routed.get(("explainer", name), {}))
    inner = None
    if inner_spec is not None:
        if "inner" not in explainer.params:
            raise PluginError(f"explainer '{name}' does not wrap other methods; '{spec}' is not valid.")
        inner = resolve(inner_spec, routed, defaults)
        params.pop("inner", None)
    baseline = None
    bparams: dict = {}
    if base_name is not None and "baseline" not in explainer.params:
        raise PluginError(f"explainer '{name}' takes no baseline; write '{name}' without ':{base_name}'.")
    chosen = base_name or (params.get("baseline") if isinstance(params.get("baseline"), str) else None)
    if chosen is not None:
        baseline = get("baseline", chosen)
        bparams = baseline.validate(baseline.resolved_params(routed.get(("baseline", chosen), {})))
        params.pop("baseline", None)
    path, pparams = None, {}
    if isinstance(params.get("path"), str):
        path = get("path", params.pop("path"))
        pparams = path.validate(path.resolved_params(routed.get(("path", path.name), {})))
    explainer.validate({k: v for k, v in params.items() if k != "inner"})
    label = spec.strip()
    if path is not None and path.name != "straight" or inner is not None and "@" in inner.spec:
        # the stored name says which path: `ig:black` must not stand for another path's IG
        label = (name + (f":{chosen}" if base_name else "") + (f"@{path.name}" if path and path.name != "straight" else "")
                 + (f"({inner.spec})" if inner is not None else ""))
    return Method(label, explainer, params, baseline, bparams, inner, path, pparams)


def used_plugins(method: Method) -> set[tuple[str, str]]:
    """``(kind, name)`` of every plugin a method calls: its explainer, baseline, path, inner methods."""
    used = {("explainer", method.explainer.name)}
    if method.baseline is not None:
        used.add(("baseline", method.baseline.name))
    if method.path is not None:
        used.add(("path", method.path.name))
    return used | (used_plugins(method.inner) if method.inner is not None else set())


def plugin_origins(methods: list[Method], model_names=()) -> dict[str, dict]:
    """``{"kind:name": {"origin", "file"}}`` of every plugin a run uses, so a store can say where a
    plugin it needs came from (a user's ``--plugins`` file) when it is not registered."""
    import inspect

    used = set().union(*(used_plugins(m) for m in methods)) if methods else set()
    models = registry.index()["model"]
    used |= {("model", n) for n in model_names if n in models}
    out = {}
    for kind, name in sorted(used):
        plugin = get(kind, name)
        try:
            source = inspect.getsourcefile(plugin.obj)
        except TypeError:
            source = None
        out[f"{kind}:{name}"] = {"origin": plugin.origin, "file": source, "source_sha256": _file_hash(source)}
    return out


def _file_hash(source: str | None) -> str | None:
    """The plugin's whole source file, hashed: an edit anywhere in it (a helper it calls) counts."""
    import hashlib

    try:
        return hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16] if source else None
    except OSError:
        return None


def changed_plugins(recorded: dict, now: dict) -> list[str]:
    """``kind:name`` of every plugin whose source differs from the one a store recorded."""
    return [key for key in sorted(set(recorded) & set(now))
            if recorded[key].get("source_sha256") and now[key].get("source_sha256")
            and recorded[key]["source_sha256"] != now[key]["source_sha256"]]


def check_all_used(routed: dict, methods: list[Method], kinds=("explainer", "baseline", "path")) -> None:
    """A ``--set`` for a plugin none of the methods calls would be recorded nowhere and change nothing."""
    used = set().union(*(used_plugins(m) for m in methods)) if methods else set()
    for kind, name in routed:
        if kind in kinds and (kind, name) not in used:
            keys = ", ".join(f"{name}.{p}" for p in routed[(kind, name)])
            hint = {"path": f"; choose it with --set ig.path={name}"}.get(kind, "")
            own = sorted({f"{m.explainer.name}.{p}" for m in methods for p in routed[(kind, name)] if p in m.explainer.params})
            hint += f" (did you mean {', '.join(own)}?)" if own else ""
            raise PluginError(f"--set {keys}: {kind} '{name}' is not used by any of the methods "
                              f"({', '.join(m.spec for m in methods)}){hint}.")


def explain(spec: str, model, x: torch.Tensor, target=None, seeds=None, sets: dict | None = None, **params) -> Explanation:
    """One method on one batch from Python: ``explain("uni", model, x, **{"uni.eps": 0.03})``.

    ``target`` defaults to the predicted class. Keyword parameters are ``name.param``
    routes, or bare parameter names of the explainer itself.
    """
    from .engine import check_input
    from .models import restoring_modes, wrap

    with restoring_modes(model):  # wrapping puts the network in eval mode; the caller's modes come back
        return _explain_wrapped(spec, wrap(model), check_input(x), target, seeds, sets, params)


def _explain_wrapped(spec, model, x, target, seeds, sets, params) -> Explanation:
    if target is None:
        with torch.no_grad():
            target = model(x).argmax(-1)
    target = torch.as_tensor(target, device=x.device).view(-1).expand(x.shape[0]).contiguous()
    sets = dict(sets or {})
    explainer_name = _SPEC.match(spec).group(1) if _SPEC.match(spec) else spec
    for key, value in params.items():
        sets[key if "." in key else f"explainer.{explainer_name}.{key}"] = value
    return resolve(spec, route_params(sets))(model, x, target, seeds=seeds)
