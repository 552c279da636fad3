"""zarr's private API that uni_lab/zarr_io.py relies on, against the installed zarr: an upgrade that
moves or changes it fails here, by name."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import xarray as xr
import zarr

from uni_lab.zarr_io import assign, metadata_files


@pytest.mark.parametrize("module,name", [("zarr.core.sync", "sync"), ("zarr.core.buffer", "default_buffer_prototype"),
                                         ("zarr.storage", "MemoryStore")])
def test_private_names_exist(module, name):
    assert hasattr(importlib.import_module(module), name), f"zarr {zarr.__version__} has no {module}.{name}"


def test_metadata_files_make_a_store_xarray_opens(tmp_path):
    ds = xr.Dataset({"v": (("i", "j"), np.zeros((4, 3)))}, coords={"i": np.arange(4)}, attrs={"k": "x"})
    files = metadata_files(ds.chunk(), 2)
    assert ".zmetadata" in files and "v/.zarray" in files
    for key, data in files.items():
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(data)
    back = xr.open_zarr(tmp_path)
    assert back.attrs["k"] == "x" and back["v"].shape == (4, 3) and back.i.values.tolist() == [0, 1, 2, 3]


def test_assign_writes_regions_of_several_arrays_in_one_call(tmp_path):
    g = zarr.open_group(str(tmp_path), mode="w", zarr_format=2)
    a = g.create_array("a", shape=(6,), chunks=(6,), dtype="f8", fill_value=np.nan)
    b = g.create_array("b", shape=(2, 6), chunks=(1, 6), dtype="i8", fill_value=-1)
    # two writes into one chunk of `a` in the same call: both must land (they go one after the other)
    assign([(g["a"], slice(0, 2), np.array([1.0, 2.0])), (g["a"], slice(4, 6), np.array([5.0, 6.0])),
            (g["b"], (1, slice(0, 3)), np.array([7, 8, 9]))])
    np.testing.assert_array_equal(a[:], [1, 2, np.nan, np.nan, 5, 6])
    np.testing.assert_array_equal(b[:], [[-1] * 6, [7, 8, 9, -1, -1, -1]])
