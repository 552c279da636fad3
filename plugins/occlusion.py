"""Occlusion (Zeiler & Fergus 2014) through Captum's ``Occlusion``.

A window of ``window × window`` pixels (all channels; by default a seventh of the image's
shorter side, 32 px at 224²) slides over the image in steps of ``stride`` (by default half the
window); each placement replaces the window by the baseline (black by default,
``occlusion:blur`` for another) and every pixel gets the mean drop ``F_c(x) − F_c(x_occluded)``
over the windows that covered it. Captum's implementation is used as is (its window
arithmetic and averaging); forward passes run through the model's fast view.
"""
from __future__ import annotations

from typing import Literal

import torch

import uni_lab
from uni_lab.contracts import BatchSize, Count
from uni_lab.engine import DEFAULT_INTERNAL_BATCH, OUTPUTS, check_input, resolve_baseline
from uni_lab.errors import InputError
from uni_lab.explanation import Explanation
from uni_lab.fastview import fast_view


@uni_lab.explainer("occlusion")
def occlusion(model, x, target, seeds=None, *, window: Count | None = None, stride: Count | None = None,
              baseline="black", output: Literal[OUTPUTS] = "prob", internal_batch_size: BatchSize = None):
    """Occlusion (Zeiler & Fergus 2014) via Captum: mean output drop under a sliding baseline window."""
    from captum.attr import Occlusion

    from uni_lab.captum import Scores

    check_input(x)
    h, w = x.shape[2:]
    window = max(1, round(min(h, w) / 7)) if window is None else window
    stride = max(1, int(window) // 2) if stride is None else stride
    if not (1 <= int(stride) <= int(window) <= min(h, w)):  # the image side bounds them, and the defaults need it
        raise InputError(f"occlusion needs 1 <= stride <= window <= {min(h, w)} (the image side), got window={window}, "
                         f"stride={stride}; e.g. --set occlusion.window=16 --set occlusion.stride=8.")
    xb = resolve_baseline(baseline, x, model, target, seeds)
    forward = Scores(fast_view(model, x), output)
    occ = Occlusion(forward)
    with torch.no_grad():
        attribution = occ.attribute(x, sliding_window_shapes=(x.shape[1], int(window), int(window)),
                                    strides=(x.shape[1], int(stride), int(stride)), baselines=xb, target=target,
                                    perturbations_per_eval=max(1, (internal_batch_size or DEFAULT_INTERNAL_BATCH)
                                                               // x.shape[0]))
    return Explanation(attribution.detach(), baseline=xb)
