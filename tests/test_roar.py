"""figures/fig_roar.py end to end on a few digits: its own store, every method's curve and the random control."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import xarray as xr

REPO = Path(__file__).resolve().parents[1]


def test_roar_computes_its_store_and_draws_from_it(tmp_path):
    cmd = [sys.executable, str(REPO / "figures" / "fig_roar.py"), "--cache", str(tmp_path), "--out-dir",
           str(tmp_path / "out"), "--limit", "150", "--methods", "saliency,grad_cam", "--epochs", "1",
           "--formats", "png"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    ds = xr.open_zarr(tmp_path / "roar.zarr")
    assert list(ds.method.values) == ["saliency", "grad_cam", "random"]
    assert np.isfinite(ds.accuracy.values).all() and ds.attribution.shape == (2, 150, 3, 32, 32)
    assert (tmp_path / "out" / "fig_roar.png").exists() and "random_minus_method" in out.stdout
    # redrawing from the store computes nothing; other settings against the cache are refused
    again = subprocess.run(cmd[:2] + ["--store", str(tmp_path / "roar.zarr"), "--out-dir", str(tmp_path / "o2"),
                                      "--formats", "png"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "retrained" not in again.stdout
    other = subprocess.run(cmd[:-4] + ["--epochs", "2", "--formats", "png"], capture_output=True, text=True, timeout=300)
    assert other.returncode != 0 and "--recompute" in other.stderr
