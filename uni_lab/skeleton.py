"""The empty dataset of a run: every variable of :data:`uni_lab.schema.RUN_VARIABLES` at its
final shape and chunks, lazily, with the attributes that make a store self-describing."""
from __future__ import annotations

import json
import time

import numpy as np
import xarray as xr

from .schema import CHANNELS, COORD_DESCRIPTIONS, METHOD, RUN_VARIABLES, SCHEMA_VERSION, chunking, run_chunks


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("uni-lab", "torch", "torchvision", "timm", "xarray", "zarr", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    out["uni-lab-source"] = source_hash()
    return out


_SOURCE: list = []


def source_hash() -> str:
    """A hash of uni_lab's own source (the package and its built-in plugins): the version string
    stays 0.1.0 across edits, so readers that must not mix code versions (the per-backbone study)
    compare this instead. Computed once per process."""
    if not _SOURCE:
        import hashlib
        from pathlib import Path

        from . import plugins

        roots = [Path(__file__).parent, *map(Path, plugins.__path__)]
        digest = hashlib.sha256()
        for root in roots:
            for f in sorted(root.rglob("*.py")):
                if "__pycache__" not in f.parts:
                    digest.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
        _SOURCE.append(digest.hexdigest()[:16])
    return _SOURCE[0]


def strings(values) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=object)  # variable-length: portable in zarr v2


def skeleton(models, methods, images, size, max_steps: int, config: dict, device: str,
             partition: dict | None = None, plugins: dict | None = None, skipped=(), labels=None) -> xr.Dataset:
    """The full, still-empty dataset of a run.

    ``images``: objects with ``id``, ``source`` and (for resume checks) ``digest``; ``skipped``:
    the bad files a ``--skip-bad-images`` run left out (``source``, ``reason``), kept in the
    attribute ``uni_lab_skipped_images``; ``labels``: the ground-truth class of each image
    (coordinate ``label``, -1 where none is given). ``config`` (``uni_lab_config``) records every
    parameter of every plugin used: it is the store's identity when a run resumes."""
    import dask.array as da

    h, w = size
    layout = chunking(len(images), size)
    sizes = {"model": len(models), METHOD: len(methods), "image": len(images), "channel": 3, "y": h, "x": w,
             "step": max_steps + 1}
    data = {}
    for name, var in RUN_VARIABLES.items():
        shape = tuple(sizes[d] for d in var.dims)
        if var.fill is None:
            values = np.full(shape, var.initial, var.dtype)
        else:
            # One dask chunk: the array is never computed (the store is created with compute=False),
            # and a graph of one task per variable instead of one per item keeps creation cheap.
            values = da.full(shape, var.fill, dtype=var.dtype, chunks=shape)
        data[name] = xr.Variable(var.dims, values, attrs=var.attrs())
        data[name].encoding["chunks"] = run_chunks(var.dims, sizes, layout)
        if var.fill is None:
            data[name].encoding["_FillValue"] = None
    ds = xr.Dataset(
        data,
        coords={"model": strings(models), METHOD: strings(methods), "image": strings(i.id for i in images),
                "image_source": ("image", strings(i.source for i in images)),
                "image_hash": ("image", strings(getattr(i, "digest", "") for i in images)),
                "label": ("image", np.full(len(images), -1, np.int64) if labels is None
                          else np.asarray(labels, np.int64)),
                "channel": strings(CHANNELS),
                "y": np.arange(h), "x": np.arange(w), "step": np.arange(max_steps + 1)},
        attrs={"title": "uni_lab attribution store", "uni_lab_schema": SCHEMA_VERSION,
               "uni_lab_config": json.dumps(config, sort_keys=True, default=str),
               "versions": json.dumps(versions()), "device": device,
               "uni_lab_partition": json.dumps(partition or {}, sort_keys=True),
               "uni_lab_chunks": json.dumps(layout, sort_keys=True),
               "uni_lab_skipped_images": json.dumps([{"source": b.source, "reason": b.reason} for b in skipped]),
               # where each plugin came from: not part of the configuration (moving a plugin file keeps a store resumable)
               "uni_lab_plugins": json.dumps(plugins or {}, sort_keys=True),
               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    )
    for name, text in COORD_DESCRIPTIONS.items():
        ds[name].attrs["description"] = text
    return ds
