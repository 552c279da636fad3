"""An evaluation as plan (resolve and check against the store, write nothing) and execute (compute, write by label).

Metrics, attacks and corruptions for an existing store, without recomputing its maps.
``uni_lab.evaluate(store, metrics=..., attacks=..., corruptions=...)`` is
``execute(plan(EvaluateConfig(...)))``: :func:`plan` resolves every name and parameter against the
store and reloads the models named in its configuration, writing nothing; :func:`execute` checks
that they reproduce the stored predictions, rebuilds each method from the recorded parameters,
and reads the stored attributions, baselines and path traces. New maps are computed only where a metric needs them by definition: of attacked and
corrupted inputs, at other step counts (``riemann_stability``) or of a randomised model
(``sanity``).

Each input is evaluated under conditions: ``clean`` (the stored item), ``attack`` (dim
``attack``: an input perturbed against this method, stored with its map) and ``corruption``
(dims ``corruption``, ``severity``: an ImageNet-C copy of the input, shared by all methods).
Variables written:

- ``attack_input``, ``attack_attribution``, ``attack_baseline``, ``attack_trace_*``,
  ``attack_completeness_error``, ``attack_prob``, ``attack_label_kept``, ``attack_linf``,
  ``done_attack`` ``(model, method, image, attack, ...)``;
- ``corruption_input``, ``corruption_prob``, ``corruption_label_kept``, ``corruption_linf``,
  ``done_corruption_input`` ``(model, image, corruption, severity, ...)``, and the maps
  ``corruption_attribution`` ... ``done_corruption`` ``(model, method, image, corruption, severity, ...)``;
- per metric ``m`` and key ``k``: ``m_k`` ``(model, method, image[, extra])`` with ``done_m``,
  and ``attack_m_k`` / ``corruption_m_k`` on perturbed inputs, parameters in their attrs.

Values are written before their ``done_*`` flag, so an interrupted evaluation leaves no item
marked done that is not complete, and rerunning the same command finishes the rest. The
parameters of every metric and attack are kept in the store attribute ``uni_lab_evaluation``;
asking for other values is refused unless ``recompute=True``.

What to compute is :mod:`.selection` (a :class:`~.selection.Selection`, validated from names
alone); how is :mod:`.jobs` (a job per model × method) with attacks and corruptions as the two
strategies of :mod:`.conditions`; what the store gives back (methods, model, batches) is
:mod:`.stored`; the returned table is :mod:`.tables`. Variables and their conditions are declared
in :mod:`uni_lab.schema`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import evaluate_config, fastview
from ..accessor import config_of
from ..errors import StoreError
from ..evaluate_config import EvaluateConfig
from ..locks import evaluation_lock
from ..migrate import refuse_old
from ..models import preserving, resolve_device
from ..registry import get
from ..schema import METHOD
from ..store import Store
from .conditions import CLEAN, Attacked, Condition, Corrupted
from .jobs import Job, compute
from .selection import Selection, changed_parameters, record, refuse_changed, select, subset
from .stored import MethodCall, check_plugins_present, load_model, method_from_config, read_explanation
from .tables import metric_table

__all__ = ["evaluate", "plan", "execute", "EvaluationPlan", "EvalResult", "EvaluateConfig", "Selection", "select",
           "metric_table", "MethodCall", "check_plugins_present", "load_model", "method_from_config",
           "read_explanation", "Job", "Condition", "CLEAN", "Attacked", "Corrupted"]


@dataclass
class EvalResult:
    path: Path
    table: "object"  # pandas.DataFrame


@dataclass(frozen=True)
class EvaluationPlan:
    """An evaluation resolved and checked against its store, nothing written: what :func:`execute` does."""

    config: EvaluateConfig
    store: Store
    selection: Selection
    models: dict  # name -> Classifier, for every model with finished items among ``ids`` (not yet on ``dev``)
    specs: list  # the store's methods to evaluate
    ids: list  # the store's images to evaluate
    dev: object  # torch.device
    fast_view: bool  # maps are recomputed as the run computed them: stores older than the fast view ran without it


def given_models(models) -> dict:
    """``models`` (a Classifier, a list of them or None) by name."""
    return {c.name: c for c in (models if isinstance(models, (list, tuple)) else [models] if models else [])}


def plan(config: EvaluateConfig) -> EvaluationPlan:
    """Resolve and check everything an evaluation needs (the store and its schema, the plugins it was
    made with, every metric, attack and corruption with its parameters, the labels, the device, the
    models) and write nothing: any error here leaves the store as it was."""
    config.check()
    st = Store(config.store)
    st.check_named()
    if not st.exists():
        raise StoreError(f"no store at '{config.store}'; create one with `uni-lab run --out {config.store}`.")
    ds = st.open()
    check_schema(st, ds)
    given = given_models(config.models)
    check_plugins_present(ds, given=given)
    recorded = config_of(ds)
    selection = select(config.metrics, config.attacks, config.corruptions, severities=config.severities,
                       perturbed_metrics=config.perturbed_metrics, sets=config.sets,
                       output=recorded.get("output", "prob"))
    selection.check_names(ds)
    size = (ds.sizes["y"], ds.sizes["x"])
    for (kind, name), params in selection.params.items():
        get(kind, name).check_pixel_counts(params, size)
    specs = subset("method", [str(m) for m in ds[METHOD].values], config.methods)
    ids = subset("image", [str(i) for i in ds.image.values], config.images)
    dev = resolve_device(config.device)
    if not config.recompute:
        refuse_changed(changed_parameters(selection, ds), st.path)
    models = {}
    for name in [str(m) for m in ds.model.values]:
        if bool(ds["done"].sel(model=name, image=ids).any()):
            models[name] = load_model(name, recorded["models"][name], given)
    return EvaluationPlan(config, st, selection, models, specs, ids, dev, recorded.get("fast_view", "off") == "on")


def check_schema(st: Store, ds) -> None:
    """Its variables may mean other things in another schema: such a store is never written into."""
    refuse_old(st.path, ds.attrs.get("uni_lab_schema"))


def execute(plan: EvaluationPlan) -> EvalResult:
    """Compute and write what :func:`plan` resolved, under the store's evaluation lock; the models are
    verified against the stored predictions first. Returns the store's path and its table."""
    st = plan.store
    with evaluation_lock(st):
        ds = st.open()
        check_schema(st, ds)
        changed = changed_parameters(plan.selection, ds)  # again under the lock: another evaluation may have ended
        if not plan.config.recompute:
            refuse_changed(changed, st.path)
        record(plan.selection, st, ds, changed)  # the first write
        with fastview.using(plan.fast_view):
            compute(st, ds, plan)
        return EvalResult(st.path, metric_table(st.open_lazy()))


def evaluate(*args, **kwargs) -> EvalResult:
    config = EvaluateConfig(**evaluate_config.signature().bind(*args, **kwargs).arguments)
    with preserving(list(given_models(config.models).values())):
        return execute(plan(config))  # the caller's models are moved to the device, then put back


evaluate.__signature__, evaluate.__doc__ = evaluate_config.signature(), evaluate_config.evaluate_doc()
