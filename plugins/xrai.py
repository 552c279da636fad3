"""XRAI (Kapishnikov et al. 2019) through PAIR's ``saliency`` package, on any uni_lab attribution.

``xrai(<spec>)`` computes the inner method's map (``xrai(ig:black)``, ``xrai(uni)``; bare
``xrai`` wraps ``ig:black``) and hands it to ``saliency.core.XRAI`` as its base attribution.
XRAI then takes the maximum over channels, segments the image with Felzenszwalb's method at
six scales (PAIR's settings: the image resized to 224² for segmentation, masks dilated by
5 px) and ranks regions greedily by attribution density; the map gives every pixel the
density of the region that claimed it. That is PAIR's own code path, not re-derived here
(PAIR computes its base IG from black and white images itself when none is given; here the
base map is always the inner method's, so that XRAI can sit on top of any method). XRAI's map
has no channels: it is stored as ``map / 3`` in each channel, so ``Σ_c A_c`` is XRAI's value.
The inner method's baseline and trace are not XRAI's and are not kept.
"""
from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch
from annotated_types import Interval

import uni_lab
from uni_lab.contracts import Count
from uni_lab.engine import OUTPUTS, check_input
from uni_lab.explanation import Explanation

ALGORITHMS = ("full", "fast")


def _no_model_calls(*args, **kwargs):  # XRAI only calls the model to compute its own IG
    raise RuntimeError("XRAI was given a base attribution and should not call the model.")


def xrai_map(image: np.ndarray, attribution: np.ndarray, algorithm: str = "full", area_threshold: float = 1.0,
             min_pixel_diff: int = 50) -> np.ndarray:
    """PAIR's XRAI of one ``(H, W, 3)`` image on a given ``(H, W, 3)`` base attribution: ``(H, W)``."""
    from saliency.core import XRAI, XRAIParameters

    params = XRAIParameters(area_threshold=float(area_threshold), algorithm=algorithm)
    params.experimental_params["min_pixel_diff"] = int(min_pixel_diff)
    return XRAI().GetMask(image, _no_model_calls, base_attribution=attribution, extra_parameters=params)


@uni_lab.explainer("xrai")
def xrai(model, x, target, seeds=None, *, inner="ig:black", algorithm: Literal[ALGORITHMS] = "full",
         area_threshold: Annotated[float, Interval(gt=0, le=1)] = 1.0, min_pixel_diff: Count = 50,
         output: Literal[OUTPUTS] = "prob"):
    """XRAI (Kapishnikov et al. 2019) via PAIR's saliency: region ranking of any method's map (xrai(ig:black), xrai(uni))."""
    check_input(x)
    if isinstance(inner, str):
        from uni_lab.methods import resolve

        inner = resolve(inner, defaults={"output": output})
    base = inner(model, x, target, seeds=seeds).attribution.detach()
    images = x.detach().permute(0, 2, 3, 1).double().cpu().numpy()
    attrs = base.permute(0, 2, 3, 1).double().cpu().numpy()
    maps = [xrai_map(images[i], attrs[i], algorithm, area_threshold, min_pixel_diff) for i in range(x.shape[0])]
    from uni_lab.captum import spread

    return Explanation(spread(torch.from_numpy(np.stack(maps)).unsqueeze(1).to(x)))
