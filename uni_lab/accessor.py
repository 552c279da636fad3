"""``ds.uni``: what figures, notebooks and users read from a store, registered by ``import uni_lab``.

Torch-free (xarray and numpy only), so opening a store in a notebook does not need the models.
"""
from __future__ import annotations

import json

import numpy as np
import xarray as xr

from .errors import StoreError


def config_of(ds: xr.Dataset) -> dict:
    """The run configuration a store records (models, methods with every parameter, images, seed)."""
    try:
        return json.loads(ds.attrs["uni_lab_config"])
    except (KeyError, ValueError) as exc:
        raise StoreError("this is not a uni_lab store (no uni_lab_config attribute).") from exc


@xr.register_dataset_accessor("uni")
class UniAccessor:
    """``ds.uni.sel(method="uni", image="chelsea")``: ``Dataset.sel`` keeps ``method`` for its
    own keyword (nearest-neighbour lookup), so selecting on the ``method`` dim by keyword needs
    this accessor or a dict, ``ds.sel({"method": "uni"})``."""

    def __init__(self, ds: xr.Dataset):
        self._ds = ds

    def sel(self, **labels) -> xr.Dataset:
        return self._ds.sel(labels)

    @property
    def config(self) -> dict:
        return config_of(self._ds)

    def done_items(self) -> list[tuple[str, str, str]]:
        """``(model, method, image)`` of every finished item."""
        done = self._ds["done"].values
        return [(self._ds.model.values[a], self._ds.method.values[b], self._ds.image.values[c])
                for a, b, c in zip(*np.nonzero(done))]
