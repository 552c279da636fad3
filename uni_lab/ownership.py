"""What uni_lab may delete: only a store it can prove it wrote, file by file.

A folder is a uni_lab store when its root attributes carry ``uni_lab_schema`` (written by
:mod:`uni_lab.skeleton`) and every entry in it is a zarr member uni_lab writes: the root's
metadata files, and one folder per variable holding only array metadata and chunk files
(or zarr's ``.partial`` temporaries of a killed write). Anything else (a user's file, a
symbolic link, a FIFO, a nested folder) means the folder is not provably ours, and nothing in it
is removed. :func:`remove_store` deletes exactly the listed files, then the emptied folders with
``rmdir``, which fails rather than delete a file that appeared in the meantime.
"""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from .errors import StoreError

_PARTIAL = r"(\.[0-9a-f]{32}\.partial)?"  # zarr.storage.LocalStore's temporary, left by a killed write
_CHUNK = re.compile(r"\d+(\.\d+)*" + _PARTIAL)
_META = re.compile(r"(\.zgroup|\.zattrs|\.zmetadata|\.zarray)" + _PARTIAL)


def is_member(name: str) -> bool:
    """Whether ``name`` is a file name uni_lab writes in a variable's folder (metadata, chunk, temporary)."""
    return bool(_CHUNK.fullmatch(name) or _META.fullmatch(name))


def is_partial(name: str) -> bool:
    """Whether ``name`` is zarr's temporary file of an interrupted write (``0.0.<hex>.partial``)."""
    return bool(_CHUNK.fullmatch(name) or _META.fullmatch(name)) and name.endswith(".partial")


def _shown(path: Path) -> str:
    return repr(str(path))


def _mode(path: Path) -> int:
    try:
        return os.lstat(path).st_mode  # lstat: a symbolic link is never followed into someone else's folder
    except OSError:
        return 0


def _plain_file(path: Path) -> bool:
    return stat.S_ISREG(_mode(path))


def _plain_dir(path: Path) -> bool:
    return stat.S_ISDIR(_mode(path))


def is_uni_lab_root(path: Path) -> bool:
    """Whether ``path``'s root attributes are a uni_lab store's (``uni_lab_schema`` set)."""
    attrs = Path(path) / ".zattrs"
    try:
        return _plain_file(attrs) and "uni_lab_schema" in json.loads(attrs.read_text())
    except (OSError, ValueError, TypeError):
        return False


def store_files(path: str | Path) -> list[Path]:
    """Every file of the uni_lab store at ``path``, or StoreError naming what makes it not provably one."""
    root = Path(path)
    if not _plain_dir(root):
        raise StoreError(f"{_shown(root)} is not a folder uni_lab wrote; uni_lab deletes only its own stores. "
                         "Choose another --out or remove it yourself.")
    if not is_uni_lab_root(root):
        raise StoreError(f"{_shown(root)} is not a uni_lab store (no uni_lab attributes in its .zattrs); "
                         "uni_lab deletes only its own stores. Choose another --out or remove it yourself.")
    files, foreign = [], []
    for entry in sorted(root.iterdir()):
        if _plain_file(entry) and _META.fullmatch(entry.name):
            files.append(entry)
        elif _plain_dir(entry) and _plain_file(entry / ".zarray"):
            for member in sorted(entry.iterdir()):
                ok = _plain_file(member) and (_CHUNK.fullmatch(member.name) or _META.fullmatch(member.name))
                (files if ok else foreign).append(member)
        else:
            foreign.append(entry)
    if foreign:
        listed = ", ".join(_shown(p.relative_to(root)) for p in foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise StoreError(f"{_shown(root)} holds {len(foreign)} file(s) uni_lab did not write ({listed}); "
                         "nothing was deleted. Move them out of the store, or choose another --out.")
    return files


def remove_store(path: str | Path, files: list[Path] | None = None) -> None:
    """Delete the store at ``path``: exactly its own files (:func:`store_files`), then its folders."""
    root = Path(path)
    files = store_files(root) if files is None else files
    folders = sorted({f.parent for f in files if f.parent != root}, reverse=True)
    for f in files:
        f.unlink(missing_ok=True)
    try:
        for d in folders:
            d.rmdir()
        root.rmdir()
    except OSError as exc:  # a file appeared while deleting: left in place, with the folders holding it
        raise StoreError(f"{_shown(root)} was being changed while it was replaced ({exc.strerror}: "
                         f"{exc.filename}); it is left in place. Rerun once nothing else writes there.") from exc


def removable(path: str | Path) -> str | None:
    """Why ``--overwrite`` may replace ``path`` (``"missing"``, ``"empty"``, ``"store"``); StoreError otherwise."""
    root = Path(path)
    if not os.path.lexists(root):
        return "missing"
    if _plain_dir(root) and not any(root.iterdir()):
        return "empty"
    store_files(root)
    return "store"
