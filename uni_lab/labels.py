"""Ground-truth labels for a run's images (``uni-lab run --labels FILE``).

Forms read (the class is a class index, or a WordNet synset id such as ``n01440764``):

- CSV ``filename,class``, with or without a header row (``filename,class_index``, ...);
- ImageNet's localisation ground truth ``LOC_val_solution.csv`` (header
  ``ImageId,PredictionString``; the first synset of the prediction string is the class);
- JSON: ``{"filename": class, ...}`` or ``[{"filename": ..., "class": ...}, ...]``.

Synset ids become class indices through ``--synsets FILE`` (one synset a line, the line
number is the index: ``LOC_synset_mapping.txt``), or, without it, the 1000 ImageNet-1k
synsets in sorted order (the index order of torchvision's and timm's ImageNet models, from
timm's own list). Not read: the devkit's ``ILSVRC2012_validation_ground_truth.txt`` (its
1-based ILSVRC ids need ``meta.mat`` to become model indices); convert it to one of the
forms above.

A row matches an image by its file name with extension, or by its stem (LOC's ImageIds have
no extension), and its folders, if it has any, must be the last folders of the image's path
(``x/same.png`` matches ``/data/x/same.png``). Where two images of the run share a stem, or
the rows naming an image give different classes, only rows whose folders fit count; where an
image's name is its own and its rows agree, the name alone is enough (a file written under
another root still labels the run). Refused before any compute, each in one line: images
without a label, rows for one image that give different classes (named with their lines), a
row that fits several images (``same.png`` for ``x/same.png`` and ``y/same.png``: write the
folder), rows whose folders all contradict the image's path, and class numbers outside the
model's classes. Rows for images not in the run are ignored (a run on part of a data set
reads the whole set's file).
"""
from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

SYNSET = re.compile(r"^n\d{8}$")
HEADER_NAMES = {"filename", "file", "image", "imageid", "image_id", "name", "path"}


@dataclass(frozen=True)
class _Row:
    where: str  # "line 3" (CSV) or "entry 3" (JSON), for messages
    name: str
    cls: str

    @property
    def key(self) -> tuple[str, ...]:
        """The row's path parts: ``x\\same.png`` and ``./x/same.png`` are ``('x', 'same.png')``."""
        return tuple(p for p in self.name.replace("\\", "/").split("/") if p not in ("", "."))

    def __str__(self):
        return f"{self.where} '{self.name}' (class {self.cls})"


def _rows(path: Path) -> list[_Row]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        def unique_keys(pairs):  # json.loads would keep the last of two rows for one file, silently
            seen = {}
            for k, v in pairs:
                if k in seen and seen[k] != v:
                    raise InputError(f"labels file '{path}' gives '{k}' twice, with classes {seen[k]} and {v}; keep one.")
                seen[k] = v
            return seen

        try:
            data = json.loads(text, object_pairs_hook=unique_keys)
        except InputError:
            raise
        except ValueError as exc:
            raise InputError(f"labels file '{path}' is not valid JSON ({exc}).") from None
        if isinstance(data, dict):
            return [_Row(f"entry {n}", str(k), str(v)) for n, (k, v) in enumerate(data.items(), 1)]
        if isinstance(data, list) and all(isinstance(r, dict) for r in data):
            out = []
            for n, r in enumerate(data, 1):
                name, cls = r.get("filename", r.get("image")), r.get("class", r.get("label"))
                if name is None or cls is None:
                    raise InputError(f"labels file '{path}' entry {n} lacks a \"filename\" or a \"class\".")
                out.append(_Row(f"entry {n}", str(name), str(cls)))
            return out
        raise InputError(f"labels file '{path}': expected {{\"filename\": class}} or a list of "
                         "{\"filename\": ..., \"class\": ...} objects.")
    reader = csv.reader(text.splitlines())
    rows = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"labels file '{path}' is empty.")
    if rows[0][1][0].strip().lower() in HEADER_NAMES:
        rows = rows[1:]
    out = []
    for n, (line, r) in enumerate(rows, 1):
        if len(r) < 2:
            raise InputError(f"labels file '{path}' row {n} (line {line}) has {len(r)} column(s); expected filename,class.")
        name, cls = r[0].strip(), r[1].strip()
        out.append(_Row(f"line {line}", name, cls.split()[0] if cls else cls))  # LOC: "n01751748 x0 y0 ..." -> the synset
    return out


def _check_file(path: Path, what: str, flag: str) -> None:
    """A readable regular file, or one line saying what it is instead (a FIFO is never opened)."""
    if not str(path).strip() or str(path) == ".":
        raise InputError(f"{flag} got an empty path; give the {what} file.")
    if not path.exists():
        raise InputError(f"{what} file '{path}' does not exist.")
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a pipe or device?)"
        raise InputError(f"{what} file '{path}' is {kind}; give the {what} file itself.")


def _synset_index(path: str | None) -> dict[str, int]:
    if path is not None:
        p = Path(path)
        _check_file(p, "synsets", "--synsets")
        names = [line.split()[0] for line in p.read_text().splitlines() if line.strip()]
        bad = [s for s in names if not SYNSET.match(s)]
        if bad:
            raise InputError(f"synsets file '{path}' has lines that do not start with a synset id (e.g. '{bad[0]}').")
    else:
        from timm.data import ImageNetInfo

        names = list(ImageNetInfo("imagenet-1k").label_names())
    return {s: i for i, s in enumerate(names)}


def _image_parts(entry) -> tuple[str, ...]:
    """An image's path parts, absolute (a photograph: its name), for suffix matching."""
    return (entry.ref,) if getattr(entry, "kind", "file") == "skimage" else Path(os.path.abspath(entry.ref)).parts[1:]


def _fits(row: tuple[str, ...], image: tuple[str, ...]) -> bool:
    """The row's folders are the last folders of the image's path (its name matched already)."""
    folders = row[:-1]
    return not folders or image[:-1][-len(folders):] == folders


def _matching_rows(path: Path, entries, rows: list[_Row]) -> tuple[list[list[int]], dict[int, int]]:
    """The rows that label each image: by name (or stem) where that is unambiguous, by path
    where names clash; refuses a row that fits several images. Also, for images left without a
    row, one row that named them but whose folders do not fit (for the message)."""
    by_last: dict[str, list[int]] = defaultdict(list)
    for j, row in enumerate(rows):
        if row.key:
            by_last[row.key[-1]].append(j)
    parts = [_image_parts(e) for e in entries]
    stems = Counter(Path(p[-1]).stem for p in parts)
    used, unfit = [], {}
    for k, (e, p) in enumerate(zip(entries, parts)):
        name, stem = p[-1], Path(p[-1]).stem
        cands = by_last.get(name, []) + (by_last.get(stem, []) if stem != name else [])
        if stems[stem] > 1 or len({rows[j].cls for j in cands}) > 1:
            fitting = [j for j in cands if _fits(rows[j].key, p)]
            if cands and not fitting:
                unfit[k] = cands
            cands = fitting
        used.append(cands)
    users: dict[int, list[int]] = defaultdict(list)
    for k, cands in enumerate(used):
        for j in cands:
            users[j].append(k)
    for j, ks in users.items():
        if len(ks) > 1:
            raise InputError(f"labels file '{path}': {rows[j]} fits {len(ks)} images "
                             f"({', '.join(entries[k].ref for k in ks[:3])}{' ...' if len(ks) > 3 else ''}); "
                             "name each by its path (folder/name) so that a row labels one image.")
    # for the message: a row that named the image, preferably one that labels no other
    unfit = {k: next((j for j in cands if j not in users), cands[0]) for k, cands in unfit.items()}
    return used, unfit


def read_labels(path: str | Path, entries, num_classes: int, synsets: str | None = None) -> np.ndarray:
    """The class index of every listed image (``entries``: objects with ``id``, ``ref`` and
    ``kind``), refused in one line when an image has no row, rows for one image disagree, or a
    row fits several images."""
    path = Path(path)
    _check_file(path, "labels", "--labels")
    if synsets is not None:  # checked whether or not the rows turn out to need it
        _check_file(Path(synsets), "synsets", "--synsets")
    rows = _rows(path)
    index = None

    def class_of(row: _Row, image_id: str) -> int:
        nonlocal index
        if SYNSET.match(row.cls):
            index = _synset_index(synsets) if index is None else index
            if row.cls not in index:
                raise InputError(f"labels file '{path}': synset '{row.cls}' of image '{image_id}' is not among the "
                                 f"{len(index)} synsets{' of ' + synsets if synsets else ' of ImageNet-1k'}; pass --synsets FILE.")
            return index[row.cls]
        try:
            return int(row.cls)  # a Python int: a huge class number is out of range below, not an overflow
        except ValueError:
            raise InputError(f"labels file '{path}': class '{row.cls}' of image '{image_id}' is neither a class index "
                             "nor a synset id (n01440764).") from None

    used, unfit = _matching_rows(path, entries, rows)
    classes, missing = [], []
    for e, cands in zip(entries, used):
        if not cands:
            missing.append(e.id)
            classes.append(None)
            continue
        found = {j: class_of(rows[j], e.id) for j in cands}
        if len(set(found.values())) > 1:
            raise InputError(f"labels file '{path}' gives image '{e.id}' ({e.ref}) conflicting classes: "
                             f"{'; '.join(str(rows[j]) for j in cands[:4])}; keep one class per image.")
        classes.append(next(iter(found.values())))
    if missing:
        k = next(iter(unfit), None)
        hint = ("" if k is None else f" ({rows[unfit[k]]} names '{entries[k].id}' by file name, but its folders are not "
                                     f"those of '{entries[k].ref}')")
        raise InputError(f"labels file '{path}' has no label for {len(missing)} of the {len(entries)} images "
                         f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}){hint}; label every image or "
                         "leave them out.")
    out_of_range = [(e.id, c) for e, c in zip(entries, classes) if not 0 <= c < num_classes]
    if out_of_range:
        (name, c), more = out_of_range[0], len(out_of_range) - 1
        raise InputError(f"labels file '{path}': class {c} of image '{name}'{f' (and {more} more)' if more else ''} is "
                         f"outside the model's {num_classes} classes (0..{num_classes - 1}).")
    return np.asarray(classes, np.int64)
