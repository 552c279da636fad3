"""Captum's calling conventions on uni_lab's Captum classes, checked against Captum's own IntegratedGradients,
and the Quantus bridge under quantus.evaluate's display names."""
from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, NoiseTunnel
from torch import nn

import uni_lab
import uni_lab.captum
import uni_lab.quantus_bridge
from uni_lab.captum import IG, UNI, attribution_class


class Counting(nn.Module):
    """A tiny classifier that counts its forward calls: a refused call must not have computed anything."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, stride=2), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 5))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


@pytest.fixture(scope="module")
def tiny():
    net = Counting().eval()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 16, 16, generator=g)
    with torch.no_grad():
        t = net(x).argmax(-1)
    return net, x, t


def captum_ig(net, x, **kw):
    return IntegratedGradients(net).attribute(x, return_convergence_delta=True, **kw)


def baselines_of(x):
    """Each form Captum takes: a number, a tensor with first dimension 1, one per image."""
    g = torch.Generator().manual_seed(5)
    return {"number": 0.25, "one": torch.rand(1, *x.shape[1:], generator=g),
            "per_image": 0.3 * torch.rand(x.shape, generator=g)}


@pytest.mark.parametrize("method", ["riemann_right", "riemann_left"])
def test_ig_is_captums_ig_on_every_baseline_form_with_its_delta(tiny, method):
    net, x, t = tiny
    for label, b in baselines_of(x).items():
        ours, delta = IG(net).attribute(x, baselines=b, target=t, n_steps=6, method=method, internal_batch_size=5,
                                        return_convergence_delta=True)
        ref, ref_delta = captum_ig(net, x, baselines=b, target=t, n_steps=6, method=method)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6, msg=label)
        torch.testing.assert_close(delta, ref_delta, rtol=1e-4, atol=1e-5, msg=label)
        assert delta.shape == (3,) and delta.abs().max() > 1e-4  # 6 steps leave a gap: the comparison has teeth
    # tuples in, tuples out, as Captum's
    (a,), d = IG(net).attribute((x,), baselines=(0.25,), target=t, n_steps=6, method=method,
                                return_convergence_delta=True)
    (r,), rd = captum_ig(net, (x,), baselines=(0.25,), target=t, n_steps=6, method=method)
    torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(d, rd, rtol=1e-4, atol=1e-5)


def test_uni_from_a_tensor_baseline_is_captums_ig_and_its_own_delta_has_captums_sign(tiny):
    net, x, t = tiny
    b = baselines_of(x)["per_image"]
    ours, delta = UNI(net).attribute(x, baselines=b, target=t, n_steps=6, return_convergence_delta=True)
    ref, ref_delta = captum_ig(net, x, baselines=b, target=t, n_steps=6, method="riemann_right")
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(delta, ref_delta, rtol=1e-4, atol=1e-5)
    # from its own unlearned baseline: Σ A − (F(x) − F(x')), x' the baseline uni_lab reports
    a, d = UNI(net).attribute(x, target=t, n_steps=6, return_convergence_delta=True)
    exp = uni_lab.explain("uni", uni_lab.wrap(net, mean=(0, 0, 0), std=(1, 1, 1)), x, target=t, steps=6,
                          output="logit", seeds=uni_lab.seeding.content_seeds(x, 0))
    torch.testing.assert_close(a, exp.attribution)
    with torch.no_grad():
        change = net(x).gather(1, t.view(-1, 1)).squeeze(1) - net(exp.baseline).gather(1, t.view(-1, 1)).squeeze(1)
    torch.testing.assert_close(d, a.flatten(1).sum(1) - change, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d.abs() / change.abs(), exp.completeness_error, rtol=1e-3, atol=1e-6)


def test_real_lite0_ig_matches_captum_with_the_view_off_and_stays_close_with_it_on(real_model):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    b = 0.2 * torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        t = real_model(x).argmax(-1)
    for method in ("riemann_right", "riemann_left"):
        ref, ref_delta = captum_ig(real_model, x, baselines=b, target=t, n_steps=4, method=method)
        exact, delta = IG(real_model, fast_view=False).attribute(x, baselines=b, target=t, n_steps=4, method=method,
                                                                 return_convergence_delta=True)
        torch.testing.assert_close(exact, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))
        torch.testing.assert_close(delta, ref_delta, rtol=1e-4, atol=1e-4)
        # the default folds batch norm: a few path points of the ReLU6 network cross a kink
        fast = IG(real_model).attribute(x, baselines=b, target=t, n_steps=4, method=method)
        assert float((fast - ref).norm() / ref.norm()) < 0.01


def test_method_parameters_as_keywords_on_the_class_or_the_call(tiny):
    net, x, t = tiny
    kw = dict(target=t, n_steps=4)
    by_route = UNI(net, sets={"uni.eps": 0.05}).attribute(x, **kw)
    torch.testing.assert_close(UNI(net, eps=0.05).attribute(x, **kw), by_route)
    torch.testing.assert_close(UNI(net).attribute(x, eps=0.05, **kw), by_route)
    assert not torch.allclose(UNI(net).attribute(x, **kw), by_route)  # eps reached the baseline
    # the call's keywords win over the class's
    torch.testing.assert_close(UNI(net, eps=0.2).attribute(x, eps=0.05, **kw), by_route)
    # a baseline plugin by name, its parameters as keywords; the same as the spec that names it
    blur = IG(net).attribute(x, baselines="blur", sigma=3.0, **kw)
    torch.testing.assert_close(blur, attribution_class("ig:blur")(net, sigma=3.0).attribute(x, **kw))
    xb = uni_lab.create("baseline", "blur", sigma=3.0)(x, net, t)
    ref, _ = captum_ig(net, x, baselines=xb, target=t, n_steps=4, method="riemann_right")
    torch.testing.assert_close(blur, ref, rtol=1e-4, atol=1e-6)
    # UNI's one Riemann rule is the right one; IG from its baseline takes the left one too
    torch.testing.assert_close(attribution_class("ig:uni")(net).attribute(x, method="riemann_right", **kw),
                               UNI(net).attribute(x, method="riemann_right", **kw))
    assert attribution_class("ig:uni")(net).attribute(x, method="riemann_left", **kw).shape == x.shape


def refused(net, call, error, *words):
    """``call`` fails with one line naming ``words``, before the network computed anything."""
    net.calls = 0
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message
    assert net.calls == 0, f"{net.calls} forward passes before refusing"


def test_bad_arguments_are_one_line_before_computing(tiny):
    net, x, t = tiny
    refused(net, lambda: UNI(net, epss=0.05), uni_lab.PluginError, "'epss'", "eps")
    refused(net, lambda: UNI(net, eps=-1.0), uni_lab.InputError, "eps", "> 0")
    refused(net, lambda: UNI(net).attribute(x, target=t, eps="big"), uni_lab.PluginError, "eps", "float")
    refused(net, lambda: UNI(net).attribute(x, target=t, method="riemann_trapezoid"), uni_lab.InputError,
            "riemann_trapezoid", "riemann_right", "riemann_left")
    refused(net, lambda: UNI(net).attribute(x, target=t, method="riemann_left"), uni_lab.InputError,
            "riemann_right only", "ig:uni")
    refused(net, lambda: IG(net).attribute(x, baseline=torch.zeros_like(x)), uni_lab.InputError, "baselines=")
    refused(net, lambda: IG(net).attribute(x, baselines=torch.zeros(2, 3, 16, 16)), uni_lab.InputError,
            "(2, 3, 16, 16)", "(3, 3, 16, 16)")
    refused(net, lambda: IG(net).attribute(x, baselines=float("nan")), uni_lab.InputError, "NaN")
    refused(net, lambda: IG(net).attribute(x, n_steps=0), uni_lab.InputError, "n_steps")
    refused(net, lambda: UNI(net).attribute(x, baselines=0.0, eps=0.1), uni_lab.InputError, "replaces", "eps")
    refused(net, lambda: UNI(net, restarts=2).attribute(x, return_convergence_delta=True), uni_lab.InputError,
            "convergence delta")
    refused(net, lambda: attribution_class("saliency")(net).attribute(x, n_steps=4), uni_lab.InputError, "n_steps")
    refused(net, lambda: attribution_class("blur_ig")(net).attribute(x, baselines=0.0), uni_lab.InputError,
            "takes no baseline")
    refused(net, lambda: IG(net).attribute(x, baselines="blur", sigmaa=1.0), uni_lab.PluginError, "'sigmaa'",
            "sigma")
    # a spec's own baseline and another by keyword: refused, not one of them silently
    refused(net, lambda: attribution_class("smoothgrad(ig:black)")(net).attribute(x, baseline="blur"),
            uni_lab.PluginError, "'black'", "'blur'")
    refused(net, lambda: IG(net).attribute(x, baseline="blur"), uni_lab.PluginError, "'black'", "'blur'")
    refused(net, lambda: uni_lab.quantus_bridge.explain_func(net, x.numpy(), t.numpy(), method="ig:black",
                                                             baseline="blur"), uni_lab.PluginError, "'black'", "'blur'")
    net.calls = 0
    with pytest.raises(uni_lab.InputError, match="out of range"):  # needs the class count: one forward, no more
        IG(net).attribute(x, target=9)
    assert net.calls == 1


def test_noise_tunnel_passes_baselines_and_deltas_through(tiny):
    net, x, t = tiny
    a, delta = NoiseTunnel(IG(net)).attribute(x, nt_type="smoothgrad", nt_samples=2, stdevs=0.05, baselines=0.0,
                                              target=t, n_steps=4, return_convergence_delta=True)
    assert a.shape == x.shape and delta.shape == (6,)


def test_quantus_evaluate_takes_the_bridge_under_any_display_name(tiny):
    import quantus

    from uni_lab.quantus_bridge import explain_func, explain_func_for

    net, x, t = tiny
    xs, ys = x.numpy(), t.numpy()
    metrics = {"Sparseness": quantus.Sparseness(disable_warnings=True),
               "MaxSensitivity": quantus.MaxSensitivity(nr_samples=2, disable_warnings=True)}
    results = quantus.evaluate(metrics=metrics, model=net, x_batch=xs, y_batch=ys,
                               xai_methods={"UNI (ε=0.05)": explain_func_for("uni", eps=0.05),
                                            "Integrated Gradients": explain_func_for("ig:black")},
                               explain_func_kwargs={"steps": 4})
    assert set(results) == {"UNI (ε=0.05)", "Integrated Gradients"}
    for name in results:
        for metric in metrics:  # evaluate prints a metric's failure and leaves it out
            assert np.isfinite(results[name][metric]).all() and len(results[name][metric]) == 3, (name, metric)
    # the bound keywords reach the method: eps is UNI's baseline's
    a = explain_func_for("uni", eps=0.05)(net, xs, ys, method="UNI (ε=0.05)", steps=4)
    np.testing.assert_allclose(a, UNI(net, eps=0.05).attribute(x, target=t, n_steps=4).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(explain_func(net, xs, ys, method="uni", eps=0.05, steps=4), a, rtol=1e-5, atol=1e-7)
    # the plain explain_func under a display name: one line saying what to write
    with pytest.raises(uni_lab.PluginError, match="explain_func_for") as info:
        quantus.evaluate(metrics=metrics, model=net, x_batch=xs, y_batch=ys, xai_methods={"UNI": explain_func},
                         explain_func_kwargs={})
    assert "\n" not in str(info.value)
    with pytest.raises(uni_lab.PluginError, match="'epss'"):
        explain_func_for("uni", epss=0.05)


@pytest.mark.parametrize("module", [uni_lab.captum, uni_lab.quantus_bridge])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, raise_on_error=False, verbose=False)
    assert result.attempted >= 5 and result.failed == 0, result
