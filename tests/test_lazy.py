"""Lazy reading: stores open dask-backed, chunked in blocks of images, and are read block by block.

A store larger than memory must work for ``uni-lab check``, figures and metrics: nothing may
need a whole variable in memory. Here a dask callback records every intermediate array while
``check_store`` runs, and none may exceed one chunk of the store.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from dask.callbacks import Callback
from store_runs import make_images

import uni_lab
from uni_lab import check
from uni_lab.store import open_store

N_IMAGES = 12


@pytest.fixture(scope="module")
def store(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("lazy")
    out = root / "s.zarr"
    uni_lab.run(models=tiny_model, images=[str(make_images(root / "imgs", N_IMAGES))], methods=["ig:black"],
                steps=2, device="cpu", out=out, progress=False)
    return out


def test_store_opens_dask_backed_in_blocks_of_images(store):
    ds = open_store(store)
    layout = json.loads(ds.attrs["uni_lab_chunks"])
    assert layout == {"images": 6, "maps": 6}  # 12 images: two blocks, so two ranks can share the run
    for name, var in ds.data_vars.items():
        assert isinstance(var.data, da.Array), name
        if "image" in var.dims:
            assert set(var.chunks[var.dims.index("image")]) == {6}, name
    assert len(list((store / "attribution").glob("0.*"))) == 2


class _Largest(Callback):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def _posttask(self, key, result, dsk, state, id):
        if isinstance(result, np.ndarray):
            self.largest = max(self.largest, result.nbytes)


def test_check_reads_block_by_block(store, monkeypatch):
    monkeypatch.setattr(check, "BLOCK_IMAGES", 2)
    one_map = 3 * 16 * 16 * 4  # float32 attribution or input of one image
    with _Largest() as seen:
        report = check.check_store(store)
    assert report.consistent and report.done == N_IMAGES
    assert 0 < seen.largest <= 6 * one_map  # one chunk of six images, never the 12-image variable


def test_figures_keep_large_stores_lazy(store, monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "figures"))
    try:
        import _store_io
    finally:
        sys.path.pop(0)
    assert not isinstance(_store_io.open_loaded(store)["attribution"].data, da.Array)  # small: in memory
    monkeypatch.setattr(_store_io, "LOAD_LIMIT_BYTES", 0)
    assert isinstance(_store_io.open_loaded(store)["attribution"].data, da.Array)
