"""Quantus on any uni_lab method: an ``explain_func`` in Quantus's calling convention.

``quantus.MaxSensitivity(...)(model=clf, x_batch=x, y_batch=y, a_batch=None,
explain_func=uni_lab.quantus_bridge.explain_func, explain_func_kwargs={"method": "uni"})``
scores UNI (or any spec: ``ig:black``, ``smoothgrad(uni)``, ``xrai(ig:black)``) with any
Quantus metric. ``model`` is a pixel-space uni_lab classifier (or any ``nn.Module``, which is
wrapped as :func:`uni_lab.wrap` would); inputs and targets are Quantus's numpy arrays.
Methods with a random part are seeded per image from ``seed`` and a hash of the image's
pixels, so an image's map does not depend on the batch Quantus happens to pass it in;
``seed=None`` draws from the global generator.
"""
from __future__ import annotations

import numpy as np
import torch

from .methods import explain
from .seeding import content_seeds


def explain_func(model, inputs, targets, *, method: str = "ig:black", sets: dict | None = None, seed: int | None = 0,
                 device=None, **params) -> np.ndarray:
    """Attributions ``(N, C, H, W)`` of ``method`` for Quantus: ``explain_func(model, inputs, targets, method="uni")``.

    ``sets`` are ``--set``-style routes (``{"uni.eps": 0.03}``); further keywords go to the method
    itself (``steps=32``); Quantus's own ``device``, ``softmax`` and similar keywords are ignored.
    """
    params = {k: v for k, v in params.items() if k not in ("softmax", "channel_first", "abs", "normalise")}
    dev = torch.device(device) if device not in (None, "") else next(iter(model.parameters())).device
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32, device=dev)
    target = torch.as_tensor(np.asarray(targets), dtype=torch.long, device=dev).view(-1)
    seeds = None if seed is None else content_seeds(x, int(seed))
    exp = explain(method, model, x, target=target, seeds=seeds, sets=sets, **params)
    return exp.attribution.detach().cpu().numpy()
