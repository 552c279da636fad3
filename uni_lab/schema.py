"""What a store holds, written once: dims, variables, chunk layout, and the evaluation conditions and variables as data.

Everything that creates, checks, evaluates or reads a store derives from this module: the run's
skeleton (:mod:`uni_lab.skeleton`), ``uni-lab check`` (:mod:`uni_lab.check`), evaluation
(:mod:`uni_lab.evaluation`) and the readers on ``ds.uni`` (:mod:`uni_lab.accessor`). It needs
numpy only, so notebooks can import it without torch.

A run writes the variables of :data:`RUN_VARIABLES`. ``uni-lab evaluate`` adds metrics and
perturbed inputs declared at the end: each condition (clean, attack, corruption) as data, a
metric's values and its ``done_*`` flag (set after the values it vouches for) as small frozen
records whose names are built from them. Names are only ever built, never parsed back: a stored
variable's condition comes from its dims, its metric from its ``uni_lab_metric`` attribute.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

# 2: integer target, predicted, label, image_hash; chunks span blocks of images. 3: the methods dim is
# METHOD, not "method" (xarray's ``sel`` takes ``method=`` as its own keyword); uni_lab.migrate reads
# and rewrites stores of schema 2.
SCHEMA_VERSION = 3
ZARR_FORMAT = 2  # consolidated metadata and variable-length strings that every zarr reader knows
CHANNELS = ("R", "G", "B")
TRACE_KEYS = ("alpha", "prob", "logit", "grad_norm", "distance")

MAP = ("channel", "y", "x")
METHOD = "xai_method"  # Quantus's word (``xai_methods``); plain ``ds.sel(xai_method="uni")`` selects on it
IMAGE = ("model", "image")
ITEM = ("model", METHOD, "image")
# The dims the evaluation conditions add to an item (CONDITIONS, below, declares them).
LABEL_DIMS = ITEM + ("attack", "corruption", "severity")


@dataclass(frozen=True)
class Variable:
    """One stored variable: dims, dtype, what it means, and what unwritten places hold."""

    dims: tuple
    dtype: str
    description: str = ""
    fill: object = np.nan  # None: no fill value; written whole at creation with ``initial``
    initial: object = None
    meta: dict = field(default_factory=dict, compare=False)  # further attributes (a metric's name, parameters)

    def attrs(self) -> dict:
        return {**({"description": self.description} if self.description else {}), **self.meta}


def _trace(text: str) -> Variable:
    return Variable(ITEM + ("step",), "f8", text)


RUN_VARIABLES: dict[str, Variable] = {
    "input": Variable(IMAGE + MAP, "f4", "pixel-space image explained, [0,1]"),
    "attribution": Variable(ITEM + MAP, "f4", "attribution A_i per channel and pixel"),
    "baseline": Variable(ITEM + MAP, "f4", "baseline x' of path methods (NaN for others)"),
    "prob_input": Variable(IMAGE, "f8", "F_c(x), softmax probability"),
    "logit_input": Variable(IMAGE, "f8", "logit of c at x"),
    "done": Variable(ITEM, "bool", "item fully written", fill=False),
    # small: written whole at creation (-1: not computed yet), so no fill value is needed and xarray
    # reads them as integers, not as floats with NaN
    "target": Variable(IMAGE, "i8", "explained class c (the label when the run was given labels, else the "
                       "predicted class)", fill=None, initial=-1),
    "predicted": Variable(IMAGE, "i8", "the model's class at x (argmax of its logits)", fill=None, initial=-1),
    "trace_alpha": _trace("path parameter alpha_k"),
    "trace_prob": _trace("F_c(gamma_k), probability"),
    "trace_logit": _trace("logit of c at gamma_k"),
    "trace_grad_norm": _trace("||grad F_c(gamma_k)||_2 (in the explained output); NaN at alpha = 0 for closed-form "
                              "paths (IG, BlurIG), whose right Riemann sum does not use it"),
    "trace_distance": _trace("||gamma_k - x||_2"),
    "completeness_error": Variable(ITEM, "f8", "|sum A - (F_c(x) - F_c(x'))| / |F_c(x) - F_c(x')|"),
    "prob_baseline": Variable(ITEM, "f8", "F_c(x') (softmax probability)"),
    "seconds": Variable(ITEM, "f8", "wall seconds per image for this method"),
}
assert [k for k in RUN_VARIABLES if k.startswith("trace_")] == [f"trace_{k}" for k in TRACE_KEYS]
COORD_DESCRIPTIONS = {"label": "ground-truth class (-1: none given)"}
# Store attributes a run adds when it ends (uni_lab.doubts): the JSON list of doubtful results, each
# {"kind", "model", "method" (null: every method of the model), "images", "message"} (and "ratios",
# image -> F_c(x')/F_c(x), for "baseline_not_featureless"), and a fingerprint of the done items they
# were found in: where it no longer matches, readers find the doubts anew.
DOUBTS_ATTR = "uni_lab_doubts"
DOUBTS_STATE_ATTR = "uni_lab_doubts_state"


def fill_of(dtype) -> object:
    return False if np.dtype(dtype) == bool else np.nan


# ---- chunk layout -----------------------------------------------------------------------------
# Chunks span many images (one file per item and variable made an ImageNet-val store millions
# of files). A map chunk (input, attribution, baseline) holds up to MAP_CHUNK_BYTES of float32
# maps; every other variable has one chunk per block of images, models and methods, and a
# block is a whole number of map chunks, at most BLOCK_IMAGES images. Shards and ranks take
# whole blocks (uni_lab.distributed.shard_range), so no two processes ever write one chunk.
MAP_CHUNK_BYTES = 8 << 20
BLOCK_IMAGES = 512


def chunking(n_images: int, size) -> dict[str, int]:
    """``{"images": block, "maps": images per map chunk}`` for a store of ``n_images`` at ``size``.

    At least two blocks whenever there are two images, so two shards or ranks share a small
    run; a block is a multiple of the map chunk."""
    per_map = 3 * int(size[0]) * int(size[1]) * 4
    half = max(1, -(-int(n_images) // 2))
    maps = max(1, min(MAP_CHUNK_BYTES // per_map, half))
    block = maps * max(1, -(-min(BLOCK_IMAGES, half) // maps))
    return {"images": block, "maps": maps}


def run_chunks(dims: tuple, sizes: dict, layout: dict) -> tuple:
    """A run variable's zarr chunks. Maps: one model and method, a map chunk of images. Traces: one
    model and method (a batch rewrites only its method's traces), a block of images. The rest: every
    model and method of a block of images in one chunk."""
    maps, per_method = bool(set(dims) & set(MAP)), bool(set(dims) & set(MAP) or "step" in dims)
    out = []
    for d in dims:
        if d == "image":
            out.append(layout["maps"] if maps else layout["images"])
        elif d in ("model", METHOD):
            out.append(1 if per_method else sizes[d])
        else:
            out.append(sizes[d])
    return tuple(out)


def data_files(n_images: int, n_methods: int, size, n_models: int = 1) -> int:
    """Chunk files of a finished run store at most (metadata and coordinates not counted):
    ``(1 + 2M)·⌈N/K⌉`` map chunks (input; attribution and baseline per method) and
    ``(8 + 5M)·⌈N/B⌉`` block chunks (target, predicted, prob_input, logit_input, done and the
    three item scalars across models and methods; five traces per method), per model for maps
    and traces. Chunks holding only the fill value are not written (zarr's default), so a
    method without baselines has fewer."""
    c = chunking(n_images, size)
    maps, blocks = -(-n_images // c["maps"]), -(-n_images // c["images"])
    return n_models * (1 + 2 * n_methods) * maps + (8 + 5 * n_models * n_methods) * blocks


def evaluation_chunks(dims, sizes: dict, block: int = 1) -> tuple:
    """An evaluation variable's chunks: one per label, except that scalars span the store's block of
    images and keep all attacks, corruptions and severities of a block in one chunk (one file per
    block, not thirty per item; reading a store's metrics opens every chunk file). Safe because one
    evaluation at a time writes a store (:func:`uni_lab.locks.evaluation_lock`). Dims that are not
    labels (channel, y, x, a metric's steps) are whole."""
    maps = bool(set(dims) & set(MAP))
    per_label = LABEL_DIMS if maps else ITEM
    return tuple((min(block, sizes[d]) if d == "image" and not maps else 1) if d in per_label else sizes[d]
                 for d in dims)


def block_of(attrs: dict) -> int:
    """Images per block of a store (its ``uni_lab_chunks`` attribute)."""
    return int(json.loads(attrs.get("uni_lab_chunks", "{}")).get("images", 1))


# ---- evaluation variables, declared ----------------------------------------------------------
@dataclass(frozen=True)
class ConditionKind:
    """Under what an item is evaluated, as data: the dims it adds to the item, the prefix its
    variables are named with, and, for a perturbation, its input's dims and done flags. A stored
    variable's condition is read back from its dims (:func:`condition_in`), never from its name."""

    kind: str
    dims: tuple = ()
    input_dims: tuple = ()  # a perturbed input: per method (an attack aims at one) or per model (a corruption)
    input_flag: str = ""  # set once the perturbed input is written
    maps_flag: str = ""  # set once the method's map of it is written

    @property
    def prefix(self) -> str:
        return "" if self.kind == "clean" else f"{self.kind}_"


CONDITIONS = {c.kind: c for c in (
    ConditionKind("clean"),
    # an attack's input and map are written together, under one flag
    ConditionKind("attack", ("attack",), ITEM + ("attack",), "done_attack", "done_attack"),
    # a corruption's input is shared by every method of a model and flagged on its own
    ConditionKind("corruption", ("corruption", "severity"), IMAGE + ("corruption", "severity"),
                  "done_corruption_input", "done_corruption"),
)}
assert LABEL_DIMS == ITEM + tuple(d for c in CONDITIONS.values() for d in c.dims)


def condition(kind: str) -> ConditionKind:
    if kind not in CONDITIONS:
        raise ValueError(f"unknown condition {kind!r}; conditions are {', '.join(CONDITIONS)}")
    return CONDITIONS[kind]


def condition_in(dims) -> ConditionKind:
    """The condition of a stored variable, from its dims (a metric's own dims never use these names)."""
    return next((c for c in CONDITIONS.values() if c.dims and set(c.dims) <= set(dims)), CONDITIONS["clean"])


@dataclass(frozen=True)
class MetricFlag:
    """The flag set once a metric's values of an item are written: ``done_[attack_|corruption_]m``."""

    metric: str
    kind: str = "clean"

    @property
    def name(self) -> str:
        return f"done_{condition(self.kind).prefix}{self.metric}"


@dataclass(frozen=True)
class MetricValue:
    """A metric's value ``key`` under a condition: ``m`` when the key is the metric's own name, else ``m_key``."""

    metric: str
    key: str
    kind: str = "clean"

    @property
    def name(self) -> str:
        return condition(self.kind).prefix + (self.metric if self.key == self.metric else f"{self.metric}_{self.key}")

    @property
    def flag(self) -> MetricFlag:
        return MetricFlag(self.metric, self.kind)


def metric_variable(metric: str, key: str, kind: str = "clean") -> str:
    return MetricValue(metric, key, kind).name


def metric_flag(metric: str, kind: str = "clean") -> str:
    return MetricFlag(metric, kind).name


def flag_of(var) -> str:
    """The ``done_*`` flag of a stored metric variable (an xarray variable): its metric from its
    ``uni_lab_metric`` attribute, its condition from its dims."""
    return MetricFlag(var.attrs["uni_lab_metric"], condition_in(var.dims).kind).name


def is_metric(name: str, var) -> bool:
    """A metric's value, not its flag: what tables average."""
    return bool(var.attrs.get("uni_lab_metric")) and name != flag_of(var)


def is_flag(name: str, var) -> bool:
    """A done flag: of a perturbed input or its map (declared by its condition), or of a metric."""
    kind = condition_in(var.dims)
    return name in (kind.input_flag, kind.maps_flag) or ("uni_lab_metric" in var.attrs and name == flag_of(var))


def input_flag(kind: str) -> str:
    return condition(kind).input_flag


def maps_flag(kind: str) -> str:
    return condition(kind).maps_flag


def input_dims(kind: str) -> tuple:
    return condition(kind).input_dims


def perturbed_variables(kind: str) -> dict[str, Variable]:
    """The variables of inputs perturbed under ``kind`` and of the method's maps of them."""
    c = condition(kind)
    p, item, inputs = c.prefix, ITEM + c.dims, c.input_dims
    out = {
        f"{p}input": Variable(inputs + MAP, "f4", f"{kind}ed input, pixel space"),
        f"{p}prob": Variable(inputs, "f8", "F_c at the perturbed input (probability)"),
        f"{p}label_kept": Variable(inputs, "f8", "1 if the predicted class is still c"),
        f"{p}linf": Variable(inputs, "f8", "||perturbed - x||_inf"),
        f"{p}attribution": Variable(item + MAP, "f4", "attribution of the perturbed input"),
        f"{p}baseline": Variable(item + MAP, "f4", "baseline used at the perturbed input"),
        f"{p}completeness_error": Variable(item, "f8", "completeness error at the perturbed input"),
        c.maps_flag: Variable(item, "bool", "perturbed input and its map written", fill=False),
    }
    out.update({f"{p}trace_{k}": Variable(item + ("step",), "f8") for k in TRACE_KEYS})
    out[c.input_flag] = Variable(inputs, "bool", "perturbed input written", fill=False)
    return out


def explanation_variables(kind: str = "clean") -> list[str]:
    """The variables an :class:`~uni_lab.explanation.Explanation` is stored in, under ``kind``."""
    p = condition(kind).prefix
    return [f"{p}attribution", f"{p}baseline", f"{p}completeness_error", *(f"{p}trace_{k}" for k in TRACE_KEYS)]
