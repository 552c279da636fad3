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
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pluggy

from . import hookspecs
from .contracts import call_args, check_signature
from .errors import PluginError
from .hookspecs import HOOK_OF_KIND, KINDS, hookimpl

# Arguments the caller supplies (uni_lab.contracts); everything else in a signature is a user parameter.
CALL_ARGS = {kind: call_args(kind) for kind in KINDS}
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
    types: dict = field(default_factory=dict)  # parameter -> accepted types (from annotation or default)
    check: Callable | None = None  # value checks beyond types, run before anything is computed

    def check_params(self, params: dict) -> dict:
        """Validate user parameters by name and type; unknown ones are an error listing the valid ones."""
        unknown = sorted(set(params) - set(self.params))
        if unknown and not self._takes_var_kwargs():
            valid = ", ".join(sorted(self.params)) or "(none)"
            raise PluginError(
                f"{self.kind} '{self.name}' has no parameter {', '.join(map(repr, unknown))}; "
                f"its parameters are: {valid}."
            )
        for key, value in params.items():
            accepted = self.types.get(key)
            if accepted and not _is_instance(value, accepted):
                raise PluginError(f"{self.name}.{key} must be {_describe(accepted)}, got {value!r}.")
        return dict(params)

    def validate(self, params: dict) -> dict:
        """Types, then the plugin's own ``check`` on the full parameter set (ranges, choices)."""
        params = self.check_params(params)
        if self.check is not None:
            self.check(**params)
        return params

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


_SCALARS = {"float": float, "int": int, "bool": bool, "str": str, "None": type(None)}


def _accepted_types(annotation, default) -> tuple | None:
    """The types a parameter accepts, from ``float``, ``int | None``, ``Optional[str]``, ``Literal``
    annotations (or the default's type when there is none); None where it cannot be told."""
    if isinstance(annotation, str):  # `from __future__ import annotations` in the plugin's module
        parts = [a.strip() for a in annotation.split("|")]
        if all(a in _SCALARS for a in parts):
            return tuple(_SCALARS[a] for a in parts)
        return None
    if annotation is inspect.Parameter.empty:
        if default is REQUIRED or default is None or type(default) not in _SCALARS.values():
            return None
        return (type(default),) if type(default) is not float else (float,)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return ("literal",) + typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [_accepted_types(a, REQUIRED) for a in typing.get_args(annotation)]
        return None if any(a is None or a[0] == "literal" for a in args) else sum(args, ())
    if annotation in _SCALARS.values():
        return (annotation,)
    return None


def _is_instance(value, accepted: tuple) -> bool:
    if accepted[0] == "literal":
        return value in accepted[1:]
    if isinstance(value, (bool, np.bool_)):  # bool is an int subclass; `eps=True` is a typo, not 1.0
        return bool in accepted
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and math.isnan(value):
        return False  # no parameter means anything by NaN
    if isinstance(value, numbers.Integral) and (int in accepted or float in accepted):
        return True
    if isinstance(value, numbers.Real) and float in accepted:
        return True
    return isinstance(value, tuple(t for t in accepted if t not in (int, float)))


def _describe(accepted: tuple) -> str:
    if accepted[0] == "literal":
        return "one of " + ", ".join(map(repr, accepted[1:]))
    names = {float: "a float", int: "an int", bool: "True or False", str: "a string", type(None): "None"}
    return " or ".join(names.get(t, t.__name__) for t in accepted)


def _make_plugin(kind: str, name: str, obj: Callable, origin: str) -> Plugin:
    if not callable(obj):
        raise PluginError(f"{kind} '{name}' from {origin} is not callable (got {type(obj).__name__}).")
    check_signature(kind, name, obj)
    params, types_ = {}, {}
    for p in _signature(obj).parameters.values():
        if p.name in ("self",) + CALL_ARGS[kind] or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        params[p.name] = p.default
        accepted = _accepted_types(p.annotation, p.default)
        if accepted:
            types_[p.name] = accepted
    doc = inspect.getdoc(obj) or ""
    return Plugin(kind, name, obj, origin, params, doc.strip().splitlines()[0] if doc else "", types_,
                  getattr(obj, "uni_lab_check", None))


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
    def register(name: str | None = None, *, check: Callable | None = None):
        def wrap(obj):
            check_signature(kind, name or obj.__name__, obj)  # refused here, at the decorator, not when first called
            if check is not None:  # read back by _make_plugin, so raw hookimpl modules can set it too
                obj.uni_lab_check = check
            _DECORATED.add(kind, name or obj.__name__, obj)
            registry.invalidate()
            return obj

        if callable(name):  # bare @uni_lab.baseline
            obj, name = name, None
            return wrap(obj)
        return wrap

    register.__name__ = kind
    register.__doc__ = (f"Register a {kind} under ``name`` (default: the function's name). ``check``: called with "
                        "the resolved parameters by name before anything is computed; raise InputError on bad values.")
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
