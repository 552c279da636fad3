"""The figure scripts: each draws from a small store with ``--store``, its printed numbers match
the store, missing inputs are named instead of crashing, and the no-argument path computes and
caches a store with the real embedded model."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import small_stores

FIGURES = Path(__file__).resolve().parents[1] / "figures"
sys.path.insert(0, str(FIGURES))  # the scripts import their shared modules by name, as when run directly

import _path_shape  # noqa: E402
import _store_io  # noqa: E402

@pytest.fixture(scope="session")
def evaluated(tmp_path_factory):
    return small_stores.evaluated_store(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def over_steps(tmp_path_factory):
    return small_stores.stores_over_steps(tmp_path_factory.getbasetemp())


def script(name):
    return importlib.import_module(name)


def run_script(name, store, out_dir, *extra):
    assert script(name).main(["--store", *map(str, np.atleast_1d(store)), "--out-dir", str(out_dir), *extra]) == 0


def assert_drawn(out_dir: Path, stem: str, table: bool = False):
    import matplotlib.image

    png = matplotlib.image.imread(out_dir / f"{stem}.png")
    assert png.shape[0] > 200 and png.shape[1] > 200
    assert png[..., :3].std() > 0.05  # not a blank canvas
    assert (out_dir / f"{stem}.pdf").stat().st_size > 1000
    if table:
        assert (out_dir / f"{stem}.csv").exists() and "|" in (out_dir / f"{stem}.md").read_text()


def draw_table(name, store, out_dir):
    """Draw from ``store`` and return the script module, the dataset and the table it printed."""
    mod = script(name)
    ds = _store_io.open_loaded(store)
    _, table = mod.draw(ds, out_dir)
    assert_drawn(out_dir, name, table=True)
    return mod, ds, table


def flagged_mean(ds, var, flag, **at):
    values = ds[var].where(ds[flag]).sel(at)
    return float(np.nanmean(values.values))


def test_fig2_grid_from_store(evaluated, tmp_path, capsys):
    run_script("fig2_attributions", evaluated, tmp_path)
    assert_drawn(tmp_path, "fig2_attributions")
    out = capsys.readouterr().out
    for method in small_stores.METHODS:
        assert method in out


def test_table2_numbers_are_the_store_means(evaluated, tmp_path):
    mod, ds, wide = draw_table("table2_faithfulness", evaluated, tmp_path)
    assert list(wide["method"]) == list(small_stores.METHODS)
    for _, row in wide.iterrows():
        for metric in mod.METRICS:
            printed = float(row[metric].split()[0])
            assert printed == pytest.approx(flagged_mean(ds, metric, f"done_{metric}", method=row["method"]), abs=1e-4)


def test_fig4_numbers_are_the_store_means(evaluated, tmp_path):
    mod, ds, table = draw_table("fig4_robustness", evaluated, tmp_path)
    assert set(table["attack"]) == set(mod.ATTACKS)
    for _, row in table.iterrows():
        at = {"method": row["method"], "attack": row["attack"]}
        assert row["spearman"] == pytest.approx(flagged_mean(ds, "attack_robustness_spearman",
                                                             "done_attack_robustness", **at))
        assert row["topk"] == pytest.approx(flagged_mean(ds, "attack_robustness_topk", "done_attack_robustness", **at))
        assert row["label_kept"] == 1.0  # the attack keeps the label by construction


def test_fig4_leaves_out_attacks_that_did_not_move_the_input(evaluated, tmp_path, capsys):
    """A rejected attack returns x itself (δ = 0, robustness 1 by construction): it must not count."""
    mod = script("fig4_robustness")
    ds = _store_io.open_loaded(evaluated)
    at = {"model": "tiny", "method": "ig:black", "image": "chelsea", "attack": "fgsm_attribution"}
    ds["attack_linf"].loc[at] = 0.0
    _, table = mod.draw(ds, tmp_path)
    assert "NOT APPLIED: fgsm_attribution on ig:black for 1 image(s)" in capsys.readouterr().out
    row = table.set_index(["method", "attack"]).loc[("ig:black", "fgsm_attribution")]
    assert (row["images"], row["applied"]) == (2, 1)
    other = {**at, "image": "coffee"}
    assert row["spearman"] == pytest.approx(float(ds["attack_robustness_spearman"].sel(other)))


def test_fig5_numbers_are_the_store_means(evaluated, tmp_path):
    _, ds, table = draw_table("fig5_bias", evaluated, tmp_path)
    assert set(table["corruption"]) == {"clean", *small_stores.CORRUPTIONS}
    clean = table[table["corruption"] == "clean"].set_index("method")
    for method in small_stores.METHODS:
        assert clean.loc[method, "colour"] == pytest.approx(flagged_mean(ds, "bias_colour", "done_bias", method=method))
    row = table[(table["corruption"] == "gaussian_noise") & (table["severity"] == 2)].set_index("method").loc["uni"]
    assert row["frequency"] == pytest.approx(flagged_mean(ds, "corruption_bias_frequency", "done_corruption_bias",
                                                          method="uni", corruption="gaussian_noise", severity=2))


def test_monotonicity_from_trace_matches_the_metric_plugins(evaluated, tmp_path):
    """The trace-derived path shape (used when a store has no evaluation) against what the
    monotonicity and curvature metric plugins stored for the same paths."""
    from uni_lab.summary import monotone_fraction

    ds = _store_io.open_loaded(evaluated)
    f = _path_shape.score_trace(ds)
    mono = monotone_fraction(f)
    for method in small_stores.METHODS:
        for image in small_stores.IMAGES:
            at = {"model": "tiny", "method": method, "image": image}
            row = f.sel(at).values
            assert float(mono.sel(at)) == pytest.approx(float(ds["monotonicity_fraction"].sel(at)))
            assert _path_shape.conformant(row) == float(ds["monotonicity_conformant"].sel(at))
            assert _path_shape.second_difference(row) == pytest.approx(
                float(ds["curvature_second_difference"].sel(at)), rel=1e-9)
    run_script("fig_monotonicity", evaluated, tmp_path)
    assert_drawn(tmp_path, "fig_monotonicity", table=True)


def test_fig7_stability_over_stores(over_steps, tmp_path):
    mod = script("fig7_stability")
    datasets = [_store_io.open_loaded(p) for p in mod.store_paths([over_steps])]
    _, summary = mod.draw(datasets, tmp_path)
    assert_drawn(tmp_path, "fig7_stability", table=True)
    assert sorted(summary["B"].unique()) == [2, 4, 8]
    at_ref = summary[summary["B"] == 8]
    assert np.allclose(at_ref["spearman"], 1.0) and np.allclose(at_ref["rel_l2"], 0.0)
    # every B must integrate along the same path: seeded baselines (UNI's unlearning, blur) may not move with B
    assert np.allclose(summary["baseline_drift"], 0.0)
    # an independent estimate of one point: ranks by scipy.stats.rankdata, correlation by numpy
    from scipy.stats import rankdata

    a2 = datasets[0].sel({"method": "uni", "image": "chelsea"})["attribution"].values.ravel()
    a8 = datasets[2].sel({"method": "uni", "image": "chelsea"})["attribution"].values.ravel()
    rho = np.corrcoef(rankdata(a2), rankdata(a8))[0, 1]
    point = mod.stability(*mod.collect(datasets)).set_index(["method", "image", "B"]).loc[("uni", "chelsea", 2)]
    assert point["spearman"] == pytest.approx(rho, abs=1e-9)
    assert point["rel_l2"] == pytest.approx(np.linalg.norm(a2 - a8) / np.linalg.norm(a8), rel=1e-6)
    run_script("fig7_stability", over_steps, tmp_path)  # the folder form of --store


@pytest.mark.parametrize("name", ["table2_faithfulness", "fig4_robustness", "fig5_bias"])
def test_missing_evaluation_is_named_not_faked(name, over_steps, tmp_path, capsys):
    """A plain run store has no metrics, attacks or corruptions: the figure still draws what exists,
    says what is missing and how to get it, and reports no number it does not have."""
    run_script(name, over_steps / "B2.zarr", tmp_path)
    err = capsys.readouterr().err
    assert "MISSING" in err and "uni-lab evaluate" in err
    assert (tmp_path / f"{name}.png").exists() and (tmp_path / f"{name}.csv").exists()
    table = (tmp_path / f"{name}.csv").read_text().splitlines()
    assert len(table) <= 1 + len(small_stores.METHODS) and "±" not in "".join(table)


def test_fig7_draws_the_stored_riemann_stability_metric(evaluated, tmp_path, capsys):
    """One store (one B) evaluated with riemann_stability: its curves are drawn, nothing is missing."""
    mod = script("fig7_stability")
    ds = _store_io.open_loaded(evaluated)
    _, summary = mod.draw([ds], tmp_path)
    assert "MISSING" not in capsys.readouterr().err
    assert_drawn(tmp_path, "fig7_stability", table=True)
    row = summary.set_index(["method", "B"]).loc[("uni", 2)]
    flag = ds["done_riemann_stability"]
    expected = ds["riemann_stability_spearman"].where(flag).sel({"method": "uni", "steps": 2}).mean()
    assert row["spearman"] == pytest.approx(float(expected))


def test_single_store_for_fig7_says_a_second_b_is_needed(over_steps, tmp_path, capsys):
    run_script("fig7_stability", over_steps / "B4.zarr", tmp_path)
    assert "MISSING: a second B" in capsys.readouterr().err


def test_no_such_store_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no store at"):
        script("fig2_attributions").main(["--store", str(tmp_path / "absent.zarr"), "--out-dir", str(tmp_path)])


def test_a_script_runs_as_a_command(evaluated, tmp_path):
    """``python figures/NAME.py --store ...`` as a user types it (own process, own imports)."""
    name = "fig_monotonicity"
    proc = subprocess.run([sys.executable, str(FIGURES / f"{name}.py"), "--store", str(evaluated), "--out-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {tmp_path / (name + '.png')}" in proc.stdout and "monotone_fraction" in proc.stdout


def test_no_arguments_computes_and_caches_with_the_real_model(tmp_path, capsys, monkeypatch):
    """The fresh-clone path, kept small: the embedded EfficientNet-Lite0 on one photograph, two
    steps; an unregistered method is skipped and named; a second call reuses the cached store."""
    fig2 = script("fig2_attributions")
    argv = ["--cache", str(tmp_path / "runs"), "--out-dir", str(tmp_path / "out"), "--images", "chelsea",
            "--methods", "ig:black,no_such_method", "--steps", "2", "--no-progress"]
    assert fig2.main(argv) == 0
    out = capsys.readouterr().out
    assert "MISSING methods (not registered, skipped): no_such_method" in out
    ds = xr.open_zarr(tmp_path / "runs" / "methods.zarr")
    assert list(ds.method.values) == ["ig:black"] and bool(ds["done"].all())
    assert int(ds["target"].sel(model="efficientnet_lite0", image="chelsea")) == 285  # Egyptian cat: real weights
    assert_drawn(tmp_path / "out", "fig2_attributions")

    def refuse(*a, **k):
        raise AssertionError("a finished cached store must not be recomputed")

    monkeypatch.setattr(_store_io, "compute_store", refuse)
    assert fig2.main(argv) == 0
