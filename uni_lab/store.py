"""The store on disk: created once, filled item by item, then widened by evaluations.

What it holds is :mod:`uni_lab.schema` (the run's empty dataset: :mod:`uni_lab.skeleton`); who
may write it at a time is :mod:`uni_lab.locks`; zarr's private calls are :mod:`uni_lab.zarr_io`;
the variables evaluations add are written by :mod:`uni_lab.evaluation_variables`, a mixin of
:class:`Store`. With that mixin, this is the only code that addresses a store by position. An
item (model, method, image) is written in one pass over its variables, and ``done`` is set only
after all of them, so a run killed mid-write leaves the item not-done and a rerun recomputes it. Chunks span blocks
of images (:func:`uni_lab.schema.chunking`); zarr replaces a chunk file whole (temporary file,
then rename), so a killed write leaves a chunk's previous version, never half of it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from . import ownership
from .accessor import config_of
from .errors import StoreError
from .evaluation_variables import EvaluationVariables
from .locks import lock_folder
from .schema import ITEM, ZARR_FORMAT
from .zarr_io import assign, metadata_files

FLUSH_S = 60.0  # staged items are written at the latest this long after the first of their chunk


def _write_files(root: Path, files: dict[str, bytes]) -> None:
    for key, data in files.items():
        path = root.joinpath(*key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _diff(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if a != b else []


def _warn_partition(old: str | None, new: str | None, path) -> None:
    """Resuming with another split of the work (batch, pass size) is allowed, but its maps differ
    from the earlier items' in float rounding; say so rather than mix them silently."""
    old_p, new_p = json.loads(old or "{}"), json.loads(new or "{}")
    if old_p and new_p and old_p != new_p:
        changed = ", ".join(f"{k} {old_p.get(k)} -> {new_p.get(k)}" for k in sorted(set(old_p) | set(new_p))
                            if old_p.get(k) != new_p.get(k))
        warnings.warn(f"store '{path}' was computed with another partition of the work ({changed}); "
                      "items computed now differ from earlier ones in float rounding.", stacklevel=3)


class Store(EvaluationVariables):
    """A run's store on disk: created once, then filled item by item.

    With ``staging`` (a run sets it), item and input writes are held in memory until their map
    chunk is complete, the run has moved past it, ``FLUSH_S`` have passed, or anything is read:
    a map chunk is then written whole once instead of read, changed and rewritten for every
    batch (at 64² a chunk holds 170 images, 21 batches of 8). Held items are not done yet, so
    a killed run loses at most those (a chunk's worth per method, or FLUSH_S of work)."""

    def __init__(self, path: str | Path):
        self.given = str(path)  # as typed: Path("") is Path("."), the user's current folder
        self.path = Path(path)
        self.created = False  # this object made the store at path in this process (see remove_created)
        self._group = None
        self.staging = False
        self._staged: dict = {}
        self._chunks = None
        self.lock_mode: str | None = None  # "exclusive" | "shared": a run's lock, taken as the store appears
        self._lock_fd: int | None = None

    def hold(self, mode: str) -> None:
        """Hold the writer lock (see :func:`evaluation_lock`) until :meth:`release`: ``exclusive`` for a
        run of all images, ``shared`` for ``--shard`` jobs and torchrun ranks, which write disjoint items."""
        if self._lock_fd is not None:
            return
        more = (", or split the images over jobs with --shard I/N" if mode == "exclusive" else "")
        self._lock_fd = lock_folder(self.path, mode == "exclusive", more=more)

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def exists(self) -> bool:
        return (self.path / ".zgroup").exists() or (self.path / "zarr.json").exists()

    def open(self) -> xr.Dataset:
        try:
            return xr.open_zarr(self.path)
        except Exception as exc:
            raise StoreError(f"'{self.path}' cannot be opened as a zarr store ({exc.__class__.__name__}: {exc}). "
                             f"`uni-lab check --repair {self.path}` rebuilds damaged metadata from its second "
                             "copy; otherwise choose another --out.") from exc

    def open_or_create(self, ds: xr.Dataset, overwrite: bool = False) -> bool:
        """The one way a store comes to be: create it from ``ds`` (replacing one with ``overwrite``),
        or check that the existing one was made by the same configuration. Where another process
        creates it first (shards started at once), that one is checked instead.

        Returns whether this call created it (a store it did not create may still differ in layout)."""
        if self.exists() and not overwrite:
            existing = self.open()
            self.refuse_other_configuration(existing, ds)
            _warn_partition(existing.attrs.get("uni_lab_partition"), ds.attrs.get("uni_lab_partition"), self.path)
            if self.lock_mode is not None:
                self.hold(self.lock_mode)
            self._note_changed_plugins(existing.attrs, ds.attrs)
            return False
        self.check_creatable(overwrite)
        if not self._create(ds, overwrite):
            return self.open_or_create(ds)
        return True

    def refuse_other_configuration(self, existing: xr.Dataset, ds: xr.Dataset) -> None:
        """A store is resumed only by the configuration that wrote it (``uni_lab_config``), in this schema."""
        from .migrate import refuse_old

        old = config_of(existing)
        refuse_old(self.path, existing.attrs.get("uni_lab_schema"))
        differing = _diff(old, json.loads(ds.attrs["uni_lab_config"]))
        if differing:
            hint = (f" A store made with the fast view {old.get('fast_view', 'off')} resumes with "
                    f"UNI_LAB_FAST_VIEW={1 if old.get('fast_view') == 'on' else 0}." if differing == ["fast_view"] else "")
            raise StoreError(f"store '{self.path}' was written by another configuration (differs in: "
                             f"{', '.join(differing)}). Use --overwrite to replace it, or a new --out.{hint}")

    def _note_changed_plugins(self, old: dict, new: dict) -> None:
        """A plugin edited since the store was written: its done items came from the old code. Said on
        every resume, and kept in the store (``uni_lab_plugin_changes``) once the lock is held."""
        from .methods import changed_plugins

        now = json.loads(new.get("uni_lab_plugins", "{}"))
        changed = changed_plugins(json.loads(old.get("uni_lab_plugins", "{}")), now)
        if not changed:
            return
        named = ", ".join(f"{key} ({now[key].get('file')})" for key in changed)
        warnings.warn(f"store '{self.path}': the source of {named} changed since the store was "
                      "written; its done items keep the old code's results and only new items use the new code. "
                      "Use --overwrite (or a new --out) for results of the current code alone.", stacklevel=4)
        if self._lock_fd is not None:
            seen = json.loads(old.get("uni_lab_plugin_changes", "[]"))
            entry = {key: now[key]["source_sha256"] for key in changed}
            if entry not in seen:
                self.update_attrs({"uni_lab_plugin_changes": json.dumps(seen + [entry], sort_keys=True)})

    def check_named(self) -> None:
        """A reader's path that names nothing ('' would be the working folder): one line, not a search there."""
        if not self.given.strip():
            raise StoreError(f"the store path {self.given!r} is empty; pass the folder of a store (the --out of a "
                             "`uni-lab run`).")

    def check_path(self) -> None:
        """A path that can never hold a store: refused before a run loads anything."""
        shown = repr(self.given)
        if not self.given.strip():
            raise StoreError(f"--out {shown} is empty; name the store's folder, e.g. --out runs/mine.zarr.")
        if self.path.is_symlink():  # replacing or creating it would act on what it points to, or fail half-way
            raise StoreError(f"--out {shown} is a symbolic link; pass the folder itself "
                             f"({str(self.path.resolve())!r}) or another --out.")
        here, target = Path.cwd().resolve(), self.path.resolve()
        if target == here or target in here.parents:
            raise StoreError(f"--out {shown} is the current folder or holds it; a store needs a folder of its own, "
                             "e.g. --out runs/mine.zarr.")
        if os.path.lexists(self.path) and not self.path.is_dir():
            raise StoreError(f"--out {shown} exists and is not a folder (a file, FIFO or device); choose another --out.")
        if any(p.exists() and not p.is_dir() for p in self.path.parents):
            raise StoreError(f"--out {shown} lies under a file, not a folder; choose another --out.")

    def check_replaceable(self, overwrite: bool) -> None:
        """``check_path``, and a folder at ``path`` that this run may neither resume nor replace is refused."""
        self.check_path()
        if not self.path.exists() or self.exists() and not overwrite:
            return
        if overwrite:
            ownership.removable(self.path)  # --overwrite replaces uni_lab's stores and empty folders, nothing else
        elif any(self.path.iterdir()):
            raise StoreError(f"'{self.path}' exists and is not a uni_lab store; choose another --out.")

    def _unwritable(self, exc: OSError) -> StoreError:
        return StoreError(f"cannot write the store at '{self.path}' ({exc.__class__.__name__}: {exc}); "
                          "choose a writable --out.")

    def check_creatable(self, overwrite: bool) -> None:
        """Raise now, before any work, what creating the store would fail on (a foreign folder, no write access)."""
        self.check_replaceable(overwrite)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unwritable(exc) from exc
        if not os.access(self.path.parent, os.W_OK | os.X_OK):
            raise StoreError(f"cannot write the store at '{self.path}' (no write permission on "
                             f"'{self.path.parent}'); choose a writable --out.")
        if overwrite and self.exists():  # another process's store is refused now, not after loading models
            os.close(lock_folder(self.path, True))

    def _create(self, ds: xr.Dataset, overwrite: bool = False) -> bool:
        """Write the empty store of ``ds``'s layout (after :meth:`check_creatable`).

        Returns False when another process created the store first (then validate it)."""
        if self.path.exists():
            if not overwrite and self.exists():
                return False
            self.check_replaceable(overwrite)
            fd = lock_folder(self.path, True)  # never delete a store another process is writing
            try:
                if ownership.removable(self.path) == "store":  # checked again under the lock
                    ownership.remove_store(self.path)
                else:
                    self.path.rmdir()  # empty: rmdir fails rather than remove a file that just appeared
            finally:
                os.close(fd)
        # Built aside, then renamed into place: rename is atomic, so shards started at once
        # (--shard i/n jobs) never see a half-made store, and the loser of a race validates.
        # mkdtemp makes a new folder, so what is removed on failure is only ever this call's own.
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.creating-", dir=self.path.parent))
        try:
            _write_files(tmp, metadata_files(ds, ZARR_FORMAT))
            if self.lock_mode is not None:  # locked before it is visible: no reader ever sees it unheld
                self._lock_fd = lock_folder(tmp, self.lock_mode == "exclusive", shown=self.path)
            os.rename(tmp, self.path)
            self.created = True
            return True
        except OSError as exc:
            self.release()
            shutil.rmtree(tmp, ignore_errors=True)
            if self.exists() and not overwrite:
                return False
            raise self._unwritable(exc) from exc

    def remove_created(self) -> bool:
        """Remove the store this object created in this process, while it still holds its lock and the
        folder at ``path`` is still the one it locked; anything else is left alone. Returns whether removed."""
        if not self.created or self._lock_fd is None:
            return False
        try:
            same = os.path.samestat(os.fstat(self._lock_fd), os.lstat(self.path))
        except OSError:
            return False
        if not same:
            return False
        try:
            ownership.remove_store(self.path)
        except StoreError as exc:
            warnings.warn(f"the unfinished store was left in place: {exc}", stacklevel=2)
            return False
        self.created = False
        return True

    def group(self):
        import zarr

        if self._group is None:
            self._group = zarr.open_group(str(self.path), mode="r+")
        return self._group

    def index_of(self, dim: str, labels) -> list[int]:
        values = list(self.group()[dim][:])
        return [values.index(v) for v in labels]

    def _read(self, name: str, index=slice(None)) -> np.ndarray:
        self.flush_staged()
        try:
            return np.asarray(self.group()[name][index])
        except Exception as exc:  # a damaged chunk surfaces as a codec or zarr error
            raise StoreError(f"store '{self.path}': variable '{name}' cannot be read ({exc.__class__.__name__}: {exc}). "
                             f"Run `uni-lab check --repair {self.path}` and rerun, or use --overwrite.") from exc

    def done(self) -> np.ndarray:
        """The done flags ``(model, method, image)`` as a boolean array."""
        return self._read("done").astype(bool)

    def written_targets(self, mi: int) -> np.ndarray:
        """The stored class of every image for model ``mi``; -1 where its inputs are not written yet."""
        return self._read("target", mi).astype(np.int64)

    def image_hashes(self) -> list[str]:
        """The content hash of every image as the store recorded it ("" where it has none)."""
        g = self.group()
        return [str(v) for v in g["image_hash"][:]] if "image_hash" in g else [""] * g["image"].shape[0]

    def write_inputs(self, mi: int, images, pixels, targets, predicted, probs, logits) -> None:
        """Inputs of images ``images`` (indices) for model ``mi``, one region write per variable.

        ``target`` last: it marks the images' inputs as written (see :meth:`written_targets`)."""
        columns = {"input": np.asarray(pixels, dtype="f4"), "predicted": np.asarray(predicted, dtype="i8"),
                   "prob_input": np.asarray(probs, dtype="f8"),
                   "logit_input": np.asarray(logits, dtype="f8"), "target": np.asarray(targets, dtype="i8")}
        self._put(("inputs", mi), images, columns)

    def _put(self, group: tuple, images, columns: dict) -> None:
        if not self.staging:
            self._write_now(group, list(images), columns)
            return
        images = np.asarray([int(i) for i in images])
        maps = self.chunks()["maps"]
        now = time.monotonic()
        chunk_of = images // maps
        for c in np.unique(chunk_of):
            rows = np.flatnonzero(chunk_of == c)
            entry = self._staged.setdefault(group + (int(c),), {"t0": now, "images": [], "parts": []})
            entry["images"].append(images[rows])
            entry["parts"].append({name: np.asarray(v)[rows] for name, v in columns.items()})  # copies: free the batch
        first = int(chunk_of.min())
        n = self._chunks["n"]
        for key in sorted(self._staged):
            entry = self._staged[key]
            complete = sum(map(len, entry["images"])) == min(n, (key[-1] + 1) * maps) - key[-1] * maps
            passed = key[:-1] == group and key[-1] < first  # images come in order: that chunk gets no more
            if complete or passed or now - entry["t0"] > FLUSH_S:
                self._flush(key)

    def _flush(self, key: tuple) -> None:
        entry = self._staged.pop(key)
        images = np.concatenate(entry["images"])
        order = np.argsort(images, kind="stable")
        self._write_now(key[:-1], images[order].tolist(),
                        {n: np.concatenate([part[n] for part in entry["parts"]])[order] for n in entry["parts"][0]})

    def flush_staged(self) -> None:
        """Write every staged item (the end of a run, a failure, before a read)."""
        for key in sorted(self._staged):
            self._flush(key)

    def chunks(self) -> dict:
        """The store's ``uni_lab_chunks`` (images a block, a map chunk) and its number of images ``n``."""
        if self._chunks is None:
            g = self.group()
            self._chunks = {"images": 1, "maps": 1, **json.loads(g.attrs.get("uni_lab_chunks", "{}")), "n": g["image"].shape[0]}
        return self._chunks

    def _write_now(self, group: tuple, images: list[int], columns: dict) -> None:
        """Each variable in one region write per run of consecutive images, then the flag that marks
        them written (``target`` for inputs, ``done`` for items) in a second call, so an interrupted
        write leaves every image or item of the call not marked."""
        g = self.group()
        runs = _runs(images)
        columns = dict(columns)
        if group[0] == "inputs":
            at, flag = (group[1],), ("target", columns.pop("target"))
        else:
            at, flag = group[1:], ("done", None)
        writes = []
        for name, value in columns.items():
            arr = g[name]
            value = np.asarray(value, dtype=arr.dtype)
            if arr.ndim == 4 and value.shape[-1] < arr.shape[-1]:  # traces shorter than the step axis
                value = np.concatenate([value, np.full(value.shape[:-1] + (arr.shape[-1] - value.shape[-1],), np.nan)], -1)
            writes += [(arr, at + (slice(lo, hi),), value[rows]) for lo, hi, rows in runs]
        assign(writes)
        name, value = flag
        assign([(g[name], at + (slice(lo, hi),), np.ones(hi - lo, bool) if value is None else value[rows])
                 for lo, hi, rows in runs])

    def drop_chunks(self, damaged) -> int:
        """Replace the chunk files that hold the damaged ``(variable, item labels)`` with fresh
        ones: removed (read back as the fill value, NaN or not-done), or for the integer
        ``target``/``predicted``, which have no fill value, rewritten as -1 (not written). A chunk
        spans many items and a partial write must read it first, so a damaged one would stop the
        rerun that recomputes its items. Every item of a damaged chunk is unreadable, so
        :meth:`reset` marks them all for recomputation. Returns the number of chunks replaced."""
        import itertools

        g = self.group()
        keys = set()
        for name, item in damaged:
            arr = g[name]
            dims = arr.attrs["_ARRAY_DIMENSIONS"]
            at = dict(zip(ITEM if len(item) == 3 else ("model", "image"), item))
            ranges = []
            for d, n, c in zip(dims, arr.shape, arr.chunks):
                ranges.append([self.index_of(d, [at[d]])[0] // c] if d in at else range(-(-n // c)))
            keys.update((name, k) for k in itertools.product(*ranges))
        for name, k in sorted(keys):
            arr = g[name]
            if arr.dtype.kind in "iu":
                region = tuple(slice(i * c, min(n, (i + 1) * c)) for i, c, n in zip(k, arr.chunks, arr.shape))
                arr[region] = np.full([s.stop - s.start for s in region], -1, arr.dtype)  # whole chunk: nothing read
            else:
                (self.path / name / ".".join(map(str, k))).unlink(missing_ok=True)
        return len(keys)

    def damaged_items(self, images) -> tuple[list, set, set]:
        """The chunks a resume relies on that do not hold what was written: every run variable's chunk
        that covers a done item (or written input) among ``images`` must decode, and ``attribution`` and
        ``input`` (never the fill value once written) must be present. Cheap next to the compute:
        each such chunk is read once. Returns ``(damaged, items, inputs)`` as :meth:`drop_chunks` and
        :meth:`reset` take them (labels), with every item and input of a damaged chunk."""
        from .schema import IMAGE, RUN_VARIABLES

        g = self.group()
        done, written = self.done(), self._read("target") >= 0
        labels = {d: [str(v) for v in g[d][:]] for d in ITEM}
        mine = np.zeros(done.shape[-1], bool)
        mine[list(images)] = True
        damaged, items, inputs = [], set(), set()
        for name, var in RUN_VARIABLES.items():
            if var.dims[:len(ITEM)] == ITEM:
                lead, used = ITEM, done
            elif var.dims[:len(IMAGE)] == IMAGE:
                lead, used = IMAGE, written
            else:
                continue
            arr = g[name]
            step = arr.chunks[len(lead) - 1]
            for at in np.ndindex(*used.shape[:-1]):
                for lo in range(0, used.shape[-1], step):
                    hi = min(lo + step, used.shape[-1])
                    if not (used[at][lo:hi] & mine[lo:hi]).any():
                        continue
                    region = at + (slice(lo, hi),)
                    if not self._chunks_sound(arr, name, region, required=name in ("attribution", "input")):
                        for ii in range(lo, hi):
                            key = tuple(labels[d][i] for d, i in zip(lead, at + (ii,)))
                            damaged.append((name, key))
                            (items if lead == ITEM else inputs).add(key)
        return damaged, items, inputs

    def _chunks_sound(self, arr, name: str, region: tuple, required: bool) -> bool:
        import itertools

        grid = [range(r.start // c, -(-r.stop // c)) if isinstance(r, slice) else [r // c]
                for r, c in zip(region, arr.chunks)]
        grid += [range(-(-n // c)) for n, c in zip(arr.shape[len(region):], arr.chunks[len(region):])]
        for k in itertools.product(*grid):
            f = self.path / name / ".".join(map(str, k))
            if not f.exists():
                if required:
                    return False
                continue
            if f.stat().st_size == 0:
                return False
        try:
            np.asarray(arr[region])
        except Exception:  # a damaged chunk surfaces as a codec error of whatever kind
            return False
        return True

    def reset(self, items=(), images=()) -> None:
        """Mark items ``(model, method, image)`` not done and images ``(model, image)`` not written,
        by label, so the next run recomputes them (``uni-lab check --repair``)."""
        g = self.group()
        for model, method, image in items:
            (mi,), (mei,), (ii,) = (self.index_of(d, [v]) for d, v in zip(ITEM, (model, method, image)))
            g["done"][mi, mei, ii] = False
        for model, image in images:
            (mi,), (ii,) = self.index_of("model", [model]), self.index_of("image", [image])
            g["target"][mi, ii] = -1
            g["done"][mi, :, ii] = False

    def write_items(self, mi: int, mei: int, images, values: dict) -> None:
        """Items ``(mi, mei, i)`` for the image indices ``images``: each variable in one region write
        (``values[name]`` has one row per image), then their done flags (last, so an interrupted
        write leaves every item of the call not-done). With :attr:`staging`, see :meth:`_put`."""
        self._put(("items", mi, mei), images, values)

    def write_item(self, mi: int, mei: int, ii: int, values: dict) -> None:
        """One item: :meth:`write_items` for a single image."""
        self.write_items(mi, mei, [ii], {k: np.asarray(v)[None] for k, v in values.items()})


def _runs(indices) -> list[tuple[int, int, slice]]:
    """Consecutive runs of ``indices``: ``(first, last + 1, positions in indices)``, so a region
    write covers each run (a zarr call costs milliseconds whatever its size)."""
    runs, start = [], 0
    idx = [int(i) for i in indices]
    for k in range(1, len(idx) + 1):
        if k == len(idx) or idx[k] != idx[k - 1] + 1:
            runs.append((idx[start], idx[k - 1] + 1, slice(start, k)))
            start = k
    return runs


def open_store(path: str | Path, lazy: bool = True) -> xr.Dataset:
    """Open a store with dask-backed variables (``lazy``) or loaded into memory. A store of schema 2
    is read under schema 3's names (:func:`uni_lab.migrate.renamed`, with a notice naming
    ``uni-lab migrate``), so ``ds.sel(xai_method="uni")`` works on every store."""
    from .migrate import renamed

    ds = renamed(Store(path).open(), path)
    return ds if lazy else ds.load()
