"""The bad-input matrix: each case gives one clear message and a non-zero exit, or a documented
conversion, and never leaves a partial item in the store.

CLI cases run ``uni-lab run`` in this process (``uni_lab.cli.main``) on the tiny plugin model
(``tests/tiny_plugin.py``); a case that finds a store already there must leave it exactly as
it was, bit for bit, and any store a case leaves must pass ``uni-lab check`` with no partial
items.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from store_runs import ATOL, PLUGIN, RTOL, run_cli, values

import uni_lab
from uni_lab import cli
from uni_lab.check import check_store
from uni_lab.commands.run import import_plugins
from uni_lab.store import Store

BASE = ["--plugins", str(PLUGIN), "--model", "tiny16", "--methods", "ig:black", "--steps", "2", "--device", "cpu",
        "--no-progress", "--batch-size", "2"]


def rgb(path: Path, side: int = 20, value=None, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(len(path.name))
    arr = np.full((side, side, 3), value, np.uint8) if value is not None else (rng.random((side, side, 3)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).convert(mode).save(path)
    return path


def good_folder(tmp: Path) -> Path:
    for name in ("a", "b", "c"):
        rgb(tmp / "good" / f"{name}.png")
    return tmp / "good"


def made_store(tmp: Path, *extra) -> Path:
    """A finished store of the BASE configuration (plus ``extra``) at ``tmp/s.zarr``."""
    assert cli.main(["run", *BASE, "--images", str(good_folder(tmp)), "--out", str(tmp / "s.zarr"), *extra]) == 0
    return tmp / "s.zarr"


def truncated_png(tmp: Path) -> list[str]:
    data = rgb(tmp / "full.png").read_bytes()
    (tmp / "cut.png").write_bytes(data[: len(data) // 2])
    return ["--images", str(tmp / "cut.png")]


def file_with(name: str, content: bytes) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        (tmp / name).write_bytes(content)
        return ["--images", str(tmp / name)]
    return make


def folder_of(*files: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        (tmp / "dir").mkdir()
        for f in files:
            (tmp / "dir" / f).write_text("not an image")
        return ["--images", str(tmp / "dir")]
    return make


def good_then(*args: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["--images", str(good_folder(tmp)), *args]


def plugin_file(code: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        (tmp / "mine.py").write_text(code)
        return ["--images", str(good_folder(tmp)), "--plugins", str(tmp / "mine.py")]
    return make


def weights_of(net: Callable[[], torch.nn.Module], model: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        torch.save(net().state_dict(), tmp / "w.pth")
        return ["--images", str(good_folder(tmp)), "--model", model, "--weights", str(tmp / "w.pth")]
    return make


def tiny16_net() -> torch.nn.Module:
    import_plugins([str(PLUGIN)])
    return uni_lab.create_model("tiny16").net


def store_then(*args: str) -> Callable[[Path], list[str]]:
    def make(tmp: Path) -> list[str]:
        made_store(tmp)
        return ["--images", str(tmp / "good"), *args]
    return make


def damaged_metadata(tmp: Path) -> list[str]:
    out = made_store(tmp)
    (out / ".zmetadata").write_text("{ this is not json")
    (out / "done" / ".zarray").write_text("garbage")
    return ["--images", str(tmp / "good")]


def junk_weights(tmp: Path) -> list[str]:
    (tmp / "w.pth").write_bytes(b"junk, not a pickle")
    return ["--images", str(good_folder(tmp)), "--weights", str(tmp / "w.pth")]


def not_a_store(tmp: Path) -> list[str]:
    (tmp / "s.zarr").mkdir()
    (tmp / "s.zarr" / "notes.txt").write_text("someone's files")
    return ["--images", str(good_folder(tmp))]


def out_is_file(tmp: Path) -> list[str]:
    (tmp / "s.zarr").write_text("a file where the store should go")
    return ["--images", str(good_folder(tmp))]


def unwritable_parent(tmp: Path) -> list[str]:
    (tmp / "afile").write_text("a file, not a folder")
    return ["--images", str(good_folder(tmp)), "--out", str(tmp / "afile" / "s.zarr")]


@dataclass
class Case:
    id: str
    make: Callable[[Path], list[str]]
    message: str  # regex expected in stderr


CASES = [
    Case("zero-byte file", file_with("empty.png", b""), r"is empty \(0 bytes\)"),
    Case("truncated file", truncated_png, r"damaged or truncated"),
    Case("text file named .png", file_with("fake.png", b"hello, not pixels"), r"not an image this toolkit can read"),
    Case("binary junk .jpg", file_with("junk.jpg", bytes(range(256)) * 4), r"not an image this toolkit can read"),
    Case("tiny image", lambda tmp: ["--images", str(rgb(tmp / "t.png", side=4))], r"4×4 px; at least 8 px a side"),
    Case("empty folder", folder_of(), r"holds no image files"),
    Case("folder without images", folder_of("notes.txt", "data.csv"), r"holds no image files"),
    Case("missing file", lambda tmp: ["--images", str(tmp / "nope.png")], r"'.*nope\.png' does not exist"),
    Case("float image with NaN", lambda tmp: _float_tif(tmp, np.nan), r"holds NaN or Inf values"),
    Case("float image outside [0,1]", lambda tmp: _float_tif(tmp, 3.0), r"float images must hold intensities in \[0, 1\]"),
    Case("unknown method", good_then("--methods", "nosuch"), r"unknown explainer 'nosuch'\. Available explainers:"),
    Case("unknown baseline", good_then("--methods", "ig:nosuch"), r"unknown baseline 'nosuch'"),
    Case("unknown parameter", good_then("--set", "ig.nosuch=1"), r"'ig' has no parameter 'nosuch'\. Parameters:"),
    Case("malformed --set", good_then("--set", "eps0.1"), r"--set expects name\.param=value"),
    Case("method listed twice", good_then("--methods", "ig:black,ig:black"), r"listed twice"),
    Case("missing plugin file", good_then("--plugins", "no_such_dir/p.py"), r"plugin file 'no_such_dir/p.py' does not exist"),
    Case("plugin file that raises on import", plugin_file("import uni_lab\n1 / 0\n"),
         r"plugin file '.*mine\.py' failed to import \(ZeroDivisionError"),
    Case("unimportable plugin module", good_then("--plugins", "no_such_module_xyz"), r"cannot import plugin module 'no_such_module_xyz'"),
    Case("unknown model", good_then("--model", "no_such_net", "--weights", "random"), r"unknown model 'no_such_net'"),
    Case("model without weights", good_then("--model", "resnet18"), r"has no embedded weights.*--weights"),
    Case("weights of another architecture", weights_of(tiny16_net, "resnet18"),
         r"do not fit architecture 'resnet18'.*missing.*unexpected"),
    Case("weights with wrong shapes", weights_of(lambda: torch.nn.Linear(3, 4), "tiny16"), r"do not fit architecture 'tiny16'"),
    Case("weights file that is not a state dict", junk_weights, r"could not be read as a PyTorch state dict"),
    Case("steps zero", good_then("--steps", "0"), r"--steps must be at least 1"),
    Case("bad --shard", good_then("--shard", "2/2"), r"--shard 2/2: need 0 <= I < N"),
    Case("output path under a file", unwritable_parent, r"--out '.*afile/s\.zarr' lies under a file, not a folder"),
    Case("output path that is a file", out_is_file, r"--out '.*s\.zarr' exists and is not a folder"),
    Case("unknown device", good_then("--device", "tpu9"), r"unknown device 'tpu9'; use cpu, cuda or cuda:N"),
    Case("--set value of the wrong type", good_then("--set", "ig.steps=abc"), r"ig\.steps must be an int, got 'abc'"),
    Case("--set float parameter given text", good_then("--methods", "uni", "--set", "uni.eps=abc"),
         r"uni\.eps must be a float, got 'abc'"),
    Case("--set NaN", good_then("--methods", "uni", "--set", "uni.eps=nan"), r"uni\.eps must be a finite number, got 'nan'"),
    Case("--set value out of range", good_then("--methods", "uni", "--set", "uni.eps=-1"), r"uni\.eps must be > 0, got -1"),
    Case("--set choice not offered", good_then("--set", "ig.rule=mid"), r"rule must be one of \('right', 'left'\)"),
    Case("unknown metric", good_then("--metrics", "nosuchmetric"), r"unknown metric 'nosuchmetric'\. Available metrics:"),
    Case("metric parameter of the wrong type", good_then("--metrics", "deletion", "--set", "deletion.n_steps=many"),
         r"deletion\.n_steps must be an int, got 'many'"),
    Case("unknown attack", good_then("--attacks", "nosuch"), r"unknown attack 'nosuch'"),
    Case("severity out of range", good_then("--corruptions", "brightness", "--severities", "9"),
         r"severities must be among \(1, 2, 3, 4, 5\), got \[9\]"),
    Case("severity that is not a number", good_then("--corruptions", "brightness", "--severities", "1,high"),
         r"severities must be integers"),
    Case("store of another configuration (seed)", store_then("--seed", "7"), r"differs in: seed\)\. Use --overwrite"),
    Case("store of another configuration (steps)", store_then("--steps", "3"), r"differs in: methods\.ig:black\.params\.steps"),
    Case("folder that is not a store", not_a_store, r"exists and is not a uni_lab store"),
    Case("corrupted store metadata", damaged_metadata, r"cannot be opened as a zarr store"),
]


def _float_tif(tmp: Path, bad: float) -> list[str]:
    arr = np.full((20, 20), 0.5, np.float32)
    arr[2, 3] = bad
    Image.fromarray(arr).save(tmp / "f.tif")
    return ["--images", str(tmp / "f.tif")]


def snapshot(out: Path):
    try:
        return values(out) if Store(out).exists() else None
    except Exception:  # a store the case damaged on purpose
        return None


def assert_no_partial_item(out: Path, before) -> None:
    if before is not None:  # the store the case found is left exactly as it was
        after = values(out)
        assert set(after) == set(before)
        for k in before:
            assert np.array_equal(after[k], before[k], equal_nan=after[k].dtype.kind == "f"), k
    if Store(out).exists() and before is not None:
        report = check_store(out)
        assert report.consistent and not report.partial, report.format()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_rejects_bad_input(case, tmp_path, capsys):
    args = case.make(tmp_path)
    out = tmp_path / "s.zarr"
    before = snapshot(out)
    capsys.readouterr()
    code = cli.main(["run", *BASE, "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("uni-lab run: error: ") and err.count("\n") == 1, err  # one line, no traceback
    assert re.search(case.message, err), err
    assert_no_partial_item(out, before)
    if before is None and not case.id.startswith("corrupted"):
        assert not Store(out).exists()  # rejected before a store was made


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(tmp_path, capsys):
    folder = good_folder(tmp_path)
    (tmp_path / "ro").mkdir(mode=0o555)
    code = cli.main(["run", *BASE, "--images", str(folder), "--out", str(tmp_path / "ro" / "s.zarr")])
    assert code == 2 and "choose a writable --out" in capsys.readouterr().err


# --- documented conversions: exit 0, the conversion named in image_source, the pixels as stated

def _saved(mode: str, colour) -> Callable[[Path], None]:
    """A flat 20×20 image of ``colour`` (RGB 0-255) saved in ``mode``."""
    return lambda path: Image.new("RGB", (20, 20), colour).convert(mode).save(path)


def _gray16(path: Path) -> None:
    Image.fromarray(np.full((20, 20), 32768, np.uint16)).save(path)  # PIL mode I;16


def _float32(path: Path) -> None:
    Image.fromarray(np.full((20, 20), 0.25, np.float32)).save(path)  # PIL mode F (TIFF)


def _rgb16(path: Path) -> None:
    import cv2

    cv2.imwrite(str(path), np.full((20, 20, 3), (65535, 40000, 300), np.uint16))  # BGR: RGB (300, 40000, 65535)


def _animated_gif(path: Path) -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


# (case, file, writer, note in image_source, expected RGB in [0, 1], tolerance: JPEG is lossy)
CONVERSIONS = [
    ("16-bit grayscale", "g16.png", _gray16, r"I;16 scaled to \[0,1\], grayscale→RGB", (32768 / 65535,) * 3, 1e-6),
    ("8-bit grayscale", "g8.png", _saved("L", (100, 100, 100)), r"L→RGB", (100 / 255,) * 3, 1e-6),
    ("RGBA", "rgba.png", _saved("RGBA", (0, 0, 255)), r"RGBA→RGB \(alpha dropped\)", (0, 0, 1), 1e-6),
    ("CMYK JPEG", "cmyk.jpg", _saved("CMYK", (255, 0, 0)), r"CMYK→RGB", (1, 0, 0), 0.03),
    ("palette", "p.png", _saved("P", (0, 255, 0)), r"P→RGB", (0, 1, 0), 1e-6),
    ("32-bit float", "f.tif", _float32, r"float grayscale→RGB", (0.25,) * 3, 1e-6),
    # Pillow reads 16-bit RGB PNGs as 8-bit (300/65535 would become 1/255): read at 16 bits
    ("16-bit RGB", "rgb16.png", _rgb16, r"16-bit RGB read at 16 bits, scaled to \[0,1\]", (300 / 65535, 40000 / 65535, 1), 1e-6),
    ("animated GIF", "anim.gif", _animated_gif, r"frame 0 of 3 used, P→RGB", (1, 0, 0), 1e-6),
]


@pytest.mark.parametrize("name,file,write,note,colour,tol", CONVERSIONS, ids=[c[0] for c in CONVERSIONS])
def test_documented_conversion(name, file, write, note, colour, tol, tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    write(tmp_path / "imgs" / file)
    out = tmp_path / "s.zarr"
    with pytest.warns(UserWarning, match="converted"):
        code = cli.main(["run", *BASE, "--images", str(tmp_path / "imgs"), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    ds = uni_lab.store.open_store(out)
    assert re.search(note, str(ds.image_source.values[0])), ds.image_source.values[0]
    x = ds.input.isel(model=0, image=0).values
    assert x.shape == (3, 16, 16)
    np.testing.assert_allclose(x, np.broadcast_to(np.asarray(colour, np.float32)[:, None, None], x.shape), atol=tol)
    assert check_store(out).done == 1


def test_exif_orientation_is_applied_and_noted(tmp_path, capsys):
    """A 40×20 photograph, red left and blue right, tagged "rotate 90° clockwise to display"
    (orientation 6): displayed, red is on top. The tag is applied before resizing."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20, 0], arr[:, 20:, 2] = 255, 255
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6
    (tmp_path / "imgs").mkdir()
    im.save(tmp_path / "imgs" / "turned.png", exif=exif)
    out = tmp_path / "s.zarr"
    with pytest.warns(UserWarning, match="EXIF orientation 6 applied"):
        assert cli.main(["run", *BASE, "--images", str(tmp_path / "imgs"), "--out", str(out)]) == 0
    ds = uni_lab.store.open_store(out)
    assert "EXIF orientation 6 applied" in str(ds.image_source.values[0])
    x = ds.input.isel(model=0, image=0).values
    assert x[0, :6].min() > 0.99 and x[2, :6].max() < 0.01  # top: red
    assert x[2, -6:].min() > 0.99 and x[0, -6:].max() < 0.01  # bottom: blue


def test_bad_files_are_all_named_before_compute_or_skipped_and_listed(tmp_path, capsys):
    folder = good_folder(tmp_path)
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not pixels")
    out = tmp_path / "s.zarr"
    capsys.readouterr()
    assert cli.main(["run", *BASE, "--images", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 bad image files" in err and "empty.png" in err and "text.jpg" in err, err
    assert "--skip-bad-images" in err and not out.exists()
    with pytest.warns(UserWarning, match="skipped 2 bad image files"):
        assert cli.main(["run", *BASE, "--images", str(folder), "--out", str(out), "--skip-bad-images"]) == 0
    ds = uni_lab.store.open_store(out)
    assert list(ds.image.values) == ["a", "b", "c"]
    skipped = json.loads(ds.attrs["uni_lab_skipped_images"])
    assert [Path(s["source"]).name for s in skipped] == ["empty.png", "text.jpg"]
    assert "is empty (0 bytes)" in skipped[0]["reason"]
    assert check_store(out).done == 3


# --- the Python API

@pytest.mark.parametrize("bad,where", [(float("nan"), "[1]"), (float("inf"), "[1]"), (-float("inf"), "[1]")])
def test_api_rejects_non_finite_input(tiny_model, tiny_batch, bad, where):
    x = tiny_batch[0].clone()
    x[1, 0, 2, 2] = bad
    with pytest.raises(uni_lab.InputError, match=re.escape(f"holds NaN or Inf values (images at batch positions {where})")):
        uni_lab.explain("ig:black", tiny_model, x)


def test_api_rejects_wrong_shape(tiny_model, tiny_batch):
    with pytest.raises(uni_lab.InputError, match=r"must be a \(N, C, H, W\) tensor"):
        uni_lab.explain("ig:black", tiny_model, tiny_batch[0][0])


# --- a plugin that raises mid-run, and a damaged chunk

def test_plugin_raising_mid_run_leaves_no_partial_item(tmp_path):
    """``boom`` raises on the white image ``b``: the run stops with the method and image named;
    items finished before it are kept, ``b`` and later are not done and hold no data. Runs go
    image batch by image batch, every method on a batch before the next is decoded, so
    ``ig:black`` has done ``a`` and ``b`` but not ``c``."""
    folder = tmp_path / "imgs"
    rgb(folder / "a.png"), rgb(folder / "b.png", value=255), rgb(folder / "c.png")
    out = tmp_path / "s.zarr"
    p = run_cli(folder, out, 1, extra=["--methods", "ig:black,boom", "--steps", "2"])
    assert p.returncode == 2
    assert "method 'boom' failed on images ['b'] (RuntimeError: boom: white image); no partial results were stored" in p.stderr
    report = check_store(out)
    assert report.consistent and not report.partial, report.format()
    assert report.by_method[("tiny16", "ig:black")] == (2, 3) and report.by_method[("tiny16", "boom")] == (1, 3)
    assert ("tiny16", "boom", "b") in report.missing and ("tiny16", "boom", "c") in report.missing
    assert ("tiny16", "ig:black", "c") in report.missing


def test_damaged_chunk_is_named_then_repaired_and_recomputed(tmp_path, capsys):
    out = made_store(tmp_path)
    good = values(out)
    # three images make blocks of two (a, b | c), map chunks too
    (out / "done" / "0.0.1").write_bytes(b"\x00garbage")  # the done flag of (tiny16, ig:black, c)
    (out / "attribution" / "0.0.0.0.0.0").write_bytes(b"garbage")  # the maps of (tiny16, ig:black, a and b)
    capsys.readouterr()
    args = ["run", *BASE, "--images", str(tmp_path / "good"), "--out", str(out)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "variable 'done' cannot be read" in err and f"uni-lab check --repair {out}" in err

    assert cli.main(["check", str(out)]) == 1
    report = capsys.readouterr().out
    assert "done ('tiny16', 'ig:black', 'c')" in report and "attribution ('tiny16', 'ig:black', 'a')" in report
    assert "attribution ('tiny16', 'ig:black', 'b')" in report and "INCONSISTENT" in report
    assert cli.main(["check", "--repair", str(out)]) == 0
    assert cli.main(args) == 0
    assert "(3 items computed, 0 already done)" in capsys.readouterr().out
    assert cli.main(["check", "--require-complete", str(out)]) == 0
    fixed = values(out)  # recomputed in the same batches (a+b, c): equal within tolerance
    for k in good:
        if k != "seconds":
            np.testing.assert_allclose(fixed[k], good[k], rtol=RTOL, atol=ATOL, err_msg=k)


def test_check_exit_codes(tmp_path, capsys):
    assert cli.main(["check", str(tmp_path / "nothing.zarr")]) == 2
    assert "is not a zarr store" in capsys.readouterr().err
    out = made_store(tmp_path)
    Store(out).reset(items=[("tiny16", "ig:black", "a")])
    assert cli.main(["check", str(out)]) == 0  # incomplete but sound
    assert cli.main(["check", "--require-complete", str(out)]) == 1
    import zarr

    zarr.open_group(str(out), mode="r+")["seconds"][0, 0, 1] = np.inf  # a done item with a non-finite value
    assert cli.main(["check", str(out)]) == 1
    assert "seconds ('tiny16', 'ig:black', 'b')" in capsys.readouterr().out
