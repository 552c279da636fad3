"""The extension contract: every way a plugin can reach uni_lab is a hook below.

Most users never write a hook: ``@uni_lab.baseline("name")`` (and its siblings) register a
plain function and are a thin layer over these hooks. A module that prefers raw pluggy can
implement them directly with ``@uni_lab.hookimpl`` and be listed under the ``uni_lab``
entry-point group, or registered with ``uni_lab.registry.register_module``.

Each hook returns a mapping ``{name: callable}``; the callable's signature is the plugin's
interface, its keyword parameters (with defaults) are the user-settable parameters, and the
first line of its docstring is the one-line description shown by ``uni-lab plugins``.
"""
from __future__ import annotations

import pluggy

PROJECT = "uni_lab"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def uni_lab_baselines() -> dict:
    """Baselines ``x'`` for path methods.

    Called when the registry is (re)built. Returns ``{name: fn}`` with
    ``fn(x, model, target, **params) -> x_prime``: ``x`` is a pixel-space batch
    ``(N, 3, H, W)`` in ``[0, 1]``, ``model`` a :class:`uni_lab.models.Classifier`, ``target``
    a ``(N,)`` long tensor; the result has the shape of ``x``. A parameter named ``seeds``
    receives one integer seed per image (so random draws never depend on batch composition).
    """


@hookspec
def uni_lab_paths() -> dict:
    """Integration paths ``γ`` from a baseline to the input.

    Returns ``{name: fn}`` with ``fn(x, baseline, alphas, **params) -> points``: ``alphas``
    a 1-D tensor in ``[0, 1]``, ``points`` of shape ``(len(alphas), N, 3, H, W)`` with
    ``γ(0) = baseline`` and ``γ(1) = x``. The engine asks for points in chunks.
    """


@hookspec
def uni_lab_explainers() -> dict:
    """Attribution methods, called the same way whatever they do.

    Returns ``{name: fn}`` with ``fn(model, x, target, **params) -> uni_lab.Explanation``.
    Path methods should build on :func:`uni_lab.engine.integrate` so that they record a path
    trace and a completeness error like every other path method.
    """


@hookspec
def uni_lab_attacks() -> dict:
    """Perturbations of the input (adversarial attacks, corruptions, noise controls).

    Returns ``{name: fn}`` with ``fn(model, x, target, **params) -> x_perturbed``.
    """


@hookspec
def uni_lab_metrics() -> dict:
    """Scores of an attribution (faithfulness, robustness, path shape, ...).

    Returns ``{name: fn}``; a metric receives what it names in its signature from
    ``(model, x, target, attribution, trace, ...)`` and returns a dict of named values.
    """


@hookspec
def uni_lab_models() -> dict:
    """Model factories by name.

    Returns ``{name: fn}`` with ``fn(weights=None, **params) -> uni_lab.models.Classifier``.
    """


KINDS = ("baseline", "path", "explainer", "attack", "metric", "model")
HOOK_OF_KIND = {kind: f"uni_lab_{kind}s" for kind in KINDS}
