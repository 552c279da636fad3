"""Metrics, attacks and corruptions for an existing store, without recomputing its maps.

``evaluate(store, metrics=..., attacks=..., corruptions=...)`` reloads the model named in the
store's configuration (checking that it reproduces the stored predictions), rebuilds each
method from the recorded parameters, and reads the stored attributions, baselines and path
traces. New maps are computed only where a metric needs them by definition: of attacked and
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

What to compute is :mod:`.planning` (a :class:`Plan`, validated from names alone); how is
:mod:`.jobs` (a job per model × method) with attacks and corruptions as the two strategies of
:mod:`.conditions`; what the store gives back (methods, model, batches) is :mod:`.stored`;
the returned table is :mod:`.tables`. Variable names come from :mod:`uni_lab.schema`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import fastview
from ..accessor import config_of
from ..defaults import DEFAULT_BATCH, PERTURBED_METRICS, SEVERITIES
from ..errors import InputError, StoreError
from ..locks import evaluation_lock
from ..schema import SCHEMA_VERSION
from ..store import Store
from .conditions import CLEAN, Attack, Condition, Corruption
from .jobs import Job, run
from ..models import preserving, resolve_device
from .planning import Plan, plan, subset
from .stored import MethodCall, check_plugins_present, load_model, method_from_config, read_explanation
from .tables import metric_table

__all__ = ["evaluate", "plan", "Plan", "EvalResult", "metric_table", "MethodCall", "check_plugins_present",
           "load_model", "method_from_config", "read_explanation", "Job", "Condition", "CLEAN", "Attack",
           "Corruption"]


@dataclass
class EvalResult:
    path: Path
    table: "object"  # pandas.DataFrame


def evaluate(store, metrics=(), attacks=(), corruptions=(), *, severities=SEVERITIES,
             perturbed_metrics=PERTURBED_METRICS, sets=None, models=None, methods=None, images=None,
             batch_size: int = DEFAULT_BATCH, device: str | None = None, recompute: bool = False,
             progress: bool = True) -> EvalResult:
    """Compute ``metrics`` on the stored maps and ``perturbed_metrics`` on ``attacks``/``corruptions``.

    Names are lists or comma strings; ``"all"`` takes every registered one. ``sets``:
    ``{"mufidelity.n_subsets": 64}`` or ``["mufidelity.n_subsets=64"]``. ``models``: Classifier
    objects for models the store cannot reload (random or in-memory weights). ``methods`` and
    ``images`` restrict the work to some of the store's labels. Returns the store's path and
    the per-method table of :func:`metric_table`.
    """
    if batch_size < 1:
        raise InputError("batch_size must be at least 1.")
    st = Store(store)
    if not st.exists():
        raise StoreError(f"no store at '{store}'; create one with `uni-lab run --out {store}`.")
    given = {c.name: c for c in (models if isinstance(models, (list, tuple)) else [models] if models else [])}
    with evaluation_lock(st), preserving(list(given.values())):  # moved to the device, then put back
        ds = st.open()
        if ds.attrs.get("uni_lab_schema") != SCHEMA_VERSION:  # its variables may mean other things: never written into
            raise StoreError(f"store '{st.path}' has schema version {ds.attrs.get('uni_lab_schema')!r}; this uni_lab "
                             f"evaluates schema {SCHEMA_VERSION} only. Evaluate it with the uni_lab that wrote it, "
                             "or rerun `uni-lab run` into a new --out.")
        config = config_of(ds)
        check_plugins_present(ds, given=given)
        todo = plan(metrics, attacks, corruptions, severities=severities, perturbed_metrics=perturbed_metrics,
                    sets=sets, output=config.get("output", "prob"))
        specs = subset("method", [str(m) for m in ds.method.values], methods)
        ids = subset("image", [str(i) for i in ds.image.values], images)
        dev = resolve_device(device)
        todo.bind(st, ds, recompute)  # the first write: everything above is checked first
        # Maps are recomputed as the run computed them: stores older than the fast view ran without it.
        with fastview.using(config.get("fast_view", "off") == "on"):
            run(st, ds, todo, given=given, specs=specs, ids=ids, batch_size=batch_size, dev=dev, progress=progress)
        return EvalResult(st.path, metric_table(st.open_lazy()))
