"""The extension contract: every way a plugin can reach uni_lab is a hook below.

Most users never write a hook: ``@uni_lab.baseline("name")`` (and its siblings) put a plain
function straight into the registry's table, under the same contract as the hooks below. A module
that prefers raw pluggy can implement them directly with ``@uni_lab.hookimpl`` and be listed under
the ``uni_lab`` entry-point group, or registered with ``uni_lab.registry.register_module``; pluggy
validates the implementations, and each hook is called once, when its module is registered (an
entry point: on the first lookup), and what it returns joins the same table as the decorated
plugins, under the same name rules (a name taken by another origin is refused, naming both).

Each hook returns a mapping ``{name: callable}``; the callable's signature is the plugin's
interface (its ``Protocol`` in :mod:`uni_lab.contracts`, checked on registration), its keyword parameters (with
defaults) are the user-settable parameters, and the first line of its docstring is the one-line
description shown by ``uni-lab plugins``.
"""
from __future__ import annotations

import pluggy

from .contracts import AttackFn, BaselineFn, ExplainerFn, MetricFn, ModelFn, PathFn

PROJECT = "uni_lab"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def uni_lab_baselines() -> dict[str, BaselineFn]:
    """Baselines ``x'`` for path methods.

    Returns ``{name: fn}`` with ``fn(x, model, target, **params) -> x_prime``: ``x`` is a
    pixel-space batch ``(N, 3, H, W)`` in ``[0, 1]``, ``model`` a
    :class:`uni_lab.models.Classifier`, ``target`` a ``(N,)`` long tensor; the result has the
    shape of ``x``. A parameter named ``seeds`` receives one integer seed per image (so random
    draws never depend on batch composition).
    """


@hookspec
def uni_lab_paths() -> dict[str, PathFn]:
    """Integration paths ``γ`` from a baseline to the input.

    Returns ``{name: fn}`` with ``fn(x, baseline, alphas, **params) -> points``: ``alphas``
    a 1-D tensor in ``[0, 1]``, ``points`` of shape ``(len(alphas), N, 3, H, W)`` with
    ``γ(0) = baseline`` and ``γ(1) = x``. The engine asks for points in chunks.
    """


@hookspec
def uni_lab_explainers() -> dict[str, ExplainerFn]:
    """Attribution methods, called the same way whatever they do.

    Returns ``{name: fn}`` with ``fn(model, x, target, **params) -> uni_lab.Explanation``.
    Path methods should build on :func:`uni_lab.engine.integrate` so that they record a path
    trace and a completeness error like every other path method.
    """


@hookspec
def uni_lab_attacks() -> dict[str, AttackFn]:
    """Perturbations of the input (adversarial attacks, corruptions, noise controls).

    Returns ``{name: fn}`` with ``fn(model, x, target, **params) -> x_perturbed``, a pixel-space
    batch shaped like ``x``. ``fn`` receives only the call arguments it names among ``model``,
    ``x``, ``target``, ``seeds`` (one integer per image) and ``explanation`` (the method's
    :class:`uni_lab.Explanation` at ``x``, for attacks aimed at an attribution method).
    A plugin with a ``severity`` parameter is a corruption (ImageNet-C style, severities 1-5):
    ``uni-lab evaluate --corruptions`` sweeps its severities, while ``--attacks`` takes the others.
    ``uni-lab evaluate`` stores every perturbed input and checks whether the label survived.

    Example::

        @uni_lab.attack("salt")
        def salt(x, seeds=None, *, severity: int = 1):
            \"\"\"Salt noise: a share 0.02·severity of pixels set to white.\"\"\"
            mask = uni_lab.seeding.draw(x[:, :1], seeds) < 0.02 * severity
            return torch.where(mask, torch.ones_like(x), x)
    """


@hookspec
def uni_lab_metrics() -> dict[str, MetricFn]:
    """Scores of an attribution (faithfulness, robustness, path shape, ...).

    Returns ``{name: fn}``. ``uni-lab evaluate`` calls ``fn`` on a batch of ``N`` images of one
    (model, method) and passes only the call arguments it names:

    - ``model`` (a :class:`uni_lab.models.Classifier`), ``x`` ``(N, 3, H, W)``, ``target`` ``(N,)``,
      ``seeds`` (one integer per image: draw random numbers from these, never from global state),
      ``method`` (the spec, e.g. ``"ig:black"``);
    - ``attribution`` ``(N, 3, H, W)`` and ``explanation`` (an :class:`uni_lab.Explanation` with
      the stored baseline, path trace and completeness error; ``baseline``/``trace`` are ``None``
      for methods without a path), read from the store, never recomputed;
    - ``explain(model, x, target, seeds=None, **overrides) -> Explanation``: the method re-run with
      the store's parameters (``overrides`` such as ``steps=256``; ``explain.accepts("steps")``
      says whether the method has that parameter) for metrics that by definition need new maps;
    - ``reference`` and ``x_reference``: the attribution and input of the unperturbed image. A
      metric that names ``reference`` compares maps and runs only on perturbed inputs (attacks,
      corruptions); the others run on the clean inputs, and on perturbed ones when listed in
      ``--perturbed-metrics``.

    It returns ``{key: value}``; each value is ``(N,)`` (tensor or array) or an
    :class:`xarray.DataArray` with first dim ``image`` and further labelled dims (e.g. ``steps``).
    Key ``k`` of metric ``m`` is stored as variable ``m_k`` (or ``m`` when ``k == m``) with dims
    ``(model, method, image[, attack | corruption, severity][, extra])``, prefixed ``attack_`` or
    ``corruption_`` on perturbed inputs, with the metric's parameters in its attrs. Keyword
    parameters are user-settable (``--set mufidelity.n_subsets=64``); ``output``
    defaults to the store's value.

    Example::

        @uni_lab.metric("sparsity")
        def sparsity(attribution, *, q: float = 0.9):
            \"\"\"Share of attribution mass in the top (1 - q) of pixels.\"\"\"
            m = attribution.abs().sum(1).flatten(1)
            top = m >= m.quantile(q, dim=1, keepdim=True)
            return {"sparsity": (m * top).sum(1) / m.sum(1)}
    """


@hookspec
def uni_lab_models() -> dict[str, ModelFn]:
    """Model factories by name.

    Returns ``{name: fn}`` with ``fn(weights=None, **params) -> uni_lab.models.Classifier``.
    """


KINDS = ("baseline", "path", "explainer", "attack", "metric", "model")
HOOK_OF_KIND = {kind: f"uni_lab_{kind}s" for kind in KINDS}
