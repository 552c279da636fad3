"""The explainers of issue 14 against the libraries they come from, called directly at the same
settings (Captum, PAIR's saliency), on a 32 px CNN and two photographs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import uni_lab
from uni_lab.captum import Scores, image_seeds, seeded
from uni_lab.errors import InputError

SEEDS = torch.tensor([11, 12])


def small_cnn(seed: int = 0, relu=nn.ReLU) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), relu(), nn.Conv2d(8, 8, 3, padding=1, stride=2), relu(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


@pytest.fixture(scope="module")
def cnn():
    return uni_lab.wrap(small_cnn(), input_size=(32, 32), name="cnn32")


@pytest.fixture(scope="module")
def photos():
    from skimage import data
    from skimage.transform import resize

    imgs = [resize(getattr(data, n)(), (32, 32), anti_aliasing=True) for n in ("chelsea", "coffee")]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().contiguous()


def _target(model, x):
    with torch.no_grad():
        return model(x).argmax(-1)


def _untouched(model, before):
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values()))
    assert not any(m._forward_hooks or m._backward_hooks or m._forward_pre_hooks for m in model.modules())


def test_occlusion_matches_captum_and_a_hand_computed_window(cnn, photos):
    from captum.attr import Occlusion

    t = _target(cnn, photos)
    exp = uni_lab.explain("occlusion", cnn, photos, target=t, window=8, stride=8)
    ref = Occlusion(Scores(cnn)).attribute(photos, sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8), baselines=0,
                                           target=t)
    torch.testing.assert_close(exp.attribution, ref, rtol=1e-4, atol=1e-6)
    # non-overlapping windows: a pixel's value is the drop from blacking out its window
    blacked = photos.clone()
    blacked[:, :, 8:16, 16:24] = 0
    with torch.no_grad():
        drop = Scores(cnn)(photos).gather(1, t.view(-1, 1)) - Scores(cnn)(blacked).gather(1, t.view(-1, 1))
    torch.testing.assert_close(exp.attribution[:, 0, 10, 20], drop.squeeze(1), rtol=1e-4, atol=1e-6)
    with pytest.raises(InputError, match="stride <= window"):
        uni_lab.explain("occlusion", cnn, photos, window=4, stride=8)


@pytest.mark.parametrize("name", ["lime", "kernel_shap"])
def test_lime_and_kernel_shap_match_captum_with_the_same_seeds_and_superpixels(cnn, photos, name):
    from captum._utils.models.linear_model import SkLearnLasso
    from captum.attr import KernelShap, Lime

    from uni_lab.plugins.lime_shap import superpixels

    t = _target(cnn, photos)
    exp = uni_lab.explain(name, cnn, photos, target=t, seeds=SEEDS, n_samples=64, n_segments=16)
    masks = superpixels(photos, 16, 10.0)
    lib = Lime(Scores(cnn), interpretable_model=SkLearnLasso(alpha=0.01)) if name == "lime" else KernelShap(Scores(cnn))
    for i, seed in enumerate(image_seeds(SEEDS, name, 2)):
        with seeded(seed):
            ref = lib.attribute(photos[i:i + 1], baselines=0, target=t[i:i + 1], n_samples=64,
                                feature_mask=masks[i:i + 1].expand(-1, 3, -1, -1))
        torch.testing.assert_close(exp.attribution[i:i + 1], ref.float(), rtol=1e-4, atol=1e-6)
    # a superpixel is one feature: one value over all its pixels and channels
    a = exp.attribution[0]
    for k in masks[0].unique():
        assert a[:, masks[0, 0] == k].unique().numel() == 1
    # independent of the batch: image 1 alone gets the map it got beside image 0
    alone = uni_lab.explain(name, cnn, photos[1:], target=t[1:], seeds=SEEDS[1:], n_samples=64, n_segments=16)
    assert torch.equal(alone.attribution, exp.attribution[1:])
    other = uni_lab.explain(name, cnn, photos, target=t, seeds=SEEDS + 1, n_samples=64, n_segments=16)
    if name == "kernel_shap":  # LIME's Lasso zeroes everything on this untrained net's small changes
        assert not torch.equal(other.attribution, exp.attribution)


def test_kernel_shap_is_exact_shapley_on_a_linear_model(photos):
    from uni_lab.plugins.lime_shap import superpixels

    torch.manual_seed(3)
    linear = uni_lab.wrap(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4)), mean=(0, 0, 0), std=(1, 1, 1),
                          input_size=(32, 32))
    t = torch.tensor([1, 2])
    exp = uni_lab.explain("kernel_shap", linear, photos, target=t, seeds=SEEDS, n_samples=200, n_segments=12,
                          output="logit")
    w = linear.net[1].weight.detach()[t].view(2, 3, 32, 32)
    masks = superpixels(photos, 12, 10.0)
    for i in range(2):  # the Shapley value of a superpixel of a linear model: Σ w_j x_j over it
        for k in masks[i].unique():
            region = masks[i, 0] == k
            phi = (w[i] * photos[i])[:, region].sum()
            value = exp.attribution[i][:, region]
            torch.testing.assert_close(value, torch.full_like(value, float(phi)), rtol=1e-3, atol=1e-4)


def test_slic_with_one_superpixel_is_refused(cnn):
    with pytest.raises(InputError, match="single superpixel"):
        uni_lab.explain("lime", cnn, torch.full((1, 3, 32, 32), 0.5), n_segments=2)


def test_gradient_shap_matches_captum_from_the_same_references(cnn, photos):
    from captum.attr import GradientShap

    from uni_lab.plugins.captum_shap import reference_set

    t = _target(cnn, photos)
    exp = uni_lab.explain("gradient_shap", cnn, photos, target=t, seeds=SEEDS, n_samples=16, stdevs=0.05)
    refs = reference_set("black,uniform", 4, photos, cnn, t, SEEDS)
    assert refs.shape == (2, 5, 3, 32, 32) and torch.equal(refs[:, 0], torch.zeros_like(photos))
    assert not torch.equal(refs[:, 1], refs[:, 2])  # the seeded baseline drawn four times
    for i, seed in enumerate(image_seeds(SEEDS, "gradient_shap", 2)):
        with seeded(seed):
            ref = GradientShap(Scores(cnn)).attribute(photos[i:i + 1].clone().requires_grad_(True), baselines=refs[i],
                                                      n_samples=16, stdevs=0.05, target=t[i:i + 1])
        torch.testing.assert_close(exp.attribution[i:i + 1], ref, rtol=1e-4, atol=1e-7)
    alone = uni_lab.explain("gradient_shap", cnn, photos[1:], target=t[1:], seeds=SEEDS[1:], n_samples=16, stdevs=0.05)
    assert torch.equal(alone.attribution, exp.attribution[1:])
    torch.testing.assert_close(exp.baseline, refs.mean(1))


def test_deeplift_shap_matches_captum_is_complete_and_leaves_the_model_alone(photos):
    from captum.attr import DeepLiftShap

    from uni_lab.plugins.captum_shap import reference_set

    net = small_cnn(seed=1)
    clf = uni_lab.wrap(net, input_size=(32, 32))
    before = [v.clone() for v in clf.state_dict().values()]
    t = _target(clf, photos)
    exp = uni_lab.explain("deeplift_shap", clf, photos, target=t, seeds=SEEDS, output="logit")
    refs = reference_set("black,uniform", 4, photos, clf, t, SEEDS)
    for i in range(2):
        ref = DeepLiftShap(uni_lab.wrap(small_cnn(seed=1))).attribute(photos[i:i + 1].clone().requires_grad_(True),
                                                                     baselines=refs[i], target=t[i:i + 1])
        torch.testing.assert_close(exp.attribution[i:i + 1], ref.detach(), rtol=1e-4, atol=1e-6)
    assert float(exp.completeness_error.max()) < 1e-4  # Σ A = F_c(x) − mean_j F_c(x'_j) for rescale on ReLU
    _untouched(clf, before)


def test_grad_cam_matches_captum_upsampled_and_finds_the_layer(cnn, photos):
    import timm
    import torchvision
    from captum.attr import LayerAttribution, LayerGradCam

    from uni_lab.plugins.grad_cam import auto_layer

    before = [v.clone() for v in cnn.state_dict().values()]
    t = _target(cnn, photos)
    exp = uni_lab.explain("grad_cam", cnn, photos, target=t)
    cam = LayerGradCam(Scores(cnn), cnn.net[3]).attribute(photos.clone().requires_grad_(True), target=t,
                                                          relu_attributions=True)
    ref = LayerAttribution.interpolate(cam.detach(), (32, 32), interpolate_mode="bilinear")
    torch.testing.assert_close(exp.attribution.sum(1, keepdim=True), ref, rtol=1e-4, atol=1e-7)
    assert torch.allclose(exp.attribution[:, 0], exp.attribution[:, 2])
    _untouched(cnn, before)
    by_name = uni_lab.explain("grad_cam", cnn, photos, target=t, layer="1")  # "net." prefix optional
    assert not torch.allclose(by_name.attribution, exp.attribution)
    with pytest.raises(InputError, match="no module 'nope'"):
        uni_lab.explain("grad_cam", cnn, photos, layer="nope")
    x = torch.rand(1, 3, 64, 64)
    assert auto_layer(cnn, photos) == "net.3"
    assert auto_layer(uni_lab.wrap(torchvision.models.resnet18()), x) == "net.layer4"
    assert auto_layer(uni_lab.wrap(torchvision.models.vgg11()), x) == "net.features"
    assert auto_layer(uni_lab.wrap(timm.create_model("efficientnet_lite0")), x) == "net.bn2"


@pytest.mark.parametrize("algorithm", ["full", "fast"])
def test_xrai_is_pairs_xrai_of_the_inner_map(cnn, photos, algorithm):
    from saliency.core import XRAI, XRAIParameters

    t = _target(cnn, photos)
    exp = uni_lab.explain("xrai(ig:black)", cnn, photos, target=t, algorithm=algorithm, **{"ig.steps": 8})
    base = uni_lab.explain("ig:black", cnn, photos, target=t, steps=8).attribution
    for i in range(2):
        ref = XRAI().GetMask(photos[i].permute(1, 2, 0).double().numpy(), None,
                             base_attribution=base[i].permute(1, 2, 0).double().numpy(),
                             extra_parameters=XRAIParameters(algorithm=algorithm))
        np.testing.assert_allclose(exp.attribution[i].sum(0).numpy(), ref, rtol=1e-5, atol=1e-7)
    spec = uni_lab.methods.resolve("xrai(ig:black)")
    assert spec.config()["inner"]["baseline"] == "black" and spec.config()["params"]["algorithm"] == "full"


def test_the_six_methods_land_in_a_store_with_their_parameters(tmp_path, cnn):
    import xarray as xr

    specs = ["xrai(ig:black)", "lime", "kernel_shap", "gradient_shap", "deeplift_shap", "occlusion", "grad_cam"]
    sets = ["lime.n_samples=32", "kernel_shap.n_samples=32", "gradient_shap.n_samples=4", "occlusion.window=8",
            "occlusion.stride=8", "lime.n_segments=16", "kernel_shap.n_segments=16"]
    res = uni_lab.run(models=cnn, images=["chelsea", "coffee"], methods=specs, steps=4, out=tmp_path / "s.zarr",
                      sets=sets, progress=False, seed_stability=False)
    ds = xr.open_zarr(res.path)
    assert bool(ds.done.all()) and np.isfinite(ds.attribution.values).all()
    cfg = ds.uni.config["methods"]
    assert cfg["lime"]["params"]["n_samples"] == 32 and cfg["kernel_shap"]["params"]["n_segments"] == 16
    assert cfg["gradient_shap"]["params"]["baselines"] == "black,uniform" and cfg["occlusion"]["params"]["window"] == 8
    assert cfg["xrai(ig:black)"]["inner"]["params"]["steps"] == 4 and cfg["grad_cam"]["params"]["layer"] == "auto"
    assert {s for s in specs if uni_lab.methods.resolve(s).has_random_part()} == {"lime", "kernel_shap",
                                                                                 "gradient_shap", "deeplift_shap"}
