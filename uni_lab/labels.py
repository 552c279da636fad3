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

A file name matches an image by its name with extension, or by its stem (LOC's ImageIds have
no extension). Images without a label, and class numbers outside the model's classes, are
refused before any compute; rows for images not in the run are ignored (a run on part of a
data set reads the whole set's file).
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np

from .errors import InputError

SYNSET = re.compile(r"^n\d{8}$")
HEADER_NAMES = {"filename", "file", "image", "imageid", "image_id", "name", "path"}


def _rows(path: Path) -> list[tuple[str, str]]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(f"labels file '{path}' is not valid JSON ({exc}).") from None
        if isinstance(data, dict):
            return [(str(k), str(v)) for k, v in data.items()]
        if isinstance(data, list) and all(isinstance(r, dict) for r in data):
            return [(str(r.get("filename", r.get("image"))), str(r.get("class", r.get("label")))) for r in data]
        raise InputError(f"labels file '{path}': expected {{\"filename\": class}} or a list of "
                         "{\"filename\": ..., \"class\": ...} objects.")
    rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"labels file '{path}' is empty.")
    if rows[0][0].strip().lower() in HEADER_NAMES:
        rows = rows[1:]
    out = []
    for n, r in enumerate(rows, 1):
        if len(r) < 2:
            raise InputError(f"labels file '{path}' row {n} has {len(r)} column(s); expected filename,class.")
        name, cls = r[0].strip(), r[1].strip()
        out.append((name, cls.split()[0] if cls else cls))  # LOC: "n01751748 x0 y0 x1 y1 ..." -> the synset
    return out


def _synset_index(path: str | None) -> dict[str, int]:
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"synsets file '{path}' does not exist.")
        names = [line.split()[0] for line in p.read_text().splitlines() if line.strip()]
        bad = [s for s in names if not SYNSET.match(s)]
        if bad:
            raise InputError(f"synsets file '{path}' has lines that do not start with a synset id (e.g. '{bad[0]}').")
    else:
        from timm.data import ImageNetInfo

        names = list(ImageNetInfo("imagenet-1k").label_names())
    return {s: i for i, s in enumerate(names)}


def read_labels(path: str | Path, entries, num_classes: int, synsets: str | None = None) -> np.ndarray:
    """The class index of every listed image (``entries``: objects with ``id`` and ``ref``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"labels file '{path}' does not exist.")
    rows = _rows(path)
    index = None
    by_key: dict[str, str] = {}
    for name, cls in rows:
        base = name.replace("\\", "/").rsplit("/", 1)[-1]
        by_key.setdefault(base, cls)
        by_key.setdefault(Path(base).stem, cls)
    labels, missing = np.full(len(entries), -1, np.int64), []
    for k, e in enumerate(entries):
        base = Path(e.ref).name
        cls = by_key.get(base, by_key.get(Path(base).stem, by_key.get(e.id)))
        if cls is None:
            missing.append(e.id)
            continue
        if SYNSET.match(cls):
            index = _synset_index(synsets) if index is None else index
            if cls not in index:
                raise InputError(f"labels file '{path}': synset '{cls}' of image '{e.id}' is not among the "
                                 f"{len(index)} synsets{' of ' + synsets if synsets else ' of ImageNet-1k'}; pass --synsets FILE.")
            labels[k] = index[cls]
            continue
        try:
            labels[k] = int(cls)
        except ValueError:
            raise InputError(f"labels file '{path}': class '{cls}' of image '{e.id}' is neither a class index nor "
                             "a synset id (n01440764).") from None
    if missing:
        raise InputError(f"labels file '{path}' has no label for {len(missing)} of the {len(entries)} images "
                         f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); label every image or leave them out.")
    out_of_range = [(e.id, int(c)) for e, c in zip(entries, labels) if not 0 <= c < num_classes]
    if out_of_range:
        (name, c), more = out_of_range[0], len(out_of_range) - 1
        raise InputError(f"labels file '{path}': class {c} of image '{name}'{f' (and {more} more)' if more else ''} is "
                         f"outside the model's {num_classes} classes (0..{num_classes - 1}).")
    return labels
