"""Runs of ``uni-lab run`` on the tiny plugin model, shared by the resume, torchrun and bad-input tests.

The model (``tiny16``) and the fault injection live in ``tests/tiny_plugin.py``; here are the
command line, an in-process reference run, and store comparison at a stated tolerance.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import xarray as xr

import uni_lab
from uni_lab.commands.run import import_plugins

PLUGIN = Path(__file__).with_name("tiny_plugin.py")
METHODS = "ig:black,uni,ig:uniform"
ARGS = ["--model", "tiny16", "--methods", METHODS, "--steps", "4", "--set", "uni.pgd_steps=3", "--device", "cpu",
        "--seed", "3", "--no-progress", "--no-seed-stability"]
TOTAL = 6 * 3
# Batches of different composition go through differently shaped convolutions; on this model
# that moves values by ~1e-8 (measured), far inside this stated tolerance.
RTOL, ATOL = 1e-5, 1e-6


def make_images(folder: Path, n: int = 6) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray((rng.random((20, 20, 3)) * 255).astype("uint8")).save(folder / f"im{i}.png")
    return folder


def run_cli(images: Path, out: Path, batch_size: int, fault: str = "", wait: bool = True, launcher=(), extra=()):
    """``python [launcher] -m uni_lab run`` on the tiny model, one thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "UNI_LAB_TEST_FAULT": fault}
    args = list(ARGS)
    if "--methods" in extra and "uni" not in extra[extra.index("--methods") + 1].split(","):
        args = [a for a in args if a not in ("--set", "uni.pgd_steps=3")]  # a --set for no method is refused
    cmd = [sys.executable, *(launcher or ["-m"]), "uni_lab", "run", "--plugins", str(PLUGIN), "--images", str(images),
           "--out", str(out), "--batch-size", str(batch_size), *args, *extra]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def run_inprocess(images: Path, out: Path, batch_size: int, **kwargs):
    """The uninterrupted reference, in this process with one thread like the subprocesses."""
    import_plugins([str(PLUGIN)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sets = [a for k, a in zip(ARGS, ARGS[1:]) if k == "--set"]
        # no seed-stability evaluation: shards and ranks skip it, and their stores are compared with this one
        kwargs.setdefault("seed_stability", False)
        return uni_lab.run(models="tiny16", images=[str(images)], methods=METHODS.split(","), steps=4, sets=sets,
                           device="cpu", seed=3, out=out, batch_size=batch_size, progress=False, **kwargs)
    finally:
        torch.set_num_threads(threads)


def values(path: Path, images: list[str] | None = None) -> dict[str, np.ndarray]:
    ds = xr.open_zarr(path)
    if images is not None:
        ds = ds.sel(image=images)
    return {k: ds[k].values for k in ds.data_vars}


def assert_same_store(path: Path, ref: Path, bitwise: bool, images: list[str] | None = None) -> None:
    """Every variable but wall time equal (bitwise, or within RTOL/ATOL), on ``images`` or all."""
    got, want = values(path, images), values(ref, images)
    assert set(got) == set(want)
    for name in want:
        if name == "seconds":  # wall time, not a result
            continue
        a, b = got[name], want[name]
        if bitwise or a.dtype.kind != "f":
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name
        else:
            assert np.array_equal(np.isnan(a), np.isnan(b)), name
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=name)
