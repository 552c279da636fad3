"""UNI: unlearning-based neural interpretations (Algorithm 1 of the seed paper, docs/methods.md §2).

1. Unlearn: ``θ̂_i = θ + η ∇_θ L_CE(F(x_i; θ), c_i)``, one step of gradient ascent per image.
   All images of a batch are unlearned at once with per-sample gradients
   (:mod:`uni_lab.persample`, or ``torch.func.vmap(grad(...))`` for layers it does not cover);
   the unlearned weights only ever exist as separate tensors, so the user's model is never written.
2. Match: ``x' = argmin_{‖x' − x‖ ≤ ε} KL(F(x; θ̂) ‖ F(x'; θ))`` by projected gradient descent
   with the original model, from ``x`` (or ``x + U(−ε, ε)``, seeded per image, with ``start="uniform"``).
3. Attribute: Integrated Gradients from ``x'`` to ``x``.
"""
from __future__ import annotations

import contextlib
import copy
import time
import weakref
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge
from torch.func import functional_call, grad, vmap
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

import uni_lab
from uni_lab import endpoint
from uni_lab.accel import activation_bytes, fit_batch
from uni_lab.contracts import BatchSize, Count, NonNegative, Positive
from uni_lab.defaults import DEFAULT_STEPS
from uni_lab.engine import OUTPUTS, scores
from uni_lab.errors import InputError
from uni_lab.fastview import fast_view
from uni_lab.persample import dense, per_image_forward, per_sample_grads, resolve
from uni_lab.seeding import draw, repeat_seeds

from .ig import integrated_gradients
from .smoothgrad import mean_explanation, per_sample_explanation

NORMS = ("linf", "l2")
STARTS = ("uniform", "zero")
STEP_RULES = ("auto", "sign", "l2")  # auto: the norm's steepest descent (sign for L∞, l2 for L2)


def unlearned_log_probs(model, x, target, eta: float = 1.0, chunk: int | None = None,
                        method: str = "auto", at_input: dict | None = None) -> torch.Tensor:
    """``log F(x_i; θ̂_i)`` for every image, each under its own one-step-unlearned weights.

    Batched: per-sample gradients of the cross-entropy, then one forward of all images, each
    with its own weights. ``method="auto"`` uses :mod:`uni_lab.persample` (ordinary batched
    kernels; conv / linear / batch-norm networks) and falls back to ``torch.func.vmap`` for
    anything else; ``"vmap"`` forces the latter. Per-sample gradients cost one copy of the
    parameters per image, so ``chunk`` images are unlearned at a time; ``None`` sizes it to
    the plan (:func:`unlearn_chunk_size`); a short last chunk is padded to full size.
    A dict passed as ``at_input`` receives the recorded pass's ``logits`` at ``x`` and ``grad``,
    ∇_x of each image's cross-entropy, where every chunk went through :mod:`uni_lab.persample`.
    """
    if method not in ("auto", "vmap"):
        raise InputError(f"unlearning method must be 'auto' or 'vmap', got '{method}'.")
    chunk = int(chunk) if chunk else unlearn_chunk_size(model, x)
    resolved = resolve(model, x) if method == "auto" else None
    params = buffers = None  # for vmap only

    def loss(p, xi, ti):
        return F.cross_entropy(functional_call(model, (p, buffers), (xi.unsqueeze(0),)), ti.unsqueeze(0))

    def forward(p, xi):
        return functional_call(model, (p, buffers), (xi.unsqueeze(0),)).squeeze(0)

    out, inputs = [], []
    for s in range(0, x.shape[0], chunk):
        xs, ts = x[s:s + chunk].detach(), target[s:s + chunk]
        real = xs.shape[0]
        if real < chunk:
            # Every chunk holds exactly `chunk` images (the last one repeated): per-image results
            # are then bitwise the same whatever batch, shard or rank an image arrives in, and
            # PGD matching amplifies even 1e-7 differences of these targets (×10 a step).
            xs = torch.cat([xs, xs[-1:].expand(chunk - real, *xs.shape[1:])])
            ts = torch.cat([ts, ts[-1:].expand(chunk - real)])
        seen: dict = {}
        grads = per_sample_grads(model, xs, ts, factored=True, at_input=seen, resolved=resolved) \
            if method == "auto" else None
        if grads is not None:
            inputs.append({k: v[:real] for k, v in seen.items()})
        logits = None if grads is None else per_image_forward(model, xs, grads, eta, resolved=resolved)
        if logits is None:
            if params is None:
                params = {k: v.detach() for k, v in model.named_parameters()}
                buffers = {k: v.detach() for k, v in model.named_buffers()}
            if grads is not None:
                grads = {k: dense(g) for k, g in grads.items()}
            else:
                with torch.enable_grad(), _BatchingRules():
                    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, xs, ts)
            with torch.no_grad(), _BatchingRules():
                for k, g in grads.items():  # θ̂ = θ + η g, built in the gradient's own memory
                    g.mul_(eta).add_(params[k])
                logits = vmap(forward)(grads, xs)
        out.append(logits.detach()[:real].log_softmax(-1))
        del grads
    if at_input is not None and len(inputs) == len(out):
        at_input.update({k: torch.cat([d[k] for d in inputs]) for k in ("logits", "grad")})
    return torch.cat(out)


class _BatchingRules(TorchFunctionMode):
    """Ops that torch.func has no batching rule for, replaced by exact equivalents that have one.

    Without a rule vmap loops over the images and warns "performance drop": global average
    pooling (``aten::as_strided_``; ConvNeXt, Swin) and fused attention kernels (ViT-B/16's
    ``_native_multi_head_attention`` and ``_scaled_dot_product_flash_attention_for_cpu``).
    Pooling to 1×1 is a mean over the spatial dims; attention is ``softmax(q kᵀ·s + mask) v``.
    Any other use (an output size other than 1, dropout) runs unchanged. While a mode is active,
    ``nn.MultiheadAttention`` leaves its fused fast path for this very formula.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.adaptive_avg_pool2d:
            size = kwargs.get("output_size", args[1] if len(args) > 1 else None)
            if size == 1 or (isinstance(size, (tuple, list)) and tuple(size) == (1, 1)):
                return args[0].mean((-2, -1), keepdim=True)
        elif func is F.scaled_dot_product_attention:
            out = _attention(*args, **kwargs)
            if out is not None:
                return out
        elif func is F.multi_head_attention_forward and not kwargs.get("is_causal") and len(args) <= _NEED_WEIGHTS:
            # With weights asked for, it computes attention by bmm and softmax instead of the fused
            # kernel (this mode is off inside the call, so the kernel could not be replaced there)
            want = kwargs.get("need_weights", True)
            out, weights = func(*args, **{**kwargs, "need_weights": True})
            return out, (weights if want else None)
        return func(*args, **kwargs)


_NEED_WEIGHTS = 15  # multi_head_attention_forward's positional index of need_weights


def _attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if dropout_p or enable_gqa:
        return None
    scores = (q @ k.transpose(-2, -1)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if is_causal:
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    return scores.softmax(-1) @ v


# Per image, unlearning holds its gradient (= θ̂, built in place) plus vmap's per-sample
# temporaries, and a forward/backward of activations; both factors are deliberately generous.
PARAM_COPIES, ACTIVATION_COPIES = 3, 4


# Images per chunk at most (unlearning and matching alike). Chunks are padded to their size, so
# a batch of one image pays for the whole chunk; a chunk of 16 arises only for images whose
# forward costs at most 1/16 of the work below (Lite0 at 64², ResNet-18 at 32²), where on CPU
# per-op overhead dominates: 16 images unlearn in one chunk for about what 8 cost.
UNLEARN_CAP = 16
# Forward FLOPs of one image a chunk is sized to hold (torch's FLOP counter, one image, once per
# model and shape): the padding of a short chunk then costs little work, and expensive images
# get small chunks. Unlearning keeps per-image gradients and runs small batched kernels, whose
# CPU cost per image was lowest at chunks of about 3.5 GFLOP (Lite0 at 224²: 4 images);
# matching runs plain passes, which gain from larger batches: 8 GFLOP gives Lite0 at 224²
# chunks of 8, the default batch, so a default run pays for no padded image.
UNLEARN_FLOPS = {"cpu": 3.5e9, "cuda": 256e9}
MATCH_FLOPS = {"cpu": 8e9, "cuda": 512e9}
# Never fewer images a chunk where the memory plan holds two: one image at a time made passes so
# small that, at 224² on 2 CPU cores, matching 4 images cost 14.8 floor passes instead of 11.2 in
# chunks of 2 (EfficientNetV2-S; ConvNeXt-T 12.2 against 10.9) and unlearning 4.7 against 3.7
# (V2-S; ResNet-18 3.5 against 2.8). A lone image then pays for one padded image.
CHUNK_MIN = 2
_FLOPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def forward_flops(model, x) -> int:
    """FLOPs of one forward of one image of ``x``'s shape (torch's FLOP counter), cached per model and shape."""
    key = (tuple(x.shape[1:]), x.dtype, str(x.device))
    cache = _FLOPS.setdefault(model, {})
    if key not in cache:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x[:1].detach())
        cache[key] = int(counter.get_total_flops())
    return cache[key]


def _chunk(model, x, work: dict, fits: int) -> int:
    """About ``work`` FLOPs of forward but at least :data:`CHUNK_MIN` images, at most ``fits`` and
    :data:`UNLEARN_CAP`, rounded down to a power of two (it then divides the usual batches of 8
    and 16, which leaves no padded images)."""
    per_image = max(1, forward_flops(model, x))
    by_work = max(CHUNK_MIN, int(work.get(x.device.type, work["cpu"]) // per_image))
    chunk = max(1, min(fits, UNLEARN_CAP, by_work))
    return 1 << (chunk.bit_length() - 1)


def unlearn_chunk_size(model, x) -> int:
    """Images unlearned at once: about :data:`UNLEARN_FLOPS` of forward work, as many as the memory
    plan holds, at most :data:`UNLEARN_CAP`, a power of two; a function of the model, the image
    shape and the device type, never of the batch."""
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    act = activation_bytes(model, x[:1])
    fits = fit_batch(PARAM_COPIES * param_bytes + ACTIVATION_COPIES * act, x.device, cap=UNLEARN_CAP)
    return _chunk(model, x, UNLEARN_FLOPS, fits)


def unlearned_log_probs_reference(model, x, target, eta: float = 1.0) -> torch.Tensor:
    """The naive per-image form (copy the model, step, forward): the batched form's reference.

    Kept deliberately plain (``deepcopy``, ``backward``, in-place step on the copy): the tests
    check the batched form against it, and ``uni-lab bench`` times it as the naive cost.
    """
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
                      norm: str = "linf", start: str = "uniform", step_rule: str = "auto",
                      kl_tol: float = 0.0) -> torch.Tensor:
    """PGD on ``KL(P̂ ‖ F(x'; θ))`` inside the ε-ball around ``x``, clipped to ``[0, 1]``.

    ``eps`` and ``step_size`` are per-pixel sizes in both norms: the L∞ ball is ``|δ_i| ≤ ε``,
    the L2 ball ``‖δ‖₂ ≤ ε √d`` (an RMS of ε over the ``d`` input values); a ``sign`` step
    moves every value by μ, an ``l2`` step (the gradient over its RMS) moves them by an RMS
    of μ. ``start``: ``uniform`` (``δ₀ ~ U(−ε, ε)``, seeded per image) or ``zero``
    (``δ₀ = 0``: no random part). ``step_rule`` defaults to the norm's steepest descent
    (``sign`` for L∞, ``l2`` for L2). ``kl_tol > 0`` stops an image once its KL is below it.
    """
    p_hat = target_log_probs.exp()
    if step_rule == "auto":
        step_rule = "sign" if norm == "linf" else "l2"
    # Input gradients only, so the fast view serves. Its rounding differs from the model's, and
    # sign steps amplify that into another baseline: the run records which one was used.
    model = fast_view(model, x)
    rms_scale = x[0].numel() ** 0.5
    if start == "uniform":
        delta0 = (2 * draw(x, seeds, "rand", salt=17) - 1) * eps
    else:
        delta0 = torch.zeros_like(x)
    xp = (x + delta0).clamp(0, 1).detach()
    moving = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(int(steps)):
        xp.requires_grad_(True)
        with torch.enable_grad():
            log_q = model(xp).log_softmax(-1)
            kl = (p_hat * (target_log_probs - log_q)).sum(1)
            (g,) = torch.autograd.grad(kl.sum(), xp)
        with torch.no_grad():
            g = g.contiguous()  # channels-last from the fast view: the norms and steps below then read memory in order
            if kl_tol > 0:
                moving &= kl.detach() > kl_tol
                if not bool(moving.any()):
                    break
            if step_rule == "sign":
                d = g.sign()
            else:
                d = g * (rms_scale / g.flatten(1).norm(dim=1).clamp_min(1e-30)).view(-1, 1, 1, 1)
            d = d * moving.view(-1, 1, 1, 1).to(d.dtype)
            delta = xp - step_size * d - x
            delta = delta.clamp(-eps, eps) if norm == "linf" else _project_l2(delta, eps * rms_scale)
            xp = (x + delta).clamp(0, 1).detach()
    return xp


def _project_l2(delta, radius):
    norms = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return delta * (radius / norms.clamp_min(1e-12)).clamp(max=1.0)


def restart_seeds(seeds, r: int):
    """Per-image seeds of restart ``r``: the run's own for ``r = 0``, independent streams after."""
    return repeat_seeds(seeds, "uni:restart", r)


@uni_lab.baseline("uni", random=lambda p: p["start"] == "uniform")
def uni_baseline(x, model, target, seeds=None, *, eta: float = 1.0, eps: Positive = 0.025,
                 pgd_steps: Annotated[int, Ge(0)] = 10, step_size: Positive = 0.005, norm: Literal[NORMS] = "l2",
                 start: Literal[STARTS] = "zero", step_rule: Literal[STEP_RULES] = "auto", kl_tol: NonNegative = 0.0,
                 unlearn_chunk: Count | None = None):
    """Unlearned baseline: one unlearning step in weight space, then PGD activation matching in the ε-ball.

    The defaults (L2 ball of RMS radius 0.025, normalised-gradient steps of RMS 0.005, from
    ``x`` itself) were chosen by the written criteria of docs/methods.md §2 over the sweep of
    ``figures/fig_uni_ablation.py``; the first default (``norm="linf", start="uniform",
    eps=0.05, step_size=0.01``) stays reachable by these parameters.
    """
    uni_lab.models.require_weights(model, "uni", "weights (it unlearns them)")
    with _phase("unlearn", x):
        at_x: dict = {}
        target_lp = unlearned_log_probs(model, x, target, eta, chunk=unlearn_chunk,
                                        at_input=at_x if endpoint.wanted() else None)
        if at_x:  # ∇_x F_c = −F_c ∇_x CE_c at x itself: the integral's last point needs no pass (uni_lab.endpoint)
            prob, logit = scores(at_x["logits"], target)
            grad = at_x["grad"] * -prob.view(-1, *([1] * (x.dim() - 1))).to(at_x["grad"].dtype)
            endpoint.offer(x, target, grad, prob, logit)
    with _phase("match", x):
        return _match_in_chunks(model, x, target_lp, seeds, eps=eps, steps=pgd_steps, step_size=step_size,
                                norm=norm, start=start, step_rule=step_rule, kl_tol=kl_tol)


def match_chunk_size(model, x) -> int:
    """Images matched at once: about :data:`MATCH_FLOPS` of forward work, at most :data:`UNLEARN_CAP`, a
    power of two; a function of the model, the image shape and the device type only (never of the
    batch or of free memory)."""
    return _chunk(model, x, MATCH_FLOPS, UNLEARN_CAP)


def _match_in_chunks(model, x, target_lp, seeds, **kw) -> torch.Tensor:
    """:func:`match_activations` over fixed-size chunks, the last one padded by repeating its last image.

    A batched forward's rounding depends on the batch's size (not on an image's place in it), and
    PGD amplifies those 1e-6 differences into baselines up to 0.16 apart in a pixel (measured at
    224² on Lite0): with every chunk the same size, an image's baseline is bitwise the same whatever
    batch, shard or rank it arrives in."""
    chunk = match_chunk_size(model, x)
    out = []
    for s in range(0, x.shape[0], chunk):
        xs, lps = x[s:s + chunk], target_lp[s:s + chunk]
        ss = None if seeds is None else seeds[s:s + chunk]
        real = xs.shape[0]
        if real < chunk:
            pad = chunk - real
            xs = torch.cat([xs, xs[-1:].expand(pad, *xs.shape[1:])])
            lps = torch.cat([lps, lps[-1:].expand(pad, *lps.shape[1:])])
            ss = None if ss is None else torch.cat([ss, ss[-1:].expand(pad, *ss.shape[1:])])
        out.append(match_activations(model, xs, lps, ss, **kw)[:real])
    return torch.cat(out)


_CLOCKS: list[dict] = []  # the innermost timed_phases() block's record


@contextlib.contextmanager
def timed_phases():
    """Inside the block, every UNI baseline adds the seconds of its phases (``unlearn``,
    ``match``) to the yielded dict: ``uni-lab bench`` splits the very calls it times, so the
    split and the ratio agree. Devices are synchronised at phase borders only inside it."""
    record: dict = {}
    _CLOCKS.append(record)
    try:
        yield record
    finally:
        _CLOCKS.pop()


@contextlib.contextmanager
def _phase(name: str, x: torch.Tensor):
    if not _CLOCKS:
        yield
        return
    record = _CLOCKS[-1]
    _sync(x.device)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _sync(x.device)
        record[name] = record.get(name, 0.0) + time.perf_counter() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def uni_baseline_reference(x, model, target, seeds=None, *, eta: float = 1.0, eps: float = 0.025,
                           pgd_steps: int = 10, step_size: float = 0.005, norm: str = "l2", start: str = "zero",
                           step_rule: str = "auto", kl_tol: float = 0.0, **_speed):
    """The naive per-image UNI baseline: for each image, copy the model, unlearn, then match alone.

    Same maths and seeds as :func:`uni_baseline`, one image at a time (what batching replaces);
    the tests hold the batched baseline to it and the benchmark times it.
    """
    # called directly (tests, bench), not through the registry: the same declared checks
    uni_lab.registry.get("baseline", "uni").check_params(
        dict(eta=eta, eps=eps, pgd_steps=pgd_steps, step_size=step_size, norm=norm, start=start,
             step_rule=step_rule, kl_tol=kl_tol))
    seeds = None if seeds is None else torch.as_tensor(seeds)
    out = []
    for i in range(x.shape[0]):
        xi, ti = x[i:i + 1], target[i:i + 1]
        lp = unlearned_log_probs_reference(model, xi, ti, eta)
        out.append(match_activations(model, xi, lp, None if seeds is None else seeds[i:i + 1], eps=eps,
                                     steps=pgd_steps, step_size=step_size, norm=norm, start=start,
                                     step_rule=step_rule, kl_tol=kl_tol))
    return torch.cat(out)


# What `uni-lab bench` times (the phases, and the naive loop batching replaces), reached through the
# registered baseline, so the core never imports a plugin's module.
uni_baseline.timed_phases = timed_phases
uni_baseline.reference = uni_baseline_reference


@uni_lab.explainer("uni")
def uni(model, x, target, seeds=None, *, baseline="uni", path="straight", steps: Count = DEFAULT_STEPS,
        restarts: Count = 1, output: Literal[OUTPUTS] = "prob", internal_batch_size: BatchSize = None):
    """UNI: Integrated Gradients from the unlearned baseline, averaged over `restarts` seeded PGD starts."""
    n = x.shape[0]
    parts = []
    for r in range(int(restarts)):
        exp = integrated_gradients(model, x, target, restart_seeds(seeds, r), baseline=baseline, path=path,
                                   steps=steps, output=output, internal_batch_size=internal_batch_size)
        if int(restarts) == 1:
            return exp
        parts.append(per_sample_explanation(exp, 1, n))
    # The mean of the R maps, not IG from the mean baseline: each map is a complete UNI path
    # from a matched point, and their mean estimates the expectation over the random start;
    # the mean of matched points need not itself be matched (featureless).
    return mean_explanation(parts, output)
