"""What each plugin kind receives and returns, as code: one ``Protocol`` per kind (``BaselineFn``,
``PathFn``, ``ExplainerFn``, ``AttackFn``, ``MetricFn``, ``ModelFn``: the shape of the function a
plugin is, for type checkers and readers), and the check that refuses a plugin whose signature
cannot take the call at registration, naming the parameter.

How each kind is called (this is what :mod:`uni_lab.registry` and the engine do):

- positional arguments first, by position (their names in the plugin are free);
- then the keyword arguments of :data:`KEYWORD_ARGS` the plugin names in its signature (the others
  are left out, so a baseline without ``seeds`` is fine);
- then the user's parameters, by keyword: every other parameter must be keyword-passable and
  should have a default (one without is required from ``--set``).

A user parameter declares what it accepts in its annotation, checked before anything is computed
(:meth:`uni_lab.registry.Plugin.validate`): ``int``, ``float | None``, ``Literal["a", "b"]``, and
ranges as ``Annotated[float, Gt(0)]`` with ``annotated_types``' markers; the aliases below name
the common ones.
"""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Annotated, Protocol

from annotated_types import Ge, Gt

from .errors import PluginError

if TYPE_CHECKING:  # the annotations only: registering a plugin must not import torch
    import torch


# Parameter declarations most plugins share.
Count = Annotated[int, Ge(1)]  # steps, samples, images: at least one
Positive = Annotated[float, Gt(0)]  # a radius, a σ, a step size
NonNegative = Annotated[float, Ge(0)]  # a noise level or tolerance where 0 turns it off
BatchSize = Annotated[int, Ge(1)] | None  # None: sized to the memory budget


class FewerThanPixels:
    """Marks a count of an image's pixels (a top-k): the plan checks it against the input size, H·W,
    before anything is computed, since the declaration alone cannot know the images."""

    def __repr__(self) -> str:
        return "FewerThanPixels()"


PixelCount = Annotated[int, Ge(1), FewerThanPixels()]  # the k of a top-k over a map's pixels


class BaselineFn(Protocol):
    def __call__(self, x: torch.Tensor, model, target: torch.Tensor, *, seeds=None, **params) -> torch.Tensor:
        """``x'`` of ``x``'s shape, finite."""


class PathFn(Protocol):
    def __call__(self, x: torch.Tensor, baseline: torch.Tensor, alphas: torch.Tensor, **params) -> torch.Tensor:
        """Points ``(len(alphas), *x.shape)``: the baseline end at α = 0, ``x`` at α = 1."""


class ExplainerFn(Protocol):
    def __call__(self, model, x: torch.Tensor, target: torch.Tensor, *, seeds=None, **params):
        """An :class:`~uni_lab.explanation.Explanation` whose attribution has ``x``'s shape."""


class AttackFn(Protocol):
    def __call__(self, *, model, x: torch.Tensor, target: torch.Tensor, seeds=None, explanation=None,
                 **params) -> torch.Tensor:
        """The perturbed input, ``x``'s shape (``x`` itself where no perturbation keeps the label)."""


class MetricFn(Protocol):
    def __call__(self, *, model, x: torch.Tensor, target: torch.Tensor, attribution: torch.Tensor, **params) -> dict:
        """``{name: values}``, each ``(N,)`` or an ``xarray.DataArray`` with ``image`` first."""


class ModelFn(Protocol):
    def __call__(self, weights=None, **params):
        """A :class:`~uni_lab.models.Classifier` (pixel space ``[0, 1]`` in, logits out)."""


# Passed by position, in this order; then keywords where the plugin names them.
POSITIONAL_ARGS = {"baseline": ("x", "model", "target"), "path": ("x", "baseline", "alphas"),
                   "explainer": ("model", "x", "target"), "attack": (), "metric": (), "model": ()}
KEYWORD_ARGS = {
    "baseline": ("seeds",),
    "path": (),
    "explainer": ("seeds",),
    "attack": ("model", "x", "target", "seeds", "explanation"),
    "metric": ("model", "x", "target", "attribution", "explanation", "seeds", "method", "explain", "reference",
               "x_reference"),
    "model": ("weights",),
}
# Every argument the caller supplies for a kind; the rest of a signature are user parameters.
CALL_ARGS = {kind: POSITIONAL_ARGS[kind] + KEYWORD_ARGS[kind] for kind in POSITIONAL_ARGS}
# A keyword-called kind must name at least one of these, or it cannot see its input.
NEEDS_ONE_OF = {"attack": ("x",), "metric": ("x", "attribution", "explanation")}


def check_signature(kind: str, name: str, obj) -> None:
    """Refuse, naming the parameter, a plugin that the call of its kind would fail on."""
    fn = obj.__init__ if inspect.isclass(obj) else obj
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # builtins and C functions: nothing to read, checked when called
    params = [p for p in sig.parameters.values() if p.name != "self"]
    shown = f"{kind} '{name}' {sig}"
    wanted = POSITIONAL_ARGS[kind]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not any(p.kind is p.VAR_POSITIONAL for p in params) and len(positional) < len(wanted):
        missing = ", ".join(wanted[len(positional):])
        raise PluginError(f"{shown}: a {kind} is called with ({', '.join(wanted)}) by position, so it needs a "
                          f"positional parameter for {missing}; add it before any `*`.")
    for p in positional[len(wanted):]:
        if p.kind is p.POSITIONAL_ONLY:
            raise PluginError(f"{shown}: parameter '{p.name}' is positional-only; user parameters are passed by "
                              "keyword (drop the `/`).")
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    needs = NEEDS_ONE_OF.get(kind)
    if needs and not takes_kwargs and not any(p.name in needs for p in params):
        raise PluginError(f"{shown}: a {kind} receives its input by keyword; name at least one of "
                          f"{', '.join(needs)} in its signature.")
    if kind == "model" and not takes_kwargs and "weights" not in sig.parameters:
        raise PluginError(f"{shown}: a model factory is called with weights=...; add a `weights=None` parameter.")
