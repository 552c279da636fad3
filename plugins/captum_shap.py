"""GradientSHAP and DeepLIFT-SHAP (Lundberg & Lee 2017) via Captum, from baseline plugins.

Both explain ``F_c`` against a *distribution* of references, given as a comma list of
registered baselines (``baselines="black,uniform"``): a deterministic baseline contributes
one reference, a seeded one (``uniform``, ``gaussian``, ...) ``draws`` references, each from
its own per-image seed. Captum's ``GradientShap`` (expected gradients: ``n_samples`` random
references and points ``x' + α (x − x')``, optional input noise ``stdevs``) draws from
torch's and numpy's global generators, so each image is explained in its own call with those
seeded from the image's seed. Captum's ``DeepLiftShap`` (the mean DeepLIFT map over the
references) runs on the same rule-ready copy of the model as ``deeplift`` (plugins/rules.py:
ReLU6 as two ReLUs, reused activation modules duplicated; the user's model is not touched).
Both are complete in expectation against ``F_c(x) − mean_j F_c(x'_j)``; the stored
completeness error is against that.
"""
from __future__ import annotations

from typing import Literal

import torch

import uni_lab
from uni_lab.contracts import BatchSize, Count, NonNegative
from uni_lab.engine import DEFAULT_INTERNAL_BATCH, OUTPUTS, check_input, completeness_error, resolve_baseline, scores
from uni_lab.errors import InputError
from uni_lab.explanation import Explanation
from uni_lab.fastview import fast_view
from uni_lab.registry import get
from uni_lab.seeding import derived_seeds

from .rules import UNSUPPORTED, _captum_quiet, rule_model


def _names(baselines: str) -> list[str]:
    return [b.strip() for b in str(baselines).split(",") if b.strip()]


def check_references(*, baselines: str = "", **_) -> None:
    """The comma list names registered baselines: refused before the run, not at its first batch."""
    if not _names(baselines):
        raise InputError(f"baselines needs at least one baseline name, got '{baselines}'; e.g. baselines=black,uniform.")
    for name in _names(baselines):
        get("baseline", name)  # an unknown name is refused listing the registered ones


def random_references(params: dict) -> bool:
    """A reference distribution with a random baseline (uniform, gaussian) depends on the seed."""
    return any(get("baseline", name).is_random() for name in _names(params["baselines"]))


def reference_set(baselines: str, draws: int, x, model, target, seeds) -> torch.Tensor:
    """References ``(N, M, 3, H, W)`` from a comma list of baseline plugins (seeded ones ``draws`` times)."""
    refs = []
    for name in _names(baselines):
        plugin = get("baseline", name)
        if plugin.accepts("seeds"):
            refs += [resolve_baseline(plugin, x, model, target, derived_seeds(seeds, f"reference:{name}:{d}"))
                     for d in range(int(draws))]
        else:
            refs.append(resolve_baseline(plugin, x, model, target, seeds))
    return torch.stack(refs, 1)


def _complete_against(model, x, refs, target, attribution, output):
    n, m = refs.shape[:2]
    with torch.no_grad():
        p, l = scores(model(x), target)
        p0, l0 = scores(model(refs.flatten(0, 1)), target.repeat_interleave(m))
    delta = (p - p0.view(n, m).mean(1)) if output == "prob" else (l - l0.view(n, m).mean(1))
    return completeness_error(attribution, delta)


@uni_lab.explainer("gradient_shap", check=check_references, random=True)
def gradient_shap(model, x, target, seeds=None, *, baselines: str = "black,uniform", draws: Count = 4,
                  n_samples: Count = 32, stdevs: NonNegative = 0.0, output: Literal[OUTPUTS] = "prob"):
    """GradientSHAP (Lundberg & Lee 2017; expected gradients) via Captum over references from baseline plugins."""
    from captum.attr import GradientShap

    from uni_lab.captum import Scores, image_seeds, seeded

    check_input(x)
    refs = reference_set(baselines, draws, x, model, target, seeds)
    gs = GradientShap(Scores(fast_view(model, x), output))
    out = []
    for i, seed in enumerate(image_seeds(seeds, "gradient_shap", x.shape[0])):
        with seeded(seed):
            out.append(gs.attribute(x[i:i + 1].detach().clone().requires_grad_(True), baselines=refs[i],
                                    n_samples=int(n_samples), stdevs=float(stdevs), target=target[i:i + 1]).detach())
    attribution = torch.cat(out)
    mean_ref = refs.mean(1)
    return Explanation(attribution, baseline=mean_ref,
                       completeness_error=_complete_against(model, x, refs, target, attribution, output))


@uni_lab.explainer("deeplift_shap", check=check_references, random=random_references)
def deeplift_shap(model, x, target, seeds=None, *, baselines: str = "black,uniform", draws: Count = 4,
                  unsupported: Literal[UNSUPPORTED] = "error", output: Literal[OUTPUTS] = "prob",
                  internal_batch_size: BatchSize = None):
    """DeepLIFT-SHAP (Lundberg & Lee 2017) via Captum: the mean DeepLIFT rescale map over references from baseline plugins."""
    from captum.attr import DeepLiftShap

    check_input(x)
    refs = reference_set(baselines, draws, x, model, target, seeds)
    net = rule_model(model, x, "deeplift", output == "prob", unsupported)
    dls = DeepLiftShap(net, multiply_by_inputs=True)
    # Captum runs an image against all its references in one batch; with the softmax rule that
    # batch must hold one image only, as for ``deeplift`` (see plugins/rules.py).
    del internal_batch_size
    with _captum_quiet():
        attribution = torch.cat([dls.attribute(x[i:i + 1].detach().clone().requires_grad_(True), baselines=refs[i],
                                               target=target[i:i + 1]).detach() for i in range(x.shape[0])])
    return Explanation(attribution, baseline=refs.mean(1),
                       completeness_error=_complete_against(model, x, refs, target, attribution, output))
