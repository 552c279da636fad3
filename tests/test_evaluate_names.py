"""Evaluation variables are declared, not parsed back from their names: a metric's name may begin
with ``attack_`` or ``corruption_`` and still be a clean metric, and a name that would belong to
two things is refused before anything is written."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import uni_lab
from uni_lab.errors import PluginError
from uni_lab.registry import registry


@pytest.fixture()
def store(tmp_path, tiny_model):
    out = tmp_path / "tiny.zarr"
    uni_lab.run(models=[tiny_model], images=["chelsea", "coffee"], methods=["saliency"], out=out, progress=False,
                seed_stability=False)
    return out


@pytest.fixture()
def named_metric():
    """Registers a clean metric under a given name (the sum of |A|), unregistered afterwards."""
    names = []

    def register(name: str):
        def total(attribution):
            return {name: attribution.abs().flatten(1).sum(1)}

        uni_lab.metric(name)(total)
        names.append(name)

    yield register
    for name in names:
        registry.unregister("metric", name)


def listing(path):
    return sorted((str(p.relative_to(path)), p.stat().st_mtime_ns) for p in path.rglob("*"))


def test_a_clean_metric_named_attack_something_is_clean(store, tiny_model, named_metric):
    named_metric("attack_success")
    res = uni_lab.evaluate(store, metrics="attack_success", attacks="random_noise", perturbed_metrics="robustness",
                           sets={"robustness.k": 20}, models=[tiny_model], progress=False)
    ds = xr.open_zarr(store)
    assert ds["attack_success"].dims == ("model", "xai_method", "image")  # not under the attack dim
    assert bool(ds["done_attack_success"].all()) and "done_attack_attack_success" not in ds
    assert bool(ds["done_attack"].all()) and bool(ds["done_attack_robustness"].all())  # the attack's own flags
    expected = np.abs(ds["attribution"].values).reshape(1, 1, 2, -1).sum(-1)
    np.testing.assert_allclose(ds.uni.evaluated("attack_success").values, expected, rtol=1e-6)
    row = res.table.set_index("method").loc["saliency"]
    assert row["attack_success"] == pytest.approx(expected.mean(), rel=1e-6)
    assert "attack_success[random_noise]" not in res.table  # it is not an attacked value


def test_a_metric_whose_flag_is_an_attacks_flag_is_refused_before_anything_is_written(store, tiny_model,
                                                                                      named_metric):
    named_metric("attack")  # its flag would be done_attack, the attacked inputs' flag
    before = listing(store)
    with pytest.raises(PluginError, match=r"^the variable 'done_attack' would belong to metric 'attack' \(clean\) "
                                          r"and the attack inputs"):
        uni_lab.evaluate(store, metrics="attack", attacks="random_noise", perturbed_metrics="robustness",
                         sets={"robustness.k": 20}, models=[tiny_model], progress=False)
    assert listing(store) == before


def test_a_metric_named_like_a_run_variable_never_writes_into_it(store, tiny_model, named_metric):
    named_metric("attribution")  # its value would overwrite the stored maps
    maps = xr.open_zarr(store)["attribution"].values.copy()
    with pytest.raises(PluginError, match=r"^metric 'attribution' \(clean\) returned 'attribution', the variable of "
                                          r"the run; rename the metric or that key"):
        uni_lab.evaluate(store, metrics="attribution", models=[tiny_model], progress=False)
    np.testing.assert_array_equal(xr.open_zarr(store)["attribution"].values, maps)


def test_a_perturbed_metric_whose_flag_is_a_clean_metrics_is_refused_by_the_plan(store, tiny_model, named_metric):
    named_metric("attack_success")
    uni_lab.evaluate(store, metrics="attack_success", models=[tiny_model], progress=False)
    named_metric("success")  # under an attack its flag would be done_attack_success, the clean metric's
    before = listing(store)
    with pytest.raises(PluginError, match=r"^the variable 'done_attack_success' would belong to metric "
                                          r"'attack_success' \(clean\) and metric 'success' \(attack\)"):
        uni_lab.evaluate(store, attacks="random_noise", perturbed_metrics="success", models=[tiny_model],
                         progress=False)
    assert listing(store) == before


def test_a_value_landing_in_another_metrics_variable_is_refused(store, tiny_model, named_metric):
    """Keys are known only once a metric has run: the write checks whose variable it is."""
    named_metric("attack_success_rate")
    uni_lab.evaluate(store, metrics="attack_success_rate", models=[tiny_model], progress=False)
    clean = xr.open_zarr(store)["attack_success_rate"].values.copy()

    def success(attribution):  # key "rate" under an attack: attack_success_rate, the clean metric's variable
        return {"rate": attribution.abs().flatten(1).sum(1)}

    uni_lab.metric("success")(success)
    try:
        with pytest.raises(PluginError, match=r"^metric 'success' \(attack\) returned 'attack_success_rate', the "
                                              r"variable of metric 'attack_success_rate' \(clean\)"):
            uni_lab.evaluate(store, attacks="random_noise", perturbed_metrics="success", models=[tiny_model],
                             progress=False)
    finally:
        registry.unregister("metric", "success")
    np.testing.assert_array_equal(xr.open_zarr(store)["attack_success_rate"].values, clean)


def test_a_metric_dim_named_like_a_condition_is_refused(store, tiny_model):
    """A stored variable's condition is read from its dims: a clean metric may not add an ``attack`` dim."""
    def per_attack(attribution):
        values = attribution.abs().flatten(1).sum(1).unsqueeze(1).repeat(1, 2).numpy()
        return {"per_attack": xr.DataArray(values, dims=("image", "attack"))}

    uni_lab.metric("_test_per_attack")(per_attack)
    try:
        with pytest.raises(PluginError, match=r"^metric '_test_per_attack' returned 'per_attack' with dims "
                                              r"\('image', 'attack'\); the store's label dims \(attack\) are not a metric's"):
            uni_lab.evaluate(store, metrics="_test_per_attack", models=[tiny_model], progress=False)
    finally:
        registry.unregister("metric", "_test_per_attack")
    assert "_test_per_attack_per_attack" not in xr.open_zarr(store)
