"""One registry for every plugin kind: decorators on top, pluggy hooks underneath.

``@uni_lab.baseline("mean")`` files a function under a name, the way timm's
``register_model`` does; ``uni_lab.create("baseline", "mean", **params)`` is the one door
back out. The decorators store into :data:`_DECORATED`, which is itself a pluggy plugin
implementing the hooks of :mod:`uni_lab.hookspecs`, so decorated functions and raw
``@hookimpl`` modules meet in the same place. Third-party packages (and the built-ins in
``plugins/``) arrive through the ``uni_lab`` entry-point group, loaded once, lazily.
"""
from __future__ import annotations

import fnmatch
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import PluginError
from .hookspecs import HOOK_OF_KIND, KINDS, hookimpl

# Arguments the caller supplies; everything else in a signature is a user parameter.
CALL_ARGS = {
    "baseline": ("x", "model", "target", "seeds"),
    "path": ("x", "baseline", "alphas"),
    "explainer": ("model", "x", "target", "seeds"),
    "attack": ("model", "x", "target", "seeds", "explanation"),
    "metric": ("model", "x", "target", "attribution", "explanation", "seeds", "method", "explain", "reference",
               "x_reference"),
    "model": ("weights",),
}
REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class Plugin:
    """A registered plugin: what it is, where it came from, and what it accepts."""

    kind: str
    name: str
    obj: Callable
    origin: str
    params: dict = field(default_factory=dict)  # parameter -> default (REQUIRED if none)
    description: str = ""

    def check_params(self, params: dict) -> dict:
        """Validate user parameters by name; unknown ones are an error listing the valid ones."""
        unknown = sorted(set(params) - set(self.params))
        if unknown and not self._takes_var_kwargs():
            valid = ", ".join(sorted(self.params)) or "(none)"
            raise PluginError(
                f"{self.kind} '{self.name}' has no parameter {', '.join(map(repr, unknown))}; "
                f"its parameters are: {valid}."
            )
        return dict(params)

    def resolved_params(self, params: dict | None = None) -> dict:
        """Defaults overlaid with ``params``: the exact values a run records."""
        out = {k: v for k, v in self.params.items() if v is not REQUIRED}
        out.update(self.check_params(params or {}))
        return out

    def _takes_var_kwargs(self) -> bool:
        sig = _signature(self.obj)
        return any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())

    def accepts(self, arg: str) -> bool:
        sig = _signature(self.obj)
        return arg in sig.parameters

    def __call__(self, *args, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k not in CALL_ARGS[self.kind] or self.accepts(k)}
        if inspect.isclass(self.obj):
            ctor = {k: kwargs.pop(k) for k in list(kwargs) if k in self.params}
            return self.obj(**ctor)(*args, **kwargs)
        return self.obj(*args, **kwargs)


def _signature(obj) -> inspect.Signature:
    return inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)


def _make_plugin(kind: str, name: str, obj: Callable, origin: str) -> Plugin:
    if not callable(obj):
        raise PluginError(f"{kind} '{name}' from {origin} is not callable (got {type(obj).__name__}).")
    params = {}
    for p in _signature(obj).parameters.values():
        if p.name in ("self",) + CALL_ARGS[kind] or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        params[p.name] = p.default
    doc = inspect.getdoc(obj) or ""
    return Plugin(kind, name, obj, origin, params, doc.strip().splitlines()[0] if doc else "")


def _origin(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


class _Decorated:
    """Everything registered through the decorators, served to pluggy as hook results."""

    def __init__(self):
        self.items: dict[str, dict[str, Callable]] = {kind: {} for kind in KINDS}

    def add(self, kind: str, name: str, obj: Callable):
        current = self.items[kind].get(name)
        if current is not None and _origin(current) != _origin(obj):
            raise PluginError(
                f"duplicate {kind} name '{name}': already registered by {_origin(current)}, "
                f"registered again by {_origin(obj)}. Pick another name."
            )
        self.items[kind][name] = obj  # same origin: a re-run notebook cell or reload

    @hookimpl
    def uni_lab_baselines(self):
        return dict(self.items["baseline"])

    @hookimpl
    def uni_lab_paths(self):
        return dict(self.items["path"])

    @hookimpl
    def uni_lab_explainers(self):
        return dict(self.items["explainer"])

    @hookimpl
    def uni_lab_attacks(self):
        return dict(self.items["attack"])

    @hookimpl
    def uni_lab_metrics(self):
        return dict(self.items["metric"])

    @hookimpl
    def uni_lab_models(self):
        return dict(self.items["model"])


_DECORATED = _Decorated()


class Registry:
    """The plugin manager plus a cached name index per kind."""

    def __init__(self, entry_point_group: str | None = hookspecs.PROJECT):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.pm.register(_DECORATED, name="uni_lab.decorators")
        self._group = entry_point_group
        self._entry_points_loaded = entry_point_group is None
        self._index: dict[str, dict[str, Plugin]] | None = None

    def register_module(self, module, name: str | None = None):
        """Register a module (or object) with raw ``@hookimpl`` functions."""
        self.pm.register(module, name=name)
        self.invalidate()

    def invalidate(self):
        self._index = None

    def _load_entry_points(self):
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True  # set first: a failing plugin must not be retried forever
        try:
            self.pm.load_setuptools_entrypoints(self._group)
        except PluginError:
            raise
        except Exception as exc:  # name the plugin that broke start-up, not just the traceback
            raise PluginError(f"a plugin in the '{self._group}' entry-point group failed to load: {exc!r}") from exc

    def index(self) -> dict[str, dict[str, Plugin]]:
        self._load_entry_points()
        if self._index is None:
            index: dict[str, dict[str, Plugin]] = {kind: {} for kind in KINDS}
            for kind in KINDS:
                hook = getattr(self.pm.hook, HOOK_OF_KIND[kind])
                for impl in hook.get_hookimpls():
                    for name, obj in (impl.function() or {}).items():
                        origin = _origin(obj) if impl.plugin is _DECORATED else f"{impl.plugin_name}:{name}"
                        if name in index[kind]:
                            raise PluginError(
                                f"duplicate {kind} name '{name}': registered by {index[kind][name].origin} "
                                f"and by {origin}. Rename one of them."
                            )
                        index[kind][name] = _make_plugin(kind, name, obj, origin)
            self._index = index
        return self._index

    def get(self, kind: str, name: str) -> Plugin:
        if kind not in KINDS:
            raise PluginError(f"unknown plugin kind '{kind}'; kinds are: {', '.join(KINDS)}.")
        plugins = self.index()[kind]
        if name not in plugins:
            raise PluginError(
                f"unknown {kind} '{name}'. Available {kind}s: {', '.join(sorted(plugins)) or '(none)'}."
            )
        return plugins[name]

    def list(self, kind: str | None = None, pattern: str = "*") -> list[Plugin]:
        kinds = [kind] if kind else list(KINDS)
        out = []
        for k in kinds:
            if k not in KINDS:
                raise PluginError(f"unknown plugin kind '{k}'; kinds are: {', '.join(KINDS)}.")
            out += [p for n, p in sorted(self.index()[k].items()) if fnmatch.fnmatch(n, pattern)]
        return out


registry = Registry()


def _decorator(kind: str):
    def register(name: str | None = None):
        def wrap(obj):
            _DECORATED.add(kind, name or obj.__name__, obj)
            registry.invalidate()
            return obj

        if callable(name):  # bare @uni_lab.baseline
            obj, name = name, None
            return wrap(obj)
        return wrap

    register.__name__ = kind
    register.__doc__ = f"Register a {kind} under ``name`` (default: the function's name)."
    return register


baseline = _decorator("baseline")
path = _decorator("path")
explainer = _decorator("explainer")
attack = _decorator("attack")
metric = _decorator("metric")
model = _decorator("model")


def get(kind: str, name: str) -> Plugin:
    """The registered plugin ``name`` of ``kind``."""
    return registry.get(kind, name)


def create(kind: str, name: str, **params) -> Callable:
    """The plugin with its parameters bound: ``create("baseline", "blur", sigma=5)(x, model, target)``."""
    plugin = registry.get(kind, name)
    bound = functools.partial(plugin, **plugin.check_params(params))
    bound.plugin = plugin  # type: ignore[attr-defined]
    return bound


def list_plugins(kind: str | None = None, pattern: str = "*") -> list[Plugin]:
    """Registered plugins, optionally of one kind and matching a shell-style pattern."""
    return registry.list(kind, pattern)
