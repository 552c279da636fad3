"""Guided Integrated Gradients (Kapishnikov et al. 2021, docs/methods.md §3) on the shared engine.

The path is built during integration: the engine sends back ``∇F_c`` at each point, and the
next point moves only the ``fraction`` of features with the smallest ``|∇F_c|`` towards
``x`` (repeating the selection until the step's share of the L1 distance is covered), so
that ``‖γ_k − x‖₁ = (1 − k/B) ‖x' − x‖₁``. ``max_dist`` bounds how far any feature may run
ahead of or fall behind the straight line, in units of α (1 = unbounded, 0 = the straight
line). Its default is PAIR's, 0.02.

Completeness: a selected feature jumps across the band (up to ``2·max_dist`` in α) in one
step however many steps there are, so the path stays a staircase of jumps of fixed size
and the Riemann sum need not converge to ``F_c(x) − F_c(x')`` as B grows. On the tiny test
CNN it does (0.3% at B = 256; 1.2–1.6% unbounded); on EfficientNet-Lite0 (chelsea, prob) it
does not: PAIR's own implementation sums to 1.22 at B = 15 and 1.60 at B = 60, this one to
−0.16 and −0.56, against F_c(x) − F_c(0) = 0.49. The two differ only in the Riemann rule, so
the gap between them is the size of the jumps' gradient changes, not a bug of either. The
selection follows PAIR's ``saliency.core.guided_ig`` step for step (lower quantile, features
already at their bound excluded), in float64 like PAIR, so that the two walk the same path.
``rule="right"`` (default) takes each segment's gradient at its end, as every engine method
does (docs/methods.md §1); ``rule="left"`` at its start, as PAIR does, and with PAIR's settings
(``steps=200, fraction=0.25, max_dist=0.02``) reproduces PAIR's map to 6e-7 relative L2
(tests/test_pair.py, EfficientNet-Lite0, 64², the same float32 gradients on both sides).

Rounding: Guided IG maps reproduce only under the same float arithmetic: on chelsea and coffee
at 224² (Lite0, prob) the fast view on against off moves them by 0.83 / 0.93 relative L2
(Spearman 0.55 / 0.50) at the defaults and by 0.49 / 0.58 (Spearman 0.75 / 0.71) at PAIR's
settings with ``rule="left"``, against 0.2 % for IG-black (docs/methods.md §3).
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

from annotated_types import Interval

import torch

import uni_lab
from uni_lab.contracts import BatchSize, Count
from uni_lab.defaults import DEFAULT_STEPS
from uni_lab.engine import DEFAULT_INTERNAL_BATCH, OUTPUTS, RULES, integrate, resolve_baseline

REL_TOL = 1e-9  # PAIR's closeness test for "this step's L1 target is reached"


@uni_lab.explainer("guided_ig")
def guided_ig(model, x, target, seeds=None, *, baseline="black", steps: Count = DEFAULT_STEPS,
              fraction: Annotated[float, Interval(gt=0, le=1)] = 0.1,
              max_dist: Annotated[float, Interval(ge=0, le=1)] = 0.02, rule: Literal[RULES] = "right",
              output: Literal[OUTPUTS] = "prob", internal_batch_size: BatchSize = None):
    """Guided IG: an adaptive path that first moves the features with the smallest gradients."""
    xb = resolve_baseline(baseline, x, model, target, seeds)
    return integrate(model, x, target, guided_path(x, xb, int(steps), fraction, max_dist), output=output,
                     internal_batch_size=internal_batch_size or DEFAULT_INTERNAL_BATCH, rule=rule)


def guided_path(x, baseline, steps: int, fraction: float, max_dist: float):
    """Engine path generator: yields one point per step and receives that point's gradients."""
    x64, b64 = x.double(), baseline.double()
    cur = b64.clone()
    l1_total = (x64 - b64).abs().flatten(1).sum(1)
    reply = yield torch.zeros(1, dtype=x.dtype, device=x.device), baseline.unsqueeze(0)
    for k in range(steps):
        grad = reply[0][0].double()
        if k == steps - 1:
            cur = x64  # the last step reaches x up to float rounding; land on it exactly
        else:
            cur = _step(cur, x64, b64, grad, (k + 1) / steps, fraction, max_dist, l1_total)
        alpha = torch.full((1,), (k + 1) / steps, dtype=x.dtype, device=x.device)
        reply = yield alpha, cur.to(x.dtype).unsqueeze(0)


def _step(cur, x, base, grad, alpha, fraction, max_dist, l1_total):
    """One Guided IG step for a batch: move low-|gradient| features until the L1 target is met."""
    n = cur.shape[0]
    a_min, a_max = max(alpha - max_dist, 0.0), min(alpha + max_dist, 1.0)
    diff = x - base
    x_min, x_max = base + diff * a_min, base + diff * a_max
    l1_target = l1_total * (1 - alpha)
    grad = grad.clone()
    active = torch.ones(n, dtype=torch.bool, device=cur.device)
    rank = int(math.floor(fraction * (cur[0].numel() - 1)))  # numpy's quantile(..., 'lower')
    expand = lambda t: t.view(n, *([1] * (cur.dim() - 1)))
    while bool(active.any()):
        # features that fell behind the allowed band are pulled up to its lower edge
        x_alpha = torch.where(diff != 0, (cur - base) / diff.where(diff != 0, torch.ones_like(diff)),
                              torch.full_like(cur, a_max))
        cur = torch.where(expand(active) & (x_alpha < a_min), x_min, cur)
        l1_cur = (cur - x).abs().flatten(1).sum(1)
        close = (l1_cur - l1_target).abs() <= torch.maximum(REL_TOL * torch.maximum(l1_cur, l1_target),
                                                            torch.full_like(l1_cur, REL_TOL))
        active &= ~close
        if not bool(active.any()):
            break
        grad[cur == x_max] = math.inf
        mag = grad.abs().flatten(1)
        threshold = mag.kthvalue(rank + 1, dim=1).values
        sel = ((mag <= threshold[:, None]) & (mag != math.inf)).view_as(cur) & expand(active)
        l1_s = ((cur - x_max).abs() * sel).flatten(1).sum(1)
        gamma = torch.where(l1_s > 0, (l1_cur - l1_target) / l1_s.clamp_min(1e-300), torch.full_like(l1_s, math.inf))
        full = sel & expand(gamma > 1)
        part = sel & expand(gamma <= 1)
        cur = torch.where(full, x_max, cur)
        cur = torch.where(part, cur + (x_max - cur) * expand(gamma.clamp(max=1)), cur)
        # an image whose selectable features are all at their bound cannot move further this step
        active &= (gamma > 1) & (l1_s > 0)
    return cur
