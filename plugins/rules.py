"""Backpropagation-rule explainers through Captum: Guided Backprop and DeepLIFT (rescale).

The backward rules are Captum's (``captum.attr.GuidedBackprop``, ``captum.attr.DeepLift``),
not re-derived here. Captum attaches them to activation *modules*, by type, and passes the
plain gradient through everything else. What that means per activation:

- Guided Backprop: the guided rule (only positive gradients flow back, only where the
  activation was open) on ``nn.ReLU``. ``nn.ReLU6`` (EfficientNet-Lite) gets the same rule,
  open on ``0 < x < 6``, through a ReLU-typed stand-in that Captum hooks.
- DeepLIFT: the rescale rule ``Δout/Δin`` on ``nn.ReLU``, ``ELU``, ``LeakyReLU``, ``Sigmoid``,
  ``Tanh``, ``Softplus``, max pooling and ``nn.Softmax`` (Captum's list). ``nn.ReLU6`` is
  rewritten as ``ReLU(x) − ReLU(x − 6)``, whose two rescale multipliers add up to exactly
  ReLU6's own ``Δout/Δin``, so the result is DeepLIFT's rescale rule for ReLU6.
- Any other activation module (``GELU`` in ViT, Swin and ConvNeXt, ``SiLU`` in
  EfficientNetV2, ``Hardswish``, ``nn.MultiheadAttention``, timm's own activation classes)
  has no rule in Captum, which would silently back-propagate the plain gradient through it:
  the map would be neither Guided Backprop nor DeepLIFT. By default this is an error naming
  those modules; ``unsupported="gradient"`` accepts Captum's pass-through (and the run
  config records that choice). Nonlinearities computed functionally rather than by modules
  (attention softmax, LayerNorm's division, multiplicative gates such as squeeze-excitation)
  cannot be seen by either library and always get the plain gradient; for DeepLIFT the
  recorded completeness error shows how far that takes the map from summing to
  ``F_c(x) − F_c(x')``.

Captum keeps per-module state during the backward pass, so a module called twice in one
forward (torchvision's ResNet blocks reuse one ReLU) breaks DeepLIFT; rule modules called
more than once get one copy per call. All of this happens on a structural copy of the model
that shares its parameters: the user's model is never modified.

``output="prob"`` explains the softmax through an ``nn.Softmax`` module, i.e. with Captum's
softmax rule for DeepLIFT. That rule normalises over the whole batch it sees, so DeepLIFT on
probabilities runs one image per Captum call to keep each map independent of its batch.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import warnings
from collections import Counter
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

import uni_lab
from uni_lab.accel import probe_forward
from uni_lab.contracts import BatchSize
from uni_lab.engine import (DEFAULT_INTERNAL_BATCH, OUTPUTS, check_input, completeness_error,
                            resolve_baseline, scores)
from uni_lab.errors import InputError
from uni_lab.explanation import Explanation

UNSUPPORTED = ("error", "gradient")


class ReLU6AsReLUs(nn.Module):
    """``ReLU6(x) = ReLU(x) − ReLU(x − 6)``: two modules Captum's DeepLIFT has a rule for."""

    def __init__(self):
        super().__init__()
        self.low, self.high = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        return self.low(x) - self.high(x - 6.0)


class GuidedReLU6(nn.ReLU):
    """ReLU6 that Captum's Guided Backprop recognises (it hooks instances of ``nn.ReLU``)."""

    def forward(self, x):
        return F.relu6(x)


class PerCall(nn.Module):
    """Stands in for a module called several times per forward: call ``i`` goes to copy ``i``."""

    def __init__(self, module: nn.Module, calls: int):
        super().__init__()
        self.copies = nn.ModuleList(copy.deepcopy(module) for _ in range(calls))
        self.count = 0

    def forward(self, *args, **kwargs):
        module = self.copies[self.count % len(self.copies)]
        self.count += 1
        return module(*args, **kwargs)


class FreshInput(nn.Module):
    """Hands a rule module a copy of its input, so its input is never another rule module's output.

    Captum records a module's output gradient with a hook on its output tensor and rewrites
    the next module's input gradient with a hook on that same tensor; hooks on one tensor
    run in registration order, so the first module would record the gradient *before* the
    second module's rule rewrote it (ReLU → MaxPool in ResNet's stem, MaxPool → ReLU), and
    DeepLIFT would lose its summation-to-delta. A copy puts the two hooks on two tensors.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x, *args, **kwargs):
        return self.module(x.clone(), *args, **kwargs)


class RuleNet(nn.Module):
    """What Captum sees: the classifier copy, optionally followed by a softmax module."""

    def __init__(self, classifier: nn.Module, prob: bool):
        super().__init__()
        self.classifier = classifier
        self.softmax = nn.Softmax(dim=-1) if prob else nn.Identity()

    def forward(self, x):
        for m in self.modules():
            if isinstance(m, PerCall):
                m.count = 0
        return self.softmax(self.classifier(x))


def _deeplift_rules() -> tuple:
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    return tuple(SUPPORTED_NON_LINEAR)


def _is_activation(module: nn.Module) -> bool:
    mod = type(module).__module__
    return mod == "torch.nn.modules.activation" or mod.startswith("timm.layers.activations")


def _has_rule(module: nn.Module, method: str) -> bool:
    if method == "guided_backprop":
        return isinstance(module, nn.ReLU)
    return type(module) in _deeplift_rules()


def _replace(root: nn.Module, mapping: dict) -> None:
    """Swap every reference to a key module (under any parent and name) for its value."""
    for parent in list(root.modules()):
        for name, child in list(parent._modules.items()):
            if child is not None and id(child) in mapping:
                parent._modules[name] = mapping[id(child)]


def rule_model(model: nn.Module, x: torch.Tensor, method: str, prob: bool, unsupported: str = "error") -> RuleNet:
    """A copy of ``model`` (parameters shared, never written) ready for Captum's ``method`` rules."""
    uni_lab.models.require_weights(model, method, "modules (Captum's rules hook its activations)")
    if unsupported not in UNSUPPORTED:
        raise InputError(f"{method}.unsupported must be one of {UNSUPPORTED}, got '{unsupported}'.")
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    net = copy.deepcopy(model, shared)
    stand_in = GuidedReLU6 if method == "guided_backprop" else ReLU6AsReLUs
    _replace(net, {id(m): stand_in() for m in net.modules() if type(m) is nn.ReLU6})
    for m in net.modules():
        if _is_activation(m) and hasattr(m, "inplace"):
            m.inplace = False  # Captum's hooks need the activation's input intact
    missing = Counter(type(m).__name__ for m in net.modules() if _is_activation(m) and not _has_rule(m, method))
    if missing and unsupported == "error":
        found = ", ".join(f"{name} (x{count})" for name, count in sorted(missing.items()))
        raise InputError(
            f"{method}: Captum has no {method} rule for {found} in model "
            f"'{getattr(model, 'name', type(model).__name__)}' and would pass the plain gradient through them, "
            f"so the map would not be {method}. Use a model whose activations are ReLU/ReLU6"
            f"{'' if method == 'guided_backprop' else ', ELU, LeakyReLU, Sigmoid, Tanh or Softplus'}, or accept "
            f"Captum's gradient pass-through with --set {method}.unsupported=gradient.")
    calls: Counter = Counter()
    ruled = {id(m): m for m in net.modules() if _has_rule(m, method)}
    probe_forward(net, x, ruled.values(), lambda mod, i, o: calls.update([id(mod)]))
    _replace(net, {key: PerCall(ruled[key], n) for key, n in calls.items() if n > 1})
    _replace(net, {id(m): FreshInput(m) for m in net.modules() if _has_rule(m, method)})
    return RuleNet(net, prob)


@contextlib.contextmanager
def _captum_quiet():
    """Captum warns on every call that it sets hooks; that is expected here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*Setting (forward, )?backward hooks")
        yield


def _chunks(n: int, size: int):
    return ((s, min(n, s + size)) for s in range(0, n, size))


@uni_lab.explainer("guided_backprop")
def guided_backprop(model, x, target, seeds=None, *, unsupported: Literal[UNSUPPORTED] = "error",
                    output: Literal[OUTPUTS] = "prob", internal_batch_size: BatchSize = None):
    """Guided Backprop (Springenberg et al. 2014) via Captum's guided rule on ReLU and ReLU6."""
    from captum.attr import GuidedBackprop

    check_input(x)
    net = rule_model(model, x, "guided_backprop", output == "prob", unsupported)
    gbp = GuidedBackprop(net)
    with _captum_quiet():
        out = [gbp.attribute(x[a:b].detach().clone().requires_grad_(True), target=target[a:b]).detach()
               for a, b in _chunks(x.shape[0], internal_batch_size or DEFAULT_INTERNAL_BATCH)]
    return Explanation(torch.cat(out))


@uni_lab.explainer("deeplift")
def deeplift(model, x, target, seeds=None, *, baseline="black", unsupported: Literal[UNSUPPORTED] = "error",
             output: Literal[OUTPUTS] = "prob", internal_batch_size: BatchSize = None):
    """DeepLIFT, rescale rule (Shrikumar et al. 2017) via Captum, from a reference image (default black)."""
    from captum.attr import DeepLift

    check_input(x)
    xb = resolve_baseline(baseline, x, model, target, seeds)
    net = rule_model(model, x, "deeplift", output == "prob", unsupported)
    dl = DeepLift(net, multiply_by_inputs=True)
    size = 1 if output == "prob" else (internal_batch_size or DEFAULT_INTERNAL_BATCH)
    with _captum_quiet():
        attribution = torch.cat([dl.attribute(x[a:b].detach().clone().requires_grad_(True), baselines=xb[a:b], target=target[a:b]).detach()
                                 for a, b in _chunks(x.shape[0], size)])
    with torch.no_grad():
        (p, l), (p0, l0) = scores(model(x), target), scores(model(xb), target)
    delta = (p - p0) if output == "prob" else (l - l0)
    return Explanation(attribution, baseline=xb, completeness_error=completeness_error(attribution, delta))
