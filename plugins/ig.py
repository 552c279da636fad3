"""Integrated Gradients (Sundararajan et al. 2017) on the shared engine."""
import uni_lab
from uni_lab.defaults import DEFAULT_STEPS
from uni_lab.engine import check_rule, fixed_path, integrate, path_chunk, resolve_baseline, straight_path


@uni_lab.explainer("ig")
def integrated_gradients(model, x, target, seeds=None, *, baseline="black", steps: int = DEFAULT_STEPS, rule: str = "right",
                         output: str = "prob", internal_batch_size: int | None = None):
    """Integrated Gradients: straight path from a baseline, right (or left) Riemann sum with B steps."""
    check_rule(rule)
    xb = resolve_baseline(baseline, x, model, target, seeds)
    ibs, chunk = path_chunk(model, x, internal_batch_size)
    return integrate(model, x, target, fixed_path(straight_path, x, xb, int(steps), chunk),
                     output=output, internal_batch_size=ibs, baseline_gradient=False, rule=rule)
