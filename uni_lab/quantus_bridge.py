"""Quantus on any uni_lab method: an ``explain_func`` in Quantus's calling convention.

A metric takes :func:`explain_func` with the method's spec (``uni``, ``ig:black``,
``smoothgrad(uni)``, ``xrai(ig:black)``) as ``method``; ``quantus.evaluate``, which passes each
method's display name as ``method``, takes :func:`explain_func_for`, bound to a spec:

>>> import numpy as np, quantus, torch
>>> from torch import nn
>>> from uni_lab.quantus_bridge import explain_func, explain_func_for
>>> _ = torch.manual_seed(0)
>>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
>>> x = torch.rand(2, 3, 16, 16).numpy()
>>> y = net(torch.from_numpy(x)).argmax(-1).numpy()
>>> scores = quantus.MaxSensitivity(nr_samples=2, disable_warnings=True)(
...     model=net, x_batch=x, y_batch=y, a_batch=None, explain_func=explain_func,
...     explain_func_kwargs={"method": "uni", "eps": 0.05, "steps": 4}, device="cpu")
>>> results = quantus.evaluate(
...     metrics={"Sparseness": quantus.Sparseness(disable_warnings=True)},
...     xai_methods={"UNI": explain_func_for("uni", eps=0.05), "IG (black)": explain_func_for("ig:black")},
...     model=net, x_batch=x, y_batch=y, explain_func_kwargs={"steps": 4})
>>> sorted(results), len(results["UNI"]["Sparseness"])
(['IG (black)', 'UNI'], 2)

The explained function is the one Quantus scores: ``model``'s raw output (its logits;
``output="prob"`` or Quantus's ``softmax=True`` explains the softmax) on Quantus's inputs as
given. A plain ``nn.Module`` gets no normalisation added; a uni_lab
:class:`~uni_lab.models.Classifier` keeps its own, which is part of its forward. Methods with a
random part are seeded per image from ``seed`` and a hash of the image's pixels, so an image's
map does not depend on the batch Quantus happens to pass it in; ``seed=None`` draws from the
global generator.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from .captum import keyword_sets
from .errors import InputError, PluginError
from .methods import explain
from .models import restoring_modes, wrap
from .seeding import content_seeds

IGNORED = ("channel_first", "abs", "normalise")  # Quantus's own keywords, handled by Quantus


def explain_func(model, inputs, targets, *, method: str = "ig:black", sets: dict | None = None, seed: int | None = 0,
                 device=None, output: str | None = None, softmax: bool | None = None, **params) -> np.ndarray:
    """Attributions ``(N, C, H, W)`` of the spec ``method`` for Quantus.

    Keywords are the method's parameters by name (``steps=32``, ``eps=0.03``: each goes to the
    plugin that declares it, UNI's ``eps`` to its baseline); ``sets`` takes ``--set``-style routes
    (``{"uni.eps": 0.03}``). ``output`` defaults to ``"logit"``, or to ``"prob"`` with ``softmax=True``.
    """
    if output is None:
        output = "prob" if softmax else "logit"
    elif softmax is not None and bool(softmax) != (output == "prob"):
        raise InputError(f"explain_func: output='{output}' and softmax={softmax} ask for different functions; "
                         "give one of them.")
    params = {k: v for k, v in params.items() if k not in IGNORED}
    try:
        sets = keyword_sets(method, {"output": output, **params}, sets, "explain_func")
    except PluginError as exc:
        if not str(exc).startswith(("unknown explainer", "cannot parse method")):
            raise
        raise PluginError(f"explain_func: method '{method}' is not a uni_lab method spec ({str(exc).rstrip('.')}); "
                          "quantus.evaluate passes each method's display name as method, so bind the spec: "
                          f"xai_methods={{'{method}': uni_lab.quantus_bridge.explain_func_for('<spec>')}}.") from None
    first = next(model.parameters(), None)
    dev = torch.device(device) if device not in (None, "") else (first.device if first is not None else "cpu")
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32, device=dev)
    target = torch.as_tensor(np.asarray(targets), dtype=torch.long, device=dev).view(-1)
    seeds = None if seed is None else content_seeds(x, int(seed))
    c = x.shape[1]
    with restoring_modes(model):  # wrapping sets eval mode; the caller's flags come back
        clf = wrap(model, mean=(0.0,) * c, std=(1.0,) * c, input_size=tuple(x.shape[2:]), name=type(model).__name__)
        exp = explain(method, clf, x, target=target, seeds=seeds, sets=sets)
    return exp.attribution.detach().cpu().numpy()


def explain_func_for(spec: str, **bound):
    """:func:`explain_func` bound to ``spec`` and parameters, for ``quantus.evaluate(xai_methods={"UNI":
    explain_func_for("uni", eps=0.05)})``: the ``method`` Quantus passes (the display name) is not a
    spec and is ignored; ``explain_func_kwargs`` add to ``bound``. Checked here, before Quantus calls it."""
    keyword_sets(spec, {k: v for k, v in bound.items() if k not in ("sets", "seed", "device", "softmax", *IGNORED)},
                 bound.get("sets"), f"explain_func_for('{spec}')")

    @functools.wraps(explain_func)
    def bound_explain_func(model, inputs, targets, *, method=None, **kwargs):
        return explain_func(model, inputs, targets, method=spec, **{**bound, **kwargs})

    bound_explain_func.spec = spec
    return bound_explain_func
