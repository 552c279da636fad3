"""Every registered plugin through the contract of its kind (uni_lab/contracts.py), the way timm's
tests run every registered model: built-ins and anything a package registers through the entry
points. A plugin added later is covered without editing this file; the few parameter changes
below only fit the defaults to a 4-class, 16×16 model (``FIT``) and are named with their reason.

Each check can fail: the call the engine makes must bind to the signature, outputs must have the
input's shape and dtype, a plugin's dependence on the seed must match its ``random`` declaration,
and a metric must give every image a finite value wherever it applies.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

import uni_lab
from uni_lab.contracts import KEYWORD_ARGS, POSITIONAL_ARGS, check_signature
from uni_lab.errors import PluginError
from uni_lab import evaluate
from uni_lab.explanation import Explanation
from uni_lab.methods import resolve, route_params
from uni_lab.seeding import image_seed
from uni_lab.store import open_store

FIT = {  # parameter -> value, only where a default cannot apply to the tiny model or is needlessly slow
    "agi": {"top_k": 2},  # the tiny model has 4 classes: at most 3 false ones
    # the tiny model's probability is exactly 1 on these images: its gradient, and so the map, is zero, and a
    # zero map cannot show that it depends on the seed
    "smoothgrad": {"samples": 4, "output": "logit"},
    "lime": {"lasso_alpha": 1e-3},  # the default Lasso zeroes every superpixel of the tiny model: no map to compare
    "uni": {"pgd_steps": 2},
}
TESTS = Path(__file__).parent


def _from_tests(plugin) -> bool:
    """Plugins the test modules register (some fail on purpose, like tiny_plugin's ``boom``)."""
    try:
        return Path(inspect.getsourcefile(plugin.obj)).resolve().is_relative_to(TESTS.resolve())
    except TypeError:
        return False


def _names(kind):
    return [p.name for p in uni_lab.list_plugins(kind) if not _from_tests(p)]


def _sets(name: str) -> dict:
    return {f"{name}.{k}": v for k, v in FIT.get(name, {}).items()}


@pytest.fixture(scope="module")
def batch(tiny_model, tiny_batch):
    x = tiny_batch[0][:2]
    with torch.no_grad():
        target = tiny_model(x).argmax(-1)
    return tiny_model, x, target, torch.tensor([image_seed(0, f"im{i}") for i in range(2)])


@pytest.mark.parametrize("plugin", [p for p in uni_lab.list_plugins() if not _from_tests(p)],
                         ids=lambda p: f"{p.kind}.{p.name}")
def test_every_plugin_binds_the_call_of_its_kind_with_its_defaults(plugin):
    """What the engine passes (positional arguments, the keywords the plugin names) plus no user
    parameter at all must bind: every user parameter has a default, so a run without ``--set`` works."""
    check_signature(plugin.kind, plugin.name, plugin.obj)  # registration already did; hookimpl modules too
    if inspect.isclass(plugin.obj):  # the constructor takes the user parameters, its instance the call
        sig, positional, keywords = inspect.signature(plugin.obj.__init__), [object()], {}
    else:
        sig = inspect.signature(plugin.obj)
        positional = [object()] * len(POSITIONAL_ARGS[plugin.kind])
        keywords = {k: None for k in KEYWORD_ARGS[plugin.kind] if k in sig.parameters}
    try:
        sig.bind(*positional, **keywords)
    except TypeError as exc:
        pytest.fail(f"{plugin.kind} '{plugin.name}' cannot be called as the engine calls it: {exc}")
    assert all(p.default is not inspect.Parameter.empty for n, p in sig.parameters.items() if n in plugin.params)
    assert set(plugin.resolved_params()) == set(plugin.params)


@pytest.mark.parametrize("name", _names("baseline"))
def test_baseline_returns_a_finite_image_of_the_input_shape(name, batch):
    model, x, target, seeds = batch
    params = uni_lab.get("baseline", name).resolved_params({k: v for k, v in FIT.get(name, {}).items()})
    plugin = uni_lab.get("baseline", name)
    xb = plugin(x, model, target, seeds=seeds, **params)
    assert xb.shape == x.shape and xb.dtype == x.dtype and torch.isfinite(xb).all()
    other = plugin(x, model, target, seeds=seeds + 1, **params)
    assert plugin.is_random(params) == (not torch.equal(xb, other)), "the random= declaration does not match"


@pytest.mark.parametrize("name", _names("path"))
def test_path_starts_at_the_baseline_end_and_ends_at_x(name, batch):
    _, x, _, _ = batch
    baseline = torch.zeros_like(x)
    alphas = torch.linspace(0, 1, 5)
    points = uni_lab.get("path", name)(x, baseline, alphas)
    assert points.shape == (5, *x.shape) and points.dtype == x.dtype and torch.isfinite(points).all()
    torch.testing.assert_close(points[-1], x, atol=1e-5, rtol=0)
    if name == "straight":
        torch.testing.assert_close(points[0], baseline)


@pytest.mark.parametrize("name", _names("explainer"))
def test_explainer_returns_an_explanation_of_the_input_shape(name, batch):
    model, x, target, seeds = batch
    method = resolve(name, route_params(_sets(name)))
    exp = method(model, x, target, seeds=seeds)
    assert isinstance(exp, Explanation)
    assert exp.attribution.shape == x.shape and exp.attribution.dtype == x.dtype
    assert torch.isfinite(exp.attribution).all()
    again = method(model, x, target, seeds=seeds + 1).attribution
    # a map that changes with the seed must say so (seed_stability is run for it), and one that says so must
    assert method.has_random_part() == (not torch.equal(exp.attribution, again)), "the random= declaration"
    if exp.baseline is not None:
        assert exp.baseline.shape == x.shape
    if exp.trace is not None:
        assert all(v.shape[0] == x.shape[0] for v in exp.trace.values())


@pytest.mark.parametrize("name", _names("model"))
def test_model_maps_pixels_to_finite_logits(name):
    try:
        clf = uni_lab.create_model(name, weights="random")
    except PluginError as exc:  # a factory that refuses random weights must say so
        pytest.fail(f"model '{name}' cannot be built with weights='random': {exc}")
    assert isinstance(clf, uni_lab.Classifier)
    x = torch.rand(1, 3, *clf.input_size)
    with torch.no_grad():
        logits = clf(x)
    assert logits.shape[0] == 1 and logits.dim() == 2 and torch.isfinite(logits).all()


@pytest.fixture(scope="module")
def evaluated(tiny_model, tmp_path_factory):
    """A tiny store evaluated with every metric, attack and corruption (severity 1)."""
    out = tmp_path_factory.mktemp("conformance") / "s.zarr"
    uni_lab.run(models=[tiny_model], images=["chelsea", "coffee"], methods=["ig:black", "smoothgrad"], steps=3,
                sets={"smoothgrad.samples": 4}, out=out, progress=False, device="cpu", seed_stability=False)
    evaluate(out, metrics="all", attacks="all", corruptions="all", severities=[1], models=[tiny_model],
             perturbed_metrics=[p.name for p in uni_lab.list_plugins("metric") if p.accepts("reference")],
             sets={"robustness.k": 20, "fgsm_attribution.k": 20, "ifgsm_attribution.k": 20, "mufidelity.n_subsets": 8,
                   "seed_stability.n_seeds": 2},
             progress=False, device="cpu")
    return open_store(out, lazy=False)


@pytest.mark.parametrize("name", _names("metric"))
def test_metric_stores_per_image_values(name, evaluated):
    plugin = uni_lab.get("metric", name)
    prefixes = ("attack_", "corruption_") if plugin.accepts("reference") else ("",)
    for prefix in prefixes:
        flag = f"done_{prefix}{name}"
        assert flag in evaluated and bool(evaluated[flag].all()), flag
        values = [v for v in evaluated.data_vars if evaluated[v].attrs.get("uni_lab_metric") == name
                  and v.startswith(prefix) and not v.startswith("done_")]
        assert values, f"metric '{name}' stored no values ({prefix or 'clean'})"
        for v in values:
            assert evaluated[v].dims[:3] == ("model", "xai_method", "image"), v
            for i, method in enumerate(evaluated.xai_method.values):
                finite = np.isfinite(evaluated[v].isel(xai_method=i).values)
                # IG from black has a baseline, a path trace and Riemann steps: every metric applies to it
                assert finite.all() or (method != "ig:black" and not finite.any()), \
                    f"{v} ({method}): not finite for every image"  # elsewhere: NaN for all where it does not apply


@pytest.mark.parametrize("name", _names("attack"))
def test_attack_or_corruption_returns_an_input_of_the_same_shape(name, evaluated):
    corruption = "severity" in uni_lab.get("attack", name).params
    var = "corruption_input" if corruption else "attack_input"
    sel = {"corruption": name, "severity": 1} if corruption else {"attack": name}
    perturbed = evaluated[var].sel(sel)
    assert perturbed.shape[-3:] == evaluated["input"].shape[-3:]
    assert np.isfinite(perturbed.values).all()
