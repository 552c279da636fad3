"""Streaming input: a run holds a bounded number of decoded images, whatever the number of images.

Every decoded image is counted while it is alive (weak references on the arrays the decoder
returns, the tensors preprocessing makes and the batches collated from them, including
those still queued for the store's writer thread). The largest count over a run of 8 and of
24 images must be the same: memory does not grow with N.
"""
from __future__ import annotations

import weakref

import numpy as np
import pytest
import xarray as xr
from store_runs import make_images

import uni_lab
from uni_lab import data


class Census:
    def __init__(self):
        self.live = self.peak = 0

    def track(self, obj, images: int = 1):
        self.live += images
        self.peak = max(self.peak, self.live)
        weakref.finalize(obj, self._release, images)
        return obj

    def _release(self, images):
        self.live -= images


@pytest.fixture
def census(monkeypatch):
    c = Census()
    decode, preprocess, collate = data._decode, data.preprocess, data.collate

    def counted_decode(*args, **kwargs):
        arr, *rest = decode(*args, **kwargs)
        return (c.track(arr), *rest)

    def counted_collate(items):
        idx, x = collate(items)
        return idx, c.track(x, len(idx))

    monkeypatch.setattr(data, "_decode", counted_decode)
    monkeypatch.setattr(data, "preprocess", lambda *a, **k: c.track(preprocess(*a, **k)))
    monkeypatch.setattr(data, "collate", counted_collate)
    return c


def _run(tiny_model, root, n, census):
    census.live = census.peak = 0
    out = root / f"s{n}.zarr"
    uni_lab.run(models=tiny_model, images=[str(make_images(root / f"imgs{n}", n))], methods=["ig:black", "ig:uniform"],
                steps=2, device="cpu", out=out, progress=False, batch_size=2, seed_stability=False)
    return census.peak, out


def test_decoded_images_held_at_once_do_not_grow_with_n(tiny_model, tmp_path, census):
    peak8, _ = _run(tiny_model, tmp_path, 8, census)
    peak24, out = _run(tiny_model, tmp_path, 24, census)
    # the batch being decoded and collated, the one computing, those queued for the writer: never all 8
    assert 2 <= peak8 < 8, peak8
    assert peak24 == peak8, (peak8, peak24)
    assert int(xr.open_zarr(out)["done"].sum()) == 2 * 24


def test_workers_give_the_same_store(tiny_model, tmp_path):
    """Decoding in two worker processes changes where images are decoded, not one bit of the store."""
    folder = make_images(tmp_path / "imgs", 5)
    stores = []
    for workers in (0, 2):
        out = tmp_path / f"w{workers}.zarr"
        uni_lab.run(models=tiny_model, images=[str(folder)], methods=["ig:black"], steps=2, device="cpu", out=out,
                    progress=False, batch_size=2, workers=workers, seed_stability=False)
        stores.append(xr.open_zarr(out))
    for name in stores[0].data_vars:
        if name != "seconds":
            np.testing.assert_array_equal(stores[0][name].values, stores[1][name].values, err_msg=name)
