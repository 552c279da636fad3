"""The path-integral engine (docs/methods.md §1), shared by every path method.

``A_i ≈ Σ_{k=1..K} ∂F_c(γ_k)/∂x_i · (γ_{k,i} − γ_{k−1,i})``, the right Riemann sum (or, with
``rule="left"``, the left one: ``∂F_c(γ_{k−1})/∂x_i``), over path points that arrive in chunks. A path is a generator: it yields ``(alphas, points)`` chunks
(``points`` of shape ``(m, N, 3, H, W)``, the first chunk starting at ``α = 0``, the
baseline) and receives, through ``send``, the gradients and scores the engine computed for
that chunk, so that adaptive paths (Guided IG) can build their next point from them while
fixed paths ignore what they receive. Points are evaluated in forward/backward passes of at
most ``internal_batch_size`` samples; nothing is copied per method.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

from . import endpoint
from .accel import PLAN_BYTES, activation_bytes, check_fits, fit_batch
from .errors import InputError
from .explanation import Explanation
from .fastview import fast_view

DEFAULT_INTERNAL_BATCH = 64
OUTPUTS = ("prob", "logit")



def check_output(output: str) -> str:
    if output not in OUTPUTS:
        raise InputError(f"output must be one of {OUTPUTS}, got '{output}'.")
    return output


def scores(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(F_c as probability, F_c as logit)`` for each row."""
    idx = target.view(-1, 1)
    return logits.softmax(-1).gather(1, idx).squeeze(1), logits.gather(1, idx).squeeze(1)


def score_and_grad(model, x: torch.Tensor, target: torch.Tensor, output: str = "prob"):
    """``∇_x F_c(x)`` for a batch, with the probability and logit of the target.

    Gradients are taken with respect to the input only (``torch.autograd.grad``), so the
    model's parameters accumulate nothing, and the pass may run through the model's
    :func:`~uni_lab.fastview.fast_view` (batch norm folded, channels-last on CPU).
    """
    model = fast_view(model, x)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        prob, logit = scores(logits, target)
        (grad,) = torch.autograd.grad((prob if output == "prob" else logit).sum(), x)
    return grad, prob.detach(), logit.detach()


# A pass keeps its activations for the backward plus the backward's own temporaries.
PASS_ACTIVATION_COPIES = 3


def pass_size(model, x: torch.Tensor, cap: int) -> int:
    """Samples per forward/backward pass: ``cap``, or fewer where the plan (:data:`~uni_lab.accel.PLAN_BYTES`)
    holds fewer. A function of the model, the input shape and the device type only, so the same
    configuration partitions its work the same way whatever memory is free."""
    return fit_batch(PASS_ACTIVATION_COPIES * activation_bytes(model, x[:1]), x.device, cap)


def partition(model, x: torch.Tensor, batch_size: int) -> tuple[dict, str | None]:
    """How a run splits its work (recorded in its store), and a warning if a pass exceeds the memory budget."""
    per_sample = PASS_ACTIVATION_COPIES * activation_bytes(model, x[:1])
    ibs = pass_size(model, x, DEFAULT_INTERNAL_BATCH)
    plan = {"batch_size": int(batch_size), "pass_size": ibs,
            "plan_bytes": PLAN_BYTES.get(x.device.type, PLAN_BYTES["cpu"])}
    return plan, check_fits(ibs, per_sample, x.device, "a forward/backward pass",
                            "set a smaller pass with --set <method>.internal_batch_size=N")


def path_chunk(model, x: torch.Tensor, internal_batch_size: int | None) -> tuple[int, int]:
    """``(samples per pass, path points per chunk)`` for a path over the batch ``x``.

    A chunk of points × images fills one pass. Chunks sized for the nominal 64 samples would
    leave remainder passes of a few samples wherever the plan allows fewer (64 samples in passes
    of 20 go as 20 + 20 + 20 + 4).
    """
    ibs = pass_size(model, x, internal_batch_size or DEFAULT_INTERNAL_BATCH)
    return ibs, max(1, ibs // x.shape[0])


def _passes(total: int, cap: int) -> list[slice]:
    """``total`` samples in the fewest passes of at most ``cap``, as equal as they can be."""
    count = -(-total // max(1, cap))
    size = -(-total // count) if count else 0
    return [slice(s, min(total, s + size)) for s in range(0, total, size)] if total else []


def grads_and_scores(model, points: torch.Tensor, target: torch.Tensor, output: str, internal_batch_size: int):
    """Gradients and scores at path points ``(m, N, ...)``, in passes of bounded size."""
    m, n = points.shape[:2]
    model = fast_view(model, points[0])
    flat = points.reshape(m * n, *points.shape[2:])
    tgt = target.repeat(m)
    grads, probs, logits = [], [], []
    for part in _passes(m * n, internal_batch_size):
        g, p, l = score_and_grad(model, flat[part], tgt[part], output)
        grads.append(g), probs.append(p), logits.append(l)
    # The fast view hands back channels-last gradients; gathered in the points' own layout (the
    # copy cat makes anyway), every sum and norm over them after this runs on contiguous memory.
    out = torch.empty_like(points, memory_format=torch.contiguous_format)
    torch.cat(grads, out=out.view(m * n, *points.shape[2:]))
    return out, torch.cat(probs).view(m, n), torch.cat(logits).view(m, n)


def forward_scores(model, points: torch.Tensor, target: torch.Tensor, internal_batch_size: int):
    """``F_c`` (probability, logit) at points ``(N, ...)``, forward passes only."""
    probs, logits = [], []
    model = fast_view(model, points)
    with torch.no_grad():
        for part in _passes(points.shape[0], internal_batch_size):
            p, l = scores(model(points[part]), target[part])
            probs.append(p), logits.append(l)
    return torch.cat(probs), torch.cat(logits)


def _grads_and_scores_past_baseline(model, points, target, output, internal_batch_size):
    """:func:`grads_and_scores` for a chunk whose first point is the baseline: there, scores only."""
    p0, l0 = forward_scores(model, points[0], target, internal_batch_size)
    nan = torch.full_like(points[:1], float("nan"))
    if points.shape[0] == 1:
        return nan, p0.unsqueeze(0), l0.unsqueeze(0)
    grads, prob, logit = grads_and_scores(model, points[1:], target, output, internal_batch_size)
    return torch.cat([nan, grads]), torch.cat([p0.unsqueeze(0), prob]), torch.cat([l0.unsqueeze(0), logit])


def _evaluate(model, alphas, points, target, output: str, ibs: int, scores_only_first: bool, end):
    """A chunk's gradients and scores: the first point's scores only where asked, and the point at
    ``α = 1`` from ``end`` (:mod:`uni_lab.endpoint`) where one was offered."""
    at_x = end is not None and float(alphas[-1]) == 1.0
    core = points[:-1] if at_x else points
    if core.shape[0] == 0:
        grads = prob = logit = None
    elif scores_only_first:
        grads, prob, logit = _grads_and_scores_past_baseline(model, core, target, output, ibs)
    else:
        grads, prob, logit = grads_and_scores(model, core, target, output, ibs)
    return _with_end(grads, prob, logit, end, points.dtype) if at_x else (grads, prob, logit)


def _with_end(grads, prob, logit, end, dtype):
    """A chunk's gradients and scores followed by those offered for its last point, ``x`` itself."""
    g, p, l = end[0].to(dtype).unsqueeze(0), end[1].unsqueeze(0), end[2].unsqueeze(0)
    if grads is None:
        return g, p, l
    return torch.cat([grads, g]), torch.cat([prob, p.to(prob.dtype)]), torch.cat([logit, l.to(logit.dtype)])


def fixed_path(path_fn: Callable, x: torch.Tensor, baseline: torch.Tensor, steps: int,
               chunk: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Chunks of a path given in closed form ``path_fn(x, baseline, alphas)``, ``α_k = k/steps``."""
    alphas = torch.linspace(0, 1, steps + 1, device=x.device, dtype=x.dtype)
    for s in range(0, steps + 1, chunk):
        a = alphas[s:s + chunk]
        yield a, path_fn(x, baseline, a)


def straight_path(x: torch.Tensor, baseline: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """``x' + α (x − x')``."""
    a = alphas.view(-1, *([1] * x.dim()))
    return baseline.unsqueeze(0) + a * (x - baseline).unsqueeze(0)


def resolve_path(path) -> Callable:
    """A path function ``(x, baseline, alphas) -> points``: a callable, or a registered path's name."""
    if callable(path):
        return path
    if path == "straight":  # the built-in, without a registry lookup per call
        return straight_path
    from .registry import get

    return get("path", path)


def resolve_baseline(baseline, x, model, target, seeds=None) -> torch.Tensor:
    """``x'`` from a tensor, a registered baseline name, or a baseline callable; a plugin that returns
    the wrong shape or non-finite values is named (the inputs were checked already)."""
    if torch.is_tensor(baseline):
        xb, who = baseline.to(x).expand_as(x), "the baseline tensor"
    else:
        if isinstance(baseline, str):
            from .registry import get
            baseline = get("baseline", baseline)
        who = f"baseline '{getattr(baseline, 'plugin_name', None) or getattr(baseline, 'name', None) or getattr(baseline, '__name__', '?')}'"
        xb = baseline(x, model, target, seeds=seeds)
    if not torch.is_tensor(xb) or xb.shape != x.shape:
        raise InputError(f"{who} returned {tuple(xb.shape) if torch.is_tensor(xb) else type(xb).__name__} for inputs "
                         f"{tuple(x.shape)}; a baseline must return a tensor of the input's shape (fix the plugin).")
    if not torch.isfinite(xb).all():
        bad = (~torch.isfinite(xb)).flatten(1).any(1).nonzero().flatten().tolist()
        raise InputError(f"{who} returned NaN or Inf values (images at batch positions {bad}) for finite inputs; "
                         "fix the plugin.")
    return xb.detach()


def check_input(x: torch.Tensor, name: str = "input") -> torch.Tensor:
    if not torch.is_tensor(x) or x.dim() != 4:
        raise InputError(f"{name} must be a (N, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}.")
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).flatten(1).any(1).nonzero().flatten().tolist()
        raise InputError(f"{name} holds NaN or Inf values (images at batch positions {bad}); "
                         "clean or drop those images before explaining them.")
    return x


RULES = ("right", "left")


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise InputError(f"rule must be one of {RULES} (the Riemann sum's gradient at each segment's end or start), "
                         f"got '{rule}'.")
    return rule


def integrate(model, x: torch.Tensor, target: torch.Tensor, path: Iterator, *, output: str = "prob",
              internal_batch_size: int | None = None, baseline_gradient: bool = True,
              rule: str = "right") -> Explanation:
    """Riemann path integral of ``F_c`` along ``path``, with its full trace.

    ``path`` yields ``(alphas, points)`` chunks starting at the baseline (``α = 0``) and
    ending at ``x`` (``α = 1``). Returns attributions, the baseline (first point), the trace
    (α, F_c, logit, ‖∇F_c‖, ‖γ_k − x‖ at every step) and the completeness error
    ``|Σ A − (F_c(x) − F_c(x'))| / |F_c(x) − F_c(x')|`` in the chosen ``output``.

    ``rule="right"`` (the default) multiplies the step ``γ_k − γ_{k−1}`` by ``∇F_c(γ_k)``, the
    gradient at the segment's end; ``rule="left"`` by ``∇F_c(γ_{k−1})``, at its start (PAIR's
    Guided IG). A chunk may also be ``(alphas, points, steps)``: ``steps[j]`` then replaces
    ``points[j] − (the point before it)`` as the segment ending at ``points[j]`` (a path's own
    estimate of ``γ'(α) Δα``, BlurIG's PAIR derivative); ``steps[0]`` of the first chunk is unused.

    The right sum never uses ``∇F_c`` at the baseline. Adaptive paths need it to choose their
    first step (it is sent back to them); closed-form paths pass ``baseline_gradient=False``,
    and the baseline then costs a forward pass only, its ``grad_norm`` in the trace being NaN.
    The left sum needs it, so ``rule="left"`` computes it whatever ``baseline_gradient`` says.
    Where a step before has offered ``∇F_c`` at ``x`` itself (:mod:`uni_lab.endpoint`: UNI's
    unlearning), the point at ``α = 1`` takes it instead of a pass.
    """
    check_output(output)
    check_rule(rule)
    check_input(x)
    ibs = pass_size(model, x, internal_batch_size or DEFAULT_INTERNAL_BATCH)
    model = fast_view(model, x)  # once here, not per pass: every pass below differentiates w.r.t. the input only
    n = x.shape[0]
    attribution = torch.zeros_like(x)
    trace = {k: [] for k in ("alpha", "prob", "logit", "grad_norm", "distance")}
    prev = baseline = prev_grad = None
    reply = None
    end = endpoint.take(x, target, output, rule)
    gen = iter(path)
    while True:
        try:
            chunk = gen.send(reply) if reply is not None else next(gen)
        except StopIteration:
            break
        alphas, points = chunk[0], chunk[1].detach()
        scores_only_first = prev is None and not baseline_gradient and rule == "right"
        grads, prob, logit = _evaluate(model, alphas, points, target, output, ibs, scores_only_first, end)
        reply = (grads, prob, logit)
        if baseline is None:
            baseline, first_alpha = points[0], alphas[:1]  # checked after the loop: no host sync inside it
        if len(chunk) > 2:  # the path's own segments, one per point
            steps = chunk[2].detach()[1:] if prev is None else chunk[2].detach()
        elif prev is None:  # the baseline itself closes no segment
            steps = points[1:] - points[:-1]
        elif points.shape[0] == 1:  # the same differences as below, without copying the chunk
            steps = points - prev.unsqueeze(0)
        else:
            steps = torch.cat([(points[0] - prev).unsqueeze(0), points[1:] - points[:-1]])
        if rule == "right":
            terms = (grads[1:] if prev is None else grads) * steps
            attribution += terms[0] if terms.shape[0] == 1 else terms.sum(0)
        else:  # each segment's start: the previous chunk's last point, then this chunk's points
            attribution += ((grads[:-1] if prev is None else torch.cat([prev_grad.unsqueeze(0), grads[:-1]]))
                            * steps).sum(0)
        prev, prev_grad = points[-1], grads[-1]
        trace["alpha"].append(alphas.detach().view(-1, 1).expand(-1, n).to(x.dtype))
        trace["prob"].append(prob)
        trace["logit"].append(logit)
        trace["grad_norm"].append(grads.flatten(2).norm(dim=2))
        trace["distance"].append((points - x.unsqueeze(0)).flatten(2).norm(dim=2))
    if baseline is None:
        raise InputError("the path yielded no points.")
    if float(first_alpha) != 0.0:
        raise InputError("a path must start at alpha = 0 (the baseline).")
    tr = {k: torch.cat(v).T.contiguous() for k, v in trace.items()}  # (N, K + 1)
    score = tr["prob"] if output == "prob" else tr["logit"]
    err = completeness_error(attribution, score[:, -1] - score[:, 0])
    return Explanation(attribution.detach(), baseline.detach(), tr, err.detach())


def completeness_error(attribution: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``|Σ_i A_i − Δ| / |Δ|`` per image, ``Δ = F_c(x) − F_c(x')`` the change the map should sum to.

    Shared by the engine and by methods that are complete without a Riemann path (DeepLIFT,
    input×gradient against the black image) or that combine several paths (AGI, noise tunnels).
    """
    return (attribution.flatten(1).sum(1) - delta).abs() / delta.abs().clamp_min(1e-12)
