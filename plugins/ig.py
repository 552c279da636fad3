"""Integrated Gradients (Sundararajan et al. 2017) on the shared engine."""
import uni_lab
from uni_lab.engine import DEFAULT_INTERNAL_BATCH, fixed_path, integrate, resolve_baseline, straight_path


@uni_lab.explainer("ig")
def integrated_gradients(model, x, target, seeds=None, *, baseline="black", steps: int = 15,
                         output: str = "prob", internal_batch_size: int | None = None):
    """Integrated Gradients: straight path from a baseline, right Riemann sum with B steps."""
    xb = resolve_baseline(baseline, x, model, target, seeds)
    ibs = internal_batch_size or DEFAULT_INTERNAL_BATCH
    chunk = max(1, ibs // x.shape[0])
    return integrate(model, x, target, fixed_path(straight_path, x, xb, int(steps), chunk),
                     output=output, internal_batch_size=ibs, baseline_gradient=False)
