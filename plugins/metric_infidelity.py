"""Infidelity (Yeh et al. 2019) through Captum's ``infidelity``.

``INFD = E_I[(Iᵀ Φ(x) − (F_c(x) − F_c(x − I)))²]`` over ``n_samples`` perturbations
``I ~ N(0, σ²)`` per pixel (``sigma``); with ``normalize`` (Yeh et al.'s scale-free variant,
Captum's ``normalize=True``) the map is first rescaled by the β that minimises the
expectation, so methods with maps of different scale compare. Captum draws nothing itself;
the perturbations come from torch's generator seeded per image, one Captum call per image, so
a value never depends on the batch. Forward passes run through the model's fast view.
"""
from __future__ import annotations

from typing import Literal

import torch

import uni_lab
from uni_lab.contracts import Count, Positive
from uni_lab.engine import OUTPUTS
from uni_lab.fastview import fast_view


@uni_lab.metric("infidelity")
def infidelity(model, x, target, attribution, seeds=None, *, n_samples: Count = 64, sigma: Positive = 0.1,
               normalize: bool = True, output: Literal[OUTPUTS] = "prob", internal_batch_size: Count = 64):
    """Infidelity (Yeh et al. 2019) via Captum: squared error between Iᵀ Φ and the output drop under N(0, σ²) noise I; lower is better."""
    from captum.metrics import infidelity as captum_infidelity

    from uni_lab.captum import Scores, image_seeds, seeded

    def perturb(inputs):
        noise = torch.randn_like(inputs) * float(sigma)
        return noise, inputs - noise

    forward = Scores(fast_view(model, x), output)
    values = []
    for i, seed in enumerate(image_seeds(seeds, "infidelity", x.shape[0])):
        with seeded(seed), torch.no_grad():
            values.append(captum_infidelity(forward, perturb, x[i:i + 1], attribution[i:i + 1].to(x),
                                            target=target[i:i + 1], n_perturb_samples=int(n_samples),
                                            max_examples_per_batch=max(1, min(int(internal_batch_size), int(n_samples))),
                                            normalize=bool(normalize)))
    return {"infidelity": torch.cat(values).double()}
