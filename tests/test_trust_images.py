"""Image inputs and labels that used to go silently wrong (issue 21): clashing file names, labels
matched by name alone, an empty ``--images``, FIFOs and symlink loops, one file listed twice,
decompression bombs, unreadable files. Each now gives unique ids or one clear line."""
from __future__ import annotations

import errno
import json
import os
import signal
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from test_bad_inputs import BASE, rgb

import uni_lab
from uni_lab import cli
from uni_lab.data import list_images
from uni_lab.errors import InputError
from uni_lab.labels import read_labels


@pytest.fixture
def no_hang():
    """Fails a test that blocks (on a FIFO) instead of hanging the suite."""
    def stuck(signum, frame):
        raise AssertionError("blocked for 60 s (a FIFO opened?)")
    previous = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def test_clashing_file_names_get_unique_stable_ids_and_the_store_resumes(tmp_path, capsys):
    """x/same.png, y/same.png and z/same-2.png were ``same, same-2, same-2``: a store that
    could be neither resumed nor repaired."""
    for f in ("x/same.png", "y/same.png", "z/same-2.png"):
        rgb(tmp_path / f)
    folders = [str(tmp_path / d) for d in "xyz"]
    out = tmp_path / "s.zarr"
    args = ["run", *BASE, "--images", *folders, "--out", str(out)]
    assert cli.main(args) == 0, capsys.readouterr().err
    ds = uni_lab.store.open_store(out)
    assert list(ds.image.values) == ["x/same", "y/same", "same-2"]
    recorded = json.loads(ds.attrs["uni_lab_config"])["images"]
    assert recorded == dict(zip(ds.image.values, ds.image_source.values))
    assert recorded["y/same"] == str(tmp_path / "y" / "same.png")
    capsys.readouterr()
    assert cli.main(args) == 0
    assert "(0 items computed, 3 already done)" in capsys.readouterr().out
    assert cli.main(["check", "--require-complete", str(out)]) == 0
    entries, _ = list_images(folders[::-1])  # ids do not depend on the order of the arguments
    assert {Path(e.ref).relative_to(tmp_path).as_posix(): e.id for e in entries} == {
        "x/same.png": "x/same", "y/same.png": "y/same", "z/same-2.png": "same-2"}


@pytest.mark.parametrize("rows,want", [
    ("x/same.png,1\ny/same.png,2\nother.png,0\n", [1, 2, 0]),  # paths tell the clashing names apart
    ("{x},3\n{y},2\nother.png,0\n", [3, 2, 0]),  # absolute paths too
    ("same.png,1\nother.png,0\n", r"line 1 'same.png' \(class 1\) fits 2 images"),  # was: both got class 1
    ("x/same.png,1\ny/same.png,2\nother.png,0\nz/other.png,3\n",
     r"gives image 'other' .* conflicting classes: line 3 'other.png' \(class 0\); line 4 'z/other.png' \(class 3\)"),
    ("x/same.png,1\ny/same.png,2\nother.png,1000000000000000000000\n",
     r"class 1000000000000000000000 of image 'other' is outside the model's 4 classes"),  # was: OverflowError
], ids=["paths", "absolute paths", "name fitting two images", "conflicting rows", "huge class"])
def test_labels_match_by_path_where_names_clash_and_refuse_ambiguity(rows, want, tmp_path):
    for f in ("x/same.png", "y/same.png", "z/other.png"):
        rgb(tmp_path / f)
    entries, _ = list_images([tmp_path / "x", tmp_path / "y", tmp_path / "z"])
    labels = tmp_path / "labels.csv"
    labels.write_text(rows.replace("{x}", str(tmp_path / "x" / "same.png")).replace("{y}", str(tmp_path / "y" / "same.png")))
    if isinstance(want, list):
        np.testing.assert_array_equal(read_labels(labels, entries, 4), want)
    else:
        with pytest.raises(InputError, match=want) as exc:
            read_labels(labels, entries, 4)
        one_line(exc)


def test_json_labels_giving_one_file_two_classes_are_refused(tmp_path):
    """A JSON object with one key twice kept the last class, silently."""
    entries, _ = list_images([rgb(tmp_path / "a.png")])
    (tmp_path / "l.json").write_text('{"a.png": 1, "a.png": 2}')
    with pytest.raises(InputError, match=r"gives 'a\.png' twice, with classes 1 and 2; keep one") as exc:
        read_labels(tmp_path / "l.json", entries, 4)
    one_line(exc)


def test_empty_images_name_is_refused(tmp_path, monkeypatch):
    """``--images ""`` explained the current folder."""
    rgb(tmp_path / "here.png")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"--images got an empty name.*'\.' for the current folder") as exc:
        list_images([""])
    one_line(exc)


def test_special_entries_are_named_never_opened_nor_followed(tmp_path, no_hang):
    """A FIFO, symlink loop, dangling symlink and a folder named like an image were silently left
    out; a FIFO is named without being opened; subfolders (a symlink to an ancestor) are named."""
    d = tmp_path / "imgs"
    rgb(d / "a photo ä.png")
    os.mkfifo(d / "pipe.png")
    os.symlink("loop2.png", d / "loop1.png")
    os.symlink("loop1.png", d / "loop2.png")
    os.symlink("missing.png", d / "dangling.png")
    (d / "folder.png").mkdir()
    os.symlink("..", d / "up")
    os.mkfifo(d / "pipe")
    with pytest.raises(InputError, match=r"^5 bad image files") as exc, pytest.warns(UserWarning, match="left out"):
        list_images([d])
    message = one_line(exc)
    for part in ("pipe.png' is a FIFO (not opened)", "loop1.png' is a symlink loop", "loop2.png' is a symlink loop",
                 "dangling.png' is a symlink to a missing file", "folder.png' is a folder"):
        assert part in message, (part, message)
    with pytest.warns(UserWarning) as caught:
        entries, bad = list_images([d], skip_bad=True)
    said = " | ".join(str(w.message) for w in caught)
    assert "left out 2 entries" in said and ": pipe (a FIFO), up/" in said and "skipped 5 bad image files" in said, said
    assert [e.id for e in entries] == ["a photo ä"]
    assert sorted(Path(b.source).name for b in bad) == ["dangling.png", "folder.png", "loop1.png", "loop2.png", "pipe.png"]
    with pytest.raises(InputError, match=r"pipe\.png' is a FIFO \(not opened\), not an image file"):
        list_images([d / "pipe.png"])  # was: "does not exist"


def test_the_same_image_twice_is_refused_or_skipped_once(tmp_path):
    """One file given twice, or through a symlink or a hard link, was stored twice."""
    a = rgb(tmp_path / "x" / "a.png")
    os.symlink(a, tmp_path / "link.png")
    os.link(a, tmp_path / "hard.png")
    with pytest.raises(InputError, match=r"'.*x/a\.png' is listed twice; give each image once") as exc:
        list_images([a, a])
    one_line(exc)
    for other in ("link.png", "hard.png"):
        with pytest.raises(InputError, match=rf"'.*{other}' is the same file as '.*x/a\.png'"):
            list_images([tmp_path / "x", tmp_path / other])
    with pytest.warns(UserWarning, match="skipped 2 bad image files"):
        entries, bad = list_images([tmp_path / "x", tmp_path / "link.png", tmp_path / "hard.png"], skip_bad=True)
    assert [e.ref for e in entries] == [str(a)] and len(bad) == 2
    with pytest.raises(InputError, match=r"'chelsea' is listed twice"):
        list_images(["chelsea", "chelsea"])


def huge_png(path: Path, side: int = 20000) -> Path:
    """A 1-bit ``side``×``side`` PNG of zeros, a few KB on disk, written row by row (never held decoded)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    z, row = zlib.compressobj(9), bytes(1 + (side + 7) // 8)  # filter byte 0, then the packed bits
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_images_are_bounded_in_pixels_before_decoding(tmp_path, capsys):
    """A 20000×20000 PNG gave PIL's decompression-bomb traceback, also with --skip-bad-images."""
    big = huge_png(tmp_path / "big.png")
    assert big.stat().st_size < 200_000
    small = rgb(tmp_path / "small.png", side=100)
    with pytest.raises(InputError, match=r"big\.png' is 20000×20000 px \(400 megapixels\), over the limit of "
                                         r"100000000 pixels; .*--max-pixels N") as exc:
        list_images([big, small])
    one_line(exc)
    with pytest.warns(UserWarning, match="skipped 1 bad image files"):
        entries, bad = list_images([big, small], skip_bad=True)
    assert [e.id for e in entries] == ["small"] and [b.source for b in bad] == [str(big)]
    with pytest.raises(InputError, match=r"100×100 px .* over the limit of 9999 pixels"):
        list_images([small], max_pixels=9999)
    assert [e.id for e in list_images([small], max_pixels=10_000)[0]] == ["small"]
    capsys.readouterr()
    code = cli.main(["run", *BASE, "--images", str(small), "--out", str(tmp_path / "s.zarr"), "--max-pixels", "9999"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "over the limit of 9999 pixels" in err, err
    assert not (tmp_path / "s.zarr").exists()


def test_unreadable_file_is_named(tmp_path, monkeypatch):
    """A file this process may not read (chmod 000; root reads anything, so the refusal is injected)."""
    bad, good = rgb(tmp_path / "d" / "locked.png"), rgb(tmp_path / "d" / "ok.png")
    real_open = os.open

    def refusing(path, *args, **kwargs):
        if Path(path) == bad:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    with pytest.raises(InputError, match=r"locked\.png' cannot be read \(Permission denied\)") as exc:
        list_images([tmp_path / "d"])
    one_line(exc)
    with pytest.warns(UserWarning, match="skipped 1 bad image files"):
        assert [e.ref for e in list_images([tmp_path / "d"], skip_bad=True)[0]] == [str(good)]


@pytest.mark.parametrize("kind", ["fifo", "folder", "empty"])
def test_labels_and_synsets_paths_that_are_no_file(tmp_path, kind):
    from uni_lab.labels import read_labels

    target = {"fifo": tmp_path / "l.fifo", "folder": tmp_path, "empty": ""}[kind]
    if kind == "fifo":
        os.mkfifo(target)
    message = {"fifo": "not a regular file", "folder": "is a folder", "empty": "empty path"}[kind]
    with pytest.raises(uni_lab.InputError, match=message):  # never opened: a FIFO would block the run forever
        read_labels(str(target), [], 4, None)
    good = tmp_path / "ok.csv"
    good.write_text("a.png,1\n")
    with pytest.raises(uni_lab.InputError, match=message):
        read_labels(str(good), [], 4, str(target))
