"""Kill -9 the runner at several points, rerun, and get the store an uninterrupted run writes.

The runs are subprocesses of ``uni-lab run`` on a tiny seeded model (``tests/tiny_plugin.py``,
passed with ``--plugins``) and six 20×20 images, so each takes seconds. The plugin kills its
own process with SIGKILL at a chosen gradient-enabled forward pass (mid-computation) or chunk
write (between an item's variables, or half-way into a chunk file); one run is also killed
from outside at a random moment. Per-image seeds make ``ig:uniform`` and ``uni`` draw the same
noise whichever run computes an image.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

import uni_lab
from uni_lab.check import check_store
from uni_lab.commands.run import import_plugins
from uni_lab.store import Store

PLUGIN = Path(__file__).with_name("tiny_plugin.py")
METHODS = "ig:black,uni,ig:uniform"
ARGS = ["--model", "tiny16", "--methods", METHODS, "--steps", "4", "--set", "uni.pgd_steps=3", "--device", "cpu",
        "--seed", "3", "--no-progress"]
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


def run_cli(images: Path, out: Path, batch_size: int, fault: str = "", wait: bool = True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "UNI_LAB_TEST_FAULT": fault}
    cmd = [sys.executable, "-m", "uni_lab", "run", "--plugins", str(PLUGIN), "--images", str(images),
           "--out", str(out), "--batch-size", str(batch_size), *ARGS]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def run_inprocess(images: Path, out: Path, batch_size: int) -> None:
    """The uninterrupted reference, in this process with one thread like the subprocesses."""
    import_plugins([str(PLUGIN)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sets = [a for k, a in zip(ARGS, ARGS[1:]) if k == "--set"]
        uni_lab.run(models="tiny16", images=[str(images)], methods=METHODS.split(","), steps=4, sets=sets,
                    device="cpu", seed=3, out=out, batch_size=batch_size, progress=False)
    finally:
        torch.set_num_threads(threads)


def values(path: Path) -> dict[str, np.ndarray]:
    ds = xr.open_zarr(path)
    return {k: ds[k].values for k in ds.data_vars}


def assert_same_store(path: Path, ref: Path, bitwise: bool) -> None:
    got, want = values(path), values(ref)
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


def done_count(path: Path) -> int:
    return int(Store(path).done().sum())


def assert_killed(proc) -> None:
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])


def assert_not_recomputed(before: dict, path: Path) -> None:
    """Items done before a rerun keep their wall-time stamp: the rerun did not compute them again."""
    after = values(path)
    was_done = before["done"]
    assert np.array_equal(after["seconds"][was_done], before["seconds"][was_done])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("resume") / "imgs")


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    run_inprocess(images, out, batch_size=1)
    return out


def test_kill_during_compute_write_and_torn_file_then_resume_bitwise(images, reference, tmp_path):
    out = tmp_path / "s.zarr"
    history = []
    # 1. SIGKILL inside a forward/backward pass, a few items into the first method.
    p = run_cli(images, out, 1, fault="compute:5")
    assert_killed(p)
    history.append(done_count(out))
    assert 0 < history[-1] < TOTAL
    assert check_store(out).consistent

    # 2. SIGKILL between an item's variables: its data is partly there, its done flag is not.
    before = values(out)
    p = run_cli(images, out, 1, fault="write:26")
    assert_killed(p)
    history.append(done_count(out))
    report = check_store(out)
    assert report.consistent and report.partial, report.format()
    assert history[-1] > history[-2]
    assert_not_recomputed(before, out)

    # 3. SIGKILL half-way through writing a chunk file: zarr writes chunks to a temporary file
    #    and renames it, so the torn bytes stay in a *.partial file and the store stays sound.
    before = values(out)
    p = run_cli(images, out, 1, fault="torn:26")
    assert_killed(p)
    history.append(done_count(out))
    report = check_store(out)
    assert report.consistent and report.stray, report.format()
    assert history[-1] > history[-2]
    assert_not_recomputed(before, out)

    # 4. Rerun to the end: it computes exactly the items still missing.
    before = values(out)
    p = run_cli(images, out, 1)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"({TOTAL - history[-1]} items computed, {history[-1]} already done)" in p.stdout
    assert_not_recomputed(before, out)
    report = check_store(out)
    assert report.consistent and report.done == TOTAL and not report.missing and not report.partial
    assert_same_store(out, reference, bitwise=True)


def test_kill_from_outside_then_resume_with_other_batches(images, tmp_path):
    """``kill -9`` from outside at whatever moment the run has reached; batches of 3 are then
    composed differently by the rerun, so values agree within RTOL/ATOL (and bitwise where
    the batch was the same, which the tolerance check includes)."""
    ref = tmp_path / "ref3.zarr"
    run_inprocess(images, ref, batch_size=3)
    out = tmp_path / "s.zarr"
    proc = run_cli(images, out, 3, fault="slow:0.02", wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if Store(out).exists() and done_count(out) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = done_count(out)
    assert 4 <= killed_at < TOTAL
    assert check_store(out).consistent

    before = values(out)
    p = run_cli(images, out, 3)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"({TOTAL - killed_at} items computed, {killed_at} already done)" in p.stdout
    assert_not_recomputed(before, out)
    assert_same_store(out, ref, bitwise=False)


def test_resume_refuses_changed_image(images, tmp_path):
    """An image file edited between runs would mix two inputs in one store: refused by name."""
    import shutil

    from PIL import Image

    imgs = tmp_path / "imgs"
    shutil.copytree(images, imgs)
    out = tmp_path / "s.zarr"
    run_inprocess(imgs, out, batch_size=2)
    Store(out).reset(items=[("tiny16", "uni", "im5"), ("tiny16", "uni", "im1")])  # as if killed before them
    Image.new("RGB", (20, 20), (10, 200, 30)).save(imgs / "im5.png")
    with pytest.raises(uni_lab.StoreError, match=r"other pixels for images \['im5'\]"):
        run_inprocess(imgs, out, batch_size=2)
    assert done_count(out) == TOTAL - 2  # nothing was written
