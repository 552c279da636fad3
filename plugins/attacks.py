"""Attacks on attributions (docs/methods.md §5): Ghorbani et al.'s top-k attack and its noise control.

``fgsm_attribution`` moves the input within an L∞ ball of radius ε so that the features the
method ranked highest at ``x`` lose their share of attribution mass, while the predicted label
stays the same. ReLU networks have zero second derivatives almost everywhere, so the gradient
of an attribution map with respect to the input is taken through a copy of the model whose
ReLU/ReLU6 are replaced by softplus (β = 10, Dombrowski et al. 2019). Differentiating through
a whole method (UNI's unlearning, PGD, adaptive paths) is neither possible in general nor
what Ghorbani et al. did: the attack differentiates a surrogate, Integrated Gradients from the
method's own baseline at ``x`` (held fixed), or the plain gradient for methods without a
baseline. What is measured afterwards is always the real method on the original model.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

import uni_lab
from uni_lab.engine import scores
from uni_lab.errors import InputError
from uni_lab.seeding import draw

from .metric_robustness import pixel_map, topk_mask


class SmoothReLU6(nn.Module):
    """``softplus_β(x) − softplus_β(x − 6)``: ReLU6 with nonzero curvature everywhere."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def forward(self, x):
        return F.softplus(x, self.beta) - F.softplus(x - 6.0, self.beta)


def softplus_copy(model: nn.Module, beta: float = 10.0) -> nn.Module:
    """A deep copy of ``model`` with every ``nn.ReLU``/``nn.ReLU6`` replaced by its softplus form.

    The user's model is untouched. Activations called functionally (``F.relu`` inside a
    ``forward``) cannot be swapped; models built from activation modules (torchvision, timm)
    are covered.
    """
    smooth = copy.deepcopy(model)
    for parent in list(smooth.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.ReLU:
                setattr(parent, name, nn.Softplus(beta))
            elif type(child) is nn.ReLU6:
                setattr(parent, name, SmoothReLU6(beta))
    for p in smooth.parameters():
        p.requires_grad_(False)
    return smooth.eval()


def surrogate_attribution(model, x, target, baseline, steps: int, output: str) -> torch.Tensor:
    """A differentiable attribution (``create_graph=True``): IG from ``baseline``, or the gradient."""
    if baseline is None:
        with torch.enable_grad():
            prob, logit = scores(model(x), target)
            (g,) = torch.autograd.grad((prob if output == "prob" else logit).sum(), x, create_graph=True)
        return g
    total = torch.zeros_like(x)
    for a in torch.arange(1, steps + 1, dtype=x.dtype, device=x.device) / steps:
        point = baseline + a * (x - baseline)
        with torch.enable_grad():
            prob, logit = scores(model(point), target)
            (g,) = torch.autograd.grad((prob if output == "prob" else logit).sum(), point, create_graph=True)
        total = total + g
    return (x - baseline) * total / steps


def _keeps_label(model, x, target) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(-1) == target


@uni_lab.attack("fgsm_attribution")
def fgsm_attribution(model, x, target, seeds=None, explanation=None, *, eps: float = 8 / 255, k: int = 1000,
                     iterations: int = 1, step_size: float | None = None, beta: float = 10.0,
                     surrogate_steps: int = 8, backtrack: int = 0, output: str = "prob"):
    """Top-k attribution attack (Ghorbani et al. 2019), L∞ budget ε, gradient through a softplus copy; keeps the label.

    A candidate that changes the predicted label is rejected; with ``backtrack = n`` the step is
    then halved up to ``n`` times (forward passes only) before the image keeps its last accepted
    point (``x`` itself on the first step).
    """
    if eps <= 0 or iterations < 1 or surrogate_steps < 1:
        raise InputError("fgsm_attribution needs eps > 0, iterations >= 1 and surrogate_steps >= 1.")
    # One signed step uses the whole budget; PGD takes Madry et al.'s 2.5·ε/iterations.
    step = float(step_size) if step_size is not None else (eps if iterations == 1 else 2.5 * eps / iterations)
    smooth = softplus_copy(model, beta)
    baseline = None if explanation is None or explanation.baseline is None else explanation.baseline.detach().to(x)
    reference = explanation.attribution.to(x) if explanation is not None else \
        surrogate_attribution(model, x.detach().requires_grad_(True), target, None, 1, output).detach()
    top = topk_mask(pixel_map(reference), int(k))
    x_adv = x.detach().clone()
    for _ in range(int(iterations)):
        xa = x_adv.clone().requires_grad_(True)
        surrogate = pixel_map(surrogate_attribution(smooth, xa, target, baseline, int(surrogate_steps), output))
        share = (surrogate * top).sum(1) / surrogate.sum(1).clamp_min(1e-12)  # mass left on the old top-k
        (g,) = torch.autograd.grad(share.sum(), xa)
        with torch.no_grad():
            pending = torch.ones_like(target, dtype=torch.bool)
            nxt = x_adv.clone()
            for halvings in range(int(backtrack) + 1):
                candidate = (x + (x_adv - step / 2 ** halvings * g.sign() - x).clamp(-eps, eps)).clamp(0, 1)
                kept = _keeps_label(model, candidate, target) & pending  # the original model decides
                nxt = torch.where(kept.view(-1, 1, 1, 1), candidate, nxt)
                pending &= ~kept
                if not pending.any():
                    break
            x_adv = nxt
    return x_adv.detach()


@uni_lab.attack("random_noise")
def random_noise(model, x, target, seeds=None, *, eps: float = 8 / 255):
    """The control: uniform noise in the same L∞ ball, seeded per image; keeps the label or returns x."""
    noisy = (x + (2 * draw(x, seeds, "rand", salt=29) - 1) * eps).clamp(0, 1)
    return torch.where(_keeps_label(model, noisy, target).view(-1, 1, 1, 1), noisy, x)
