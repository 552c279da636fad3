"""Quantus on any uni_lab method: an ``explain_func`` in Quantus's calling convention.

``quantus.MaxSensitivity(...)(model=net, x_batch=x, y_batch=y, a_batch=None,
explain_func=uni_lab.quantus_bridge.explain_func, explain_func_kwargs={"method": "uni"})``
scores UNI (or any spec: ``ig:black``, ``smoothgrad(uni)``, ``xrai(ig:black)``) with any
Quantus metric. The explained function is the one Quantus scores: ``model``'s raw output (its
logits; ``output="prob"`` or Quantus's ``softmax=True`` explains the softmax) on Quantus's
inputs as given. A plain ``nn.Module`` gets no normalisation added; a uni_lab
:class:`~uni_lab.models.Classifier` keeps its own, which is part of its forward. Methods with a
random part are seeded per image from ``seed`` and a hash of the image's pixels, so an image's
map does not depend on the batch Quantus happens to pass it in; ``seed=None`` draws from the
global generator.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import InputError
from .methods import explain
from .models import restoring_modes, wrap
from .seeding import content_seeds

IGNORED = ("channel_first", "abs", "normalise")  # Quantus's own keywords, handled by Quantus


def explain_func(model, inputs, targets, *, method: str = "ig:black", sets: dict | None = None, seed: int | None = 0,
                 device=None, output: str | None = None, softmax: bool | None = None, **params) -> np.ndarray:
    """Attributions ``(N, C, H, W)`` of ``method`` for Quantus: ``explain_func(model, inputs, targets, method="uni")``.

    ``sets`` are ``--set``-style routes (``{"uni.eps": 0.03}``); further keywords go to the method
    itself (``steps=32``). ``output`` defaults to ``"logit"``, or to ``"prob"`` with ``softmax=True``.
    """
    if output is None:
        output = "prob" if softmax else "logit"
    elif softmax is not None and bool(softmax) != (output == "prob"):
        raise InputError(f"explain_func: output='{output}' and softmax={softmax} ask for different functions; "
                         "give one of them.")
    params = {k: v for k, v in params.items() if k not in IGNORED}
    first = next(model.parameters(), None)
    dev = torch.device(device) if device not in (None, "") else (first.device if first is not None else "cpu")
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32, device=dev)
    target = torch.as_tensor(np.asarray(targets), dtype=torch.long, device=dev).view(-1)
    seeds = None if seed is None else content_seeds(x, int(seed))
    c = x.shape[1]
    with restoring_modes(model):  # wrapping sets eval mode; the caller's flags come back
        clf = wrap(model, mean=(0.0,) * c, std=(1.0,) * c, input_size=tuple(x.shape[2:]), name=type(model).__name__)
        exp = explain(method, clf, x, target=target, seeds=seeds, sets=sets, output=output, **params)
    return exp.attribution.detach().cpu().numpy()
