"""uni_lab methods inside Captum (attribution classes) and Quantus (explain_func), with the real libraries."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import uni_lab
from uni_lab.captum import IG, UNI, MethodAttribution, attribution_class


def net32(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5)).eval()


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(1)
    x = torch.rand(3, 3, 32, 32)
    net = net32()
    with torch.no_grad():
        t = net(x).argmax(-1)
    return net, x, t


def test_ig_bridge_is_captums_right_riemann_ig_and_leaves_the_model_alone(setup):
    from captum.attr import IntegratedGradients

    net, x, t = setup
    before = [p.clone() for p in net.state_dict().values()]
    ours = IG(net).attribute(x, target=t, n_steps=8)
    ref = IntegratedGradients(net).attribute(x, baselines=0, target=t, n_steps=8, method="riemann_right")
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)
    (as_tuple,) = IG(net).attribute((x,), target=t, n_steps=8)
    torch.testing.assert_close(as_tuple, ours)
    assert all(torch.equal(a, b) for a, b in zip(before, net.state_dict().values()))
    # a plain function works for methods that do not touch weights
    torch.testing.assert_close(IG(lambda z: net(z)).attribute(x, target=t, n_steps=8), ours)


def test_noise_tunnel_wraps_uni(setup):
    from captum.attr import NoiseTunnel

    net, x, t = setup
    uni = UNI(net)
    plain = uni.attribute(x, target=t, n_steps=4)
    assert plain.shape == x.shape and torch.isfinite(plain).all()
    torch.manual_seed(0)
    tunnel = NoiseTunnel(uni).attribute(x, nt_type="smoothgrad", nt_samples=3, stdevs=0.05, target=t, n_steps=4)
    # the tunnel's noise drawn again (one draw for the image-major expanded batch), each copy explained alone
    torch.manual_seed(0)
    noisy = x.repeat_interleave(3, dim=0) + torch.normal(0, torch.full((9, 3, 32, 32), 0.05))
    each = torch.cat([uni.attribute(noisy[i:i + 1], target=t[i // 3:i // 3 + 1], n_steps=4) for i in range(9)])
    torch.testing.assert_close(tunnel, each.view(3, 3, 3, 32, 32).mean(1), rtol=1e-3, atol=1e-6)
    assert not torch.allclose(tunnel, plain)


def test_captum_metrics_take_the_bridge(setup):
    from captum.metrics import infidelity, sensitivity_max

    net, x, t = setup
    ig = IG(net)
    sens = sensitivity_max(lambda inp, target: ig.attribute(inp, target=target, n_steps=4), x, target=t,
                           n_perturb_samples=3)
    assert sens.shape == (3,) and (sens > 0).all()
    a = ig.attribute(x, target=t, n_steps=4)
    infd = infidelity(net, lambda inp: (lambda e: (e, inp - e))(0.01 * torch.randn_like(inp)), x, a, target=t,
                      n_perturb_samples=4)
    assert infd.shape == (3,) and torch.isfinite(infd).all()


def test_attribution_class_for_any_path_method_and_seeded_random_parts(setup):
    net, x, t = setup
    blur = attribution_class("blur_ig")(net)
    assert type(blur).__name__ == "BlurIg" and blur.spec == "blur_ig"
    assert torch.isfinite(blur.attribute(x, target=t, n_steps=4)).all()
    sg = MethodAttribution(net, "smoothgrad", samples=4)
    a, b = sg.attribute(x, target=t), sg.attribute(x, target=t)
    assert torch.equal(a, b)  # seeded from the pixels: the same images get the same noise
    torch.testing.assert_close(sg.attribute(x[1:], target=t[1:]), a[1:])  # and whatever the batch
    assert not torch.equal(MethodAttribution(net, "smoothgrad", samples=4, seed=1).attribute(x, target=t), a)
    with pytest.raises(uni_lab.InputError, match="tuple of 2"):
        blur.attribute((x, x), target=t)


def test_quantus_scores_any_uni_lab_method_through_explain_func(setup):
    import quantus

    from uni_lab.quantus_bridge import explain_func

    net, x, t = setup
    clf = uni_lab.wrap(net, mean=(0, 0, 0), std=(1, 1, 1))
    a = explain_func(clf, x.numpy(), t.numpy(), method="ig:black", steps=4)  # the raw output, as Quantus scores it
    torch.testing.assert_close(torch.from_numpy(a), IG(net).attribute(x, target=t, n_steps=4), rtol=1e-5, atol=1e-8)
    prob = explain_func(clf, x.numpy(), t.numpy(), method="ig:black", steps=4, softmax=True)
    torch.testing.assert_close(torch.from_numpy(prob), IG(net).attribute(x, target=t, n_steps=4, output="prob"),
                               rtol=1e-5, atol=1e-8)
    scores = quantus.MaxSensitivity(nr_samples=2, disable_warnings=True)(
        model=clf, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=None, explain_func=explain_func,
        explain_func_kwargs={"method": "uni", "steps": 4}, device="cpu")
    assert len(scores) == 3 and np.isfinite(scores).all()
