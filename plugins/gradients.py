"""One-pass gradient explainers (docs/methods.md §4): saliency and input×gradient.

Both evaluate ``∇_x F_c(x)`` with the engine's batched :func:`~uni_lab.engine.grads_and_scores`, so
they batch, move devices and pick ``output`` exactly as the path methods do.
"""
from typing import Literal

import torch

import uni_lab
from uni_lab.contracts import BatchSize
from uni_lab.engine import (DEFAULT_INTERNAL_BATCH, OUTPUTS, check_input, check_output, completeness_error,
                            grads_and_scores, scores)
from uni_lab.explanation import Explanation


def input_gradients(model, x, target, output: str = "prob", internal_batch_size: int | None = None):
    """``(∇_x F_c(x), F_c(x) as probability, as logit)`` for a batch."""
    check_output(output)
    check_input(x)
    grads, prob, logit = grads_and_scores(model, x.unsqueeze(0), target, output, internal_batch_size or DEFAULT_INTERNAL_BATCH)
    return grads[0], prob[0], logit[0]


@uni_lab.explainer("saliency")
def saliency(model, x, target, seeds=None, *, output: Literal[OUTPUTS] = "prob", internal_batch_size: BatchSize = None):
    """Saliency (Simonyan et al. 2013): the plain input gradient of F_c, signed."""
    grad, _, _ = input_gradients(model, x, target, output, internal_batch_size)
    return Explanation(grad)


@uni_lab.explainer("input_x_gradient")
def input_x_gradient(model, x, target, seeds=None, *, output: Literal[OUTPUTS] = "prob",
                     internal_batch_size: BatchSize = None):
    """Input × gradient: x ⊙ ∇F_c(x); equals black-baseline IG exactly on a bias-free ReLU net (X-DNN)."""
    grad, prob, logit = input_gradients(model, x, target, output, internal_batch_size)
    black = torch.zeros_like(x)
    with torch.no_grad():
        prob0, logit0 = scores(model(black), target)
    # x ⊙ ∇F(x) is the one-step right Riemann sum from the black image, so its completeness
    # against that image is defined (and is zero for an X-DNN explaining the logit).
    delta = (prob - prob0) if output == "prob" else (logit - logit0)
    attribution = x * grad
    return Explanation(attribution, baseline=black, completeness_error=completeness_error(attribution, delta))
