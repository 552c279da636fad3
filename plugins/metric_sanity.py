"""Model-parameter randomisation test (Adebayo et al. 2018), cascading from the top layer down.

The layers are the model's modules that hold parameters of their own, in registration order;
stage ``j`` of ``stages`` re-initialises (``reset_parameters``, seeded) the top
``round(1 + (j − 1)(L − 1)/(stages − 1))`` of them, so stage 1 is the logit layer alone and the
last stage is the fully random network. The method is run again on each randomised copy (the
user's model is never touched), and its map compared with the trained model's by Spearman
correlation of ``Σ_c |A_c|``. A method that passes the test shows low correlation once the
top layers are random.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import xarray as xr

import uni_lab
from uni_lab.contracts import Count
from uni_lab.errors import InputError

from .metric_robustness import pixel_map, spearman_rows


def parametrised_layers(model: torch.nn.Module) -> list[str]:
    """Names of modules with parameters of their own, input side first."""
    return [name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]


def cascade_counts(n_layers: int, stages: int) -> list[int]:
    if stages < 1 or n_layers < 1:
        raise InputError("sanity needs stages >= 1 and a model with parameters.")
    if stages == 1:
        return [n_layers]
    return sorted({int(round(1 + j * (n_layers - 1) / (stages - 1))) for j in range(stages)})


def randomised_copy(model: torch.nn.Module, layers: list[str], seed: int) -> torch.nn.Module:
    """A copy of ``model`` with ``layers`` re-initialised from a seeded generator."""
    clone = copy.deepcopy(model)
    modules = dict(clone.named_modules())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in layers:
            m = modules[name]
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
            else:  # no init rule of its own: a small normal draw, the generic choice
                for p in m.parameters(recurse=False):
                    torch.nn.init.normal_(p, std=0.02)
    return clone.eval()


@uni_lab.metric("sanity")
def sanity(model, x, target, attribution, explain, seeds=None, *, stages: Count = 4, seed: int = 0):
    """Cascading parameter randomisation (Adebayo et al. 2018): Spearman of A against A on a progressively random model."""
    layers = parametrised_layers(model)
    counts = cascade_counts(len(layers), int(stages))
    ref = pixel_map(attribution)
    rho, share = [], []
    for count in counts:
        randomised = randomised_copy(model, layers[len(layers) - count:], int(seed))
        a = explain(randomised, x, target, seeds).attribution
        rho.append(spearman_rows(ref, pixel_map(a)).cpu().numpy())
        share.append(np.full(x.shape[0], count / len(layers)))
    coords = {"sanity_stage": np.arange(1, len(counts) + 1)}
    return {"spearman": xr.DataArray(np.stack(rho, 1), dims=("image", "sanity_stage"), coords=coords),
            "layers_randomised": xr.DataArray(np.stack(share, 1), dims=("image", "sanity_stage"), coords=coords)}
