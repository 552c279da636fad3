"""One registry for every plugin kind: one table, kind -> name -> :class:`Plugin`.

``@uni_lab.baseline("mean")`` files a function under a name, the way timm's
``register_model`` does: the decorator checks its signature against the kind's contract
(:mod:`uni_lab.contracts`), reads its parameters and types, and adds it to the table at once;
``uni_lab.create("baseline", "mean", **params)`` is the one door back out. Names meet in one
place (:meth:`Registry._add`): the same origin again replaces (a re-run notebook cell), another
origin is refused, naming both. pluggy is the published contract for third-party modules
(:mod:`uni_lab.hookspecs`): it loads the ``uni_lab`` entry-point group (once, lazily, on the
first lookup; the built-ins in ``plugins/`` arrive that way too) and modules given to
:func:`uni_lab.registry.register_module`, validates their ``@hookimpl`` functions, and their hooks
are called once into the same table. :func:`uni_lab.registry.unregister` takes one plugin out again.

A plugin's parameters are declared once, in its signature, and checked by :meth:`Plugin.validate`
before anything is computed: the type (``int``, ``float | None``), the choices (``Literal[...]``)
and the range (``Annotated[int, Ge(1)]``, ``Annotated[float, Interval(gt=0, le=1)]`` with the
markers of ``annotated_types``). Checks that relate several parameters go in the registration's
``check=``; checks that need the input (a size up to the image's pixel count) stay in the body.
Whether the output depends on the seed is declared too: ``@uni_lab.explainer("x", random=True)``.
"""
from __future__ import annotations

import fnmatch
import functools
import importlib.metadata
import inspect
import math
import numbers
import operator
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Callable

import annotated_types as at
import numpy as np
import pluggy

from . import hookspecs
from .contracts import CALL_ARGS, FewerThanPixels, check_signature
from .errors import InputError, PluginError
from .hookspecs import HOOK_OF_KIND, KINDS

REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class Accepts:
    """What one parameter accepts, read from its annotation: types, ``Literal`` choices, and the
    ``annotated_types`` bounds (``Ge``, ``Gt``, ``Le``, ``Lt``, ``Interval``) of ``Annotated``."""

    types: tuple = ()  # empty: any type (only the choices or bounds speak)
    choices: tuple | None = None
    bounds: tuple = ()
    fewer_than_pixels: bool = False  # contracts.PixelCount: checked against the images' H·W by the plan

    def problem(self, value) -> tuple[type, str] | None:
        """``(error class, what it must be)`` when ``value`` is refused, else None."""
        if self.choices is not None and any(_same_choice(value, c) for c in self.choices):
            return None
        if (float in self.types or int in self.types) and _not_finite(value):  # no parameter means anything by them
            return InputError, "a finite number"
        if self.types and not _is_instance(value, self.types) or not self.types and self.choices is not None:
            return (InputError if self.choices is not None else PluginError), self._what()  # a value, or a type
        if self.bounds and isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
            if isinstance(value, float) and math.isnan(value) or not all(_within(value, b) for b in self.bounds):
                return InputError, " and ".join(_bound_text(b) for b in self.bounds)
        return None

    def _what(self) -> str:
        parts = [f"one of {tuple(self.choices)!r}"] if self.choices else []
        names = {float: "a float", int: "an int", bool: "True or False", str: "a string", type(None): "None"}
        parts += [names.get(t, t.__name__) for t in self.types]
        return " or ".join(parts)


@dataclass(frozen=True)
class Plugin:
    """A registered plugin: what it is, where it came from, and what it accepts."""

    kind: str
    name: str
    obj: Callable
    origin: str
    params: dict = field(default_factory=dict)  # parameter -> default (REQUIRED if none)
    description: str = ""
    declared: dict = field(default_factory=dict)  # parameter -> Accepts, from its annotation (or default's type)
    check: Callable | None = None  # checks relating several parameters, run before anything is computed
    random: bool | Callable = False  # draws random numbers (the map depends on the seed); or params -> bool

    def check_params(self, params: dict) -> dict:
        """Check parameters by name, type, choice and range; an unknown name is an error listing the valid ones."""
        unknown = sorted(set(params) - set(self.params))
        if unknown and not self._takes_var_kwargs():
            valid = ", ".join(sorted(self.params)) or "(none)"
            raise PluginError(
                f"{self.kind} '{self.name}' has no parameter {', '.join(map(repr, unknown))}; "
                f"its parameters are: {valid}."
            )
        for key, value in params.items():
            accepts = self.declared.get(key)
            problem = accepts.problem(value) if accepts else None
            if problem:
                error, what = problem
                default = self.params.get(key, REQUIRED)
                hint = "" if default is REQUIRED or default is None else f"; e.g. --set {self.name}.{key}={default!r}"
                raise error(f"{self.name}.{key} must be {what}, got {value!r}{hint}.")
        return dict(params)

    def validate(self, params: dict) -> dict:
        """Names, types, choices and ranges, then the plugin's own ``check`` on the full parameter set."""
        params = self.check_params(params)
        if self.check is not None:
            self.check(**params)
        return params

    def check_pixel_counts(self, params: dict, size: tuple[int, int]) -> None:
        """Refuse a :data:`~uni_lab.contracts.PixelCount` parameter that is not below ``H·W`` of ``size``."""
        pixels = int(size[0]) * int(size[1])
        for name, accepts in self.declared.items():
            value = params.get(name)
            if accepts.fewer_than_pixels and isinstance(value, numbers.Integral) and value >= pixels:
                raise InputError(f"{self.kind} '{self.name}': {name}={value} must be fewer than the {pixels} pixels "
                                 f"of the {size[0]}×{size[1]} images; set e.g. --set {self.name}.{name}="
                                 f"{max(1, pixels // 10)}.")

    def resolved_params(self, params: dict | None = None) -> dict:
        """Defaults overlaid with ``params``: the exact values a run records."""
        out = {k: v for k, v in self.params.items() if v is not REQUIRED}
        out.update(self.check_params(params or {}))
        return out

    def is_random(self, params: dict | None = None) -> bool:
        """Whether its output depends on the seed, with these (validated) parameters over the defaults."""
        if not callable(self.random):
            return bool(self.random)
        return bool(self.random({**{k: v for k, v in self.params.items() if v is not REQUIRED}, **(params or {})}))

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


_SCALARS = (float, int, bool, str, type(None))
_BOUNDS = {at.Gt: ("gt", ">", operator.gt), at.Ge: ("ge", ">=", operator.ge), at.Lt: ("lt", "<", operator.lt),
           at.Le: ("le", "<=", operator.le)}


def _not_finite(value) -> bool:
    """NaN or ±inf, as a float or as ``--set`` text (which parses to a string)."""
    if isinstance(value, str):
        return value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity")
    return isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and not math.isfinite(value)


def _within(value, bound) -> bool:
    attr, _, op = _BOUNDS[type(bound)]
    return op(value, getattr(bound, attr))


def _bound_text(bound) -> str:
    attr, sign, _ = _BOUNDS[type(bound)]
    return f"{sign} {getattr(bound, attr)}"


def _same_choice(value, choice) -> bool:
    """``Literal`` membership without Python's ``True == 1`` and ``1.0 == 1``: a choice is matched in kind."""
    if isinstance(value, (bool, np.bool_)) or isinstance(choice, bool):
        return type(value) is type(choice) and value == choice
    if isinstance(choice, numbers.Integral):
        return isinstance(value, numbers.Integral) and value == choice
    return type(value) is type(choice) and value == choice


def _accepts(annotation, default) -> Accepts | None:
    """What a parameter accepts, from a resolved annotation (``float``, ``int | None``, ``Literal``,
    ``Annotated[int, Ge(1)]`` and their unions), or the default's type when there is none; None
    where it cannot be told (``Callable``, a class of the plugin's own)."""
    if annotation is inspect.Parameter.empty:
        if default is REQUIRED or default is None or type(default) not in _SCALARS:
            return None
        return Accepts((type(default),))
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        inner = _accepts(annotation.__origin__, REQUIRED) or Accepts()
        pixels = inner.fewer_than_pixels or any(isinstance(m, FewerThanPixels) for m in annotation.__metadata__)
        return replace(inner, bounds=inner.bounds + _bounds(annotation.__metadata__), fewer_than_pixels=pixels)
    if origin is typing.Literal:
        return Accepts(choices=typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        parts = [_accepts(a, REQUIRED) for a in typing.get_args(annotation)]
        if any(p is None or (not p.types and p.choices is None) for p in parts):
            return None
        choices = [c for p in parts for c in (p.choices or ())]
        return Accepts(sum((p.types for p in parts), ()), tuple(choices) if choices else None,
                       sum((p.bounds for p in parts), ()), any(p.fewer_than_pixels for p in parts))
    if annotation in _SCALARS:
        return Accepts((annotation,))
    return None


def _bounds(metadata) -> tuple:
    out = []
    for m in metadata:
        if isinstance(m, at.GroupedMetadata):  # Interval(gt=0, le=1) -> Gt(0), Le(1)
            out += _bounds(tuple(m))
        elif type(m) in _BOUNDS:
            out.append(m)
        elif isinstance(m, at.BaseMetadata):  # declared, but nothing here would check it: refuse, not ignore
            raise TypeError(f"{m!r} is not checked by uni_lab; use Ge, Gt, Le, Lt or Interval, or a check= hook")
    return tuple(out)


def _is_instance(value, accepted: tuple) -> bool:
    if isinstance(value, (bool, np.bool_)):  # bool is an int subclass; `eps=True` is a typo, not 1.0
        return bool in accepted
    if isinstance(value, numbers.Integral) and (int in accepted or float in accepted):
        return True
    if isinstance(value, numbers.Real) and float in accepted:
        return True
    return isinstance(value, tuple(t for t in accepted if t not in (int, float)))


def _hints(label: str, fn, names) -> dict:
    """The resolved annotations of ``names``: ``typing.get_type_hints``, so the strings of
    ``from __future__ import annotations`` work; where it fails on a call argument (a type imported
    for type checkers only), the user parameters one by one, and one of those failing is refused."""
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:
        pass
    raw = getattr(fn, "__annotations__", None) or {}
    target = getattr(fn, "func", fn)  # a functools.partial
    globalns = getattr(inspect.unwrap(target), "__globals__", None) or {}
    out = {}
    for name in names:
        if name not in raw:
            continue
        try:
            out[name] = typing.get_type_hints(types.SimpleNamespace(__annotations__={name: raw[name]}),
                                              globalns=globalns, include_extras=True)[name]
        except Exception as exc:
            raise PluginError(f"{label}: the annotation of parameter '{name}' ({raw[name]!r}) cannot be resolved "
                              f"({exc}); import what it names at the module's top level.") from exc
    return out


def _make_plugin(kind: str, name: str, obj: Callable, origin: str, check: Callable | None = None,
                 random: bool | Callable | None = None) -> Plugin:
    if not callable(obj):
        raise PluginError(f"{kind} '{name}' from {origin} is not callable (got {type(obj).__name__}).")
    check_signature(kind, name, obj)  # refused here, at registration, not when first called
    user = [p for p in _signature(obj).parameters.values()
            if p.name not in ("self",) + CALL_ARGS[kind] and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    fn = obj.__init__ if inspect.isclass(obj) else obj
    hints = _hints(f"{kind} '{name}'", fn if inspect.isroutine(fn) or hasattr(fn, "func") else type(fn).__call__,
                   [p.name for p in user])
    params, accepts = {}, {}
    for p in user:
        params[p.name] = p.default
        try:
            declared = _accepts(hints.get(p.name, p.annotation if not isinstance(p.annotation, str) else
                                           inspect.Parameter.empty), p.default)
        except TypeError as exc:
            raise PluginError(f"{kind} '{name}' parameter '{p.name}': {exc}.") from exc
        if declared:
            accepts[p.name] = declared
            problem = declared.problem(p.default) if p.default is not REQUIRED else None
            if problem:  # a default its own declaration refuses would fail every run that keeps it
                raise PluginError(f"{kind} '{name}' from {origin}: the default {p.name}={p.default!r} is not "
                                  f"{problem[1]}, as its annotation declares.")
    doc = inspect.getdoc(obj) or ""
    return Plugin(kind, name, obj, origin, params, doc.strip().splitlines()[0] if doc else "", accepts,
                  check or getattr(obj, "uni_lab_check", None),  # the attributes: a raw hookimpl's way to set them
                  random if random is not None else getattr(obj, "uni_lab_random", False))


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


# The table the decorators fill and ``uni_lab.get``/``create``/``list_plugins`` read. ``uni_lab.registry``
# is this module; its functions below are the public doors to this instance.
registry = Registry()


def _decorator(kind: str):
    def register(name: str | None = None, *, check: Callable | None = None, random: bool | Callable = False):
        def wrap(obj):
            label = name or obj.__name__
            registry._add([_make_plugin(kind, label, obj, _origin(obj), check, random)])
            return obj

        if callable(name):  # bare @uni_lab.baseline
            obj, name = name, None
            return wrap(obj)
        return wrap

    register.__name__ = kind
    register.__doc__ = (f"Register a {kind} under ``name`` (default: the function's name). ``check``: called with "
                        "the resolved parameters by name before anything is computed; raise InputError on bad values "
                        "(for what relates several parameters: single ones are declared in the signature). "
                        "``random``: True if the output depends on the seed, or a function of the resolved "
                        "parameters telling whether it does.")
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


def register_module(module, name: str | None = None) -> None:
    """Register a module of raw ``@uni_lab.hookimpl`` functions (:meth:`Registry.register_module`)."""
    registry.register_module(module, name)


def unregister(kind: str, name: str) -> Plugin:
    """Take one plugin out again and return it (:meth:`Registry.unregister`)."""
    return registry.unregister(kind, name)
