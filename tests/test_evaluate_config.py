"""``uni-lab evaluate`` is a declared configuration, a plan that writes nothing and an execution.

The flags, ``uni_lab.evaluate``'s signature and docstring derive from :class:`EvaluateConfig`;
every bad parameter of every registered metric, attack and corruption is refused by the plan in
one line, the store on disk untouched (a generated test: a plugin added later is covered).
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect

import numpy as np
import pytest
import xarray as xr

import test_param_declarations as declarations
import uni_lab
from uni_lab import evaluate_config
from uni_lab.errors import UniLabError
from uni_lab.evaluate_config import EvaluateConfig
from uni_lab.evaluation import plan


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("evaluate_plan") / "tiny.zarr"
    uni_lab.run(models=[tiny_model], images=["chelsea", "coffee"], methods=["saliency"], out=out, progress=False,
                seed_stability=False)
    return out


def listing(path):
    return sorted((str(p.relative_to(path)), p.stat().st_mtime_ns, p.stat().st_size) for p in path.rglob("*"))


def _bad_value(plugin):
    """``(parameter, bad value)``: a declared parameter's from the generated cases of
    test_param_declarations, or an unknown parameter for a plugin that declares none."""
    for case in declarations.CASES:
        p, param, value = case.values
        if p.kind == plugin.kind and p.name == plugin.name:
            return param, value
    return "no_such_parameter", 1


def _asked(plugin) -> dict:
    if plugin.kind == "metric":
        return {"metrics": plugin.name}
    if "severity" in plugin.params:
        return {"corruptions": plugin.name, "severities": [1]}
    return {"attacks": plugin.name}


PLUGINS = [pytest.param(p, id=f"{p.kind}.{p.name}") for kind in ("metric", "attack")
           for p in uni_lab.list_plugins(kind)]


def test_the_generated_cases_cover_metrics_attacks_and_corruptions():
    names = {c.id for c in PLUGINS}
    assert {"metric.mufidelity", "metric.robustness", "attack.fgsm_attribution", "attack.brightness"} <= names


@pytest.mark.parametrize("plugin", PLUGINS)
def test_every_bad_parameter_is_refused_by_the_plan_in_one_line_with_the_store_untouched(plugin, store,
                                                                                        tiny_model):
    param, value = _bad_value(plugin)
    before = listing(store)
    with pytest.raises(UniLabError) as err:
        uni_lab.evaluate(store, models=[tiny_model], sets={f"{plugin.name}.{param}": value}, progress=False,
                         **_asked(plugin))
    message = str(err.value)
    assert "\n" not in message and f"{plugin.name}.{param}" in message, message
    assert listing(store) == before


def test_the_plan_resolves_against_the_store_and_writes_nothing(store, tiny_model):
    before = listing(store)
    p = plan(EvaluateConfig(store, metrics="mufidelity", attacks="random_noise", corruptions="brightness",
                            severities=[2], models=[tiny_model], sets={"robustness.k": 20}))
    assert [m.name for m in p.selection.metrics] == ["mufidelity"] and p.selection.severities == [2]
    assert p.specs == ["saliency"] and p.ids == ["chelsea", "coffee"] and list(p.models) == ["tiny"]
    assert listing(store) == before
    with pytest.raises(UniLabError, match=r"^the store has no image \['rocket'\]"):
        plan(EvaluateConfig(store, metrics="mufidelity", images=["rocket"], models=[tiny_model]))
    with pytest.raises(UniLabError, match=r"^batch_size must be at least 1"):
        plan(EvaluateConfig(store, metrics="mufidelity", batch_size=0))
    assert listing(store) == before


def test_flags_signature_and_help_derive_from_the_fields():
    fields = [f.name for f in dataclasses.fields(EvaluateConfig)]
    sig = inspect.signature(uni_lab.evaluate)
    assert list(sig.parameters) == fields
    assert sig.parameters["store"].default is inspect.Parameter.empty
    assert sig.parameters["batch_size"].kind is inspect.Parameter.KEYWORD_ONLY
    for f in dataclasses.fields(EvaluateConfig):
        assert f"``{f.name}``" in uni_lab.evaluate.__doc__ and f.metadata["help"] in uni_lab.evaluate.__doc__
    parser = argparse.ArgumentParser()
    evaluate_config.add_arguments(parser)
    args = parser.parse_args(["s.zarr", "--metrics", "deletion", "--severities", "1,3", "--images", "a", "b,c",
                              "--set", "deletion.n_steps=4", "--no-progress"])
    config = evaluate_config.from_args(args)
    assert config == EvaluateConfig("s.zarr", metrics="deletion", attacks="", corruptions="", severities=["1", "3"],
                                    perturbed_metrics="robustness,bias", images=["a", "b", "c"],
                                    sets=["deletion.n_steps=4"], progress=False)
    flags = {a.dest for a in parser._actions}
    assert flags >= {f.name for f in dataclasses.fields(EvaluateConfig) if f.metadata["flag"]}
    assert "models" not in flags  # Python only: Classifier objects


def test_positions_beyond_the_four_lists_are_keywords(store):
    with pytest.raises(TypeError):
        uni_lab.evaluate(store, "mufidelity", "", "", [1])


def test_the_store_is_addressed_by_labels(store, tiny_model):
    """One image asked for: its own label is written and flagged, not the store's first position."""
    kw = {"metrics": "deletion", "sets": {"deletion.n_steps": 4}, "models": [tiny_model], "progress": False}
    uni_lab.evaluate(store, images=["coffee"], **kw)
    ds = xr.open_zarr(store)
    assert ds["done_deletion"].sel(image=["chelsea", "coffee"]).values.ravel().tolist() == [False, True]
    assert np.isnan(ds["deletion"].sel(image="chelsea").values).all()
    coffee = ds["deletion"].sel(image="coffee").values.copy()
    uni_lab.evaluate(store, images=["coffee", "chelsea"], **kw)
    ds = xr.open_zarr(store)
    assert bool(ds["done_deletion"].all()) and np.isfinite(ds["deletion"].values).all()
    np.testing.assert_array_equal(ds["deletion"].sel(image="coffee").values, coffee)


def test_a_model_the_store_cannot_reload_is_refused_before_anything_is_written(store):
    """The in-memory tiny model has no weights file: the plan says so (it used to record the metric's
    parameters in the store first)."""
    before = listing(store)
    with pytest.raises(UniLabError, match=r"^cannot reload model 'tiny'.*pass it in: uni_lab\.evaluate\(store, "
                                          r"models=\[classifier\]\)"):
        uni_lab.evaluate(store, metrics="mufidelity", progress=False)
    assert listing(store) == before


def test_a_top_k_above_the_pixel_count_is_refused_by_the_plan(store, tiny_model):
    """robustness.k and fgsm_attribution.k count pixels: against a 16×16 store (256 pixels) the
    default 1000 is refused before anything is computed or recorded, not in the middle of the attack."""
    before = listing(store)
    with pytest.raises(UniLabError, match=r"^metric 'robustness': k=1000 must be fewer than the 256 pixels of the "
                                          r"16×16 images; set e\.g\. --set robustness\.k=25\.$"):
        uni_lab.evaluate(store, attacks="random_noise", models=[tiny_model], progress=False)
    with pytest.raises(UniLabError, match=r"^attack 'fgsm_attribution': k=256 must be fewer than the 256 pixels"):
        uni_lab.evaluate(store, attacks="fgsm_attribution", models=[tiny_model], progress=False,
                         sets={"robustness.k": 20, "fgsm_attribution.k": 256})
    assert listing(store) == before
    # a plain evaluation does not use them, so their defaults do not matter there
    plan(EvaluateConfig(store, metrics="mufidelity", models=[tiny_model]))


@pytest.mark.parametrize("command", ["evaluate", "check"])
def test_an_empty_store_path_is_named_not_searched_as_the_working_folder(command, capsys):
    from uni_lab.cli import main

    assert main([command, "", *(["--metrics", "deletion"] if command == "evaluate" else [])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the store path '' is empty" in err, err
