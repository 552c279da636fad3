"""UNI: unlearning-based neural interpretations (Algorithm 1 of the seed paper, METHODS.md §2).

1. Unlearn: ``θ̂_i = θ + η ∇_θ L_CE(F(x_i; θ), c_i)``, one step of gradient ascent per image.
   All images of a batch are unlearned at once with per-sample gradients
   (``torch.func.vmap(grad(...))``); the unlearned weights only ever exist as tensors passed to
   ``functional_call``, so the user's model is never written.
2. Match: ``x' = argmin_{‖x' − x‖ ≤ ε} KL(F(x; θ̂) ‖ F(x'; θ))`` by projected gradient descent
   with the original model, from ``x + U(−ε, ε)`` (seeded per image).
3. Attribute: Integrated Gradients from ``x'`` to ``x``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

import uni_lab
from uni_lab.errors import InputError
from uni_lab.seeding import draw

from .ig import integrated_gradients

NORMS = ("linf", "l2")


def unlearned_log_probs(model, x, target, eta: float = 1.0, chunk: int = 16) -> torch.Tensor:
    """``log F(x_i; θ̂_i)`` for every image, each under its own one-step-unlearned weights.

    Batched: per-sample gradients of the cross-entropy with ``vmap``, then one vmapped
    forward with the per-image weights; ``chunk`` images at a time bound the memory
    (per-sample gradients cost one copy of the parameters per image).
    """
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p, xi, ti):
        return F.cross_entropy(functional_call(model, (p, buffers), (xi.unsqueeze(0),)), ti.unsqueeze(0))

    def forward(p, xi):
        return functional_call(model, (p, buffers), (xi.unsqueeze(0),)).squeeze(0)

    out = []
    for s in range(0, x.shape[0], chunk):
        xs, ts = x[s:s + chunk].detach(), target[s:s + chunk]
        with torch.enable_grad():
            g = vmap(grad(loss), in_dims=(None, 0, 0))(params, xs, ts)
        theta_hat = {k: params[k].unsqueeze(0) + eta * g[k] for k in params}
        del g
        with torch.no_grad():
            out.append(vmap(forward)(theta_hat, xs).log_softmax(-1))
    return torch.cat(out)


def unlearned_log_probs_reference(model, x, target, eta: float = 1.0) -> torch.Tensor:
    """The naive per-image form (copy the model, step, forward): the batched form's reference."""
    out = []
    for xi, ti in zip(x, target):
        clone = copy.deepcopy(model)
        clone.zero_grad(set_to_none=True)
        with torch.enable_grad():
            F.cross_entropy(clone(xi.unsqueeze(0)), ti.view(1)).backward()
        with torch.no_grad():
            for p in clone.parameters():
                if p.grad is not None:
                    p.add_(p.grad, alpha=eta)
            out.append(clone(xi.unsqueeze(0)).log_softmax(-1).squeeze(0))
    return torch.stack(out)


def match_activations(model, x, target_log_probs, seeds=None, *, eps: float, steps: int, step_size: float,
                      norm: str = "linf") -> torch.Tensor:
    """PGD on ``KL(P̂ ‖ F(x'; θ))`` inside the ε-ball around ``x``, clipped to ``[0, 1]``."""
    p_hat = target_log_probs.exp()
    delta0 = (2 * draw(x, seeds, "rand", salt=17) - 1) * eps
    if norm == "l2":
        delta0 = _project_l2(delta0, eps)
    xp = (x + delta0).clamp(0, 1).detach()
    for _ in range(int(steps)):
        xp.requires_grad_(True)
        with torch.enable_grad():
            log_q = model(xp).log_softmax(-1)
            kl = (p_hat * (target_log_probs - log_q)).sum(1)
            (g,) = torch.autograd.grad(kl.sum(), xp)
        with torch.no_grad():
            if norm == "linf":
                xp = x + (xp - step_size * g.sign() - x).clamp(-eps, eps)
            else:
                g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                xp = x + _project_l2(xp - step_size * g - x, eps)
            xp = xp.clamp(0, 1).detach()
    return xp


def _project_l2(delta, eps):
    norms = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return delta * (eps / norms.clamp_min(1e-12)).clamp(max=1.0)


@uni_lab.baseline("uni")
def uni_baseline(x, model, target, seeds=None, *, eta: float = 1.0, eps: float = 0.05, pgd_steps: int = 10,
                 step_size: float = 0.01, norm: str = "linf", unlearn_chunk: int = 16):
    """Unlearned baseline: one unlearning step in weight space, then PGD activation matching in the ε-ball."""
    if norm not in NORMS:
        raise InputError(f"uni.norm must be one of {NORMS}, got '{norm}'.")
    if eps <= 0 or step_size <= 0 or pgd_steps < 0:
        raise InputError("uni needs eps > 0, step_size > 0 and pgd_steps >= 0.")
    target_lp = unlearned_log_probs(model, x, target, eta, chunk=int(unlearn_chunk))
    return match_activations(model, x, target_lp, seeds, eps=eps, steps=pgd_steps, step_size=step_size, norm=norm)


@uni_lab.explainer("uni")
def uni(model, x, target, seeds=None, *, baseline="uni", steps: int = 15, output: str = "prob",
        internal_batch_size: int | None = None):
    """UNI: Integrated Gradients from the unlearned baseline (its parameters are the uni baseline's)."""
    return integrated_gradients(model, x, target, seeds, baseline=baseline, steps=steps, output=output,
                                internal_batch_size=internal_batch_size)
