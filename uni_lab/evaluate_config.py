"""What an evaluation is told, declared once: the fields of :class:`EvaluateConfig`.

``uni_lab.evaluate``'s signature and docstring and the ``uni-lab evaluate`` flags (and those
``uni-lab run`` shares to evaluate its new store) derive from these fields
(:mod:`uni_lab.declared`). Torch-free on purpose, like :mod:`uni_lab.run_config`.
:meth:`EvaluateConfig.check` validates what needs nothing loaded; :func:`uni_lab.evaluation.plan`
then resolves everything against the store and writes nothing.
"""
from __future__ import annotations

import inspect
from dataclasses import MISSING, dataclass

from . import declared
from .declared import declared as _field
from .defaults import DEFAULT_BATCH, PERTURBED_METRICS, SEVERITIES
from .errors import InputError


def _commas(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _labels(values) -> list[str] | None:
    from .commands._shared import names

    return names(values) or None


# Shared with `uni-lab run`, which evaluates its new store with them.
SHARED = ("metrics", "attacks", "corruptions", "severities", "perturbed_metrics")


@dataclass(frozen=True)
class EvaluateConfig:
    """Everything an evaluation is told. Names are lists or comma strings; ``"all"`` takes every
    registered one."""

    store: object = _field(MISSING, "a store written by `uni-lab run`", "store")
    metrics: object = _field((), "metrics of the stored maps, e.g. mufidelity,deletion, or 'all' (see `uni-lab "
                             "plugins --kind metric`)", "--metrics")
    attacks: object = _field((), "attacks (fgsm_attribution, random_noise, ...), or 'all'", "--attacks")
    corruptions: object = _field((), "ImageNet-C corruptions (brightness, saturate, gaussian_blur, defocus_blur, "
                                 "gaussian_noise, shot_noise), or 'all'", "--corruptions")
    severities: object = _field(SEVERITIES, "corruption severities to sweep", "--severities", _commas)
    perturbed_metrics: object = _field(PERTURBED_METRICS, "metrics computed on attacked and corrupted inputs",
                                       "--perturbed-metrics")
    sets: object = _field(None, "any metric, attack or corruption parameter, e.g. mufidelity.n_subsets=64 (a dict, "
                          "or NAME.PARAM=VALUE strings; --set is repeatable)", "--set", action="append",
                          metavar="NAME.PARAM=VALUE")
    models: object = _field(None, "Classifier objects for models the store cannot reload (random or in-memory "
                            "weights), each named as in the store")
    methods: object = _field(None, "only these of the store's methods (on the command line space- or "
                             "comma-separated)", "--methods", _labels, nargs="+")
    images: object = _field(None, "only these of the store's image ids (on the command line space- or "
                            "comma-separated)", "--images", _labels, nargs="+")
    batch_size: int = _field(DEFAULT_BATCH, "images per batch", "--batch-size", type=int)
    device: str | None = _field(None, "cpu, cuda, ... (default: CUDA when available)", "--device")
    recompute: bool = _field(False, "replace results stored with other parameters of a metric, attack or "
                             "corruption", "--recompute", action="store_true")
    progress: bool = _field(True, "show progress bars", "--no-progress", flag_help="hide progress bars",
                            action="store_false")

    def check(self) -> None:
        """Every value that needs nothing loaded. One line each."""
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError(f"batch_size must be at least 1 (an integer), got {self.batch_size!r}.")

    def asked(self) -> bool:
        """Whether any metric, attack or corruption is asked for."""
        return any(_names(getattr(self, n)) for n in ("metrics", "attacks", "corruptions"))


def _names(value) -> list:
    return _commas(value) if isinstance(value, str) else list(value or [])


def add_arguments(parser, only=None) -> None:
    """The ``uni-lab evaluate`` flags (``only``: those of these fields)."""
    declared.add_arguments(parser, EvaluateConfig, only)


def from_args(args, only=None, **given) -> EvaluateConfig:
    """The :class:`EvaluateConfig` of parsed flags (``only``: of these fields) and ``given`` values."""
    return declared.from_args(args, EvaluateConfig, only, **given)


def evaluate_doc() -> str:
    return f"""Compute ``metrics`` on a store's stored maps and ``perturbed_metrics`` on ``attacks`` and ``corruptions``.

``execute(plan(EvaluateConfig(...)))`` (:mod:`uni_lab.evaluation`): :func:`~uni_lab.evaluation.plan`
resolves every name and parameter against the store and reloads its models, writing nothing;
:func:`~uni_lab.evaluation.execute` verifies the models against the stored predictions, then
computes and writes by label. Resumable: items
already evaluated are skipped. Returns an :class:`~uni_lab.evaluation.EvalResult`: the store's
path and the per-method table of means.

Parameters (fields of :class:`uni_lab.evaluate_config.EvaluateConfig`; the ``uni-lab evaluate`` flag in brackets):

{declared.documentation(EvaluateConfig)}
"""


def signature() -> inspect.Signature:
    """The fields as parameters of ``uni_lab.evaluate``: ``store`` and the three lists positional too."""
    return declared.signature(EvaluateConfig, 4)
