"""Is a store sound? Schema, done and missing items, non-finite values, unreadable chunks.

Everything is read lazily through dask, a block of images at a time, and reduced to one flag
per item before it reaches memory, so checking a store larger than memory works. NaN is part
of the schema in places (``baseline`` and traces of methods without a path, traces past a
method's last step); what counts as broken for each variable is spelled out in ``_BAD``.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from . import migrate
from .errors import StoreError
from .accessor import config_of
from .locks import evaluation_lock
from .ownership import is_partial
from .schema import IMAGE, ITEM, METHOD, RUN_VARIABLES, SCHEMA_VERSION
from .store import Store

BLOCK_IMAGES = 256  # images per dask block: bounded memory, few tasks


def expected_dims() -> dict[str, tuple[str, ...]]:
    """Every variable a run's store holds, with its dims (:data:`uni_lab.schema.RUN_VARIABLES`)."""
    return {name: var.dims for name, var in RUN_VARIABLES.items()}


def schema_problems(ds: xr.Dataset, expected: xr.Dataset | None = None, path="STORE") -> list[str]:
    """What makes ``ds`` not a well-formed store (or not the store ``expected`` describes)."""
    problems = []
    try:
        config = config_of(ds)
    except StoreError as exc:
        return [str(exc)]
    layout = json.loads(ds.attrs.get("uni_lab_chunks", "{}"))
    schema = ds.attrs.get("uni_lab_schema")
    if schema != SCHEMA_VERSION:
        problems.append(f"schema version {schema!r}; this uni_lab writes {SCHEMA_VERSION}"
                        + (f"; {migrate.hint(path)}." if schema == migrate.OLD_SCHEMA else "."))
        if schema == migrate.OLD_SCHEMA:  # every item variable's dims differ by that one name: said once
            return problems
    for name, dims in expected_dims().items():
        if name not in ds.variables:
            problems.append(f"variable '{name}' is missing.")
        elif ds[name].dims != dims:
            problems.append(f"variable '{name}' has dims {ds[name].dims}, expected {dims}.")
        elif "image" in dims:
            chunks = ds[name].encoding.get("chunks")
            block = layout.get("images", 1)
            if chunks is not None and block % chunks[dims.index("image")]:
                problems.append(f"variable '{name}' is chunked {chunks} on image, which does not divide the store's "
                                f"block of {block} images: shards and ranks would share chunk files.")
    for dim, key in zip(ITEM, ("models", "methods", "images")):
        labels = [str(v) for v in ds[dim].values] if dim in ds.coords else []
        if len(set(labels)) != len(labels):
            problems.append(f"coordinate '{dim}' repeats labels.")
        if set(labels) != set(config.get(key, {})):
            problems.append(f"coordinate '{dim}' does not match the configuration's {key}.")
    if expected is not None:
        if layout != json.loads(expected.attrs.get("uni_lab_chunks", "{}")):
            problems.append(f"its chunk layout {layout} is not this version's for these images "
                            f"({expected.attrs.get('uni_lab_chunks')}).")
        for dim in expected.dims:
            old = ds[dim].values if dim in ds.coords else None
            if old is None or len(old) != expected.sizes[dim] or not np.array_equal(old, expected[dim].values):
                problems.append(f"coordinate '{dim}' differs from this run's.")
    return problems


# Per variable: which values in a done item are broken, as a lazy boolean array.
def _not_all_finite(v):
    return ~np.isfinite(v)


def _baseline_bad(v):  # all NaN (a method without a baseline) or all finite, never a mixture or Inf
    other = [d for d in v.dims if d not in ITEM]
    nan = v.isnull()
    return np.isinf(v) | (nan.any(other) & ~nan.all(other))


def _trace_bad(v):  # finite values form a prefix along step (NaN pads short paths); no Inf
    fin = np.isfinite(v).data
    rises = fin[..., 1:] & ~fin[..., :-1]
    return np.isinf(v).any("step") | xr.DataArray(rises, dims=v.dims).any("step")


_BAD = {
    "attribution": _not_all_finite, "input": _not_all_finite, "seconds": _not_all_finite,
    "prob_input": _not_all_finite, "logit_input": _not_all_finite, "target": lambda v: v.isnull() | (v < 0),
    "predicted": lambda v: v.isnull() | (v < 0),
    "baseline": _baseline_bad,
}


def _bad_of(name: str, var: xr.DataArray):
    if name in _BAD:
        return _BAD[name](var)
    if name == "trace_grad_norm":  # NaN at α = 0 for closed-form paths: the engine skips that gradient
        return _trace_bad(var.isel(step=slice(1, None)))
    if name.startswith("trace_"):
        return _trace_bad(var)
    return np.isinf(var)  # other item variables (NaN may legitimately mean "not measured")


@dataclass
class Report:
    path: Path
    total: int = 0
    done: int = 0
    by_method: dict = field(default_factory=dict)  # (model, method) -> (done, total)
    missing: list = field(default_factory=list)  # items not done: the next run computes them
    partial: list = field(default_factory=list)  # not-done items holding data from an interrupted write
    nonfinite: list = field(default_factory=list)  # (variable, item) of done items with broken values
    unreadable: list = field(default_factory=list)  # (variable, item) whose chunk cannot be decoded
    damaged: list = field(default_factory=list)  # every (variable, item) in an undecodable chunk, done or not
    problems: list = field(default_factory=list)  # schema
    stray: list = field(default_factory=list)  # temporary files of interrupted writes
    repaired: tuple = (0, 0)  # items, images
    rebuilt: list = field(default_factory=list)  # metadata files rewritten from their other copy

    @property
    def consistent(self) -> bool:
        return not (self.problems or self.nonfinite or self.unreadable)

    def format(self, limit: int = 10) -> str:
        lines = [f"store: {self.path}", f"items: {self.done} of {self.total} done, {len(self.missing)} missing"]
        for (model, method), (d, t) in self.by_method.items():
            lines.append(f"  {model} {method}: {d}/{t}")

        def listing(title, rows):
            if rows:
                lines.append(f"{title}: {len(rows)}")
                lines.extend(f"  {r}" for r in rows[:limit])
                if len(rows) > limit:
                    lines.append(f"  ... and {len(rows) - limit} more")

        listing("schema problems", self.problems)
        listing("unreadable (damaged chunks)", [f"{v} {item}" for v, item in self.unreadable])
        listing("non-finite values in done items", [f"{v} {item}" for v, item in self.nonfinite])
        listing("missing items", self.missing)
        listing("partial items (not done; the next run rewrites them)", self.partial)
        listing("temporary files left by interrupted writes", self.stray)
        if self.rebuilt:
            lines.append(f"rebuilt damaged metadata: {', '.join(self.rebuilt)}")
        if any(self.repaired):
            lines.append(f"repaired: {self.repaired[0]} items and all items of {self.repaired[1]} images marked "
                         "not done; rerun the same command to recompute them")
        fix = (f"`{migrate.COMMAND} {self.path}`" if any(migrate.COMMAND in p for p in self.problems)
               else f"`uni-lab check --repair {self.path}`, then rerun the same command")
        lines.append("consistent" if self.consistent else f"INCONSISTENT: run {fix}")
        return "\n".join(lines)


def _labels(flags: xr.DataArray) -> list[tuple]:
    coords = [flags[d].values for d in flags.dims]
    return [tuple(str(c[i]) for c, i in zip(coords, idx)) for idx in zip(*np.nonzero(flags.values))]


def _compute(var: xr.DataArray, raw: xr.DataArray, fn, name: str, report: Report) -> xr.DataArray | None:
    """``fn(var)`` computed block-wise. A damaged chunk fails its whole block, so then go image by
    image over ``raw`` (every image of a damaged chunk fails), and item by item inside a failing image: damaged
    items are reported and flagged False. None when nothing could be read at all."""
    try:
        return fn(var).compute()
    except Exception as exc:
        error = exc
    dims = [d for d in ITEM if d in raw.dims]
    out = xr.DataArray(np.zeros([raw.sizes[d] for d in dims], bool), dims=dims,
                       coords={d: raw[d].values for d in dims})
    found = False
    for label in raw.image.values:
        one = raw.sel(image=[label])
        try:
            out.loc[{"image": label}] = fn(one).compute().transpose(*dims).isel(image=0).values
            continue
        except Exception:
            pass
        keep = [d for d in dims if d != "image"]
        for labels in itertools.product(*(raw[d].values for d in keep)):
            at = dict(zip(keep, labels))
            try:
                out.loc[{**at, "image": label}] = bool(fn(one.sel({d: [v] for d, v in at.items()})).compute().values.any())
            except Exception:
                found, entry = True, (name, tuple(str(v) for v in labels) + (str(label),))
                if entry not in report.unreadable:
                    report.unreadable.append(entry)
    if not found:
        report.problems.append(f"variable '{name}' cannot be checked ({error.__class__.__name__}: {error}).")
        return None
    return out


def _json_object(path: Path) -> dict | None:
    """The JSON object in ``path``, or None where it is unreadable, not JSON, or not an object
    (``null`` or a list are valid JSON, yet no zarr metadata)."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _json_ok(path: Path) -> bool:
    return _json_object(path) is not None


def repair_metadata(path: str | Path) -> list[str]:
    """Rebuild damaged metadata files of a format-2 store from their other copy.

    Every ``.zgroup``/``.zattrs``/``.zarray`` is kept twice: in its own file and in the consolidated
    ``.zmetadata``. A damaged own file is rewritten from ``.zmetadata``; a damaged ``.zmetadata`` is
    consolidated anew from the own files. Returns the files rewritten; raises where both copies of
    one entry are gone (then the store cannot be saved)."""
    import zarr

    root = Path(path)
    consolidated = _json_object(root / ".zmetadata")
    entries = consolidated.get("metadata") if consolidated is not None else None
    entries = {k: v for k, v in entries.items() if isinstance(v, dict)} if isinstance(entries, dict) else None
    rebuilt = []
    if entries is not None:
        for key, meta in entries.items():
            own = root / key
            if not _json_ok(own) and own.resolve().is_relative_to(root.resolve()):  # a key never writes outside
                own.parent.mkdir(parents=True, exist_ok=True)
                own.write_text(json.dumps(meta, indent=2))
                rebuilt.append(key)
    names = [p for p in root.rglob(".z*") if p.name in (".zgroup", ".zattrs", ".zarray")]
    broken = [str(p.relative_to(root)) for p in names if not _json_ok(p)]
    if broken:
        raise StoreError(f"store '{root}': metadata {broken[:5]} is damaged and has no intact copy, so it cannot "
                         "be repaired (nor proven uni_lab's, so --overwrite will not replace it): move it aside and "
                         "rerun its `uni-lab run`.")
    if entries is None:
        zarr.consolidate_metadata(str(root), zarr_format=2)
        rebuilt.append(".zmetadata")
    return rebuilt


def check_store(path: str | Path, repair: bool = False) -> Report:
    """Check the store at ``path``; with ``repair``, rebuild damaged metadata, mark broken items not done
    and drop temp files."""
    store = Store(path)
    store.check_named()
    if not store.exists():
        raise StoreError(f"'{path}' is not a zarr store (no .zgroup); pass the --out of a run.")
    rebuilt = []
    if repair:
        with evaluation_lock(store):  # no run or evaluation may write while metadata is rebuilt
            rebuilt = repair_metadata(store.path)
    ds = store.open()
    report = Report(Path(path), problems=schema_problems(ds, path=path), rebuilt=rebuilt)
    if migrate.interrupted(store.path):
        report.problems.insert(0, f"a migration to schema {SCHEMA_VERSION} was interrupted; rerun "
                                  f"`{migrate.COMMAND} {path}` to finish it.")
    report.stray = sorted(str(p.relative_to(store.path)) for p in store.path.rglob("*.partial")
                          if p.is_file() and not p.is_symlink() and is_partial(p.name))
    if any("missing" in p or "dims" in p or "schema version" in p for p in report.problems) or "done" not in ds:
        return report
    raw, ds = ds, ds.chunk({"image": BLOCK_IMAGES})
    done = _compute(ds["done"], raw["done"], lambda v: v, "done", report)
    if done is None:
        return _finish(store, report, repair)
    done = done.astype(bool)
    report.total, report.done = int(done.size), int(done.sum())
    for model in done.model.values:
        for method in done[METHOD].values:
            d = done.sel({"model": model, METHOD: method})
            report.by_method[(str(model), str(method))] = (int(d.sum()), int(d.size))
    report.missing = _labels(~done)
    image_done = done.any(METHOD)
    for name, var in ds.data_vars.items():
        if name == "done" or not set(IMAGE) <= set(var.dims):
            continue
        on_items = METHOD in var.dims
        mask = done if on_items else image_done
        other = [d for d in var.dims if d not in ITEM]

        def broken(v, name=name, other=other, mask=mask):
            bad = _bad_of(name, v)
            bad = bad.any([d for d in other if d in bad.dims]) if other else bad
            return bad & mask

        flags = _compute(var, raw[name], broken, name, report)
        if flags is not None:
            report.nonfinite += [(name, item) for item in _labels(flags)]
        if flags is not None and on_items and var.dtype.kind == "f":
            partial = _compute(var, raw[name], lambda v, other=other: (v.notnull().any(other) if other else v.notnull()) & ~done,
                               name, report)
            if partial is not None:
                report.partial += [item for item in _labels(partial) if item not in report.partial]
    # A damaged chunk of an item that is not done is only a partial item: the next run rewrites it
    # (after --repair has replaced the chunk, which other items may share).
    report.damaged = list(report.unreadable)
    done_set = {tuple(map(str, item)) for item in _labels(done)}
    for var, item in list(report.unreadable):
        if len(item) == 3 and var != "done" and item not in done_set:
            report.unreadable.remove((var, item))
            if item not in report.partial:
                report.partial.append(item)
    return _finish(store, report, repair)


def _finish(store: Store, report: Report, repair: bool) -> Report:
    if not repair:
        return report
    items, images = set(), set()
    for _, item in report.nonfinite + report.unreadable:
        (items if len(item) == 3 else images).add(item)
    with evaluation_lock(store):
        store.drop_chunks(report.damaged)
        store.reset(items=sorted(items), images=sorted(images))
        for rel in report.stray:
            (store.path / rel).unlink(missing_ok=True)
    report.repaired = (len(items), len(images))
    report.nonfinite, report.unreadable, report.damaged, report.stray = [], [], [], []
    return report


def store_summary(report: Report) -> str:
    """The report as JSON (for scripts): counts and lists."""
    return json.dumps({"path": str(report.path), "consistent": report.consistent, "total": report.total,
                       "done": report.done, "missing": report.missing, "partial": report.partial,
                       "nonfinite": report.nonfinite, "unreadable": report.unreadable,
                       "problems": report.problems, "stray": report.stray}, indent=1)
