"""LIME (Ribeiro et al. 2016) and KernelSHAP (Lundberg & Lee 2017) on SLIC superpixels, via Captum.

Both explain ``F_c`` by a linear model over binary features: the image's SLIC superpixels
(Achanta et al. 2012, scikit-image's ``slic`` with ``n_segments`` and ``compactness``), each
either kept or replaced by the baseline (black by default, ``lime:blur`` for another).
Captum's ``Lime`` (its defaults: a Lasso surrogate with α = ``lasso_alpha`` = 0.01, an
exponential cosine-distance kernel of width 1, features drawn on/off with probability ½) and
``KernelShap`` (Shapley kernel weights, least squares) are used as they are; every pixel of a
superpixel gets its coefficient. Captum draws its ``n_samples`` coalitions from torch's and
numpy's global generators, so each image is explained in its own call with those generators
seeded from the image's seed: a map is the same in any batch, shard or rank. The maps are the
coefficient per channel (Captum returns the same value in all three channels of a superpixel).
"""
from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch
from annotated_types import Ge

import uni_lab
from uni_lab.contracts import BatchSize, NonNegative, Positive
from uni_lab.engine import DEFAULT_INTERNAL_BATCH, OUTPUTS, check_input, resolve_baseline
from uni_lab.errors import InputError
from uni_lab.explanation import Explanation
from uni_lab.fastview import fast_view

AtLeastTwo = Annotated[int, Ge(2)]  # coalitions and superpixels: one alone has nothing to compare with


def superpixels(x: torch.Tensor, n_segments: int = 50, compactness: float = 10.0) -> torch.Tensor:
    """SLIC superpixel labels ``(N, 1, H, W)`` (0 … K−1 per image) of pixel-space images."""
    from skimage.segmentation import slic

    if int(n_segments) < 2 or compactness <= 0:
        raise InputError(f"superpixels need n_segments >= 2 and compactness > 0, got {n_segments} and {compactness}.")
    labels = [slic(img.permute(1, 2, 0).double().cpu().numpy(), n_segments=int(n_segments), compactness=compactness,
                   start_label=0, channel_axis=-1) for img in x.detach()]
    few = [(i, int(lab.max()) + 1) for i, lab in enumerate(labels) if lab.max() < 1]
    if few:
        raise InputError(f"SLIC found a single superpixel in images at batch positions {[i for i, _ in few]}, so there "
                         "is nothing to attribute between; raise n_segments or lower compactness "
                         "(--set lime.compactness=1).")
    return torch.from_numpy(np.stack(labels)).long().unsqueeze(1).to(x.device)


def _explain(cls, model, x, target, seeds, tag, baseline, n_samples, n_segments, compactness, output,
             internal_batch_size, **ctor):
    from uni_lab.captum import Scores, image_seeds, seeded

    check_input(x)
    xb = resolve_baseline(baseline, x, model, target, seeds)
    masks = superpixels(x, n_segments, compactness)
    explainer = cls(Scores(fast_view(model, x), output), **ctor)
    per_eval = max(1, int(internal_batch_size or DEFAULT_INTERNAL_BATCH))
    out = []
    for i, seed in enumerate(image_seeds(seeds, tag, x.shape[0])):
        with seeded(seed), torch.no_grad():
            out.append(explainer.attribute(x[i:i + 1], baselines=xb[i:i + 1], target=target[i:i + 1],
                                           feature_mask=masks[i:i + 1].expand(-1, x.shape[1], -1, -1),
                                           n_samples=int(n_samples), perturbations_per_eval=per_eval).detach())
    features = torch.tensor([float(m.max() + 1) for m in masks], device=x.device)
    return Explanation(torch.cat(out).to(x.dtype), baseline=xb, extras={"n_features": features})


@uni_lab.explainer("lime", random=True)
def lime(model, x, target, seeds=None, *, n_samples: AtLeastTwo = 200, n_segments: AtLeastTwo = 50,
         compactness: Positive = 10.0, lasso_alpha: NonNegative = 0.01, kernel_width: Positive = 1.0, baseline="black",
         output: Literal[OUTPUTS] = "prob", internal_batch_size: BatchSize = None):
    """LIME (Ribeiro et al. 2016) via Captum on SLIC superpixels: a Lasso fit to seeded random coalitions."""
    from captum._utils.models.linear_model import SkLearnLasso
    from captum.attr import Lime
    from captum.attr._core.lime import get_exp_kernel_similarity_function

    return _explain(Lime, model, x, target, seeds, "lime", baseline, n_samples, n_segments, compactness, output,
                    internal_batch_size, interpretable_model=SkLearnLasso(alpha=float(lasso_alpha)),
                    similarity_func=get_exp_kernel_similarity_function("cosine", float(kernel_width)))


@uni_lab.explainer("kernel_shap", random=True)
def kernel_shap(model, x, target, seeds=None, *, n_samples: AtLeastTwo = 200, n_segments: AtLeastTwo = 50,
                compactness: Positive = 10.0, baseline="black", output: Literal[OUTPUTS] = "prob",
                internal_batch_size: BatchSize = None):
    """KernelSHAP (Lundberg & Lee 2017) via Captum on SLIC superpixels: Shapley-kernel least squares on seeded coalitions."""
    from captum.attr import KernelShap

    return _explain(KernelShap, model, x, target, seeds, "kernel_shap", baseline, n_samples, n_segments, compactness,
                    output, internal_batch_size)
