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
import _style  # noqa: E402
from uni_lab.plot import is_conformant  # noqa: E402

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


@pytest.fixture
def drawn(monkeypatch):
    """Every figure the scripts save, kept for inspection (they close it after saving)."""
    figures = []
    save = _style.save_figure

    def keep(fig, stem, out_dir):
        figures.append(fig)
        return save(fig, stem, out_dir)

    for module in (_style, _store_io):  # table2 and fig4 still save through _store_io's name
        monkeypatch.setattr(module, "save_figure", keep)
    return figures


def _overlap(a, b, tolerance=1.0) -> bool:
    """Two display-space boxes share more than ``tolerance`` pixels in both directions."""
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > tolerance) and (min(a.y1, b.y1) - max(a.y0, b.y0) > tolerance)


def layout_faults(fig) -> list[str]:
    """What makes a figure misread: a legend over a panel that holds data, bars on an axis that
    does not start at 0 or is not linear, a colour-mapped map with no colour bar (or one without
    a label), axes titles on top of each other."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # a closed figure's canvas cannot draw; layout as saved (Agg)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    images = [im for ax in fig.axes for im in ax.images if im.get_array().ndim == 2]
    bars = [im.colorbar for ax in fig.axes for im in ax.images if im.colorbar is not None]
    bar_axes = {b.ax for b in bars}
    data_axes = [ax for ax in fig.axes if ax.get_visible() and ax not in bar_axes
                 and (ax.lines or ax.collections or ax.patches or ax.images)]
    faults = []
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in data_axes:
            if _overlap(box, ax.get_window_extent(renderer)):
                faults.append(f"legend '{legend.get_title().get_text()}' over the panel '{ax.get_title()}'")
    for ax in data_axes:
        if any(type(c).__name__ == "BarContainer" for c in ax.containers):
            if ax.get_yscale() != "linear" or ax.get_ylim()[0] > 0:
                faults.append(f"bars of '{ax.get_ylabel()}' on a {ax.get_yscale()} axis from {ax.get_ylim()[0]:.3g}")
    for im in images:
        same = [b for b in bars if b.mappable.get_cmap().name == im.get_cmap().name
                and (b.norm.vmin, b.norm.vmax) == (im.norm.vmin, im.norm.vmax)]
        if not same:
            faults.append(f"a {im.get_cmap().name} map in '{im.axes.get_title()}' has no colour bar")
        elif not all(b.ax.get_ylabel() for b in same):
            faults.append("a colour bar without a label")
    titles = [t for ax in fig.axes if ax.get_visible() for t in (ax.title, ax._left_title, ax._right_title)
              if t.get_text()]
    for i, a in enumerate(titles):
        for b in titles[i + 1:]:
            if _overlap(a.get_window_extent(renderer), b.get_window_extent(renderer)):
                faults.append(f"titles '{a.get_text()}' and '{b.get_text()}' overlap")
    return faults


def test_layout_faults_are_found():
    """The check itself: it must flag a legend over curves, log-scaled bars and a bare map."""
    import matplotlib.pyplot as plt

    fig, (curves, bars, maps) = plt.subplots(1, 3)
    curves.plot([0, 1], [0, 1], label="a")
    curves.legend(loc="center")
    bars.bar([0, 1], [0.01, 1.0])
    bars.set_yscale("log")
    maps.imshow(np.random.default_rng(0).random((4, 4)), cmap="magma")
    faults = layout_faults(fig)
    plt.close(fig)
    assert any("legend" in f for f in faults) and any("log" in f for f in faults)
    assert any("no colour bar" in f for f in faults)


@pytest.mark.parametrize("name", ["fig2_attributions", "fig_monotonicity", "table2_faithfulness", "fig4_robustness",
                                  "fig5_bias"])
def test_figures_have_no_layout_faults(name, evaluated, tmp_path, drawn):
    run_script(name, evaluated, tmp_path)
    assert drawn
    for fig in drawn:
        assert layout_faults(fig) == []


def test_fig2_grid_from_store(evaluated, tmp_path, capsys, drawn):
    run_script("fig2_attributions", evaluated, tmp_path)
    assert_drawn(tmp_path, "fig2_attributions")
    out = capsys.readouterr().out
    for method in small_stores.METHODS:
        assert method in out
    (fig,) = drawn
    bar = next(im.colorbar for ax in fig.axes for im in ax.images if im.colorbar is not None)
    assert "99th percentile" in bar.ax.get_ylabel()
    # the tiny test model is not an ImageNet classifier: its rows show the class number only
    ds = _store_io.open_loaded(evaluated)
    target = int(ds["target"].sel(model="tiny", image="chelsea"))
    assert fig.axes[0].get_ylabel().splitlines()[:2] == ["chelsea", f"class {target}"]


def test_table2_numbers_are_the_store_means(evaluated, tmp_path):
    mod, ds, wide = draw_table("table2_faithfulness", evaluated, tmp_path)
    assert list(wide["method"]) == list(small_stores.METHODS)
    for _, row in wide.iterrows():
        for metric in mod.METRICS:
            printed = float(row[metric].split()[0])
            assert printed == pytest.approx(flagged_mean(ds, metric, f"done_{metric}", xai_method=row["method"]), abs=1e-4)


def test_fig4_numbers_are_the_store_means(evaluated, tmp_path):
    mod, ds, table = draw_table("fig4_robustness", evaluated, tmp_path)
    assert set(table["attack"]) == set(mod.ATTACKS)
    for _, row in table.iterrows():
        at = {"xai_method": row["method"], "attack": row["attack"]}
        assert row["spearman"] == pytest.approx(flagged_mean(ds, "attack_robustness_spearman",
                                                             "done_attack_robustness", **at))
        assert row["topk"] == pytest.approx(flagged_mean(ds, "attack_robustness_topk", "done_attack_robustness", **at))
        assert row["label_kept"] == 1.0  # the attack keeps the label by construction


def test_fig4_leaves_out_attacks_that_did_not_move_the_input(evaluated, tmp_path, capsys):
    """A rejected attack returns x itself (δ = 0, robustness 1 by construction): it must not count."""
    mod = script("fig4_robustness")
    ds = _store_io.open_loaded(evaluated)
    at = {"model": "tiny", "xai_method": "ig:black", "image": "chelsea", "attack": "fgsm_attribution"}
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
        assert clean.loc[method, "colour"] == pytest.approx(flagged_mean(ds, "bias_colour", "done_bias", xai_method=method))
    row = table[(table["corruption"] == "gaussian_noise") & (table["severity"] == 2)].set_index("method").loc["uni"]
    assert row["frequency"] == pytest.approx(flagged_mean(ds, "corruption_bias_frequency", "done_corruption_bias",
                                                          xai_method="uni", corruption="gaussian_noise", severity=2))


def test_monotonicity_from_trace_matches_the_metric_plugins(evaluated, tmp_path):
    """The trace-derived path shape (used when a store has no evaluation) against what the
    monotonicity and curvature metric plugins stored for the same paths."""
    from uni_lab.summary import monotone_fraction

    ds = _store_io.open_loaded(evaluated)
    f = ds.uni.score_trace()
    mono = monotone_fraction(f)
    for method in small_stores.METHODS:
        for image in small_stores.IMAGES:
            at = {"model": "tiny", "xai_method": method, "image": image}
            row = f.sel(at).values
            assert float(mono.sel(at)) == pytest.approx(float(ds["monotonicity_fraction"].sel(at)))
            assert is_conformant(row) == float(ds["monotonicity_conformant"].sel(at))
            assert _path_shape.second_difference(row) == pytest.approx(
                float(ds["curvature_second_difference"].sel(at)), rel=1e-9)
    run_script("fig_monotonicity", evaluated, tmp_path)
    assert_drawn(tmp_path, "fig_monotonicity", table=True)


def test_fig_monotonicity_bars_are_linear_from_zero(evaluated, tmp_path, drawn):
    """Bar lengths must be the values: every bar panel linear, starting at 0, tall enough for every image."""
    run_script("fig_monotonicity", evaluated, tmp_path)
    (fig,) = drawn
    bar_axes = [ax for ax in fig.axes if ax.containers]
    assert len(bar_axes) == 4
    table = _path_shape.path_table(_store_io.open_loaded(evaluated))
    for ax, col in zip(bar_axes, ["monotone_fraction", "conformant", "second_difference", "completeness_error"]):
        assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0
        assert ax.get_ylim()[1] >= table[col].max()
    assert not any(ax.get_legend() for ax in fig.axes) and len(fig.legends) == 1  # one legend, beside the panels


def test_fig7_stability_over_stores(over_steps, tmp_path, drawn):
    mod = script("fig7_stability")
    datasets = [_store_io.open_loaded(p) for p in mod.store_paths([over_steps])]
    _, summary = mod.draw(datasets, tmp_path)
    assert_drawn(tmp_path, "fig7_stability", table=True)
    assert layout_faults(drawn[0]) == []
    assert sorted(summary["B"].unique()) == [2, 4, 8]
    at_ref = summary[summary["B"] == 8]
    assert np.allclose(at_ref["spearman"], 1.0) and np.allclose(at_ref["rel_l2"], 0.0)
    # every B must integrate along the same path: seeded baselines (UNI's unlearning, blur) may not move with B
    assert np.allclose(summary["baseline_drift"], 0.0)
    # an independent estimate of one point: ranks by scipy.stats.rankdata, correlation by numpy
    from scipy.stats import rankdata

    a2 = datasets[0].sel(xai_method="uni", image="chelsea")["attribution"].values.ravel()
    a8 = datasets[2].sel(xai_method="uni", image="chelsea")["attribution"].values.ravel()
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
    expected = ds["riemann_stability_spearman"].where(flag).sel(xai_method="uni", steps=2).mean()
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


def ablation_stores(folder: Path, settings=("ig:black", "linf_zero", "l2_zero"), images=("chelsea", "coffee")):
    """Study stores of fig_uni_ablation's layout with made-up numbers: for drawing, not for results."""
    rng = np.random.default_rng(0)
    keys = ("seed_spearman_min", "seed_spearman_mean", "noise1_spearman", "noise8_spearman", "fc_ratio",
            "completeness_error", "paper_monotonicity", "monotone_fraction", "mufidelity", "seconds")
    for name in settings:
        ds = xr.Dataset({k: ("image", rng.random(len(images))) for k in keys}, coords={"image": list(images)})
        ds["attribution"] = (("image", "channel", "y", "x"), rng.normal(size=(len(images), 3, 8, 8)))
        ds["input"] = (("image", "channel", "y", "x"), rng.random((len(images), 3, 8, 8)))
        ds.attrs = {"setting": name}
        ds.to_zarr(folder / f"{name.replace(':', '_')}.zarr", mode="w")
    return folder


def test_fig_uni_ablation_draws_its_stores(tmp_path, drawn):
    mod = script("fig_uni_ablation")
    _, summary = mod.draw(ablation_stores(tmp_path / "stores"), tmp_path)
    assert list(summary["setting"]) == ["ig:black", "linf_zero", "l2_zero"]
    assert_drawn(tmp_path, "fig_uni_ablation", table=True)
    assert layout_faults(drawn[0]) == []


def test_no_arguments_computes_and_caches_with_the_real_model(tmp_path, capsys, monkeypatch, drawn):
    """The fresh-clone path, kept small: the embedded EfficientNet-Lite0 on one photograph, two
    steps; an unregistered method is skipped and named; a second call reuses the cached store."""
    fig2 = script("fig2_attributions")
    argv = ["--cache", str(tmp_path / "runs"), "--out-dir", str(tmp_path / "out"), "--images", "chelsea",
            "--methods", "ig:black,no_such_method", "--steps", "2", "--no-progress"]
    assert fig2.main(argv) == 0
    out = capsys.readouterr().out
    assert "MISSING methods (not registered, skipped): no_such_method" in out
    ds = xr.open_zarr(tmp_path / "runs" / "methods.zarr")
    assert list(ds.xai_method.values) == ["ig:black"] and bool(ds["done"].all())
    assert int(ds["target"].sel(model="efficientnet_lite0", image="chelsea")) == 285  # Egyptian cat: real weights
    assert_drawn(tmp_path / "out", "fig2_attributions")
    assert "class 285: Egyptian cat" in drawn[0].axes[0].get_ylabel()  # an ImageNet model's rows name the class

    def refuse(*a, **k):
        raise AssertionError("a finished cached store must not be recomputed")

    monkeypatch.setattr(_store_io, "compute_store", refuse)
    assert fig2.main(argv) == 0


def test_fig_uni_ablation_recompute_removes_only_its_own_cache(tmp_path):
    """--recompute deletes a cached study store only when its attributes show the script wrote it."""
    mod = script("fig_uni_ablation")
    user = tmp_path / "uni.zarr"
    user.mkdir()
    (user / "thesis.txt").write_text("mine")
    (user / ".zattrs").write_text('{"title": "not a study store"}')
    with pytest.raises(SystemExit, match="not a study store this script wrote"):
        mod._remove_own_cache(user)
    assert (user / "thesis.txt").read_text() == "mine"
    link = tmp_path / "link.zarr"
    own = tmp_path / "own.zarr"
    xr.Dataset(attrs={"setting": "s", "seeds_compared": 2, "params": "{}"}).to_zarr(own, zarr_format=2)
    link.symlink_to(own)
    with pytest.raises(SystemExit):
        mod._remove_own_cache(link)
    assert own.exists()
    mod._remove_own_cache(own)
    assert not own.exists()


def test_method_specs_are_read_by_the_package():
    """--methods splits as `uni-lab run` does (a wrapper's parentheses stay whole); a spec naming a
    plugin that is not registered is skipped, any other bad spec stops the script with one line."""
    args = _store_io.parser("t", "s.zarr").parse_args(["--methods", "smoothgrad(ig:black),no_such,ig:blur"])
    specs = _store_io.method_specs(args)
    assert specs == ["smoothgrad(ig:black)", "no_such", "ig:blur"]
    assert _store_io.registered_methods(specs) == (["smoothgrad(ig:black)", "ig:blur"], ["no_such"])
    with pytest.raises(SystemExit, match="explainer 'saliency' takes no baseline"):
        _store_io.registered_methods(["saliency:black"])
