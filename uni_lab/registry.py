"""One registry for every plugin kind: one table, kind -> name -> :class:`Plugin`.

``@uni_lab.baseline("mean")`` files a function under a name, the way timm's
``register_model`` does: the decorator checks its signature against the kind's contract
(:mod:`uni_lab.contracts`), reads its parameters and types, and adds it to the table at once;
``uni_lab.create("baseline", "mean", **params)`` is the one door back out. Names meet in one
place (:meth:`Registry._add`): the same origin again replaces (a re-run notebook cell), another
origin is refused, naming both. pluggy is the published contract for third-party modules
(:mod:`uni_lab.hookspecs`): it loads the ``uni_lab`` entry-point group (once, lazily, on the
first lookup; the built-ins in ``plugins/`` arrive that way too) and modules given to
:meth:`Registry.register_module`, validates their ``@hookimpl`` functions, and their hooks are
called once into the same table. :meth:`Registry.unregister` takes one plugin out again.
"""
from __future__ import annotations

import fnmatch
import functools
import importlib.metadata
import inspect
import math
import numbers
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

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


def _make_plugin(kind: str, name: str, obj: Callable, origin: str, check: Callable | None = None) -> Plugin:
    if not callable(obj):
        raise PluginError(f"{kind} '{name}' from {origin} is not callable (got {type(obj).__name__}).")
    check_signature(kind, name, obj)  # refused here, at registration, not when first called
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
                  check or getattr(obj, "uni_lab_check", None))  # the attribute: a raw hookimpl's way to set it


def _origin(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


class Registry:
    """One table, kind -> name -> :class:`Plugin`. The decorators add to it directly; pluggy loads and
    validates the modules of raw ``@hookimpl`` functions, whose hooks are called once, into the same table."""

    def __init__(self, entry_point_group: str | None = hookspecs.PROJECT):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._group = entry_point_group
        self._entry_points_loaded = entry_point_group is None
        self._plugins: dict[str, dict[str, Plugin]] = {kind: {} for kind in KINDS}

    def _add(self, plugins: list[Plugin]) -> None:
        """The one place names meet. The same origin again (a re-run notebook cell, a reload) replaces;
        another origin is refused, naming both. All or nothing: a refused module leaves no half behind."""
        new: dict[tuple[str, str], Plugin] = {}
        for plugin in plugins:
            key = (plugin.kind, plugin.name)
            current = new.get(key) or self._plugins[plugin.kind].get(plugin.name)
            if current is not None and current.origin != plugin.origin:
                raise PluginError(
                    f"duplicate {plugin.kind} name '{plugin.name}': already registered by {current.origin}, "
                    f"registered again by {plugin.origin}. Pick another name."
                )
            new[key] = plugin
        for (kind, name), plugin in new.items():
            self._plugins[kind][name] = plugin

    def register_module(self, module, name: str | None = None):
        """Register a module (or object) with raw ``@hookimpl`` functions: its hooks are called once and
        what they return joins the table as ``"<name>:<plugin name>"``; for a module, the plugins its
        decorators filed (in :data:`registry`) come along, so a fresh :class:`Registry` sees them too.
        Registering it again (a reload, a re-run cell) replaces it."""
        name = name or self.pm.get_canonical_name(module)
        if self.pm.is_registered(module):
            self.pm.unregister(module)
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)
        try:
            self.pm.register(module, name=name)
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(module)
            raise PluginError(f"plugin '{name}' does not fit the uni_lab hooks: {exc}") from exc
        self._take(module, name)

    def _take(self, module, name: str) -> None:
        """Add what a module pluggy has registered provides; on failure pluggy forgets it again."""
        try:
            self._add(self._provided_by(module, name))
        except BaseException:
            self.pm.unregister(module)
            raise

    def _provided_by(self, module, name: str) -> list[Plugin]:
        callers = self.pm.get_hookcallers(module) or []
        unknown = [c.name for c in callers if not c.has_spec()]
        if unknown:
            raise PluginError(f"plugin '{name}' implements {', '.join(unknown)}, which is no uni_lab hook; "
                              f"the hooks are: {', '.join(HOOK_OF_KIND.values())}.")
        out = []
        for kind in KINDS:
            for impl in getattr(self.pm.hook, HOOK_OF_KIND[kind]).get_hookimpls():
                if impl.plugin is not module:
                    continue
                provided = impl.function()
                if not isinstance(provided, Mapping):
                    raise PluginError(f"{HOOK_OF_KIND[kind]} of plugin '{name}' returned {type(provided).__name__}; "
                                      "it must return {name: callable}.")
                out += [_make_plugin(kind, key, obj, f"{name}:{key}") for key, obj in provided.items()]
        if self is not registry and isinstance(module, types.ModuleType):  # the default table has them already
            out += registry._defined_in(module.__name__)
        return out

    def _defined_in(self, module_name: str) -> list[Plugin]:
        """Decorated plugins whose code lives in ``module_name`` or, for a package, below it."""
        return [p for plugins in self._plugins.values() for p in plugins.values()
                if p.origin.split(":")[0] == module_name or p.origin.startswith(module_name + ".")]

    def _load_entry_points(self):
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True  # set first: a failing plugin must not be retried forever
        names = dict.fromkeys(ep.name for ep in importlib.metadata.entry_points(group=self._group))
        failed = None
        for ep_name in names:  # one at a time, so one broken package does not keep out the others
            try:
                self.pm.load_setuptools_entrypoints(self._group, name=ep_name)
            except Exception as exc:  # name the plugin that broke start-up, not just the traceback
                failed = failed or (ep_name, exc)
                continue
            if self.pm.has_plugin(ep_name):
                self._take(self.pm.get_plugin(ep_name), ep_name)
        if failed is not None:
            ep_name, exc = failed
            if isinstance(exc, PluginError):
                raise exc
            raise PluginError(f"the plugin '{ep_name}' in the '{self._group}' entry-point group failed to load: "
                              f"{exc!r}") from exc

    def index(self) -> dict[str, dict[str, Plugin]]:
        """kind -> name -> Plugin, a copy: change the registry through the decorators and :meth:`unregister`."""
        self._load_entry_points()
        return {kind: dict(plugins) for kind, plugins in self._plugins.items()}

    def get(self, kind: str, name: str) -> Plugin:
        if kind not in KINDS:
            raise PluginError(f"unknown plugin kind '{kind}'; kinds are: {', '.join(KINDS)}.")
        self._load_entry_points()
        plugins = self._plugins[kind]
        if name not in plugins:
            raise PluginError(
                f"unknown {kind} '{name}'. Available {kind}s: {', '.join(sorted(plugins)) or '(none)'}."
            )
        return plugins[name]

    def unregister(self, kind: str, name: str) -> Plugin:
        """Remove one plugin (a test's temporary one, a notebook's discarded one) and return it."""
        plugin = self.get(kind, name)
        del self._plugins[kind][name]
        return plugin

    def list(self, kind: str | None = None, pattern: str = "*") -> list[Plugin]:
        kinds = [kind] if kind else list(KINDS)
        out = []
        for k in kinds:
            if k not in KINDS:
                raise PluginError(f"unknown plugin kind '{k}'; kinds are: {', '.join(KINDS)}.")
            self._load_entry_points()
            out += [p for n, p in sorted(self._plugins[k].items()) if fnmatch.fnmatch(n, pattern)]
        return out


registry = Registry()


def _decorator(kind: str):
    def register(name: str | None = None, *, check: Callable | None = None):
        def wrap(obj):
            label = name or obj.__name__
            registry._add([_make_plugin(kind, label, obj, _origin(obj), check)])
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
