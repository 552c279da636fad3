"""The store's layout: chunks span blocks of images, shards take whole blocks, a chunk written
in parts is never lost or torn, and a damaged chunk shared by items is replaced on repair."""
from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from store_runs import ATOL, RTOL, make_images, values
from test_bad_inputs import BASE, rgb

import uni_lab
from uni_lab import cli
from uni_lab.check import check_store
from uni_lab.distributed import shard_range
from uni_lab.schema import chunking, data_files
from uni_lab.store import Store


def _folder(tmp_path, n):
    for i in range(n):
        rgb(tmp_path / "imgs" / f"im{i:02d}.png")
    return tmp_path / "imgs"


@pytest.mark.parametrize("n,size,want", [
    (6, (16, 16), {"images": 3, "maps": 3}),  # two blocks, so two ranks share a tiny run
    (1000, (64, 64), {"images": 510, "maps": 170}),  # 8 MiB of maps a chunk
    (50_000, (224, 224), {"images": 520, "maps": 13}),
    (1, (16, 16), {"images": 1, "maps": 1}),
])
def test_chunking(n, size, want):
    assert chunking(n, size) == want


@pytest.mark.parametrize("count,block,n", [(6, 3, 2), (6, 3, 4), (1000, 510, 2), (5000, 510, 3), (13, 1, 5), (50_000, 520, 8)])
def test_shards_take_whole_blocks(count, block, n):
    parts = [shard_range(count, i, n, block) for i in range(n)]
    assert [i for r in parts for i in r] == list(range(count))
    for r in parts:
        assert r.start % block == 0 and (r.stop % block == 0 or r.stop == count)
    sizes = sorted(-(-len(r) // block) for r in parts)
    assert sizes[-1] - sizes[0] <= 1


def test_files_follow_the_formula_and_stay_few(tmp_path, capsys):
    n = 40
    out = tmp_path / "s.zarr"
    assert cli.main(["run", *BASE, "--images", str(_folder(tmp_path, n)), "--out", str(out),
                     "--methods", "ig:black,ig:uniform", "--no-seed-stability"]) == 0
    ds = xr.open_zarr(out)
    chunk_files = sum(1 for name in ds.data_vars for f in (out / name).iterdir() if not f.name.startswith("."))
    assert chunk_files == data_files(n, 2, (16, 16))  # every chunk written: ig:black's baseline is 0, not NaN
    assert json.loads(ds.attrs["uni_lab_chunks"]) == {"images": 20, "maps": 20}
    total = sum(1 for f in out.rglob("*") if f.is_file())
    assert chunk_files == 2 * (1 + 2 * 2) + 2 * (8 + 5 * 2)  # 46 for 80 items; the old layout had 11 per item
    # metadata: .zarray and .zattrs per array, one chunk per coordinate, the group's three files
    assert total <= chunk_files + 2 * len(ds.variables) + len(ds.coords) + 3, total
    assert total < 3 * n  # the old layout: 1,040 chunk files (11 per item, 4 per image)


def test_writes_into_one_chunk_in_one_call_all_land(tmp_path, capsys):
    """Images 0 and 2 of one block written in one call: two region writes into one chunk file,
    each a read-modify-replace; run at once, one would replace the other's."""
    out = tmp_path / "s.zarr"
    assert cli.main(["run", *BASE, "--images", str(_folder(tmp_path, 6)), "--out", str(out)]) == 0
    st = Store(out)
    st.reset(items=[("tiny16", "ig:black", "im00"), ("tiny16", "ig:black", "im02")])
    st.write_items(0, 0, [0, 2], {"seconds": np.array([7.0, 9.0]), "completeness_error": np.array([0.5, 0.25])})
    ds = xr.open_zarr(out)
    np.testing.assert_array_equal(ds.seconds.values[0, 0, :3][[0, 2]], [7.0, 9.0])
    np.testing.assert_array_equal(ds.completeness_error.values[0, 0, [0, 2]], [0.5, 0.25])
    assert ds.done.values.all()


def test_damaged_chunk_shared_with_unfinished_items_is_replaced_then_recomputed(tmp_path, capsys):
    out = tmp_path / "s.zarr"
    args = ["run", *BASE, "--images", str(_folder(tmp_path, 6)), "--out", str(out)]
    assert cli.main(args) == 0
    good = values(out)
    Store(out).reset(items=[("tiny16", "ig:black", "im01")])  # as if killed before it
    (out / "attribution" / "0.0.0.0.0.0").write_bytes(b"garbage")  # images 0-2: two done, one not
    report = check_store(out)
    assert {item for _, item in report.unreadable} == {("tiny16", "ig:black", "im00"), ("tiny16", "ig:black", "im02")}
    assert ("tiny16", "ig:black", "im01") in report.partial
    assert cli.main(["check", "--repair", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(args) == 0  # batches of 2 (im00+im01, im02) write parts of the replaced chunk
    assert "(3 items computed, 3 already done)" in capsys.readouterr().out
    fixed = values(out)
    for k in good:
        if k != "seconds":
            np.testing.assert_allclose(fixed[k], good[k], rtol=RTOL, atol=ATOL, err_msg=k)
    assert check_store(out).consistent


def test_a_run_writes_each_map_chunk_once(tiny_model, tmp_path, monkeypatch):
    """Batches of one image into map chunks of three: each chunk file is written once, whole
    (the run holds items until their chunk is complete), not read and rewritten per batch."""
    import zarr.storage._local as local

    puts = []
    original = local._put

    def counting(path, value, exclusive=False):
        puts.append(path.parent.name)
        return original(path, value, exclusive)

    monkeypatch.setattr(local, "_put", counting)
    out = tmp_path / "s.zarr"
    uni_lab.run(models=tiny_model, images=[str(make_images(tmp_path / "imgs", 6))], methods=["ig:black"], steps=2,
                device="cpu", out=out, progress=False, batch_size=1, seed_stability=False)
    assert json.loads(xr.open_zarr(out).attrs["uni_lab_chunks"]) == {"images": 3, "maps": 3}
    assert puts.count("attribution") == 2 and puts.count("input") == 2 and puts.count("done") == 2
    assert bool(xr.open_zarr(out)["done"].all())
