"""Explanation sensitivity (docs/methods.md §6): how far a map moves when the input moves a little.

- ``max_sensitivity`` / ``avg_sensitivity`` (Yeh et al. 2019): over ``n_samples`` inputs
  ``x + δ``, ``δ ~ U(−r, r)`` per pixel (``radius`` r = 0.02, Captum's ``sensitivity_max``
  default), the largest / mean ``‖Φ(x + δ) − Φ(x)‖_F``, divided by ``‖Φ(x)‖_F`` when
  ``normalize`` (Captum's and Quantus's convention; Yeh et al.'s definition is unnormalised).
- ``local_lipschitz`` (Alvarez-Melis & Jaakkola 2018): the largest
  ``‖Φ(x + δ) − Φ(x)‖₂ / ‖δ‖₂`` over ``δ ~ N(0, σ²)`` per pixel (``sigma`` 0.1, Quantus's
  ``LocalLipschitzEstimate`` default).

``Φ(x)`` is the stored map; each perturbed map is the method recomputed (with the image's own
seeds, so a random method differs only through its input). Perturbation ``s`` of an image is
drawn from that image's seed, so values never depend on the batch. Perturbed inputs are not
clipped to ``[0, 1]`` (as in Captum and Quantus). Direct implementations rather than Captum's
``sensitivity_max``: that one draws from the global generator in whole batches, so a value
would depend on the batch; tests check the two agree given the same perturbations.
"""
from __future__ import annotations

import torch

import uni_lab
from uni_lab.contracts import Count, Positive
from uni_lab.seeding import derived_seeds, draw

NOISE_SALT = 37


def perturbation(x: torch.Tensor, seeds, stream: str, sample: int, kind: str, scale: float) -> torch.Tensor:
    """Noise ``δ`` number ``sample`` of ``stream``: ``U(−scale, scale)`` (``kind="uniform"``) or ``N(0, scale²)``."""
    s = derived_seeds(seeds, f"{stream}:{sample}")
    if kind == "uniform":
        return (2 * draw(x, s, "rand", salt=NOISE_SALT) - 1) * scale
    return draw(x, s, "randn", salt=NOISE_SALT) * scale


def perturbed_maps(model, x, target, explain, seeds, stream: str, n_samples: int, kind: str, scale: float):
    """Yields ``(δ, Φ(x + δ))`` for ``n_samples`` seeded perturbations, one explanation call each."""
    for s in range(int(n_samples)):
        delta = perturbation(x, seeds, stream, s, kind, scale)
        yield delta, explain(model, x + delta, target, seeds).attribution.detach()


def sensitivities(model, x, target, attribution, explain, seeds, n_samples, radius, normalize) -> torch.Tensor:
    """``(N, n_samples)``: ``‖Φ(x + δ_s) − Φ(x)‖_F`` (over ``‖Φ(x)‖_F`` when ``normalize``)."""
    a = attribution.detach().flatten(1).double()
    norm = a.norm(dim=1)
    norm = torch.where(norm == 0, torch.ones_like(norm), norm) if normalize else torch.ones_like(norm)
    return torch.stack([(m.flatten(1).double().to(a) - a).norm(dim=1) / norm for _, m in perturbed_maps(
        model, x, target, explain, seeds, "sensitivity", n_samples, "uniform", radius)], 1)


@uni_lab.metric("max_sensitivity")
def max_sensitivity(model, x, target, attribution, explain, seeds=None, *, n_samples: Count = 10, radius: Positive = 0.02,
                    normalize: bool = True):
    """Max-sensitivity (Yeh et al. 2019): the largest relative change of the map under U(±r) input noise; lower is better."""
    return {"max_sensitivity": sensitivities(model, x, target, attribution, explain, seeds, n_samples, radius,
                                             normalize).max(1).values}


@uni_lab.metric("avg_sensitivity")
def avg_sensitivity(model, x, target, attribution, explain, seeds=None, *, n_samples: Count = 10, radius: Positive = 0.02,
                    normalize: bool = True):
    """Average sensitivity (Yeh et al. 2019): the mean relative change of the map under U(±r) input noise; lower is better."""
    return {"avg_sensitivity": sensitivities(model, x, target, attribution, explain, seeds, n_samples, radius,
                                             normalize).mean(1)}


@uni_lab.metric("local_lipschitz")
def local_lipschitz(model, x, target, attribution, explain, seeds=None, *, n_samples: Count = 10, sigma: Positive = 0.1):
    """Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018): max ‖ΔΦ‖₂/‖δ‖₂ over N(0, σ²) input noise; lower is better."""
    a = attribution.detach().flatten(1).double()
    ratios = [(m.flatten(1).double().to(a) - a).norm(dim=1) / d.flatten(1).double().to(a).norm(dim=1)
              for d, m in perturbed_maps(model, x, target, explain, seeds, "local_lipschitz", n_samples, "normal", sigma)]
    return {"local_lipschitz": torch.stack(ratios, 1).max(1).values}
