"""Every registered plugin through the contract of its kind (uni_lab/contracts.py), the way timm's
tests run every registered model: built-ins and anything a package registers through the entry
points. A plugin added later is covered without editing this file; the few parameter changes
below only fit the defaults to a 4-class, 16×16 model (``FIT``) and are named with their reason.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

import uni_lab
from uni_lab.contracts import PROTOCOLS, check_signature
from uni_lab.errors import PluginError
from uni_lab.evaluate import evaluate
from uni_lab.explanation import Explanation
from uni_lab.methods import resolve, route_params
from uni_lab.seeding import image_seed
from uni_lab.store import open_store

FIT = {  # parameter -> value, only where a default cannot apply to the tiny model or is needlessly slow
    "agi": {"top_k": 2},  # the tiny model has 4 classes: at most 3 false ones
    "smoothgrad": {"samples": 4},
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


def test_every_plugin_satisfies_its_protocol():
    for plugin in uni_lab.list_plugins():
        check_signature(plugin.kind, plugin.name, plugin.obj)  # registration already did; hookimpl modules too
        assert isinstance(plugin.obj, PROTOCOLS[plugin.kind]), plugin


@pytest.mark.parametrize("name", _names("baseline"))
def test_baseline_returns_a_finite_image_of_the_input_shape(name, batch):
    model, x, target, seeds = batch
    params = uni_lab.get("baseline", name).resolved_params({k: v for k, v in FIT.get(name, {}).items()})
    xb = uni_lab.get("baseline", name)(x, model, target, seeds=seeds, **params)
    assert xb.shape == x.shape and torch.isfinite(xb).all()


@pytest.mark.parametrize("name", _names("path"))
def test_path_starts_at_the_baseline_end_and_ends_at_x(name, batch):
    _, x, _, _ = batch
    baseline = torch.zeros_like(x)
    alphas = torch.linspace(0, 1, 5)
    points = uni_lab.get("path", name)(x, baseline, alphas)
    assert points.shape == (5, *x.shape) and torch.isfinite(points).all()
    torch.testing.assert_close(points[-1], x, atol=1e-5, rtol=0)
    if name == "straight":
        torch.testing.assert_close(points[0], baseline)


@pytest.mark.parametrize("name", _names("explainer"))
def test_explainer_returns_an_explanation_of_the_input_shape(name, batch):
    model, x, target, seeds = batch
    exp = resolve(name, route_params(_sets(name)))(model, x, target, seeds=seeds)
    assert isinstance(exp, Explanation)
    assert exp.attribution.shape == x.shape and torch.isfinite(exp.attribution).all()
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
            assert evaluated[v].dims[:3] == ("model", "method", "image"), v
            assert np.isfinite(evaluated[v].values).any(), v


@pytest.mark.parametrize("name", _names("attack"))
def test_attack_or_corruption_returns_an_input_of_the_same_shape(name, evaluated):
    corruption = "severity" in uni_lab.get("attack", name).params
    var = "corruption_input" if corruption else "attack_input"
    sel = {"corruption": name, "severity": 1} if corruption else {"attack": name}
    perturbed = evaluated[var].sel(sel)
    assert perturbed.shape[-3:] == evaluated["input"].shape[-3:]
    assert np.isfinite(perturbed.values).all()
