"""Doubtful results: items whose numbers look fine in a summary but describe no attribution.

Found from a store only (never from a model), so a summary, a notebook and ``uni-lab check``-style
readers all see the same doubts. Three kinds, each a dict ``{kind, model, method, images,
message}`` (``method`` is None where the doubt is the model's):

- ``constant_output``: the model's explained output ``F_c`` took one value at every input and path
  point the store holds for a class, or its input gradient was zero at every path point. Its maps
  are zero or noise; a completeness error of 0 and a monotone fraction of 1 then mean nothing.
- ``zero_map``: a method's map is zero at every channel and pixel of an image.
- ``baseline_not_featureless``: a UNI item whose baseline keeps ``F_c(x') > 0.1 · F_c(x)``, the
  criterion the UNI default was chosen by (docs/methods.md §2, criterion 1).
- ``not_native_size``: a model explained at another input size than its own. A store holds one
  input per image, at the first model's size, so in a run of several models the others see
  pixels they were not made for (EfficientNet-Lite1 at Lite0's 224² instead of its 240²).

A run records them in the store attribute :data:`~uni_lab.schema.DOUBTS_ATTR` (with the done
state they were found in, :data:`~uni_lab.schema.DOUBTS_STATE_ATTR`) and its summary shows them.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import xarray as xr

from .errors import StoreError
from .schema import DOUBTS_ATTR, DOUBTS_STATE_ATTR, MAP, METHOD

# docs/methods.md §2, criterion 1: a UNI baseline is featureless when F_c(x') <= 0.1 * F_c(x)
FEATURELESS_RATIO = 0.1
# An output "took one value" within float noise only: a real model's F_c differs between two
# inputs far more than this, a constant head (weights 0, one class) not at all.
CONSTANT_RTOL, CONSTANT_ATOL = 1e-9, 1e-12
SHOWN = 5  # images named in a message; the store attribute lists them all
LABELS = {"constant_output": "constant output", "zero_map": "zero map",
          "baseline_not_featureless": "baseline not featureless", "not_native_size": "not its input size"}


def find(ds: xr.Dataset) -> list[dict]:
    """Every doubt about the done items of a store (an empty list when there is none)."""
    if "done" not in ds:
        return []
    done = np.asarray(ds["done"].values, bool)
    output = _config(ds).get("output", "prob")
    out = []
    for mi, model in enumerate(map(str, ds.model.values)):
        if done[mi].any():
            out += _constant_output(ds, mi, model, done[mi], output)
    out += _zero_maps(ds, done)
    out += _not_featureless(ds, done)
    out += _not_native_size(ds, done)
    return out


def state(ds: xr.Dataset) -> str:
    """A fingerprint of which items are done: recorded doubts hold for this state only."""
    done = np.asarray(ds["done"].values, bool)
    return hashlib.blake2b(repr(done.shape).encode() + np.packbits(done).tobytes(), digest_size=12).hexdigest()


def recorded(ds: xr.Dataset) -> list[dict] | None:
    """The doubts the store records, when they were found in its present done state; else None."""
    text = ds.attrs.get(DOUBTS_ATTR)
    if text is None or "done" not in ds or ds.attrs.get(DOUBTS_STATE_ATTR) != state(ds):
        return None
    return json.loads(text)


def of(ds: xr.Dataset) -> list[dict]:
    """The store's doubts: recorded ones where still current, else found now."""
    found = recorded(ds)
    return find(ds) if found is None else found


def record(store, refresh: bool = False) -> list[dict] | None:
    """Find the doubts of ``store`` (a :class:`~uni_lab.store.Store`) and write them to its attributes;
    ones already recorded for its present done state are kept unless ``refresh`` (values edited by hand).

    Skipped (None) while another process writes the store, e.g. a shard still running: the last
    writer to finish records them for every item, and a summary finds them anew meanwhile."""
    import os

    from .locks import lock_folder

    if not store.exists():
        return None
    try:
        fd = lock_folder(store.path, True)
    except StoreError:
        return None
    try:
        ds = xr.open_zarr(store.path)
        current = None if refresh else recorded(ds)
        if current is not None:  # a resume that found every item done: nothing to rewrite
            return current
        doubts = find(ds)
        store.update_attrs({DOUBTS_ATTR: json.dumps(doubts), DOUBTS_STATE_ATTR: state(ds)})
        return doubts
    finally:
        os.close(fd)


def tag(doubts: list[dict], model: str, method: str, images: int) -> str:
    """The summary's ``doubt`` cell of one (model, method): short, the messages go under the table."""
    parts = []
    for d in doubts:
        if d["model"] != model or d["method"] not in (None, method):
            continue
        label = LABELS.get(d["kind"], d["kind"])
        parts.append(label if d["method"] is None else f"{label} {len(d['images'])}/{images}")
    return "; ".join(parts)


def _constant_output(ds, mi: int, model: str, done: np.ndarray, output: str) -> list[dict]:
    """Per explained class: F_c at the inputs and along every stored path, where those points differ."""
    images = done.any(0)
    ids = [str(i) for i in ds.image.values[images]]
    at_input = _values(ds, f"{output}_input", mi)
    target = _values(ds, "target", mi)
    trace = _values(ds, f"trace_{output}", mi)
    distance = _values(ds, "trace_distance", mi)
    grad = _values(ds, "trace_grad_norm", mi)
    if at_input is None or target is None:
        return []
    evidence, spreads, points = False, [], 0
    for c in np.unique(target[images]):
        of_c = images & (target == c)
        values = [at_input[of_c]]
        moved = 0
        if trace is not None:
            items = done & of_c[None, :]  # (method, image)
            values.append(trace[items].ravel())
            if distance is not None:
                moved = int(np.sum(np.nan_to_num(distance[items], nan=0.0) > 0))
        values = np.concatenate(values)
        values = values[np.isfinite(values)]
        if values.size == 0 or int(of_c.sum()) + moved < 2:
            continue  # one input and no path away from it: nothing to compare
        evidence = True
        points += values.size
        scale = CONSTANT_ATOL + CONSTANT_RTOL * float(np.abs(values).max())
        spreads.append(float(np.ptp(values)) <= scale)
    what = "F_c(x)" if output == "prob" else "the logit of c"
    if evidence and all(spreads):
        value = float(at_input[images][0])
        why = (f"{what} ({output}) took one value per class ({value:.6g} on {ids[0]}) at all {points} inputs and "
               "path points the store holds")
    else:
        g = grad[done] if grad is not None else np.empty(0)
        g = g[np.isfinite(g)]
        if g.size == 0 or np.any(g != 0):
            return []
        why = f"the gradient of {what} ({output}) was zero at all {g.size} path points the store holds"
    return [{"kind": "constant_output", "model": model, "method": None, "images": ids,
             "message": f"{model}: {why}, so its output does not depend on its input and every map of it is zero "
                        "or noise (a completeness error of 0 or a monotone fraction of 1 here mean nothing); "
                        "check its weights (--weights) and its last layer."}]


def _zero_maps(ds, done: np.ndarray) -> list[dict]:
    if "attribution" not in ds or not done.any():
        return []
    # one pass over the maps, chunk by chunk (dask), for every done item at once
    peak = abs(ds["attribution"]).max(list(MAP), skipna=False).values  # NaN: not written, never done
    zero = done & (peak == 0)
    out = []
    for mi, mei in zip(*np.nonzero(zero.any(-1))):
        model, method = str(ds.model.values[mi]), str(ds[METHOD].values[mei])
        ids = [str(i) for i in ds.image.values[zero[mi, mei]]]
        out.append({"kind": "zero_map", "model": model, "method": method, "images": ids,
                    "message": f"{method} on {model}: the map is zero everywhere on {len(ids)} of "
                               f"{int(done[mi, mei].sum())} images ({_names(ids)}); its completeness error and "
                               "monotone fraction there describe no attribution."})
    return out


def _not_featureless(ds, done: np.ndarray) -> list[dict]:
    if "prob_baseline" not in ds or "prob_input" not in ds:
        return []
    methods = _config(ds).get("methods", {})
    base, at_input = ds["prob_baseline"].values, ds["prob_input"].values
    out = []
    for mei, method in enumerate(map(str, ds[METHOD].values)):
        if not _uses_uni(methods.get(method, {})):
            continue
        for mi, model in enumerate(map(str, ds.model.values)):
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = base[mi, mei] / at_input[mi]
            bad = done[mi, mei] & (ratio > FEATURELESS_RATIO)  # NaN (nothing stored) is never flagged
            if not bad.any():
                continue
            worst = sorted(((float(ratio[i]), str(ds.image.values[i])) for i in np.nonzero(bad)[0]), reverse=True)
            ids = [name for _, name in worst]
            shown = ", ".join(f"{name} {r:.2f}" for r, name in worst[:SHOWN]) + (", ..." if len(worst) > SHOWN else "")
            out.append({"kind": "baseline_not_featureless", "model": model, "method": method, "images": ids,
                        "ratios": {name: r for r, name in worst},
                        "message": f"{method} on {model}: the baseline is not featureless on {len(ids)} of "
                                   f"{int(done[mi, mei].sum())} images, F_c(x')/F_c(x) above {FEATURELESS_RATIO} "
                                   f"(docs/methods.md §2): {shown}; such a map sums to F_c(x) − F_c(x'), only "
                                   "a part of F_c(x)."})
    return out


def _not_native_size(ds, done: np.ndarray) -> list[dict]:
    config = _config(ds)
    size, models = config.get("size"), config.get("models", {})
    out = []
    for mi, model in enumerate(map(str, ds.model.values)):
        own = models.get(model, {}).get("input_size")
        if size is None or own is None or list(own) == list(size) or not done[mi].any():
            continue
        ids = [str(i) for i in ds.image.values[done[mi].any(0)]]
        first = next(iter(models), "?")
        out.append({"kind": "not_native_size", "model": model, "method": None, "images": ids,
                    "input_size": list(own), "size": list(size),
                    "message": f"{model}: explained at {_size(size)}, the store's input size (its first model's, "
                               f"{first}), not at its own {_size(own)}: its scores and maps are for inputs it was "
                               f"not made for; run it alone (--model {model}) for its own size."})
    return out


def _size(hw) -> str:
    return "×".join(map(str, hw))


def _uses_uni(entry: dict) -> bool:
    """A method whose baseline (or whose wrapped method's baseline) is UNI's unlearned one."""
    while entry:
        if entry.get("baseline") == "uni":
            return True
        entry = entry.get("inner")
    return False


def _values(ds, name: str, mi: int):
    return np.asarray(ds[name].isel(model=mi).values, float) if name in ds else None


def _names(ids: list[str]) -> str:
    return ", ".join(ids[:SHOWN]) + (f", ... ({len(ids) - SHOWN} more)" if len(ids) > SHOWN else "")


def _config(ds) -> dict:
    return json.loads(ds.attrs.get("uni_lab_config", "{}"))
