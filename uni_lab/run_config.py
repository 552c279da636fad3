"""What a run is told, declared once: the fields of :class:`RunConfig`, with their defaults and help.

``uni_lab.run``'s signature and docstring and the ``uni-lab run`` flags all derive from these
fields, so a parameter is documented in one place (docs/guide/running.md explains them by topic).
Torch-free on purpose: the CLI builds its parser from this module before importing anything heavy.

:meth:`RunConfig.check` validates every value that needs nothing loaded (choices, ranges, the
``--out`` path); :func:`uni_lab.runner.plan` then resolves what needs plugins, models and images,
and writes nothing.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

from . import declared
from .defaults import DEFAULT_BATCH, DEFAULT_MAX_PIXELS, DEFAULT_METHODS, DEFAULT_MODEL, DEFAULT_OUT, DEFAULT_STEPS, RESIZES
from .errors import InputError

OUTPUTS = ("prob", "logit")
PRECISIONS = ("fp32", "bf16", "fp16")


def _commas(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()] or [text]  # `--model ""` is named, not dropped


def _methods(text: str) -> list[str]:
    from .commands._shared import split_methods

    return [m.strip() for m in split_methods(text)]


def _images(values) -> list[str] | None:
    from .commands._shared import names

    if values is None:
        return None
    if any(not str(v).strip() for v in values):  # `--images ""`: never the current folder by accident
        return [""]
    return names(values) or None


def _size(text: str) -> tuple[int, ...]:
    """``"224"`` or ``"224,256"`` (H,W)."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--input-size must be H or H,W in pixels, e.g. --input-size 224 or 240,320; got {text!r}.") \
            from None


_field = declared.declared


@dataclass(frozen=True)
class RunConfig:
    """Everything a run is told. Defaults are the README's main job (``uni-lab run``)."""

    models: object = _field(DEFAULT_MODEL, "registered model, torchvision or timm name (tv:NAME / timm:NAME to "
                            "disambiguate), a uni_lab.Classifier, or a list of them; on the command line a comma list "
                            "(efficientnet_lite0 has embedded ImageNet weights)", "--model", _commas,
                            metavar="NAME[,NAME]")
    images: object = _field(None, "scikit-image photograph names, image files or folders, space- or comma-separated "
                            "(default: the eight photographs in scikit-image)", "--images", _images, nargs="+", metavar="IMAGE")
    methods: object = _field(DEFAULT_METHODS, "method specs, e.g. uni, ig:black, smoothgrad(ig:black); on the "
                             "command line a comma list", "--methods", _methods, metavar="SPEC[,SPEC]")
    steps: int = _field(DEFAULT_STEPS, "Riemann steps B for every path method", "--steps", type=int)
    batch_size: int = _field(DEFAULT_BATCH, "images per batch", "--batch-size", type=int)
    device: str | None = _field(None, "cpu, cuda, cuda:1 ... (default: CUDA when available)", "--device")
    seed: int = _field(0, "run seed; each image draws from a seed derived from it, and --weights random from it",
                       "--seed", type=int)
    out: object = _field(DEFAULT_OUT, "store path", "--out")
    sets: object = _field(None, "any plugin parameter, e.g. uni.eps=0.03 (a dict, or NAME.PARAM=VALUE strings; "
                          "--set is repeatable)", "--set", action="append", metavar="NAME.PARAM=VALUE")
    weights: str | None = _field(None, "local state-dict file for the model, or 'random' for untrained weights "
                                 "(seeded from --seed)", "--weights")
    output: str = _field("prob", "explain the softmax probability of the class (prob) or its logit", "--output",
                         choices=OUTPUTS)
    resize: str = _field("model", "'model': the model's own evaluation transform (shorter side to size/crop_pct, "
                         "centre crop, as timm's pretrained_cfg); 'crop': the same at crop_pct 0.875; 'full': squash "
                         "the whole photograph to the input size", "--resize", choices=RESIZES)
    overwrite: bool = _field(False, "replace a uni_lab store written by another configuration (never any other "
                             "folder)", "--overwrite", action="store_true")
    progress: bool = _field(True, "show progress bars", "--no-progress", flag_help="hide progress bars",
                            action="store_false")
    shard: object = _field(None, "compute only the I-th of N contiguous slices of the images ('I/N', 0-based; jobs "
                           "may share one --out; torchrun splits further)", "--shard", metavar="I/N")
    precision: str = _field("fp32", "autocast the models (recorded in the store; BENCHMARKS.md gives the drift)",
                            "--precision", choices=PRECISIONS)
    channels_last: bool = _field(False, "run the models in channels_last layout (GPU speed)", "--channels-last",
                                 action="store_true")
    seed_stability: bool = _field(True, "measure the seed stability of methods with a random part (re-runs them "
                                  "with 3 seeds)", "--no-seed-stability", action="store_false",
                                  flag_help="do not measure the seed stability of methods with a random part")
    workers: int | None = _field(None, "processes decoding images ahead of the compute (default: 0 on CPU, up to 4 "
                                 "on CUDA)", "--workers", type=int, metavar="N")
    skip_bad_images: bool = _field(False, "leave out image files that cannot be read (listed in the store) instead "
                                   "of stopping", "--skip-bad-images", action="store_true")
    labels: object = _field(None, "ground-truth classes (CSV filename,class; ImageNet's LOC_val_solution.csv; JSON): "
                            "explain each image for its label, store label and prediction, report accuracy",
                            "--labels", metavar="FILE")
    synsets: str | None = _field(None, "synset id per line, in class-index order, for labels given as synsets "
                                 "(default: the 1000 ImageNet-1k synsets, sorted)", "--synsets", metavar="FILE")
    input_size: object = _field(None, "the model's input size H or (H, W) in pixels, for models given by name "
                                "(default: the model's own, e.g. 224 for efficientnet_lite0); recorded with the model",
                                "--input-size", _size, metavar="H[,W]")
    max_pixels: int = _field(DEFAULT_MAX_PIXELS, "largest image accepted, in pixels, read from the file's header "
                             "before decoding; a larger file is a bad image", "--max-pixels", type=int, metavar="N")

    def size(self) -> tuple[int, int] | None:
        """``input_size`` as ``(H, W)``, or None for the model's own."""
        if self.input_size is None:
            return None
        size = (self.input_size,) if isinstance(self.input_size, int) else tuple(self.input_size)
        return size * 2 if len(size) == 1 else size

    def check(self) -> None:
        """Every value that needs nothing loaded: choices, ranges, the store path. One line each."""
        from .store import Store

        for name, choices in (("output", OUTPUTS), ("resize", RESIZES), ("precision", PRECISIONS)):
            if getattr(self, name) not in choices:
                raise InputError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}.")
        for name, low in (("steps", 1), ("batch_size", 1), ("max_pixels", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"--{name.replace('_', '-')} must be at least {low} (an integer), got {value!r}.")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 0):
            raise InputError(f"--workers must be 0 or more, got {self.workers!r}.")
        if self.input_size is not None:
            size = self.size() if isinstance(self.input_size, (int, tuple, list)) else ()
            if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or not 8 <= v <= 4096 for v in size):
                raise InputError(f"--input-size must be H or H,W with each side from 8 to 4096 pixels, "
                                 f"got {self.input_size!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputError(f"--seed must be an integer, got {self.seed!r}.")
        Store(self.out).check_replaceable(self.overwrite)


def add_arguments(parser) -> None:
    """The ``uni-lab run`` flags, one per field of :class:`RunConfig`."""
    declared.add_arguments(parser, RunConfig)


def from_args(args) -> RunConfig:
    """The :class:`RunConfig` of parsed ``uni-lab run`` flags."""
    return declared.from_args(args, RunConfig)


def documentation() -> str:
    """One line per field: name, default and help (``uni_lab.run``'s docstring)."""
    return declared.documentation(RunConfig)


def run_doc() -> str:
    """``uni_lab.run``'s docstring: what it does, then every field."""
    return f"""Explain ``images`` with every method on every model and write the store at ``out``.

``execute(plan(RunConfig(...)))`` (:mod:`uni_lab.runner`): :func:`~uni_lab.runner.plan` resolves and
checks everything and writes nothing, then :func:`~uni_lab.runner.execute` computes. Resumable:
items already done in ``out`` are skipped (their chunks verified first). Under ``torchrun`` each
rank takes its own slice of ``shard``. Methods with a random part are also evaluated with the
``seed_stability`` metric unless ``seed_stability=False``. The caller's models (Classifier
objects) come back as they were. Returns a :class:`~uni_lab.runner.RunResult`: the store's path
and the per-method summary.

Parameters (fields of :class:`uni_lab.run_config.RunConfig`; the ``uni-lab run`` flag in brackets):

{documentation()}
"""


def signature() -> inspect.Signature:
    """``RunConfig``'s fields as keyword parameters (the first three positional too), for ``uni_lab.run``."""
    return declared.signature(RunConfig, 3)
