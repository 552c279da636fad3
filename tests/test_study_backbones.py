"""figures/study_backbones.py on a tiny study: two tiny registered backbones, two photographs, B = 2.

The claims table's numbers are recomputed here from the store's own variables (numpy on the
arrays, not the script's frames), and a redraw from ``--store`` writes the same page."""
from __future__ import annotations

import copy
import functools
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import uni_lab
from conftest import train_tiny

FIGURES = Path(__file__).resolve().parents[1] / "figures"
sys.path.insert(0, str(FIGURES))

MODELS = ("study_tiny_a", "study_tiny_b")
IMAGES = ("chelsea", "coffee")
EVAL_SETS = ["mufidelity.n_subsets=8", "deletion.n_steps=4", "insertion.n_steps=4", "robustness.k=20",
             "fgsm_attribution.k=20", "fgsm_attribution.surrogate_steps=2"]


@functools.lru_cache(maxsize=None)
def _trained(seed: int):
    return train_tiny(seed=seed)  # deterministic: the evaluation reloads it by name and checks its predictions


def _tiny(name: str, seed: int):
    def factory(weights=None):
        clf = copy.deepcopy(_trained(seed))  # trained once; every load gets its own copy
        clf.name = name
        return clf
    factory.__doc__ = f"A tiny trained CNN (seed {seed}) standing in for a backbone (tests only)."
    return factory


for _seed, _name in enumerate(MODELS):
    if _name not in {p.name for p in uni_lab.list_plugins("model")}:
        uni_lab.model(_name)(_tiny(_name, _seed))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The study computed once: its cache folder, figures folder and page."""
    import torch

    base = tmp_path_factory.mktemp("study")
    mod = importlib.import_module("study_backbones")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads only add synchronisation on a shared machine
    argv = ["--cache", str(base / "cache"), "--out-dir", str(base / "figs"), "--docs", str(base / "claims.md"),
            "--model", ",".join(MODELS), "--images", *IMAGES, "--methods", "uni,ig:black,ig:blur", "--steps", "2",
            "--no-progress",
            *[a for s in EVAL_SETS for a in ("--eval-set", s)]]
    try:
        assert mod.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return mod, base


def test_claims_are_the_store_numbers(study):
    mod, base = study
    import xarray as xr

    ds, _, _ = mod.open_study(base / "cache" / "study_backbones")
    claims = pd.read_csv(base / "figs" / "study_claims.csv")
    assert set(claims["model"]) == set(MODELS) and len(claims) == len(mod.CLAIMS) * len(MODELS)

    def mean(var, model, method, flag=None, where=None, **labels):
        at = {"model": model, "xai_method": method, **labels}
        values = ds[var].sel(at)
        keep = ds[flag].sel(at).values if flag else np.ones(values.shape, bool)
        if where is not None:
            keep = keep & where
        return float(values.values[keep].mean()), int(keep.sum())

    expected = {
        "UNI has the highest MuFidelity": ("mufidelity", "done_mufidelity", "higher"),
        "UNI has the lowest deletion AUC": ("deletion", "done_deletion", "lower"),
        "UNI has the highest insertion AUC": ("insertion", "done_insertion", "higher"),
        "UNI's path is the most monotone": ("monotonicity_spearman", "done_monotonicity", "higher"),
        "UNI's path is the most complete (smallest completeness error)":
            ("completeness_error_recomputed", "done_completeness_error", "lower"),
    }
    methods = [str(m) for m in ds.xai_method.values]
    for model in MODELS:
        rows = claims[claims["model"] == model].set_index("claim")
        for claim, (var, flag, better) in expected.items():
            means = {m: mean(var, model, m, flag)[0] for m in methods}
            others = {m: v for m, v in means.items() if m != "uni"}
            best = (max if better == "higher" else min)(others, key=others.get)
            row = rows.loc[claim]
            assert row["uni"] == pytest.approx(means["uni"]) and row["other_method"] == best
            assert row["other"] == pytest.approx(others[best])
            assert bool(row["holds"]) == ((means["uni"] > others[best]) if better == "higher"
                                          else (means["uni"] < others[best]))
        # against IG-black only
        row = rows.loc["UNI's completeness error is smaller than IG-black's at the same B"]
        assert row["other_method"] == "ig:black"
        assert row["other"] == pytest.approx(mean("completeness_error_recomputed", model, "ig:black",
                                                  "done_completeness_error")[0])
        # featurelessness: the worst photograph's F_c(x')/F_c(x)
        ratio = (ds["prob_baseline"].sel({"model": model, "xai_method": "uni"}) / ds["prob_input"].sel(model=model)).values
        row = rows.loc[mod.CLAIMS[0][0]]
        assert row["uni"] == pytest.approx(ratio.max()) and bool(row["holds"]) == bool(ratio.max() <= 0.1)
        # the attack: only the items it moved count
        for attack, claim in (("fgsm_attribution", mod.CLAIMS[7][0]), ("random_noise", mod.CLAIMS[9][0])):
            moved = {m: ds["attack_linf"].sel({"model": model, "xai_method": m, "attack": attack}).values > 0
                     for m in methods}
            means = {m: mean("attack_robustness_spearman", model, m, None, moved[m], attack=attack) for m in methods}
            row = rows.loc[claim]
            if means["uni"][1] == 0:
                assert np.isnan(row["uni"])
                continue
            assert row["uni"] == pytest.approx(means["uni"][0]) and row["n"] == means["uni"][1]
            others = {m: v for m, v in means.items() if m != "uni" and v[1]}
            best = max(others, key=lambda m: others[m][0])
            assert row["other_method"] == best and row["other"] == pytest.approx(others[best][0])
            assert bool(row["holds"]) == (means["uni"][0] > others[best][0])
    page = (base / "claims.md").read_text()
    assert "## Claims, per backbone" in page and "F_c(x')/F_c(x)" in page
    for model in MODELS:
        assert model in page
    assert "PARTIAL" not in page and "min of wall time" in page


def test_redraw_from_the_store_writes_the_same_page(study, tmp_path):
    mod, base = study
    store = base / "cache" / "study_backbones"
    docs = base / "claims.md"  # the same place: its links to the figures read the same
    computed = docs.read_text()
    docs.unlink()
    assert mod.main(["--store", str(store), "--out-dir", str(base / "figs"), "--docs", str(docs)]) == 0
    assert docs.read_text() == computed


def test_a_foreign_manifest_is_refused_not_replaced(tmp_path):
    mod = importlib.import_module("study_backbones")
    (tmp_path / "study_backbones").mkdir()
    foreign = tmp_path / "study_backbones" / mod.MANIFEST
    foreign.write_text("a user's notes\n")
    with pytest.raises(SystemExit, match="not a file this script wrote"):
        mod.main(["--cache", str(tmp_path), "--model", ",".join(MODELS), "--images", "chelsea", "--steps", "2",
                  "--out-dir", str(tmp_path), "--docs", str(tmp_path / "claims.md")])
    assert foreign.read_text() == "a user's notes\n" and not (tmp_path / "claims.md").exists()


def test_an_unknown_backbone_is_one_line_and_writes_nothing(tmp_path):
    mod = importlib.import_module("study_backbones")
    with pytest.raises(SystemExit) as exc:
        mod.main(["--cache", str(tmp_path / "cache"), "--model", "no_such_backbone", "--images", "chelsea",
                  "--out-dir", str(tmp_path / "figs"), "--docs", str(tmp_path / "claims.md")])
    assert "no_such_backbone" in str(exc.value) and "\n" not in str(exc.value)
    assert not any(tmp_path.iterdir())


def _other_settings(attrs):
    recorded = json.loads(attrs["uni_lab_evaluation"])
    recorded["metric:mufidelity"] = {**recorded["metric:mufidelity"], "n_subsets": 999}
    attrs["uni_lab_evaluation"] = json.dumps(recorded)


def _other_plugin_code(attrs):
    plugins = json.loads(attrs["uni_lab_plugins"])
    assert plugins["baseline:uni"]["source_sha256"]
    plugins["baseline:uni"]["source_sha256"] = "0" * 16
    attrs["uni_lab_plugins"] = json.dumps(plugins)


def _other_uni_lab_code(attrs):
    versions = json.loads(attrs["versions"])
    assert len(versions["uni-lab-source"]) == 16
    attrs["versions"] = json.dumps({**versions, "uni-lab-source": "0" * 16})


@pytest.mark.parametrize("change, message", [
    # a photograph evaluated with another metric parameter would silently mix two studies
    (_other_settings, "was made with other settings"),
    # same settings, other code: a study resumed after UNI's source changed would mix two UNIs
    (_other_plugin_code, "was computed with other source code for baseline:uni"),
    # unlearning's arithmetic lives in uni_lab/persample.py, outside any plugin file
    (_other_uni_lab_code, "was computed with other source code for uni_lab itself"),
])
def test_stores_made_otherwise_are_not_read_as_one(study, tmp_path, change, message):
    import shutil

    import zarr

    mod, base = study
    folder = tmp_path / "study"
    shutil.copytree(base / "cache" / "study_backbones", folder)
    change(zarr.open_group(folder / "coffee.zarr", mode="r+").attrs)
    with pytest.raises(SystemExit, match=f"coffee.zarr' {message}"):
        mod.open_study(folder)


def test_time_note_says_idle_only_when_the_load_allows_it():
    mod = importlib.import_module("study_backbones")
    idle = [{"cpus": 2, "load_start": 0.5, "load_end": 1.9}]
    busy = [{"cpus": 2, "load_start": 0.5, "load_end": 1.9}, {"cpus": 2, "load_start": 9.6, "load_end": 2.2}]
    assert "otherwise about idle" in mod._load_note(idle)
    assert "upper bound" in mod._load_note(busy) and "idle" not in mod._load_note(busy)
