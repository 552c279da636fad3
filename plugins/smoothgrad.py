"""SmoothGrad as a noise tunnel around any method (Smilkov et al. 2017, docs/methods.md §4).

``A(x) = (1/n) Σ_s A_inner(x + ε_s)``, ``ε_s ~ N(0, σ²)``, ``σ = noise_level · (max x − min x)``
per image; noisy inputs are not clipped to ``[0, 1]`` (as in the paper and Captum's
``NoiseTunnel``). ``smoothgrad`` alone wraps ``saliency`` (classic SmoothGrad);
``smoothgrad(ig:black)`` or ``smoothgrad(uni)`` wrap those methods.

When the inner method has a path, the tunnel's trace is the mean of the inner traces over
the ``n`` noisy copies (every copy has the same ``α`` grid), its baseline the mean inner
baseline, and its completeness error compares ``Σ_i A_i`` with the mean change the inner
maps explain, ``(1/n) Σ_s (F_c(x + ε_s) − F_c(x'_s))``: the mean of complete maps is complete.
"""
from __future__ import annotations

from typing import Literal

import torch

import uni_lab
from uni_lab.contracts import Count, NonNegative
from uni_lab.engine import OUTPUTS, check_input, completeness_error
from uni_lab.explanation import Explanation
from uni_lab.seeding import derived_seeds, draw

NOISE_SALT = 23
# Noisy copies handed to the inner method per call: enough to fill its batches, few enough
# that a heavy inner method (UNI's per-image unlearning) stays within memory.
ROWS_PER_CALL = 64


def sample_seeds(seeds, sample: int):
    """Per-image seeds of noisy copy ``sample``: distinct per copy, independent of the batch."""
    return derived_seeds(seeds, f"smoothgrad:{sample}")


def noise(x: torch.Tensor, seeds, samples: int, noise_level: float) -> torch.Tensor:
    """``(samples, N, 3, H, W)`` Gaussian noise, σ per image from its value range."""
    sigma = noise_level * (x.flatten(1).amax(1) - x.flatten(1).amin(1))
    eps = torch.stack([draw(x, sample_seeds(seeds, s), "randn", salt=NOISE_SALT) for s in range(samples)])
    return eps * sigma.view(1, -1, 1, 1, 1)


@uni_lab.explainer("smoothgrad", random=True)
def smoothgrad(model, x, target, seeds=None, *, inner="saliency", samples: Count = 50,
               noise_level: NonNegative = 0.15, output: Literal[OUTPUTS] = "prob"):
    """SmoothGrad noise tunnel: the mean of an inner method's maps over n noisy copies of the input."""
    check_input(x)
    if isinstance(inner, str):
        from uni_lab.methods import resolve

        # a bare inner name gets the tunnel's output; to set its other parameters, name it in
        # the spec (smoothgrad(ig:black)) so that --set reaches it
        inner = resolve(inner, defaults={"output": output})
    inner_output = getattr(inner, "params", {}).get("output", output)
    n = x.shape[0]
    eps = noise(x, seeds, int(samples), noise_level)
    per_call = max(1, ROWS_PER_CALL // n)
    parts = []
    for s in range(0, int(samples), per_call):
        group = eps[s:s + per_call]
        g = group.shape[0]
        xs = (x.unsqueeze(0) + group).reshape(g * n, *x.shape[1:])
        ss = None if seeds is None else torch.cat([sample_seeds(seeds, s + j) for j in range(g)])
        exp = inner(model, xs, target.repeat(g), seeds=ss)
        parts.append(per_sample_explanation(exp, g, n))
    return mean_explanation(parts, inner_output)


def per_sample_explanation(exp: Explanation, g: int, n: int) -> dict:
    """The inner explanation with a leading sample axis: ``(g, N, ...)`` tensors."""
    split = lambda t: None if t is None else t.detach().reshape(g, n, *t.shape[1:])
    return {"attribution": split(exp.attribution), "baseline": split(exp.baseline),
            "trace": None if exp.trace is None else {k: split(v) for k, v in exp.trace.items()},
            "extras": {k: split(v) for k, v in exp.extras.items()}}


def mean_explanation(parts: list[dict], output: str) -> Explanation:
    """The mean of explanations given as ``per_sample_explanation`` parts; its completeness error is
    against the mean change the parts explain (the mean of complete maps is complete)."""
    cat = lambda key: torch.cat([p[key] for p in parts])
    attribution = cat("attribution").mean(0)
    baseline = cat("baseline").mean(0) if all(p["baseline"] is not None for p in parts) else None
    trace = err = None
    if all(p["trace"] is not None for p in parts):
        traces = {k: torch.cat([p["trace"][k] for p in parts]) for k in parts[0]["trace"]}
        trace = {k: v.mean(0) for k, v in traces.items()}
        score = traces["prob" if output == "prob" else "logit"]
        err = completeness_error(attribution, (score[..., -1] - score[..., 0]).mean(0))
    extras = {k: torch.cat([p["extras"][k] for p in parts]).mean(0) for k in parts[0]["extras"]
              if all(k in p["extras"] for p in parts)}
    return Explanation(attribution, baseline, trace, err, extras)
