"""uni_lab deletes only what it can prove it wrote: ``--overwrite``, odd ``--out`` paths, and clean-up
after a failed run, with real files and real processes (``uni-lab run`` on the tiny plugin model)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from store_runs import PLUGIN, make_images, run_cli

from uni_lab.check import check_store
from uni_lab.store import Store


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("own") / "imgs", n=3)


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(folder.rglob("*"))}


def _refused(proc, *words):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def _cli(images, out, *extra, cwd=None):
    cmd = [sys.executable, "-m", "uni_lab", "run", "--plugins", str(PLUGIN), "--images", str(images), "--model",
           "tiny16", "--methods", "saliency", "--device", "cpu", "--no-progress", "--no-seed-stability",
           "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_overwrite_refuses_a_users_folder(images, tmp_path):
    victim = tmp_path / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "thesis.txt").write_text("four years")
    (victim / "sub" / "data.csv").write_text("1,2")
    before = _snapshot(tmp_path)
    _refused(_cli(images, victim, "--overwrite"), "not a uni_lab store", "victim")
    assert _snapshot(tmp_path) == before


def test_overwrite_refuses_a_store_holding_a_users_file(images, tmp_path):
    out = tmp_path / "s.zarr"
    assert _cli(images, out).returncode == 0
    (out / "notes.txt").write_text("mine")
    (out / "attribution" / "keep.me").write_text("mine too")
    before = _snapshot(tmp_path)
    _refused(_cli(images, out, "--overwrite", "--seed", "7"), "did not write", "notes.txt")
    assert _snapshot(tmp_path) == before


def test_overwrite_replaces_its_own_store_and_an_empty_folder(images, tmp_path):
    out = tmp_path / "s.zarr"
    assert _cli(images, out).returncode == 0
    p = _cli(images, out, "--overwrite", "--seed", "7")
    assert p.returncode == 0, p.stderr
    assert json.loads(Store(out).open().attrs["uni_lab_config"])["seed"] == 7
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli(images, empty, "--overwrite").returncode == 0 and Store(empty).exists()


@pytest.mark.parametrize("case", ["empty", "dot", "parent", "link", "dangling", "fifo"])
def test_odd_out_is_refused_before_anything(images, tmp_path, case):
    work = tmp_path / "work"
    work.mkdir()
    (work / "thesis.txt").write_text("x")
    target = tmp_path / "target"
    target.mkdir()
    (target / "paper.tex").write_text("y")
    out = {"empty": "", "dot": ".", "parent": "..", "link": "lnk", "dangling": "dang", "fifo": "ff"}[case]
    if case == "link":
        os.symlink(target, work / "lnk")
    if case == "dangling":
        os.symlink(tmp_path / "nowhere", work / "dang")
    if case == "fifo":
        os.mkfifo(work / "ff")
    before = _snapshot(tmp_path)
    _refused(_cli(images, out, "--overwrite", cwd=work), "--out")
    assert _snapshot(tmp_path) == before


def test_a_second_run_with_overwrite_leaves_a_running_store_alone(images, tmp_path):
    """Run A writes the store (slowly); run B, ``--overwrite`` with another seed, is refused and
    removes nothing on its way out; A then finishes a sound store labelled with its own seed."""
    out = tmp_path / "s.zarr"
    a = run_cli(images, out, 1, fault="slow:1.5", wait=False)  # ~40 s: B starts and ends while A writes
    deadline = time.time() + 120
    while time.time() < deadline and not Store(out).exists():
        time.sleep(0.05)
    assert Store(out).exists() and a.poll() is None
    b = run_cli(images, out, 1, extra=["--overwrite", "--seed", "9"])
    _refused(b, "being written by another uni-lab process")
    assert a.poll() is None, "A finished before B tried: the test proves nothing"
    assert Store(out).exists()
    a.communicate(timeout=600)
    assert a.returncode == 0, a.stderr[-2000:]
    assert check_store(out).consistent
    assert bool(Store(out).done().all())
    assert json.loads(Store(out).open().attrs["uni_lab_config"])["seed"] == 3
    assert not [p for p in tmp_path.iterdir() if ".creating-" in p.name]


def test_failed_first_batch_removes_the_store_it_created(tmp_path):
    """``boom`` fails on the white image of the first batch: the store this run created is removed, so
    the fixed command is not refused as another configuration (a store held by another process is
    never removed: see the test above)."""
    from PIL import Image

    folder = tmp_path / "white"
    folder.mkdir()
    Image.new("RGB", (20, 20), "white").save(folder / "w.png")
    out = tmp_path / "s.zarr"
    p = _cli(folder, out, "--methods", "boom")
    assert p.returncode == 2 and "boom: white image" in p.stderr, p.stderr
    assert not out.exists() and sorted(q.name for q in tmp_path.iterdir()) == ["white"]
    assert _cli(folder, out, "--methods", "saliency").returncode == 0
