"""``∇_x F_c`` at the input itself, handed from a step that computed it anyway to the path integral.

The right Riemann sum's last point is the input (``α = 1``), where a pass computes ``∇_x F_c(x)``.
UNI's unlearning has just taken ∇_x of each image's cross-entropy at ``x`` under the same weights,
and for the probability output the two are proportional: ``F_c = softmax_c``, ``CE_c = −log F_c``,
so ``∇_x F_c = −F_c · ∇_x CE_c``. Inside :func:`collecting`, a baseline may :func:`offer` those
values; :func:`~uni_lab.engine.integrate` then takes them (:func:`take`) for the point at ``α = 1``
instead of running a pass of its own: one gradient pass of the B fewer.

They come from the unlearning's pass (the fast view's graph in NCHW, in chunks of its own fixed
size) and not from the integration's, so the map differs from the one a pass at ``α = 1`` gives by
float rounding only, and is as independent of the batch as both passes are. Where rounding moves
a ReLU6 kink, that one point's gradient differs locally (on Lite0 at 224² one image of four had a
pixel 5 % apart; the others agreed to 3e-6), as between any two batch compositions.
"""
from __future__ import annotations

import contextlib

import torch

_BOXES: list[dict] = []


@contextlib.contextmanager
def collecting():
    """A scope in which :func:`offer` keeps its values for :func:`take` (the innermost scope wins)."""
    box: dict = {}
    _BOXES.append(box)
    try:
        yield box
    finally:
        _BOXES.pop()


def wanted() -> bool:
    """Whether anything would take an offer (so that a step computes the values only then)."""
    return bool(_BOXES)


def offer(x: torch.Tensor, target: torch.Tensor, grad: torch.Tensor, prob: torch.Tensor,
          logit: torch.Tensor) -> None:
    """``∇_x F_c(x)`` (probability output), ``F_c(x)`` and its logit for the inputs ``x`` themselves."""
    if _BOXES:
        _BOXES[-1]["end"] = (x, target, grad, prob, logit)


def take(x: torch.Tensor, target: torch.Tensor, output: str, rule: str):
    """``(grad, prob, logit)`` at ``x`` if an offer holds them for these very inputs and targets, and
    the sum can use them (probability output, right rule); otherwise ``None``."""
    if not _BOXES or output != "prob" or rule != "right":
        return None
    end = _BOXES[-1].get("end")
    if end is None:
        return None
    ex, et, grad, prob, logit = end
    if (ex.shape != x.shape or ex.dtype != x.dtype or et.shape != target.shape or grad.shape != x.shape
            or not torch.equal(ex, x) or not torch.equal(et, target)):
        return None
    return grad, prob, logit
