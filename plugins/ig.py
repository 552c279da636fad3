"""Integrated Gradients (Sundararajan et al. 2017) on the shared engine."""
import uni_lab
from uni_lab.defaults import DEFAULT_STEPS
from uni_lab.engine import check_rule, fixed_path, integrate, path_chunk, resolve_baseline, resolve_path


@uni_lab.explainer("ig")
def integrated_gradients(model, x, target, seeds=None, *, baseline="black", path="straight",
                         steps: int = DEFAULT_STEPS, rule: str = "right", output: str = "prob",
                         internal_batch_size: int | None = None):
    """Integrated Gradients: a path (straight by default) from a baseline, right (or left) Riemann sum with B steps.

    ``path``: a registered path's name (``--set ig.path=NAME``, its own parameters as
    ``--set NAME.param=...``) or a callable ``(x, baseline, alphas) -> points``.
    """
    check_rule(rule)
    xb = resolve_baseline(baseline, x, model, target, seeds)
    ibs, chunk = path_chunk(model, x, internal_batch_size)
    return integrate(model, x, target, fixed_path(resolve_path(path), x, xb, int(steps), chunk),
                     output=output, internal_batch_size=ibs, baseline_gradient=False, rule=rule)
