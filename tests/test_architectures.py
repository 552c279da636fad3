"""Every registered explainer, UNI included, on the paper's six backbones, random weights, small inputs.

The fast suite runs every explainer on a tiny version of each backbone, built from torchvision's own
classes so that it keeps the layers the methods meet: ResNet's basic blocks with batch norm,
EfficientNetV2's fused and squeeze-excitation MBConv blocks (SiLU), ConvNeXt's depthwise blocks
(LayerNorm, GELU, layer scale), VGG's conv-BN-ReLU stack and max pools, ViT's patch embedding and
attention, Swin's windowed attention and patch merging; a few channels at 16 px, so the grid runs in
seconds. The slow suite (``-m slow``) runs the same grid on the real-size torchvision models, at the
smallest input each accepts: ConvNeXt and VGG 32 px (their last stages refuse smaller maps), ViT-B/16
16 px (one patch plus the class token), the others 16 px.

The grid is the registry's list of explainers: one registered without an entry in ``SETTINGS`` (its
cheapest settings) fails ``test_every_registered_explainer_is_in_the_grid``.

Guided Backprop, DeepLIFT and DeepLIFT-SHAP refuse activations Captum has no rule for (GELU in
ConvNeXt, ViT and Swin; SiLU in EfficientNetV2; see plugins/rules.py) unless told to pass the plain
gradient through them; both behaviours are checked here.
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch
from torch import nn

import uni_lab
from uni_lab.errors import InputError

ARCHS = ("resnet18", "efficientnet_v2_s", "convnext_tiny", "vgg16_bn", "vit_b_16", "swin_t")
SIZES = {"resnet18": 16, "efficientnet_v2_s": 16, "convnext_tiny": 32, "vgg16_bn": 32, "vit_b_16": 16, "swin_t": 16}
TINY_SIZE = 16
WITHOUT_RULES = {"efficientnet_v2_s": "SiLU", "convnext_tiny": "GELU", "vit_b_16": "GELU", "swin_t": "GELU"}
CLASSES = 10
# spec -> the cheapest settings that still walk a path of more than one step (and give a map that is not zero)
SETTINGS = {
    "saliency": {}, "input_x_gradient": {}, "guided_backprop": {}, "deeplift": {}, "grad_cam": {},
    "ig:black": {"ig.steps": 2},
    "smoothgrad": {"smoothgrad.samples": 2},
    "smoothgrad(ig:black)": {"smoothgrad.samples": 2, "ig.steps": 2},
    "blur_ig": {"blur_ig.steps": 2},
    "guided_ig": {"guided_ig.steps": 2},
    "agi": {"agi.steps": 2, "agi.top_k": 2},
    "uni": {"explainer.uni.steps": 2, "baseline.uni.pgd_steps": 1},
    "gradient_shap": {"gradient_shap.n_samples": 2, "gradient_shap.draws": 1},
    "deeplift_shap": {"deeplift_shap.draws": 1},
    "occlusion": {"occlusion.window": 8, "occlusion.stride": 8},
    # the default Lasso zeroes every superpixel of a random network: no map to check
    "lime": {"lime.n_samples": 8, "lime.n_segments": 8, "lime.lasso_alpha": 1e-4},
    "kernel_shap": {"kernel_shap.n_samples": 8, "kernel_shap.n_segments": 8},
    "xrai(saliency)": {"xrai.algorithm": "fast"},
}
PATH_METHODS = {"ig:black": 2, "smoothgrad(ig:black)": 2, "blur_ig": 2, "guided_ig": 2, "agi": 2, "uni": 2}
TESTS = Path(__file__).parent
_BUILT: dict = {}


def _explainer(spec: str) -> str:
    return re.match(r"[A-Za-z_]\w*", spec).group(0)


def _registered_explainers() -> set[str]:
    """Every explainer but those the test modules register (tiny_plugin's failing ones)."""
    def from_tests(p):
        try:
            return Path(inspect.getsourcefile(p.obj)).resolve().is_relative_to(TESTS.resolve())
        except TypeError:
            return False

    return {p.name for p in uni_lab.list_plugins("explainer") if not from_tests(p)}


def test_every_registered_explainer_is_in_the_grid():
    missing = _registered_explainers() - {_explainer(spec) for spec in SETTINGS}
    assert not missing, f"explainers with no entry in SETTINGS, so never run on the backbones: {sorted(missing)}"


def tiny(arch: str) -> nn.Module:
    """``arch``'s torchvision class with a few channels and one block per stage, for 16-px inputs."""
    from torchvision.models import convnext, efficientnet, resnet, swin_transformer, vgg, vision_transformer

    if arch == "resnet18":
        return resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1], num_classes=CLASSES)
    if arch == "efficientnet_v2_s":
        blocks = [efficientnet.FusedMBConvConfig(1, 3, 1, 8, 8, 1), efficientnet.MBConvConfig(4, 3, 2, 8, 16, 1)]
        return efficientnet.EfficientNet(blocks, dropout=0.0, num_classes=CLASSES, last_channel=32)
    if arch == "convnext_tiny":
        stages = [convnext.CNBlockConfig(8, 16, 1), convnext.CNBlockConfig(16, None, 1)]
        return convnext.ConvNeXt(stages, num_classes=CLASSES)
    if arch == "vgg16_bn":
        net = vgg.VGG(vgg.make_layers([8, "M", 16, "M"], batch_norm=True), num_classes=CLASSES)
        # VGG's head is written for 512 channels; the tiny one keeps its Linear-ReLU-Dropout shape
        net.classifier = nn.Sequential(nn.Linear(16 * 7 * 7, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, CLASSES))
        return net
    if arch == "vit_b_16":
        return vision_transformer.VisionTransformer(TINY_SIZE, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16,
                                                    mlp_dim=32, num_classes=CLASSES)
    return swin_transformer.SwinTransformer([4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=[2, 2],
                                            num_classes=CLASSES)


def build(arch: str, real: bool) -> uni_lab.Classifier:
    key = (arch, real)
    if key not in _BUILT:
        torch.manual_seed(0)
        size = SIZES[arch] if real else TINY_SIZE
        if real and arch != "vit_b_16":
            clf = uni_lab.create_model(arch, weights="random", num_classes=CLASSES, input_size=(size, size))
        else:
            import torchvision

            # torchvision fixes ViT's input size at construction
            net = torchvision.models.vit_b_16(weights=None, image_size=size, num_classes=CLASSES) if real else tiny(arch)
            if arch == "vit_b_16":  # torchvision starts ViT's head at zero, which makes every logit and gradient zero
                nn.init.normal_(net.heads.head.weight, std=0.02)
            clf = uni_lab.wrap(net, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(size, size), name=arch)
        _BUILT.clear()  # one model in memory at a time
        _BUILT[key] = clf
    return _BUILT[key]


def run_method(arch: str, spec: str, real: bool = False):
    clf = build(arch, real)
    size = clf.input_size[0]
    # smooth images (a 4 × 4 grid of random colours, upsampled): pixel noise has no superpixels for LIME to find
    grid = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    x = nn.functional.interpolate(grid, size=(size, size), mode="bilinear")
    sets = dict(SETTINGS[spec])
    name = _explainer(spec)
    if "unsupported" in uni_lab.get("explainer", name).params and arch in WITHOUT_RULES:
        with pytest.raises(InputError, match=WITHOUT_RULES[arch]):
            uni_lab.explain(spec, clf, x, seeds=torch.tensor([1, 2]), sets=sets)
        sets[f"{name}.unsupported"] = "gradient"
    exp = uni_lab.explain(spec, clf, x, seeds=torch.tensor([1, 2]), sets=sets)
    assert exp.attribution.shape == x.shape, (arch, spec)
    assert torch.isfinite(exp.attribution).all(), (arch, spec)
    assert exp.attribution.abs().sum() > 0, f"{spec} on {arch}: an all-zero map"
    if spec in PATH_METHODS:
        assert exp.trace["prob"].shape == (2, PATH_METHODS[spec] + 1), (arch, spec)
        assert torch.isfinite(exp.completeness_error).all(), (arch, spec)
        assert torch.allclose(exp.trace["alpha"][:, -1], torch.ones(2)), (arch, spec)
    return exp


GRID = [(arch, spec) for arch in ARCHS for spec in SETTINGS]


@pytest.mark.parametrize("arch,spec", GRID)
def test_method_runs_on_tiny_architecture(arch, spec):
    run_method(arch, spec)


@pytest.mark.slow
@pytest.mark.parametrize("arch,spec", GRID)
def test_method_runs_on_architecture_full_size(arch, spec):
    run_method(arch, spec, real=True)
