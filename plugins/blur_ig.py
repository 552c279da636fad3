"""Blur Integrated Gradients (Xu et al. 2020, METHODS.md §3) on the shared engine.

The path is ``γ(α) = G_{σ(α)} * x`` with ``σ(α) = σ_max (1 − α)``, linear in σ as in PAIR's
``saliency.core.BlurIG`` (its default ``sqrt=False``): ``γ(0)`` is the maximally blurred image
(the baseline), ``γ(1) = x``. The engine's right Riemann sum multiplies each gradient by the
difference of consecutive path points, a finite-difference ``∂γ/∂α``; PAIR instead multiplies
by ``Δσ · ∂G_σ x/∂σ`` from its own small forward difference. Both converge to the same
integral as the number of steps grows (checked in tests/test_methods.py).
"""
import torch

import uni_lab
from uni_lab.engine import check_input, fixed_path, integrate, path_chunk
from uni_lab.errors import InputError
from uni_lab.ops import gaussian_blur


@uni_lab.path("blur")
def blur_path(x, baseline, alphas, *, sigma_max: float = 20.0):
    """Blur path G_σ(α) * x, σ from sigma_max (α = 0) down to 0 (α = 1); the baseline argument is unused."""
    return torch.stack([gaussian_blur(x, float(sigma_max) * (1.0 - float(a))) for a in alphas])


@uni_lab.explainer("blur_ig")
def blur_ig(model, x, target, seeds=None, *, sigma_max: float = 20.0, steps: int = 15, output: str = "prob",
            internal_batch_size: int | None = None):
    """BlurIG: integrate gradients along the path from the sigma_max-blurred image to the image."""
    check_input(x)
    if sigma_max <= 0 or int(steps) < 1:
        raise InputError(f"blur_ig needs sigma_max > 0 (pixels) and steps >= 1, got {sigma_max} and {steps}.")
    ibs, chunk = path_chunk(model, x, internal_batch_size)
    path_fn = lambda x_, _b, a: blur_path(x_, None, a, sigma_max=sigma_max)
    return integrate(model, x, target, fixed_path(path_fn, x, None, int(steps), chunk), output=output,
                     internal_batch_size=ibs, baseline_gradient=False)
