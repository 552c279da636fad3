"""Every method of the zoo on the paper's six backbones, random weights, small inputs.

Input sizes: ConvNeXt and VGG need 32 px (their last stages refuse smaller maps); ViT-B/16
needs a multiple of its 16-px patch, so 16 (one patch plus the class token); ResNet-18,
EfficientNetV2-S and Swin-T run even at 4 px, where padding dominates, so they get 16 to keep
some spatial structure for the blur and guided paths. The fast suite runs saliency on all
six and every method on ResNet-18; the full grid is marked slow.

Guided Backprop and DeepLIFT refuse activations Captum has no rule for (GELU in ConvNeXt,
ViT and Swin; SiLU in EfficientNetV2; see plugins/rules.py) unless told to pass the plain
gradient through them; both behaviours are checked here.
"""
from __future__ import annotations

import pytest
import torch

import uni_lab
from uni_lab.errors import InputError

SIZES = {"resnet18": 16, "efficientnet_v2_s": 16, "convnext_tiny": 32, "vgg16_bn": 32, "vit_b_16": 16, "swin_t": 16}
WITHOUT_RULES = {"efficientnet_v2_s": "SiLU", "convnext_tiny": "GELU", "vit_b_16": "GELU", "swin_t": "GELU"}
CLASSES = 10
# the cheapest settings that still walk a path of more than one step
SETTINGS = {
    "saliency": {}, "input_x_gradient": {}, "guided_backprop": {}, "deeplift": {},
    "smoothgrad": {"smoothgrad.samples": 2},
    "smoothgrad(ig:black)": {"smoothgrad.samples": 2, "ig.steps": 2},
    "blur_ig": {"blur_ig.steps": 2},
    "guided_ig": {"guided_ig.steps": 2},
    "agi": {"agi.steps": 2, "agi.top_k": 2},
}
PATH_METHODS = {"smoothgrad(ig:black)": 2, "blur_ig": 2, "guided_ig": 2, "agi": 2}
_BUILT: dict = {}


def build(arch: str) -> uni_lab.Classifier:
    if arch not in _BUILT:
        torch.manual_seed(0)
        size = SIZES[arch]
        if arch == "vit_b_16":  # torchvision fixes ViT's input size at construction
            import torchvision

            net = torchvision.models.vit_b_16(weights=None, image_size=size, num_classes=CLASSES)
            # torchvision starts ViT's head at zero, which makes every logit and gradient zero
            torch.nn.init.normal_(net.heads.head.weight, std=0.02)
            clf = uni_lab.wrap(net, input_size=(size, size), name=arch)
        else:
            clf = uni_lab.create_model(arch, weights="random", num_classes=CLASSES, input_size=(size, size))
        _BUILT.clear()  # one large model in memory at a time
        _BUILT[arch] = clf
    return _BUILT[arch]


def run_method(arch: str, spec: str):
    clf = build(arch)
    size = SIZES[arch]
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    sets = dict(SETTINGS[spec])
    if spec in ("guided_backprop", "deeplift") and arch in WITHOUT_RULES:
        with pytest.raises(InputError, match=WITHOUT_RULES[arch]):
            uni_lab.explain(spec, clf, x, seeds=torch.tensor([1, 2]), sets=sets)
        sets[f"{spec}.unsupported"] = "gradient"
    exp = uni_lab.explain(spec, clf, x, seeds=torch.tensor([1, 2]), sets=sets)
    assert exp.attribution.shape == x.shape
    assert torch.isfinite(exp.attribution).all() and exp.attribution.abs().sum() > 0, (arch, spec)
    if spec in PATH_METHODS:
        assert exp.trace["prob"].shape == (2, PATH_METHODS[spec] + 1)
        assert torch.isfinite(exp.completeness_error).all()
        assert torch.allclose(exp.trace["alpha"][:, -1], torch.ones(2))
    return exp


FAST = [(arch, "saliency") for arch in SIZES] + [("resnet18", spec) for spec in SETTINGS if spec != "saliency"]
SLOW = [(arch, spec) for arch in SIZES for spec in SETTINGS if (arch, spec) not in FAST]


@pytest.mark.parametrize("arch,spec", FAST)
def test_method_runs_on_architecture(arch, spec):
    run_method(arch, spec)


@pytest.mark.slow
@pytest.mark.parametrize("arch,spec", SLOW)
def test_method_runs_on_architecture_full_grid(arch, spec):
    run_method(arch, spec)
