"""A store's results are trusted only where they can be: a resume checks the chunks its done items rely
on, evaluate writes only into stores of its own schema, a repair survives malformed metadata, and every
error is one line (control characters escaped), even from a plugin that calls ``sys.exit``."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import zarr
from store_runs import PLUGIN, make_images

from uni_lab.check import check_store
from uni_lab.store import Store


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "uni_lab", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _run(images, out, *extra):
    return _cli("run", "--plugins", PLUGIN, "--images", images, "--model", "tiny16", "--methods", "saliency,ig:black",
                "--steps", "2", "--device", "cpu", "--no-progress", "--no-seed-stability", "--out", out, *extra)


def _one_line_error(proc, *words):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("trust") / "imgs", n=3)


@pytest.fixture(scope="module")
def store(images, tmp_path_factory):
    out = tmp_path_factory.mktemp("trust_store") / "s.zarr"
    assert _run(images, out).returncode == 0
    return out


def _copy(store, tmp_path):
    import shutil

    out = tmp_path / "s.zarr"
    shutil.copytree(store, out)
    return out


@pytest.mark.parametrize("damage", ["garbage", "empty", "missing"])
def test_resume_recomputes_items_of_a_damaged_chunk(images, store, tmp_path, damage):
    out = _copy(store, tmp_path)
    chunk = sorted(p for p in (out / "attribution").iterdir() if not p.name.startswith("."))[0]
    {"garbage": lambda: chunk.write_bytes(b"not a chunk"), "empty": lambda: chunk.write_bytes(b""),
     "missing": chunk.unlink}[damage]()
    p = _run(images, out)
    assert p.returncode == 0, p.stderr
    assert "damaged chunks of attribution" in p.stderr and "recomputed" in p.stderr
    assert "0 items computed" not in p.stdout
    report = check_store(out)
    assert report.consistent and not report.unreadable
    assert bool(Store(out).done().all())


def test_evaluate_refuses_a_store_of_another_schema(store, tmp_path):
    out = _copy(store, tmp_path)
    g = zarr.open_group(str(out), mode="r+")
    g.attrs["uni_lab_schema"] = 1
    zarr.consolidate_metadata(str(out), zarr_format=2)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _one_line_error(_cli("evaluate", out, "--metrics", "mufidelity"), "schema version 1")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("content", ["null", "[]", '{"metadata": null}'])
def test_repair_rebuilds_malformed_consolidated_metadata(store, tmp_path, content):
    out = _copy(store, tmp_path)
    (out / ".zmetadata").write_text(content)
    p = _cli("check", "--repair", out)
    assert p.returncode == 0 and "rebuilt damaged metadata: .zmetadata" in p.stdout, p.stderr
    assert json.loads((out / ".zmetadata").read_text())["metadata"]
    assert _cli("check", out).returncode == 0


def test_plugin_that_exits_while_imported_is_an_error(images, tmp_path):
    plugin = tmp_path / "quits.py"
    plugin.write_text("import sys\nsys.exit(0)\n")
    out = tmp_path / "s.zarr"
    _one_line_error(_cli("run", "--plugins", plugin, "--images", images, "--out", out), "sys.exit(0)", "quits.py")
    assert not out.exists()


def test_control_characters_in_names_stay_on_one_line(tmp_path):
    forged = "x.png\nuni-lab run: store written, 0 problems"
    p = _cli("run", "--images", forged, "--out", tmp_path / "s.zarr")
    _one_line_error(p, "\\n")
    assert not (tmp_path / "s.zarr").exists()


def test_resume_with_an_edited_plugin_says_so_by_name(images, tmp_path):
    plugin = tmp_path / "mine.py"
    plugin.write_text(PLUGIN.read_text())
    out = tmp_path / "s.zarr"
    args = ("run", "--plugins", plugin, "--images", images, "--model", "tiny16", "--methods", "saliency", "--device",
            "cpu", "--no-progress", "--no-seed-stability", "--out", out)
    assert _cli(*args).returncode == 0
    same = _cli(*args)
    assert same.returncode == 0 and "changed since" not in same.stderr
    plugin.write_text(PLUGIN.read_text() + "\n# edited\n")
    p = _cli(*args)
    assert p.returncode == 0, p.stderr
    assert "model:tiny16" in p.stderr and "changed since the store was written" in p.stderr
    changes = json.loads(Store(out).open().attrs["uni_lab_plugin_changes"])
    assert list(changes[0]) == ["model:tiny16"]


def test_a_methods_stored_name_says_its_path(images, tmp_path):
    out = tmp_path / "s.zarr"
    p = _run(images, out, "--set", "ig.path=blur")
    assert p.returncode == 0, p.stderr
    assert [str(m) for m in Store(out).open().xai_method.values] == ["saliency", "ig:black@blur"]


def test_input_size_on_the_command_line(tmp_path):
    out = tmp_path / "s.zarr"
    p = _cli("run", "--images", "chelsea", "--methods", "saliency", "--input-size", "96,128", "--device", "cpu",
             "--no-progress", "--out", out)
    assert p.returncode == 0, p.stderr
    ds = Store(out).open()
    config = json.loads(ds.attrs["uni_lab_config"])
    assert ds.attribution.shape[-2:] == (96, 128) and config["size"] == [96, 128]
    assert config["models"]["efficientnet_lite0"]["input_size"] == [96, 128]


@pytest.mark.parametrize("value", ["abc", "0", "5,5,5", "5000", ""])
def test_bad_input_size_is_one_line(tmp_path, value):
    out = tmp_path / "s.zarr"
    _one_line_error(_cli("run", "--images", "chelsea", "--input-size", value, "--out", out), "--input-size")
    assert not out.exists()
