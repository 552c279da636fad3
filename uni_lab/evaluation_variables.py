"""The variables ``uni-lab evaluate`` adds to a finished store, and how it writes them: by label.

A mixin of :class:`uni_lab.store.Store`, so the store owns these mutations too (each one
drops the store's open zarr group, whose metadata it has just rewritten). Chunks follow
:func:`uni_lab.schema.evaluation_chunks`.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from .errors import StoreError
from .schema import RUN_VARIABLES, ZARR_FORMAT, Variable, block_of, evaluation_chunks, fill_of
from .skeleton import strings


class EvaluationVariables:
    """Needs ``path`` and ``group()`` of a :class:`~uni_lab.store.Store`."""

    def open_lazy(self) -> xr.Dataset:
        """The store without dask: variables read from disk on access, opened fast (for many small reads)."""
        try:
            return xr.open_zarr(self.path, chunks=None)
        except Exception as exc:
            raise StoreError(f"'{self.path}' cannot be opened as a zarr store ({exc.__class__.__name__}: {exc}).") from exc

    def _layout_changed(self) -> None:
        self._group = None  # the zarr group was opened on metadata that has just been rewritten

    def add_variables(self, specs: dict[str, Variable], coords: dict) -> bool:
        """Add the variables of ``specs`` that the store lacks, as metadata only, chunked by
        :func:`~uni_lab.schema.evaluation_chunks`.

        Dims the store has keep their labels; new dims take theirs from ``coords``. Where
        ``coords`` holds labels a store dim lacks (a new attack, other stability steps), the dim
        grows: every variable on it is rewritten with its old values in place and fill elsewhere.
        Returns whether the store's layout changed (open datasets are then stale).
        """
        import dask.array as da

        ds = self.open_lazy()
        grown = False
        for dim, labels in coords.items():
            if dim in ds.dims and not set(_plain(labels)) <= set(_plain(ds[dim].values)):
                self._grow_dim(ds, dim, labels)
                ds, grown = self.open_lazy(), True
        new = {name: var for name, var in specs.items() if name not in ds.variables}
        if not new:
            return grown
        labels = {d: (ds[d].values if d in ds.dims else np.asarray(coords[d])) for var in new.values() for d in var.dims}
        sizes = {d: len(v) for d, v in labels.items()}
        data = {}
        for name, var in new.items():
            arr = da.full(tuple(sizes[d] for d in var.dims), var.fill, dtype=var.dtype,
                          chunks=evaluation_chunks(var.dims, sizes, block_of(ds.attrs)))
            data[name] = xr.Variable(var.dims, arr, attrs=var.attrs())
        fresh = {d: _labels(v) for d, v in labels.items() if d not in ds.dims}
        # mode="a" replaces the group's attributes with the dataset's: carry the store's own along
        xr.Dataset(data, coords=fresh, attrs=ds.attrs).to_zarr(self.path, mode="a", compute=False, consolidated=True,
                                                               zarr_format=ZARR_FORMAT)
        self._layout_changed()
        return True

    def _grow_dim(self, ds: xr.Dataset, dim: str, labels) -> None:
        import zarr

        union = list(_plain(ds[dim].values)) + [v for v in _plain(labels) if v not in set(_plain(ds[dim].values))]
        names = [v for v in ds.data_vars if dim in ds[v].dims]
        old = ds[names].load()
        grown = old.reindex({dim: union}, fill_value={v: fill_of(old[v].dtype) for v in names})
        grown = grown.assign_coords({dim: _labels(union)})
        grown.attrs = dict(ds.attrs)  # mode="a" replaces the group's attributes with these
        group = zarr.open_group(str(self.path), mode="r+")
        for name in names + [dim]:
            del group[name]
        zarr.consolidate_metadata(str(self.path))
        sizes = dict(grown.sizes)
        encoding = {v: {"chunks": evaluation_chunks(grown[v].dims, sizes, block_of(ds.attrs))} for v in names}
        for v in names:
            grown[v].encoding = {}
        grown.drop_vars([c for c in grown.coords if c != dim]).to_zarr(
            self.path, mode="a", consolidated=True, zarr_format=ZARR_FORMAT, encoding=encoding)
        self._layout_changed()

    def drop_variables(self, names) -> None:
        """Delete evaluation variables (``uni-lab evaluate --recompute``); the run's own are refused."""
        import zarr

        bad = sorted(set(names) & set(RUN_VARIABLES))
        if bad:
            raise StoreError(f"refusing to drop the run's variables {bad}; only evaluation variables can be recomputed.")
        group = zarr.open_group(str(self.path), mode="r+")
        for name in names:
            if name in group:
                del group[name]
        zarr.consolidate_metadata(str(self.path))
        self._layout_changed()

    def write_region(self, values: dict, labels: dict, ds: xr.Dataset | None = None) -> None:
        """Write ``{name: array}`` at the item ``labels`` (``{dim: label}``): each array holds the
        variable's values at that item, its other dims whole.

        Positions come from the labels here and nowhere else. The writes go straight to the zarr
        arrays (an xarray ``region=`` write re-reads the store's metadata on every call, which
        made a small evaluation spend most of its time there). Callers write an item's values
        first and its done flag in a second call, so a crash between the two leaves it not-done.
        """
        ds = self.open_lazy() if ds is None else ds
        g = self.group()
        for name, value in values.items():
            index = tuple(ds.indexes[d].get_loc(labels[d]) if d in labels else slice(None) for d in ds[name].dims)
            arr = g[name]
            arr[index] = np.asarray(value, dtype=arr.dtype)

    def update_attrs(self, attrs: dict) -> None:
        """Set dataset attributes (e.g. ``uni_lab_evaluation``, the parameters of every metric and attack)."""
        import zarr

        group = zarr.open_group(str(self.path), mode="r+")
        group.attrs.update(attrs)
        zarr.consolidate_metadata(str(self.path))
        self._layout_changed()


def _plain(values) -> list:
    return [v.item() if hasattr(v, "item") else v for v in np.asarray(values).tolist()]


def _labels(values) -> np.ndarray:
    values = np.asarray(values)
    return strings(values) if values.dtype.kind in "OUST" else values
