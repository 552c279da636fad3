"""Integrated Gradients (Sundararajan et al. 2017) on the shared engine."""
from typing import Literal

import uni_lab
from uni_lab import endpoint
from uni_lab.contracts import BatchSize, Count
from uni_lab.defaults import DEFAULT_STEPS
from uni_lab.engine import OUTPUTS, RULES, fixed_path, integrate, path_chunk, resolve_baseline, resolve_path


@uni_lab.explainer("ig")
def integrated_gradients(model, x, target, seeds=None, *, baseline="black", path="straight",
                         steps: Count = DEFAULT_STEPS, rule: Literal[RULES] = "right",
                         output: Literal[OUTPUTS] = "prob", internal_batch_size: BatchSize = None):
    """Integrated Gradients: a path (straight by default) from a baseline, right (or left) Riemann sum with B steps.

    ``path``: a registered path's name (``--set ig.path=NAME``, its own parameters as
    ``--set NAME.param=...``) or a callable ``(x, baseline, alphas) -> points``.
    """
    with endpoint.collecting():  # a baseline that computed ∇F_c at x anyway (UNI's) spares the last pass
        xb = resolve_baseline(baseline, x, model, target, seeds)
        ibs, chunk = path_chunk(model, x, internal_batch_size)
        return integrate(model, x, target, fixed_path(resolve_path(path), x, xb, int(steps), chunk),
                         output=output, internal_batch_size=ibs, baseline_gradient=False, rule=rule)
