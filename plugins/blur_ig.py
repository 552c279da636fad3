"""Blur Integrated Gradients (Xu et al. 2020, docs/methods.md §3) on the shared engine.

The path is ``γ(α) = G_{σ(α)} * x`` with ``σ(α) = σ_max (1 − α)``, linear in σ as in PAIR's
``saliency.core.BlurIG`` (its default ``sqrt=False``): ``γ(0)`` is the maximally blurred image
(the baseline), ``γ(1) = x``.

Three choices separate the defaults from PAIR's implementation (saliency 0.2.1); each is a
parameter, and ``rule="right", blur="pair", derivative="pair"`` with PAIR's ``sigma_max=50,
steps=100, grad_step=0.01`` reproduces PAIR's map (tests/test_pair.py, docs/methods.md §3):

- ``blur``: ``"reflect3"`` (default) is :func:`uni_lab.ops.gaussian_blur` as the rest of the
  toolkit uses it (reflect padding, kernel cut at ``⌈3σ⌉`` px, capped at the image size);
  ``"pair"`` is what PAIR's ``scipy.ndimage.gaussian_filter(..., mode="constant")`` does: zero
  padding, kernel cut at ``round(4σ)`` px (scipy's default ``truncate=4``), computed in float64
  on PAIR's σ grid ``i·σ_max/B``. Zero padding pulls the border towards black as σ grows (at
  σ = 50 on 224² the baseline is a dark-edged blob), so PAIR's path also removes brightness,
  not only detail; the default keeps reflect padding, which preserves it.
- ``derivative``: ``"difference"`` (default) multiplies each gradient by the difference of
  consecutive path points, so the steps sum to ``x − x'`` exactly and the completeness error
  measures only the Riemann error. ``"pair"`` multiplies by ``Δσ · (G_σ x − G_{σ+h} x)/h`` with
  ``h = grad_step``, PAIR's forward difference in σ at the point whose gradient it weighs; its
  steps do not sum to ``x − x'`` (an O(h) + O(Δσ) gap, checked as the steps grow in
  tests/test_methods.py).
- ``rule``: PAIR walks from ``x`` (σ = 0) outwards and takes each segment's gradient at its
  σ-start, which is the segment's end seen from the baseline: the engine's right rule, the
  default. ``rule="left"`` is the other sum.

The defaults stay as they were so that stored runs keep reproducing.
"""
import functools
from typing import Literal

import torch

import uni_lab
from uni_lab.contracts import BatchSize, Count, Positive
from uni_lab.defaults import DEFAULT_STEPS
from uni_lab.engine import OUTPUTS, RULES, check_input, fixed_path, integrate, path_chunk
from uni_lab.ops import gaussian_blur

BLURS = {"reflect3": {}, "pair": {"padding": "zeros", "truncate": 4.0, "rounding": "nearest"}}
DERIVATIVES = ("difference", "pair")


@uni_lab.path("blur")
def blur_path(x, baseline, alphas, *, sigma_max: Positive = 20.0):
    """Blur path G_σ(α) * x, σ from sigma_max (α = 0) down to 0 (α = 1); the baseline argument is unused."""
    return torch.stack([gaussian_blur(x, float(sigma_max) * (1.0 - float(a))) for a in alphas])


@uni_lab.explainer("blur_ig")
def blur_ig(model, x, target, seeds=None, *, sigma_max: Positive = 20.0, steps: Count = DEFAULT_STEPS,
            rule: Literal[RULES] = "right", blur: Literal[tuple(BLURS)] = "reflect3",
            derivative: Literal[DERIVATIVES] = "difference", grad_step: Positive = 0.01,
            output: Literal[OUTPUTS] = "prob", internal_batch_size: BatchSize = None):
    """BlurIG: integrate gradients along the path from the sigma_max-blurred image to the image."""
    check_input(x)
    ibs, chunk = path_chunk(model, x, internal_batch_size)
    if blur == "reflect3" and derivative == "difference":
        path_fn = lambda x_, _b, a: blur_path(x_, None, a, sigma_max=sigma_max)
        path = fixed_path(path_fn, x, None, int(steps), chunk)
    else:
        path = _blur_chunks(x, float(sigma_max), int(steps), chunk, blur, derivative, rule, float(grad_step))
    return integrate(model, x, target, path, output=output, internal_batch_size=ibs, baseline_gradient=False,
                     rule=rule)


def _blur_chunks(x, sigma_max, steps, chunk, blur, derivative, rule, grad_step):
    """Engine chunks of the blur path; with ``derivative="pair"`` each carries its own segments."""
    alphas = torch.linspace(0, 1, steps + 1, device=x.device, dtype=x.dtype)
    x64 = x.double()
    at = functools.lru_cache(maxsize=4)(lambda s: gaussian_blur(x64, s, **BLURS[blur]))  # float64, each σ once
    if blur == "pair":  # PAIR's σ grid, its points rounded from float64 like scipy's output cast to the model's dtype
        sig = [(steps - k) * sigma_max / steps for k in range(steps + 1)]
        point = lambda k: at(sig[k]).to(x.dtype)
    else:  # blur_path's σ and points, bit for bit
        sig = [sigma_max * (1.0 - float(a)) for a in alphas]
        point = lambda k: gaussian_blur(x, sig[k])

    def segment(k):  # Δσ · (G_σ − G_{σ+h}) / h at the point whose gradient weighs segment k
        if k == 0:
            return torch.zeros_like(x)
        m = k if rule == "right" else k - 1
        return ((at(sig[m]) - at(sig[m] + grad_step)) * ((sig[k - 1] - sig[k]) / grad_step)).to(x.dtype)

    for s in range(0, steps + 1, chunk):
        ks = range(s, min(steps + 1, s + chunk))
        points = torch.stack([point(k) for k in ks])
        if derivative == "difference":
            yield alphas[s:s + chunk], points
        else:
            yield alphas[s:s + chunk], points, torch.stack([segment(k) for k in ks])
