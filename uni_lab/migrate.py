"""Stores of schema 2 under schema 3's names: in memory when read, on disk by ``uni-lab migrate``.

Schema 3 renames the methods dim ``method`` to ``xai_method`` (:data:`uni_lab.schema.METHOD`):
xarray's ``sel`` takes ``method=`` as its own keyword (nearest-neighbour lookup), so
``ds.sel(method="uni")`` never selected a method. Nothing else changed, so a schema-2 store is a
schema-3 store once its dim names are rewritten, and only metadata is rewritten: the dims of each
array (``_ARRAY_DIMENSIONS`` in its ``.zattrs``), the coordinate array ``method/`` (copied to
``xai_method/``), the consolidated ``.zmetadata`` and the root's ``uni_lab_schema``.

Every file is written beside and renamed over the old one, and readers see the consolidated
``.zmetadata`` alone, so its replacement is the one commit point: before it a reader sees the
whole schema-2 store, after it the whole schema-3 one. A migration killed halfway is found by
:func:`state` (``"half"``), and running the command again finishes it: before the commit point
every step is redone from the untouched schema-2 metadata, after it only the root attributes and
the removal of ``method/`` are left.
"""
from __future__ import annotations

import json
import os
import stat
import uuid
import warnings
from pathlib import Path

import xarray as xr

from . import ownership
from .errors import StoreError
from .locks import lock_folder
from .schema import METHOD, SCHEMA_VERSION

OLD_METHOD = "method"
OLD_SCHEMA = 2
COMMAND = "uni-lab migrate"


def hint(path) -> str:
    return f"`{COMMAND} {path}` rewrites it to schema {SCHEMA_VERSION} in place"


def renamed(ds: xr.Dataset, path) -> xr.Dataset:
    """A schema-2 store read under schema 3's names (in memory; the files are untouched), with a
    one-line notice naming the command that rewrites it on disk."""
    if ds.attrs.get("uni_lab_schema") != OLD_SCHEMA or OLD_METHOD not in ds.dims:
        return ds
    warnings.warn(f"store '{path}' is of schema {OLD_SCHEMA} (dim '{OLD_METHOD}'); read as schema {SCHEMA_VERSION} "
                  f"(dim '{METHOD}'). {hint(path)}.", stacklevel=3)
    out = ds.rename({OLD_METHOD: METHOD})
    out.attrs["uni_lab_schema"] = SCHEMA_VERSION
    out.attrs["uni_lab_read_from_schema"] = OLD_SCHEMA
    return out


def refuse_old(path, schema) -> None:
    """Writing into a store of another schema: its variables may mean other things there."""
    if schema == SCHEMA_VERSION:
        return
    if schema == OLD_SCHEMA:
        raise StoreError(f"store '{path}' is of schema {OLD_SCHEMA} and uni_lab writes schema {SCHEMA_VERSION}; "
                         f"nothing was written. {hint(path)}, then rerun this command.")
    raise StoreError(f"store '{path}' has schema version {schema!r}; this uni_lab writes schema {SCHEMA_VERSION} "
                     "only. Use the uni_lab that wrote it, or rerun `uni-lab run` into a new --out.")


# ---- on disk ----------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"'{path}' cannot be read as JSON ({exc.__class__.__name__}); run `uni-lab check --repair "
                         f"{path.parent}` first.") from exc
    if not isinstance(value, dict):
        raise StoreError(f"'{path}' is not a JSON object; run `uni-lab check --repair {path.parent}` first.")
    return value


def _write_json(path: Path, value: dict) -> None:
    """Written beside (zarr's temporary name, which ``uni-lab check --repair`` knows) and renamed over."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    tmp.write_text(json.dumps(value, indent=4, sort_keys=True, ensure_ascii=True, allow_nan=True))
    os.replace(tmp, path)


def _copy_file(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f"{dst.name}.{uuid.uuid4().hex}.partial")
    tmp.write_bytes(src.read_bytes())
    os.replace(tmp, dst)


def _new_attrs(attrs: dict) -> dict:
    out = dict(attrs)
    if OLD_METHOD in out.get("_ARRAY_DIMENSIONS", ()):
        out["_ARRAY_DIMENSIONS"] = [METHOD if d == OLD_METHOD else d for d in out["_ARRAY_DIMENSIONS"]]
    if isinstance(out.get("coordinates"), str):
        out["coordinates"] = " ".join(METHOD if c == OLD_METHOD else c for c in out["coordinates"].split())
    return out


def _new_key(key: str) -> str:
    head, sep, tail = key.partition("/")
    return f"{METHOD}{sep}{tail}" if sep and head == OLD_METHOD else key


def _check_path(root: Path, given: str) -> None:
    shown = repr(given)
    if not given.strip():  # Path('') is the working folder: never migrate that by accident
        raise StoreError(f"the store path is empty ({shown}); pass the folder of a store (the --out of a "
                         "`uni-lab run`).")
    if not os.path.lexists(root):
        raise StoreError(f"{shown} does not exist; pass the folder of a store (the --out of a `uni-lab run`).")
    mode = os.lstat(root).st_mode
    if stat.S_ISLNK(mode):
        raise StoreError(f"{shown} is a symbolic link; pass the store's folder itself ({str(root.resolve())!r}).")
    if not stat.S_ISDIR(mode):
        raise StoreError(f"{shown} is not a folder (a file, FIFO or device); pass the folder of a store.")
    if not ownership.is_uni_lab_root(root):
        raise StoreError(f"{shown} is not a uni_lab store (no uni_lab attributes in its .zattrs); "
                         f"{COMMAND} rewrites only stores uni_lab wrote.")
    if (root / "zarr.json").exists() or not (root / ".zmetadata").is_file():
        raise StoreError(f"{shown} has no consolidated zarr v2 metadata (.zmetadata); run `uni-lab check --repair "
                         f"{given}` first.")


def state(path) -> str:
    """``"old"`` (schema 2), ``"half"`` (a migration was interrupted), ``"current"`` (schema 3), or the
    schema number of any other store, as a string."""
    root = Path(path)
    consolidated = _read_json(root / ".zmetadata").get("metadata")
    if not isinstance(consolidated, dict) or not isinstance(consolidated.get(".zattrs", {}), dict):
        raise StoreError(f"'{root / '.zmetadata'}' holds no consolidated metadata; run `uni-lab check --repair "
                         f"{root}` first.")
    seen = consolidated.get(".zattrs", {}).get("uni_lab_schema")
    own = _read_json(root / ".zattrs").get("uni_lab_schema")
    if seen == OLD_SCHEMA and own == OLD_SCHEMA and not (root / METHOD).exists() and not _any_new_dims(root):
        return "old"
    if seen == SCHEMA_VERSION and own == SCHEMA_VERSION and not (root / OLD_METHOD).exists():
        return "current"
    if {seen, own} <= {OLD_SCHEMA, SCHEMA_VERSION}:
        return "half"
    return str(seen if seen not in (OLD_SCHEMA, SCHEMA_VERSION) else own)


def interrupted(path) -> bool:
    """Whether a migration of the store at ``path`` was stopped halfway (read only; False where its
    metadata cannot be read: ``uni-lab check`` says why)."""
    try:
        return (Path(path) / ".zmetadata").is_file() and state(path) == "half"
    except StoreError:
        return False


def _any_new_dims(root: Path) -> bool:
    return any(METHOD in _read_json(a).get("_ARRAY_DIMENSIONS", ()) for a in root.glob("*/.zattrs"))


def migrate_store(path) -> str:
    """Rewrite the schema-2 store at ``path`` to schema 3 in place, under its lock; finish an
    interrupted migration; do nothing to a schema-3 store. Returns ``"migrated"``, ``"finished"``
    (an interrupted one) or ``"current"``."""
    given = str(path)
    root = Path(path)
    _check_path(root, given)
    fd = lock_folder(root, True)
    try:
        return _migrate_locked(root, given)
    except OSError as exc:
        raise StoreError(f"store {given!r} could not be rewritten ({exc.strerror}: {exc.filename}); fix that and "
                         f"rerun `{COMMAND} {given}` to finish the migration.") from exc
    finally:
        os.close(fd)


def _migrate_locked(root: Path, given: str) -> str:
    found = state(root)
    if found == "current":
        return "current"
    if found not in ("old", "half"):
        newer = found.lstrip("-").isdigit() and int(found) > SCHEMA_VERSION
        raise StoreError(f"store {given!r} has schema version {found}; {COMMAND} rewrites schema {OLD_SCHEMA} "
                         f"to {SCHEMA_VERSION} only" + (" (a newer uni_lab wrote it: upgrade uni_lab)." if newer
                                                        else "; rerun its `uni-lab run` into a new --out."))
    before_commit = _read_json(root / ".zmetadata").get("metadata", {}).get(".zattrs", {}).get(
        "uni_lab_schema") == OLD_SCHEMA
    old, new = root / OLD_METHOD, root / METHOD
    # A folder a killed migration left without its .zarray is not an array folder, so ownership
    # would call it foreign: before the commit point the new one is made again, after it the old one goes.
    unfinished = new if before_commit else old
    if unfinished.is_dir() and not (unfinished / ".zarray").is_file():
        _remove_folder(unfinished, given)
    try:
        files = ownership.store_files(root)
    except StoreError as exc:
        first = str(exc).split("; ")[0]  # what is foreign; the rest of that message is about deleting
        raise StoreError(f"{first}; {COMMAND} rewrites only stores uni_lab can prove it wrote, and nothing was "
                         "changed: move them out and rerun.") from exc
    if before_commit:
        _rewrite_metadata(root, _read_json(root / ".zmetadata"), files)
    # after the commit point: the root's own attributes, then the old coordinate's files
    root_attrs = _read_json(root / ".zattrs")
    if root_attrs.get("uni_lab_schema") != SCHEMA_VERSION:
        _write_json(root / ".zattrs", {**root_attrs, "uni_lab_schema": SCHEMA_VERSION})
    if old.is_dir():
        _remove_folder(old, given)
    return "migrated" if found == "old" else "finished"


def _remove_folder(folder: Path, given: str) -> None:
    """A coordinate's folder, file by file, ``.zarray`` last (until then it is still an array folder),
    then the folder, with ``rmdir``: it fails rather than remove a file that is not uni_lab's."""
    if folder.is_symlink():  # its files are wherever the link points: not provably uni_lab's
        raise StoreError(f"'{folder}' is a symbolic link, which uni_lab did not write; nothing was removed: "
                         f"replace it by the folder itself and rerun `{COMMAND} {given}`.")
    members = sorted(folder.iterdir(), key=lambda p: (p.name == ".zarray", p.name))
    foreign = [p.name for p in members if not (ownership.is_member(p.name) and p.is_file() and not p.is_symlink())]
    if foreign:
        raise StoreError(f"'{folder}' holds {', '.join(map(repr, foreign[:3]))}, which uni_lab did not write; "
                         f"nothing there was removed: move them out and rerun `{COMMAND} {given}`.")
    for f in members:
        f.unlink()
    folder.rmdir()


def _rewrite_metadata(root: Path, consolidated: dict, files: list[Path]) -> None:
    """Everything up to and including the commit point (the new ``.zmetadata``), redone whole on a rerun."""
    old, new = root / OLD_METHOD, root / METHOD
    if not (old / ".zarray").is_file():
        raise StoreError(f"store '{root}' has no coordinate '{OLD_METHOD}/' to migrate; run `uni-lab check --repair "
                         f"{root}` first.")
    new.mkdir(exist_ok=True)
    # .zarray first and .zattrs last: at every moment the new folder is an array folder uni_lab wrote
    members = sorted((p for p in files if p.parent == old and not ownership.is_partial(p.name)),
                     key=lambda p: (p.name != ".zarray", p.name == ".zattrs", p.name))
    for f in members:
        if f.name == ".zattrs":
            _write_json(new / f.name, _new_attrs(_read_json(f)))
        else:
            _copy_file(f, new / f.name)
    for attrs in sorted(root.glob("*/.zattrs")):
        if attrs.parent not in (old, new):
            value = _read_json(attrs)
            if _new_attrs(value) != value:
                _write_json(attrs, _new_attrs(value))
    meta = {_new_key(k): (_new_attrs(v) if k.endswith(".zattrs") else v)
            for k, v in consolidated.get("metadata", {}).items()}
    meta[".zattrs"] = {**meta.get(".zattrs", {}), "uni_lab_schema": SCHEMA_VERSION}
    _write_json(root / ".zmetadata", {**consolidated, "metadata": meta})  # the commit point
