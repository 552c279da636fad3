"""Kill -9 the runner at several points, rerun, and get the store an uninterrupted run writes.

The runs are subprocesses of ``uni-lab run`` on a tiny seeded model (``tests/tiny_plugin.py``,
passed with ``--plugins``) and six 20×20 images, so each takes seconds. The plugin kills its
own process with SIGKILL at a chosen gradient-enabled forward pass (mid-computation) or chunk
write (between an item's variables, or half-way into a chunk file); one run is also killed
from outside at a random moment. Per-image seeds make ``ig:uniform`` and ``uni`` draw the same
noise whichever run computes an image.
"""
from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest
from store_runs import TOTAL, assert_same_store, make_images, run_cli, run_inprocess, values

import uni_lab
from uni_lab.check import check_store
from uni_lab.store import Store


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
    # 1. SIGKILL inside a forward/backward pass. Finished items may still sit in the background
    #    writer's queue, or be held until their map chunk (three images here) is complete: lost,
    #    to be recomputed.
    p = run_cli(images, out, 1, fault="compute:19")
    assert_killed(p)
    history.append(done_count(out))
    assert history[-1] < TOTAL
    assert check_store(out).consistent

    # 2. SIGKILL while the items of a chunk are being written (their variables' writes overlap,
    #    so which of the others reached the disk varies): their done flags are never set. Each
    #    method's chunk of three images is written once it is complete; the third trace write
    #    is the third method's, so the two chunks before it are done.
    before = values(out)
    p = run_cli(images, out, 1, fault="write:trace_prob:3")
    assert_killed(p)
    history.append(done_count(out))
    report = check_store(out)
    assert report.consistent, report.format()
    assert history[-1] == history[-2] + 6  # two chunks of three items written before the third one's trace
    assert_not_recomputed(before, out)

    # 3. SIGKILL half-way through writing a chunk file: zarr writes chunks to a temporary file
    #    and renames it, so the torn bytes stay in a *.partial file and the store stays sound. The
    #    done flags of a block share one chunk file: the third write of it is torn, after two
    #    chunks of three items.
    before = values(out)
    p = run_cli(images, out, 1, fault="torn:done:3")  # the third chunk's done flags, torn
    assert_killed(p)
    history.append(done_count(out))
    report = check_store(out)
    assert report.consistent and report.stray and report.partial, report.format()
    assert history[-1] == history[-2] + 6
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
