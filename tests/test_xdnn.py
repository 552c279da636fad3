"""X-DNNs: on a bias-free ReLU network, input×gradient is black-baseline IG, exactly (logit)."""
from __future__ import annotations

import warnings

import pytest
import torch

import uni_lab
from uni_lab.errors import InputError
from uni_lab.xdnn import bias_free, non_homogeneous

from conftest import train_tiny


@pytest.fixture(scope="module")
def biasless():
    """Trained without biases, but behind a mean-subtracting normalisation (a shift in pixel space)."""
    return train_tiny(bias=False)


@pytest.fixture(scope="module")
def xdnn(biasless):
    # bias_free drops the normalisation's shift, the last bias left
    return bias_free(biasless)


@pytest.mark.parametrize("steps", [1, 7, 32])
def test_input_x_gradient_equals_black_ig_on_an_xdnn(xdnn, tiny_batch, steps):
    x = tiny_batch[0]
    t = xdnn(x).argmax(-1)
    ixg = uni_lab.explain("input_x_gradient", xdnn, x, t, output="logit")
    ig = uni_lab.explain("ig:black", xdnn, x, t, steps=steps, output="logit")
    # equal up to float32 rounding, whatever the number of steps: the gradient is the same at every α > 0
    assert torch.allclose(ixg.attribution, ig.attribution, rtol=1e-5, atol=1e-6 * float(ig.attribution.abs().max()))
    assert float(ixg.completeness_error.max()) < 1e-5  # and it sums to F_c(x) − F_c(0) = F_c(x)


def test_the_shift_of_the_normalisation_breaks_the_equality(biasless, tiny_batch):
    """Control: the same bias-free weights behind a mean-subtracting normalisation are not homogeneous."""
    model = biasless
    x = tiny_batch[0]
    t = model(x).argmax(-1)
    ixg = uni_lab.explain("input_x_gradient", model, x, t, output="logit").attribution
    ig = uni_lab.explain("ig:black", model, x, t, steps=32, output="logit").attribution
    assert float((ixg - ig).norm() / ig.norm()) > 0.05


@pytest.mark.parametrize("arch", ["resnet18", pytest.param("vgg16_bn", marks=pytest.mark.slow)])
def test_bias_free_torchvision_relu_nets_are_homogeneous(arch):
    torch.manual_seed(0)
    clf = uni_lab.create_model(arch, weights="random", num_classes=10)
    with torch.no_grad():  # give every bias and running mean something to remove
        for name, p in clf.net.named_parameters():
            if name.endswith("bias"):
                p.normal_()
        for m in clf.net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ReLU net must come out homogeneous, without a warning
        free = bias_free(clf)
    assert all(torch.equal(before[k], v) for k, v in clf.state_dict().items())  # the original is untouched
    assert float(clf.mean.abs().sum()) > 0 and float(free.mean.abs().sum()) == 0
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(free(2.5 * x), 2.5 * free(x), rtol=1e-4, atol=1e-5 * float(free(x).abs().max()))
        assert not torch.allclose(clf(2.5 * x), 2.5 * clf(x), rtol=1e-2)
    t = free(x).argmax(-1)
    ixg = uni_lab.explain("input_x_gradient", free, x, t, output="logit").attribution
    ig = uni_lab.explain("ig:black", free, x, t, steps=4, output="logit").attribution
    assert torch.allclose(ixg, ig, rtol=1e-4, atol=1e-5 * float(ig.abs().max()))


def test_non_homogeneous_architectures_are_named():
    lite = uni_lab.create_model("efficientnet_lite0", weights="random")
    with pytest.warns(UserWarning, match=r"ReLU6"):
        bias_free(lite)
    with pytest.raises(InputError, match="not positively homogeneous"):
        bias_free(lite, strict=True)
    import torchvision

    vit = torchvision.models.vit_b_16(image_size=32, num_classes=10)
    found = non_homogeneous(vit)
    assert {"GELU", "LayerNorm", "MultiheadAttention"} <= set(found)
    assert any(k.startswith("parameter") for k in found)  # the position embedding and class token
