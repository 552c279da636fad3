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

``fgsm_attribution`` takes one signed step of the whole budget (or PGD steps) and rejects a
candidate that changes the label; ``ifgsm_attribution`` is Ghorbani et al.'s iterative form:
small signed steps, the label checked after each, an image stopping at the last point that
kept it. Differentiating the attack objective through the surrogate needs second derivatives;
they are taken as Hessian-vector products, one per surrogate point, in double-backward passes
sized from the model's activations against the constant memory plan
(:func:`~uni_lab.accel.fit_batch`), so memory does not grow with the batch or the surrogate's
steps, and an image's gradient is the same in any partition.
"""
from __future__ import annotations

import copy
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge
from torch import nn

import uni_lab
from uni_lab.accel import activation_bytes, fit_batch
from uni_lab.contracts import Count, NonNegative, PixelCount, Positive
from uni_lab.engine import DEFAULT_INTERNAL_BATCH, OUTPUTS, PASS_ACTIVATION_COPIES, _passes, scores
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


# A double-backward pass keeps the forward activations, the first backward's graph and the
# second backward's temporaries: about twice a first-order pass.
HVP_ACTIVATION_COPIES = 2 * PASS_ACTIVATION_COPIES


def _points(x, baseline, steps: int):
    """IG's right-sum points ``γ_k = x' + (k/B)(x − x')``, ``k = 1..B``, step-major ``(B·N, ...)``, and their α."""
    alphas = torch.arange(1, steps + 1, dtype=x.dtype, device=x.device) / steps
    return (baseline.unsqueeze(0) + alphas.view(-1, 1, 1, 1, 1) * (x - baseline).unsqueeze(0)).flatten(0, 1), alphas


def _class_score(model, points, target, output):
    prob, logit = scores(model(points), target)
    return prob if output == "prob" else logit


def _surrogate(model, x, target, baseline, steps: int, output: str, pass_size: int):
    """``(surrogate map, the gradient it multiplies)``: IG from ``baseline`` (right sum over ``steps``
    points; the mean gradient) or, without a baseline, the gradient itself (twice). First order only."""
    if baseline is None:
        points, reps = x.detach(), 1
    else:
        points, _ = _points(x.detach(), baseline, steps)
        reps = steps
    tgt = target.repeat(reps)
    grads = []
    for part in _passes(points.shape[0], pass_size):
        p = points[part].clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(_class_score(model, p, tgt[part], output).sum(), p)
        grads.append(g)
    grads = torch.cat(grads).view(reps, *x.shape)
    if baseline is None:
        return grads[0], grads[0]
    total = torch.zeros_like(x)
    for g in grads:  # the same order of additions in any partition
        total = total + g
    return (x - baseline) * total / steps, total / steps


def surrogate_attribution(model, x, target, baseline, steps: int, output: str, pass_size: int = 64) -> torch.Tensor:
    """The surrogate map, first order only: IG from ``baseline`` (right sum, ``steps`` points), or the gradient."""
    return _surrogate(model, x, target, baseline, steps, output, pass_size)[0]


def objective_gradient(model, x, target, baseline, steps: int, output: str, top: torch.Tensor,
                       pass_size: int) -> torch.Tensor:
    """``∇_x`` of the share of surrogate mass on the old top-k, without holding a second-order
    graph for all surrogate steps of the batch at once.

    With ``S = Σ_c |A|`` and ``u = ∂share/∂S · sign(A)``: for IG, ``A = (x − x') ⊙ Σ_k ∇F(γ_k)/B``, so
    ``∇_x share = u ⊙ Σ_k ∇F(γ_k)/B + Σ_k α_k ∇²F(γ_k)(u ⊙ (x − x')/B)``; for the gradient,
    ``A = ∇F(x)`` and ``∇_x share = ∇²F(x) u``. Each Hessian-vector product needs only its own point,
    so points go through double-backward passes of ``pass_size``, each graph freed after its pass;
    every image's terms are added in the same order in any partition.
    """
    a, mean_grad = _surrogate(model, x, target, baseline, steps, output, pass_size)
    s = pixel_map(a).requires_grad_(True)
    with torch.enable_grad():
        share = (s * top).sum(1) / s.sum(1).clamp_min(1e-12)
        (v,) = torch.autograd.grad(share.sum(), s)
    u = v.view(x.shape[0], 1, *x.shape[2:]) * a.sign()
    if baseline is None:
        points, alphas, w, reps = x.detach(), torch.ones(1, dtype=x.dtype, device=x.device), u, 1
        direct = torch.zeros_like(x)
    else:
        points, alphas = _points(x.detach(), baseline, steps)
        w, reps = u * (x - baseline) / steps, steps
        direct = u * mean_grad
    tgt, ws = target.repeat(reps), w.repeat(reps, 1, 1, 1)
    hvps = []
    for part in _passes(points.shape[0], pass_size):
        p = points[part].clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(_class_score(model, p, tgt[part], output).sum(), p, create_graph=True)
            (hv,) = torch.autograd.grad((g * ws[part]).sum(), p)
        hvps.append(hv.detach())
    hvps = torch.cat(hvps).view(reps, *x.shape)
    total = direct
    for alpha, hv in zip(alphas, hvps):
        total = total + alpha * hv
    return total


def hvp_pass_size(model, x) -> int:
    """Points per double-backward pass, planned like every other pass (:func:`~uni_lab.accel.fit_batch`)."""
    return fit_batch(HVP_ACTIVATION_COPIES * activation_bytes(model, x[:1]), x.device, DEFAULT_INTERNAL_BATCH)


def _keeps_label(model, x, target) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(-1) == target


def _setup(model, x, target, explanation, k: int, beta: float, output: str):
    """The softplus copy, the method's baseline (held fixed), the old top-k mask and the pass size."""
    smooth = softplus_copy(model, beta)
    size = hvp_pass_size(smooth, x)
    baseline = None if explanation is None or explanation.baseline is None else explanation.baseline.detach().to(x)
    reference = explanation.attribution.to(x) if explanation is not None else \
        surrogate_attribution(model, x, target, None, 1, output, size)
    return smooth, baseline, topk_mask(pixel_map(reference), int(k)), size


@uni_lab.attack("fgsm_attribution")
def fgsm_attribution(model, x, target, seeds=None, explanation=None, *, eps: Positive = 8 / 255, k: PixelCount = 1000,
                     iterations: Count = 1, step_size: Positive | None = None, beta: Positive = 10.0,
                     surrogate_steps: Count = 8, backtrack: Annotated[int, Ge(0)] = 0,
                     output: Literal[OUTPUTS] = "prob"):
    """Top-k attribution attack (Ghorbani et al. 2019), L∞ budget ε, gradient through a softplus copy; keeps the label.

    A candidate that changes the predicted label is rejected; with ``backtrack = n`` the step is
    then halved up to ``n`` times (forward passes only) before the image keeps its last accepted
    point (``x`` itself on the first step).
    """
    # One signed step uses the whole budget; PGD takes Madry et al.'s 2.5·ε/iterations.
    step = float(step_size) if step_size is not None else (eps if iterations == 1 else 2.5 * eps / iterations)
    smooth, baseline, top, size = _setup(model, x, target, explanation, k, beta, output)
    x_adv = x.detach().clone()
    for _ in range(int(iterations)):
        g = objective_gradient(smooth, x_adv, target, baseline, int(surrogate_steps), output, top, size)
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


@uni_lab.attack("ifgsm_attribution")
def ifgsm_attribution(model, x, target, seeds=None, explanation=None, *, eps: Positive = 8 / 255, k: PixelCount = 1000,
                      iterations: Count = 16, step_size: Positive = 1 / 255, beta: Positive = 10.0,
                      surrogate_steps: Count = 8, output: Literal[OUTPUTS] = "prob"):
    """Iterative top-k attack (Ghorbani et al. 2019): signed steps of step_size in the ε ball, the label checked after each, the last label-keeping point kept.

    An image stops at its first step that would change the predicted label (on the original
    model) and keeps the point before it, so every image that keeps its label for one small
    step is moved; the one-step attack, by contrast, rejects the whole ε step.
    """
    smooth, baseline, top, size = _setup(model, x, target, explanation, k, beta, output)
    x_adv = x.detach().clone()
    active = torch.ones_like(target, dtype=torch.bool)
    for _ in range(int(iterations)):
        idx = active.nonzero().flatten()
        if idx.numel() == 0:
            break
        sub_base = None if baseline is None else baseline[idx]
        g = objective_gradient(smooth, x_adv[idx], target[idx], sub_base, int(surrogate_steps), output, top[idx], size)
        with torch.no_grad():
            candidate = (x[idx] + (x_adv[idx] - float(step_size) * g.sign() - x[idx]).clamp(-eps, eps)).clamp(0, 1)
            kept = _keeps_label(model, candidate, target[idx])
            x_adv[idx[kept]] = candidate[kept]
            active[idx[~kept]] = False
    return x_adv.detach()


@uni_lab.attack("random_noise")
def random_noise(model, x, target, seeds=None, *, eps: NonNegative = 8 / 255):
    """The control: uniform noise in the same L∞ ball, seeded per image; keeps the label or returns x."""
    noisy = (x + (2 * draw(x, seeds, "rand", salt=29) - 1) * eps).clamp(0, 1)
    return torch.where(_keeps_label(model, noisy, target).view(-1, 1, 1, 1), noisy, x)
