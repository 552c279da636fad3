"""Grad-CAM (Selvaraju et al. 2017) through Captum's ``LayerGradCam``, upsampled to the input.

The layer's activations ``A^k`` are weighted by the spatial mean of ``∂F_c/∂A^k`` and summed
over channels; a ReLU keeps what speaks for the class (``relu=True``, as Selvaraju et al.).
Captum's ``LayerAttribution.interpolate`` upsamples the ``h × w`` map bilinearly to the
image. ``layer="auto"`` takes the last module, in the order forward passes finish, whose
output is a 4-D feature map larger than 1 × 1 (pooling modules aside): torchvision's ResNets give ``layer4``, timm's
EfficientNets the activation after ``conv_head`` (``bn2``), a plain CNN its last conv block.
A module name (``--set grad_cam.layer=net.layer3``, names as in ``model.named_modules()``,
with or without the ``net.`` prefix) picks another. Captum's hooks go on a structural copy of
the model that shares its parameters, never on the user's model. The map has no channels:
it is stored as ``map / 3`` in each channel (``Σ_c A_c`` is Grad-CAM's value).
"""
from __future__ import annotations

import copy
import itertools
from typing import Literal

import torch
from torch import nn

import uni_lab
from uni_lab.accel import probe_forward
from uni_lab.contracts import BatchSize
from uni_lab.engine import DEFAULT_INTERNAL_BATCH, OUTPUTS, check_input
from uni_lab.errors import InputError
from uni_lab.explanation import Explanation

INTERPOLATION = ("bilinear", "nearest", "bicubic")


def auto_layer(model: nn.Module, x: torch.Tensor) -> str:
    """The name of the last module (in finishing order) with a spatial 4-D output."""
    finished = []
    names = {id(m): n for n, m in model.named_modules() if n}
    probe_forward(model, x, [m for m in model.modules() if id(m) in names],
                  lambda mod, i, o: finished.append((id(mod), o)))
    # pooling to a fixed grid (VGG's 7 × 7 adaptive pool) resamples the features rather than computing them
    pooling = {id(m) for m in model.modules() if "Pool" in type(m).__name__}
    spatial = [names[key] for key, out in finished if key not in pooling
               and torch.is_tensor(out) and out.dim() == 4 and out.shape[2] * out.shape[3] > 1]
    if not spatial:
        raise InputError(f"grad_cam found no module with a spatial feature map in model "
                         f"'{getattr(model, 'name', type(model).__name__)}'; name one with --set grad_cam.layer=NAME.")
    return spatial[-1]


def find_layer(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    for candidate in (name, f"net.{name}"):
        if candidate in modules and candidate:
            return modules[candidate]
    spatial = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][-5:]
    raise InputError(f"grad_cam: model '{getattr(model, 'name', type(model).__name__)}' has no module '{name}'; "
                     f"names come from model.named_modules() (its last convolutions: {', '.join(spatial)}).")


@uni_lab.explainer("grad_cam")
def grad_cam(model, x, target, seeds=None, *, layer: str = "auto", relu: bool = True,
             interpolation: Literal[INTERPOLATION] = "bilinear", output: Literal[OUTPUTS] = "prob",
             internal_batch_size: BatchSize = None):
    """Grad-CAM (Selvaraju et al. 2017) via Captum's LayerGradCam, upsampled; layer chosen automatically or by name."""
    from captum.attr import LayerAttribution, LayerGradCam

    from uni_lab.captum import Scores, spread

    uni_lab.models.require_weights(model, "grad_cam", "layers")
    check_input(x)
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    copy_ = copy.deepcopy(model, shared)
    name = auto_layer(copy_, x) if layer == "auto" else layer
    cam = LayerGradCam(Scores(copy_, output), find_layer(copy_, name))
    size = int(internal_batch_size or DEFAULT_INTERNAL_BATCH)
    maps = []
    for s in range(0, x.shape[0], size):
        a = cam.attribute(x[s:s + size].detach().clone().requires_grad_(True), target=target[s:s + size],
                          relu_attributions=bool(relu))
        maps.append(LayerAttribution.interpolate(a.detach(), tuple(x.shape[2:]), interpolate_mode=interpolation))
    heat = torch.cat(maps)
    return Explanation(spread(heat.sum(1, keepdim=True)).to(x))
