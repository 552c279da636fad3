"""Captum on uni_lab's terms, both ways.

Inward: the helpers the Captum-backed plugins share (``lime``, ``kernel_shap``,
``gradient_shap``, ``deeplift_shap``, ``occlusion``, ``grad_cam``, ``infidelity``): the
forward function a Captum attribution class sees, per-image seeding of Captum's draws from
the global random generators, and channel-less maps spread over the three channels.

Outward: :class:`UNI`, :class:`IG` and :func:`attribution_class` make any registered
uni_lab method a Captum attribution class with the arguments of Captum's
``IntegratedGradients.attribute`` (``baselines``, ``target``, ``n_steps``, ``method``,
``internal_batch_size``, ``return_convergence_delta``) and the method's own parameters as
keywords (:class:`MethodAttribution`), so Captum's ``NoiseTunnel`` and metrics wrap it.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from .engine import check_output
from .errors import InputError, PluginError
from .seeding import derived_seeds


class Scores(torch.nn.Module):
    """``F(x)`` as Captum sees it: the classifier's softmax or its logits, pixel space in."""

    def __init__(self, model, output: str = "prob"):
        super().__init__()
        self.model = model
        self.output = check_output(output)

    def forward(self, x):
        logits = self.model(x)
        return logits.softmax(-1) if self.output == "prob" else logits


@contextlib.contextmanager
def seeded(seed):
    """Captum draws from torch's and numpy's global generators; ``seed`` fixes both for one call,
    and both are restored afterwards. ``None`` leaves them alone (an unseeded in-memory call)."""
    if seed is None:
        yield
        return
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed) % (1 << 63))
        np.random.seed(int(seed) % (1 << 32))
        try:
            yield
        finally:
            np.random.set_state(state)


def image_seeds(seeds, tag: str, n: int) -> list:
    """One seed per image for the stream ``tag`` (``None`` each when the call has no seeds): an
    image's draws never depend on the batch it is in."""
    derived = derived_seeds(seeds, tag)
    return [None] * n if derived is None else derived.tolist()


def spread(map_: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """``(N, 1, H, W)`` → ``(N, C, H, W)`` with each channel ``map / C``: maps without channels
    (XRAI, Grad-CAM) are stored so that ``Σ_c A_c`` is the map itself."""
    return (map_ / channels).expand(-1, channels, -1, -1).contiguous()


# Settings every explainer of a spec shares (``smoothgrad(ig:black)``: the tunnel and the IG inside it
# explain the same output); any other keyword belongs to exactly one plugin of the method.
CALL_WIDE = ("steps", "rule", "output", "internal_batch_size")
# plugin-choosing parameters: applied first, so that the keywords of the plugin they choose are found
CHOOSERS = ("baseline", "path")


def keyword_sets(spec: str, params: dict, sets: dict | None = None, who: str | None = None) -> dict:
    """``sets`` routes (``{"baseline.uni.eps": 0.05}``) for keyword parameters given by bare name.

    Each name goes to the plugin of ``spec`` that declares it (explainer, baseline, path, inner
    method): ``eps`` of ``uni`` is its baseline's. A name no plugin of the method declares, or one
    that two of them declare, is refused in one line naming the choices; dotted names
    (``"uni.eps"``) pass through as routes. Nothing is computed; values are checked by the
    plugins' declarations when the spec is resolved with the result.
    """
    from .methods import resolve, route_params, used_plugins
    from .registry import get

    who = who or spec
    sets = dict(sets or {})
    bare = {k: v for k, v in params.items() if "." not in k}
    sets.update({k: v for k, v in params.items() if "." in k})
    for group in ([k for k in bare if k in CHOOSERS], [k for k in bare if k not in CHOOSERS]):
        method = resolve(spec, route_params(sets))
        plugins = [get(kind, name) for kind, name in sorted(used_plugins(method))]
        for key in group:
            owners = [p for p in plugins if key in p.params and (p.kind == "explainer" or key not in CALL_WIDE)]
            if not owners:
                known = "; ".join(f"{p.kind} {p.name}: {', '.join(sorted(p.params))}" for p in plugins if p.params)
                raise PluginError(f"{who}: {spec} has no parameter '{key}'. Parameters: {known}.")
            if len(owners) > 1 and key not in CALL_WIDE:
                routes = " or ".join(f'"{p.kind}.{p.name}.{key}"' for p in owners)
                raise PluginError(f"{who}: '{key}' is a parameter of several plugins of {spec}; give it in sets= "
                                  f"as {routes}.")
            for p in owners:
                sets[f"{p.kind}.{p.name}.{key}"] = bare[key]
    while method is not None:  # a spec's own `ig:black` wins over a baseline= keyword: say so, not ignore it
        asked = bare.get("baseline")
        if asked is not None and method.baseline is not None and method.baseline.name != asked:
            raise PluginError(f"{who}: {method.spec} starts from the baseline '{method.baseline.name}' and "
                              f"baseline= asks for {asked!r}; give one of them.")
        method = method.inner
    return sets


# -- outward: uni_lab methods as Captum attribution classes ------------------------------------

from captum.attr import GradientAttribution  # noqa: E402  (the helpers above need no Captum)
from captum.log import log_usage  # noqa: E402
from torch import nn  # noqa: E402

# Captum's names for the Riemann rules the engine has (the others are Captum's own)
RIEMANN = {"riemann_right": "right", "riemann_left": "left"}


class _Function(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class MethodAttribution(GradientAttribution):
    """A registered uni_lab method behind Captum's ``Attribution`` interface.

    ``MethodAttribution(forward_func, spec)`` explains ``forward_func(inputs)[:, target]`` as Captum's
    attribution classes do: the function's own input space (no normalisation is added) and its raw
    output (uni_lab's ``output="logit"``; ``output="prob"`` explains its softmax). ``forward_func``
    should return logits; methods that read or change weights or modules (UNI's unlearning, Guided
    Backprop, DeepLIFT, Grad-CAM) need the ``nn.Module`` itself and refuse a plain function; its
    parameters and train/eval flags are never changed.

    :meth:`attribute` takes Captum's ``IntegratedGradients.attribute`` arguments. The method's own
    parameters are keywords, given to the class (they hold for every call) or to
    :meth:`attribute` (that call only): each goes to the plugin that declares it (UNI's ``eps`` is
    its baseline's) and is checked before anything is computed; ``sets`` takes ``--set``-style
    routes (``{"uni.eps": 0.05}``). Random parts are seeded per image from ``seed`` and the
    image's pixels. Passes run through uni_lab's fast view of the network (batch norm folded;
    :mod:`uni_lab.fastview`) unless ``fast_view=False`` or ``UNI_LAB_FAST_VIEW=0``: it computes
    the same function up to rounding, which moves some path points of a ReLU6 network across a
    kink (Lite0's IG maps by 0.1–0.4 %, relative L2); with ``fast_view=False`` IG is Captum's IG to float
    rounding. Captum's ``NoiseTunnel``, ``sensitivity_max`` and ``infidelity`` take it like
    any attribution class.

    >>> import torch
    >>> from torch import nn
    >>> from uni_lab.captum import IG, UNI
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    >>> x = torch.rand(2, 3, 16, 16)
    >>> uni = UNI(net, eps=0.05)  # the unlearned baseline's ε-ball, for every call
    >>> a, delta = uni.attribute(x, target=0, n_steps=8, return_convergence_delta=True)
    >>> a.shape, delta.shape
    (torch.Size([2, 3, 16, 16]), torch.Size([2]))
    >>> a = uni.attribute(x, target=0, n_steps=8, pgd_steps=5)  # a parameter for this call only
    >>> a, delta = IG(net).attribute(x, baselines=0.5, target=0, n_steps=8, method="riemann_left",
    ...                              return_convergence_delta=True)
    >>> bool(torch.allclose(delta, a.flatten(1).sum(1) - (net(x) - net(torch.full_like(x, 0.5)))[:, 0]))
    True
    >>> blurred = IG(net).attribute(x, baselines="blur", sigma=5.0, target=0)  # a baseline plugin, by name
    """

    spec = "ig:black"

    def __init__(self, forward_func, spec: str | None = None, *, seed: int | None = 0, sets: dict | None = None,
                 fast_view: bool | None = None, **params):
        super().__init__(forward_func)
        self.spec = spec or type(self).spec
        self.seed, self.sets, self.params, self.fast_view = seed, dict(sets or {}), params, fast_view
        net = forward_func if isinstance(forward_func, nn.Module) else _Function(forward_func)
        self._net = net
        # the name errors give: the network's class, or the function's own name
        self._name = type(net).__name__ if net is forward_func else getattr(forward_func, "__name__", "forward_func")
        self._resolved = self._method({})  # a bad spec or parameter is refused here, before any call

    @property
    def _who(self) -> str:
        return type(self).__name__

    def _method(self, params: dict, spec: str | None = None):
        """The resolved method with the class's and this call's keywords (the call's win)."""
        from .methods import resolve, route_params

        spec = spec or self.spec
        sets = keyword_sets(spec, {"output": "logit", **self.params, **params}, self.sets, self._who)
        return resolve(spec, route_params(sets))

    def _classifier(self, x):
        from .models import wrap

        c = x.shape[1]
        return wrap(self._net, mean=(0.0,) * c, std=(1.0,) * c, input_size=tuple(x.shape[2:]), name=self._name)

    @log_usage()  # NoiseTunnel calls attribute.__wrapped__, as Captum's own classes provide
    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None, n_steps: int | None = None,
                  method: str | None = None, internal_batch_size: int | None = None,
                  return_convergence_delta: bool = False, **params):
        """Attributions shaped like ``inputs`` (a tensor, or a 1-tuple of one, as given), with Captum's
        convergence delta ``Σ A − (F(x) − F(x'))`` per example if ``return_convergence_delta``.

        ``baselines``: a number, a tensor shaped like ``inputs`` or with first dimension 1 (as
        Captum), or a baseline plugin's name (``"blur"``, its parameters as keywords); ``None`` is
        the method's own (IG: black, UNI: the unlearned baseline). ``n_steps``: the method's
        ``steps`` (default: its own, 15). ``method``: ``"riemann_right"`` (default) or
        ``"riemann_left"``. ``internal_batch_size``: samples per forward/backward pass.
        """
        if additional_forward_args is not None:
            raise InputError(f"{self._who}: additional_forward_args are not supported; close over them in "
                             "forward_func.")
        is_tuple = isinstance(inputs, tuple)
        if is_tuple and len(inputs) != 1:
            raise InputError(f"{self._who} explains one input tensor, got a tuple of {len(inputs)}.")
        x = _check_inputs(inputs[0] if is_tuple else inputs, self._who)
        if isinstance(baselines, tuple):
            if len(baselines) != 1:
                raise InputError(f"{self._who}: one input tensor takes one baseline, got a tuple of {len(baselines)}.")
            baselines = baselines[0]
        from . import fastview
        from .models import restoring_modes

        resolved = self._call_method(x, baselines, n_steps, method, internal_batch_size, return_convergence_delta,
                                     params)
        view = contextlib.nullcontext() if self.fast_view is None else fastview.using(self.fast_view)
        with restoring_modes(self._net), view:  # wrapping sets eval mode; the caller's flags come back
            a, delta = self._attribute(x, resolved, target, return_convergence_delta)
        a = (a,) if is_tuple else a
        return (a, delta) if return_convergence_delta else a

    def _call_method(self, x, baselines, n_steps, method, internal_batch_size, want_delta, params):
        """The resolved method of one call (a baseline tensor bound in), every argument checked."""
        from dataclasses import replace

        if "baseline" in params and not isinstance(params["baseline"], str):
            raise InputError(f"{self._who}: give a baseline tensor or number as baselines= (Captum's keyword); "
                             "baseline= takes a baseline plugin's name.")
        if n_steps is not None and "steps" in params:
            raise InputError(f"{self._who}: give n_steps or steps, not both.")
        # Captum's baselines= replaces the spec's baseline; a baseline= keyword is a parameter like any other
        spec = self.spec if baselines is None else self._spec_with(baselines if isinstance(baselines, str) else None)
        resolved = self._method(params, spec)
        captum = {}  # Captum's settings, as the parameters of the explainers that take them
        for value, key, label in ((n_steps, "steps", "n_steps"), (internal_batch_size, "internal_batch_size",
                                                                    "internal_batch_size")):
            if value is not None:
                if not _declares(resolved, key):
                    raise InputError(f"{self._who}: {self.spec} takes no {label} (it is not a path method).")
                captum[key] = _positive_int(value, label, self._who)
        if method is not None:
            captum.update(self._rule(method, resolved))
        resolved = self._method({**params, **captum}, spec) if captum else resolved
        if baselines is not None and not isinstance(baselines, str):
            if resolved.baseline is not None:
                defaults = resolved.baseline.resolved_params()
                given = sorted(k for k, v in resolved.baseline_params.items() if v != defaults.get(k))
                if given:
                    raise InputError(f"{self._who}: baselines= replaces the baseline '{resolved.baseline.name}', "
                                     f"whose parameters were given ({', '.join(given)}); give one or the other.")
            resolved = replace(resolved, baseline=None, baseline_params={},
                               params={**resolved.params, "baseline": _baseline_tensor(baselines, x, self._who)})
        if want_delta and not _has_delta(resolved):
            raise InputError(f"{self._who}: {self.spec} has no convergence delta here; it is given for single-path "
                             "methods from one baseline (ig, uni with restarts=1, guided_ig).")
        return resolved

    def _spec_with(self, baseline: str | None) -> str:
        """``self.spec`` starting from the baseline plugin ``baseline`` (None: keep the spec's own)."""
        from .methods import _SPEC
        from .registry import get

        name, own, inner = _SPEC.match(self.spec).groups()  # the spec parsed already in __init__
        if inner is not None or "baseline" not in get("explainer", name).params:
            raise InputError(f"{self._who}: {self.spec} takes no baseline; baselines= is for methods that start "
                             "from one (ig, uni, guided_ig, deeplift, occlusion, lime, kernel_shap).")
        return f"{name}:{baseline or own}" if baseline or own else name

    def _rule(self, method, resolved) -> dict:
        """``rule`` for Captum's ``method``, or {} where the method's one sum already is the one asked for."""
        if method not in RIEMANN:
            raise InputError(f"{self._who}: method='{method}' is not available; uni_lab's engine sums "
                             f"{' or '.join(RIEMANN)} (Captum's riemann_middle, riemann_trapezoid and gausslegendre "
                             "are not implemented).")
        if _declares(resolved, "rule"):
            return {"rule": RIEMANN[method]}
        takes_path = "path" in resolved.explainer.params
        if method == "riemann_right" and takes_path:
            return {}  # a path method without a rule parameter integrates with the right sum
        hint = (f"; IG from the same baseline takes one: attribution_class('ig:{resolved.baseline.name}')"
                if resolved.baseline is not None and takes_path else "")
        what = "it sums riemann_right only" if takes_path else "it is not a Riemann path method"
        raise InputError(f"{self._who}: {self.spec} has no choice of Riemann rule ({what}){hint}.")

    def _attribute(self, x, resolved, target, want_delta):
        from .engine import scores
        from .seeding import content_seeds

        clf = self._classifier(x)
        with torch.no_grad():
            logits = clf(x)
        target = _targets(target, logits, self._who)
        seeds = None if self.seed is None else content_seeds(x, int(self.seed))
        with torch.enable_grad():  # Captum's wrappers may call under no_grad; gradients are w.r.t. the input only
            exp = resolved(clf, x.detach(), target, seeds=seeds)
        if not want_delta:
            return exp.attribution, None
        with torch.no_grad():  # Captum's delta: Σ A − (F(x) − F(x')), F the function explained
            pick = 0 if resolved.params.get("output") == "prob" else 1
            change = scores(logits, target)[pick] - scores(clf(exp.baseline), target)[pick]
        return exp.attribution, exp.attribution.flatten(1).sum(1) - change

    def has_convergence_delta(self) -> bool:
        return _has_delta(self._resolved)

    @property
    def multiplies_by_inputs(self) -> bool:
        return True


def _declares(resolved, key: str) -> bool:
    """Whether an explainer of the resolved method (the outer one or one inside it) takes ``key``."""
    from .methods import used_plugins
    from .registry import get

    return any(key in get(kind, name).params for kind, name in used_plugins(resolved) if kind == "explainer")


def _has_delta(resolved) -> bool:
    """One path from one baseline, so that ``F(x) − F(x')`` is what the map sums to (means over
    restarts, noise or AGI's classes sum to a mean of such changes)."""
    return (resolved.inner is None and {"baseline", "steps"} <= set(resolved.explainer.params)
            and resolved.params.get("restarts", 1) == 1)


def _targets(target, logits: torch.Tensor, who: str) -> torch.Tensor:
    """Captum's ``target`` (None: the predicted class; an int; one per example) as one class per example."""
    n, classes = logits.shape
    if target is None:
        return logits.argmax(-1)
    t = torch.as_tensor(target, device=logits.device)
    if t.dtype in (torch.bool,) or t.is_floating_point() or t.numel() not in (1, n):
        raise InputError(f"{who}: target must be a class index or one per example ({n}), got {target!r}.")
    t = t.view(-1).expand(n).contiguous()
    if ((t < 0) | (t >= classes)).any():
        raise InputError(f"{who}: target {t.tolist()} out of range for a model with {classes} classes.")
    return t


def _positive_int(value, name: str, who: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{who}: {name} must be a positive int, got {value!r}.")
    return int(value)


def _check_inputs(x, who: str) -> torch.Tensor:
    from .engine import check_input

    return check_input(x, f"{who}: inputs")


def _baseline_tensor(baselines, x: torch.Tensor, who: str) -> torch.Tensor:
    """Captum's baselines for one input: a number, or a tensor of the input's shape or with first dimension 1."""
    if isinstance(baselines, (int, float, np.number)) and not isinstance(baselines, (bool, np.bool_)):
        b = torch.full_like(x, float(baselines))
    elif torch.is_tensor(baselines) and (baselines.dim() == 0 or baselines.shape == x.shape or (
            baselines.dim() == x.dim() and baselines.shape[0] == 1
            and all(s in (1, t) for s, t in zip(baselines.shape[1:], x.shape[1:])))):
        b = baselines.detach().to(x).expand_as(x)
    else:
        got = tuple(baselines.shape) if torch.is_tensor(baselines) else type(baselines).__name__
        raise InputError(f"{who}: baselines {got} do not fit inputs {tuple(x.shape)}; give a number, a tensor "
                         "shaped like the inputs or with first dimension 1 (as Captum), or a baseline's name.")
    if not torch.isfinite(b).all():
        raise InputError(f"{who}: baselines hold NaN or Inf values; give finite ones.")
    return b


def attribution_class(spec: str, name: str | None = None) -> type:
    """A :class:`MethodAttribution` subclass fixed to ``spec``.

    >>> from uni_lab.captum import attribution_class
    >>> BlurIG = attribution_class("blur_ig")
    >>> BlurIG.__name__, BlurIG.spec
    ('BlurIg', 'blur_ig')
    """
    cls_name = name or "".join(p.capitalize() for p in spec.replace(":", "_").replace("(", "_").strip(")").split("_"))
    return type(cls_name, (MethodAttribution,), {"spec": spec, "__doc__": f"uni_lab's ``{spec}`` as a Captum "
                                                 "attribution class (see :class:`MethodAttribution`)."})


UNI = attribution_class("uni", "UNI")
IG = attribution_class("ig:black", "IG")
BlurIG = attribution_class("blur_ig", "BlurIG")
GuidedIG = attribution_class("guided_ig", "GuidedIG")
AGI = attribution_class("agi", "AGI")
