"""Schema 3 names the methods dim ``xai_method``, so plain xarray selects on it; stores of schema 2
(dim ``method``) still open, are refused for writing, and ``uni-lab migrate`` rewrites them in place.

Every test reads or copies ``tests/data/schema2_store.zarr``, a real store of schema 2 written
before the rename (``tests/data/README.md`` says how).
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest
import xarray as xr

import uni_lab
from uni_lab import migrate
from uni_lab.check import check_store
from uni_lab.cli import main

OLD = pathlib.Path(__file__).parent / "data" / "schema2_store.zarr"
PLUGIN = pathlib.Path(__file__).with_name("tiny_plugin.py")


def _old() -> xr.Dataset:
    """The fixture as plain xarray reads it, under schema 3's names."""
    ds = xr.open_zarr(OLD).load()
    assert ds.attrs["uni_lab_schema"] == 2 and "method" in ds.dims  # the fixture is what it claims to be
    return ds.rename(method="xai_method")


def _copy(tmp_path, name="s.zarr", link=False) -> pathlib.Path:
    """A copy of the fixture; ``link``: hard links, enough for a migration, which replaces files and never
    writes into one."""
    out = tmp_path / name
    shutil.copytree(OLD, out, copy_function=os.link if link else shutil.copy2)
    return out


def _files(root) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in pathlib.Path(root).rglob("*") if p.is_file()}


def _assert_same_values(ds: xr.Dataset, old: xr.Dataset) -> None:
    assert set(ds.variables) == set(old.variables)
    for name in old.variables:
        assert ds[name].dims == old[name].dims, name
        xr.testing.assert_identical(ds[name].reset_coords(drop=True), old[name].reset_coords(drop=True))


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line(err: str, *words) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], lines[0]


def test_plain_xarray_selects_a_method_and_an_image():
    with pytest.warns(UserWarning):
        ds = uni_lab.open_store(OLD)
    one = ds.sel(xai_method="uni", image="chelsea").attribution
    assert one.dims == ("model", "channel", "y", "x")
    np.testing.assert_array_equal(one.values, _old()["attribution"].sel(xai_method="uni", image="chelsea").values)


def test_open_store_reads_schema_2_under_the_new_names_with_one_notice():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = uni_lab.open_store(OLD, lazy=False)
    notes = [str(w.message) for w in caught]
    assert len(notes) == 1 and "schema 2" in notes[0] and f"uni-lab migrate {OLD}" in notes[0], notes
    assert ds.attrs["uni_lab_schema"] == 3 and "method" not in ds.dims
    _assert_same_values(ds, _old())
    assert ds.uni.done_methods() == ["uni", "saliency"]


def test_the_accessor_keeps_method_as_an_alias(capsys):
    ds = _old()
    via_alias = ds.attribution.uni.sel(method="saliency", image="coffee")
    xr.testing.assert_identical(via_alias, ds.attribution.sel(xai_method="saliency", image="coffee"))
    xr.testing.assert_identical(ds.uni.sel(method="uni"), ds.sel(xai_method="uni"))
    with pytest.raises(uni_lab.InputError, match="alias"):
        ds.uni.sel(method="uni", xai_method="uni")


def test_migrate_rewrites_metadata_only_and_plain_xarray_reads_schema_3(tmp_path, capsys):
    out = _copy(tmp_path)
    before = _files(out)
    rc, printed, err = _cli(capsys, "migrate", out)
    assert rc == 0 and "rewritten to schema 3" in printed and not err, err
    after = _files(out)
    chunks = {k for k in before if not k.name.startswith(".") and k.parts[0] != "method"}
    assert chunks and all(after[k] == before[k] for k in chunks)  # no data chunk touched
    assert not (out / "method").exists() and not any(p.name.endswith(".partial") for p in out.rglob("*"))
    ds = xr.open_zarr(out).load()  # plain xarray, consolidated metadata, no uni_lab reader in between
    assert ds.attrs["uni_lab_schema"] == 3 and json.loads((out / ".zattrs").read_text())["uni_lab_schema"] == 3
    _assert_same_values(ds, _old())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a schema-3 store opens without a notice
        uni_lab.open_store(out)
    report = check_store(out)
    assert report.consistent and report.done == report.total == 4
    rc, printed, _ = _cli(capsys, "migrate", out)  # idempotent
    assert rc == 0 and "already schema 3" in printed and _files(out) == after


def test_a_migrated_store_is_evaluated_like_a_new_one(tmp_path):
    out = _copy(tmp_path)
    migrate.migrate_store(out)
    p = subprocess.run([sys.executable, "-m", "uni_lab", "evaluate", str(out), "--plugins", str(PLUGIN),
                        "--metrics", "mufidelity", "--set", "mufidelity.n_subsets=4", "--device", "cpu",
                        "--no-progress"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    ds = uni_lab.open_store(out)
    assert ds["mufidelity"].dims == ("model", "xai_method", "image") and bool(ds["done_mufidelity"].all())


@pytest.mark.parametrize("command", [
    ["evaluate", "--metrics", "deletion", "--recompute"],
    ["run", "--plugins", str(PLUGIN), "--model", "tiny16", "--images", "chelsea,coffee", "--methods", "uni,saliency",
     "--steps", "4", "--device", "cpu", "--no-progress", "--out"],
])
def test_writing_into_a_schema_2_store_is_refused_and_names_the_command(tmp_path, capsys, command):
    out = _copy(tmp_path)
    before = _files(out)
    argv = [*command, out] if command[0] == "run" else [command[0], out, *command[1:]]
    rc, printed, err = _cli(capsys, *argv)
    assert rc == 2, err
    _one_line(err, "schema 2", f"uni-lab migrate {out}", "nothing was written")
    assert printed == ""  # no "store: ..." line as if it had started
    assert _files(out) == before


def test_check_names_the_command_for_a_schema_2_store(tmp_path, capsys):
    out = _copy(tmp_path)
    rc, printed, _ = _cli(capsys, "check", out)
    assert rc == 1 and f"`uni-lab migrate {out}`" in printed.splitlines()[-1]


def _interrupt_at(k: int, monkeypatch):
    """Stop the k-th file replacement or removal of a migration, as a kill would: nothing after it runs."""
    count = {"n": 0}
    replace, unlink, rmdir = os.replace, pathlib.Path.unlink, pathlib.Path.rmdir

    def step(fn):
        def wrapped(*args, **kwargs):
            count["n"] += 1
            if count["n"] == k:
                raise KeyboardInterrupt  # not an Exception: nothing in uni_lab catches it
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(os, "replace", step(replace))
    monkeypatch.setattr(pathlib.Path, "unlink", step(unlink))
    monkeypatch.setattr(pathlib.Path, "rmdir", step(rmdir))
    return count


def test_a_migration_stopped_at_any_step_reads_whole_and_a_rerun_finishes_it(tmp_path, monkeypatch, capsys):
    old, fixture = _old(), _files(OLD)
    with monkeypatch.context() as m:
        steps = _interrupt_at(0, m)
        migrate.migrate_store(_copy(tmp_path, "count.zarr"))
    total = steps["n"]
    dims, methods = {v: old[v].dims for v in old.variables}, list(old.xai_method.values)
    assert total > 40  # one per metadata file, plus the old coordinate's removal
    for k in range(1, total + 1):
        out = _copy(tmp_path, f"k{k}.zarr", link=True)
        with monkeypatch.context() as m:
            _interrupt_at(k, m)
            with pytest.raises(KeyboardInterrupt):
                migrate.migrate_store(out)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seen = uni_lab.open_store(out)  # a reader sees one whole store (data chunks are never touched)
        assert {v: seen[v].dims for v in seen.variables} == dims and list(seen.xai_method.values) == methods, k
        assert migrate.state(out) == "half", k
        if k == total // 2:
            assert "migration to schema 3 was interrupted" in check_store(out).problems[0]
        rc, printed, err = _cli(capsys, "migrate", out)
        assert rc == 0 and "interrupted migration is finished" in printed, (k, err)
        assert migrate.state(out) == "current" and not (out / "method").exists()
        assert xr.open_zarr(out).attrs["uni_lab_schema"] == 3
    _assert_same_values(uni_lab.open_store(out.with_name("count.zarr"), lazy=False), old)
    assert _files(OLD) == fixture  # the hard-linked fixture was never written into


KILL = """
import os, signal, sys
from uni_lab import migrate
count, replace = [0], os.replace
def killed(*a):
    count[0] += 1
    if count[0] == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
    return replace(*a)
os.replace = killed
migrate.migrate_store(sys.argv[1])
"""


@pytest.mark.parametrize("where", ["array metadata", "after the commit point"])
def test_kill_9_halfway_then_rerun(tmp_path, monkeypatch, capsys, where):
    replaced, replace = [], os.replace
    with monkeypatch.context() as m:
        m.setattr(os, "replace", lambda *a: replaced.append(a[1]) or replace(*a))
        migrate.migrate_store(_copy(tmp_path, "count.zarr"))
    assert pathlib.Path(replaced[-2]).name == ".zmetadata"  # the commit point, then the root's attributes
    k = 20 if where == "array metadata" else len(replaced)
    out = _copy(tmp_path)
    p = subprocess.run([sys.executable, "-c", KILL, str(out), str(k)], capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert migrate.state(out) == "half"
    rc, printed, err = _cli(capsys, "migrate", out)
    assert rc == 0, err
    _assert_same_values(xr.open_zarr(out).load(), _old())


def _newer(tmp_path):
    out = _copy(tmp_path)
    for name in (".zattrs", ".zmetadata"):
        meta = json.loads((out / name).read_text())
        (meta["metadata"][".zattrs"] if name == ".zmetadata" else meta)["uni_lab_schema"] = 4
        (out / name).write_text(json.dumps(meta))
    return out


def _foreign(tmp_path):
    out = _copy(tmp_path)
    (out / "notes.txt").write_text("mine")
    return out


def _fifo(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    return tmp_path / "pipe"


def _link(tmp_path):
    (tmp_path / "link").symlink_to(_copy(tmp_path), target_is_directory=True)
    return tmp_path / "link"


def _plain(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "a.txt").write_text("a")
    return tmp_path / "folder"


@pytest.mark.parametrize("make, words", [
    (lambda t: t / "absent.zarr", ["does not exist"]),
    (_plain, ["not a uni_lab store"]),
    (_fifo, ["not a folder"]),
    (_link, ["symbolic link"]),
    (_newer, ["schema version 4", "upgrade uni_lab"]),
    (_foreign, ["did not write", "notes.txt", "nothing was changed"]),
    (lambda t: "", ["store path is empty"]),  # not the working folder
])
def test_migrate_refuses_in_one_line_and_changes_nothing(tmp_path, capsys, make, words):
    path = make(tmp_path)
    before = _files(tmp_path)
    rc, _, err = _cli(capsys, "migrate", path)
    assert rc == 2
    _one_line(err, *words)
    assert _files(tmp_path) == before


def test_a_symlinked_coordinate_folder_is_never_emptied(tmp_path, capsys):
    # a folder where a killed migration would leave the new coordinate, but a link to a user's files
    out = _copy(tmp_path)
    user = tmp_path / "user"
    user.mkdir()
    (user / "0").write_bytes(b"mine")
    (out / "xai_method").symlink_to(user, target_is_directory=True)
    rc, _, err = _cli(capsys, "migrate", out)
    assert rc == 2
    _one_line(err, "symbolic link", "nothing was removed")
    assert (user / "0").read_bytes() == b"mine"


def _user_file_in_coordinate(out, user):
    (out / "method" / "notes.txt").write_text("mine")


def _chunk_named_link_in_coordinate(out, user):
    (out / "method" / "0").unlink()
    (out / "method" / "0").symlink_to(user / "data")  # named like a chunk, but the user's file


def _folder_in_coordinate(out, user):
    (out / "method" / "sub").mkdir()
    (out / "method" / "sub" / "data").write_text("mine")


@pytest.mark.parametrize("plant", [_user_file_in_coordinate, _chunk_named_link_in_coordinate, _folder_in_coordinate])
def test_a_coordinate_folder_holding_what_uni_lab_did_not_write_is_not_emptied(tmp_path, capsys, plant):
    """The old coordinate's folder is removed file by file only when every file in it is a zarr member
    uni_lab writes (a regular file, not a link): otherwise one line, and every file stays."""
    out = _copy(tmp_path)
    user = tmp_path / "user"
    user.mkdir()
    (user / "data").write_bytes(b"mine")
    plant(out, user)
    before, links = _files(out), sorted(p for p in out.rglob("*") if p.is_symlink())
    rc, _, err = _cli(capsys, "migrate", out)
    assert rc == 2
    _one_line(err, "did not write")
    assert _files(out) == before and sorted(p for p in out.rglob("*") if p.is_symlink()) == links
    assert (user / "data").read_bytes() == b"mine"
