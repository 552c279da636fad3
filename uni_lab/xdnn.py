"""X-DNNs: the bias-free variant of a model (Hesse et al. 2021, docs/methods.md §4).

A ReLU network with every additive constant removed is positively homogeneous,
``F(αx) = α F(x)`` for ``α > 0``, so along the straight line from the black image its logit
gradient is constant and input×gradient equals black-baseline Integrated Gradients exactly,
in one pass. :func:`bias_free` builds that variant of any torchvision/timm model (or a
:class:`~uni_lab.models.Classifier` around one) as a copy; the original is untouched.

What is removed: every parameter whose name ends in ``bias`` (convolutions, linear layers,
norm layers, attention projections), batch-norm running means (eval-mode batch norm then
scales without shifting), and, for a ``Classifier``, the mean subtracted by the input
normalisation (a shift in pixel space is a bias of the first layer). The result is a
different function from the trained model: X-DNNs are trained bias-free, and removing the
biases of a trained network changes its predictions.

Removing biases makes a network homogeneous only if everything else in it is: ReLU,
LeakyReLU, linear maps, pooling. ReLU6 (EfficientNet-Lite), GELU (ViT, Swin, ConvNeXt),
SiLU (EfficientNetV2), sigmoid gates, LayerNorm/GroupNorm (scale-invariant) and attention
are not; :func:`bias_free` names what it finds of those in a warning, or raises with
``strict=True``.
"""
from __future__ import annotations

import copy
import warnings
from collections import Counter

import torch
from torch import nn

from .errors import InputError
from .models import Classifier

# Modules compatible with positive homogeneity of degree one (with biases removed).
HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Identity, nn.Dropout, nn.Flatten, nn.MaxPool1d, nn.MaxPool2d,
               nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
               nn.AdaptiveMaxPool2d)
NOT_HOMOGENEOUS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.MultiheadAttention)
# Parameters added to activations under names other than "bias" (ViT/timm token and position embeddings).
ADDITIVE_NAMES = ("pos_embed", "pos_embedding", "cls_token", "class_token", "dist_token", "reg_token")


def non_homogeneous(net: nn.Module) -> Counter:
    """Module types (and additive embeddings) in ``net`` that keep it from being homogeneous."""
    found: Counter = Counter()
    for m in net.modules():
        mod = type(m).__module__
        is_act = mod == "torch.nn.modules.activation" or mod.startswith("timm.layers.activations")
        if isinstance(m, NOT_HOMOGENEOUS) or (is_act and not isinstance(m, HOMOGENEOUS)):
            found[type(m).__name__] += 1
    for name, _ in net.named_parameters():
        if name.rsplit(".", 1)[-1] in ADDITIVE_NAMES:
            found[f"parameter {name.rsplit('.', 1)[-1]}"] += 1
    return found


def bias_free(model: nn.Module, *, strict: bool = False) -> nn.Module:
    """A copy of ``model`` with every additive constant removed (see the module docstring).

    Returns a :class:`Classifier` (normalisation kept as a pure scale) when given one, else
    the bare network. Warns, or with ``strict=True`` raises :class:`InputError`, when parts of
    the architecture stay non-homogeneous so that input×gradient ≠ IG-black.
    """
    out = copy.deepcopy(model)
    net = out.net if isinstance(out, Classifier) else out
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.rsplit(".", 1)[-1].endswith("bias"):
                p.zero_()
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.running_mean is None:
                    raise InputError(f"bias_free: batch norm '{type(m).__name__}' keeps no running statistics, so it "
                                     "normalises by batch statistics and cannot be made bias-free; use a model with "
                                     "track_running_stats=True.")
                m.running_mean.zero_()
        if isinstance(out, Classifier):
            out.mean.zero_()
    if isinstance(out, Classifier):
        out.name = f"{out.name}_bias_free"
    leftovers = non_homogeneous(net)
    if leftovers:
        what = ", ".join(f"{k} (x{v})" for k, v in sorted(leftovers.items()))
        msg = (f"the bias-free model is still not positively homogeneous because of {what}; "
               "input×gradient will not equal black-baseline IG on it. X-DNNs are ReLU networks.")
        if strict:
            raise InputError(msg)
        warnings.warn(msg, stacklevel=2)
    return out
