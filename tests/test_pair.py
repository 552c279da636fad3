"""Guided IG and BlurIG against PAIR's ``saliency`` (0.2.1) on the real model, at PAIR's own defaults.

EfficientNet-Lite0 with its real weights, one photograph at 64², the fast view off (PAIR's
call function below runs the model as given). PAIR is called directly, with a call function
that returns ``∇_x p_c`` in pixel space, HWC. With ``rule="left"`` (Guided IG) and
``rule="right", blur="pair", derivative="pair"`` (BlurIG) the maps must agree to 1e-4
relative L2 (measured: 6e-7 and 4e-8). BlurIG is compared with ``internal_batch_size=1``
because PAIR evaluates one point per call: with the default passes of up to 64 points the
float32 gradients come from other convolution kernels, and the maps then differ by 3e-5
(ReLU6 kinks turning rounding into gradient changes), not by the method.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from torch import nn

import uni_lab
from uni_lab.data import load_images
from uni_lab.engine import score_and_grad, straight_path
from uni_lab.errors import InputError
from uni_lab.ops import gaussian_blur

from test_methods import _NumpyCompat

SIZE = 64
MATCH = 1e-4


@pytest.fixture(autouse=True)
def no_fast_view(monkeypatch):
    monkeypatch.setenv("UNI_LAB_FAST_VIEW", "0")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """PAIR's calls are one-image passes: on a shared 2-core machine two threads wait on each
    other there (1.5 s a pass measured, against 0.02 s with one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def photo(real_model):
    x = load_images(["chelsea"], size=(SIZE, SIZE))[0].pixels.unsqueeze(0)
    with torch.no_grad():
        return x, real_model(x).argmax(-1)


def pair_defaults(method) -> dict:
    return {k: p.default for k, p in inspect.signature(method.GetMask).parameters.items()
            if p.default is not inspect.Parameter.empty}


def pair_call(model, target: int):
    """PAIR's call_model_function: ``∇_x p_c`` for a batch of HWC float64 images, in pixel space."""
    import saliency.core as sal

    def call(xb, call_model_args=None, expected_keys=None):
        z = torch.from_numpy(np.asarray(xb)).permute(0, 3, 1, 2).float().contiguous().requires_grad_(True)
        (g,) = torch.autograd.grad(model(z).softmax(-1)[:, target].sum(), z)
        return {sal.base.INPUT_OUTPUT_GRADIENTS: g.permute(0, 2, 3, 1).double().numpy()}

    return call


def hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).double().numpy()


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_guided_ig_left_rule_reproduces_pair(real_model, photo, monkeypatch):
    import saliency.core as sal
    from saliency.core import guided_ig as pair_gig

    monkeypatch.setattr(pair_gig, "np", _NumpyCompat("numpy"))
    x, t = photo
    d = pair_defaults(sal.GuidedIG)  # x_steps 200, fraction 0.25, max_dist 0.02, black baseline
    ref = sal.GuidedIG().GetMask(hwc(x[0]), pair_call(real_model, int(t)))
    ours = uni_lab.explain("guided_ig", real_model, x, t, steps=d["x_steps"], fraction=d["fraction"],
                           max_dist=d["max_dist"], rule="left")
    assert rel_l2(hwc(ours.attribution[0]), ref) <= MATCH


def test_blur_ig_pair_settings_reproduce_pair(real_model, photo):
    import saliency.core as sal

    x, t = photo
    d = pair_defaults(sal.BlurIG)  # max_sigma 50, steps 100, grad_step 0.01, sqrt False, batch_size 1
    assert d["sqrt"] is False and d["batch_size"] == 1  # our path is linear in σ; one point per call
    ref = sal.BlurIG().GetMask(hwc(x[0]), pair_call(real_model, int(t)))
    ours = uni_lab.explain("blur_ig", real_model, x, t, sigma_max=float(d["max_sigma"]), steps=d["steps"],
                           grad_step=d["grad_step"], rule="right", blur="pair", derivative="pair",
                           internal_batch_size=1)
    assert rel_l2(hwc(ours.attribution[0]), ref) <= MATCH


@pytest.mark.parametrize("sigma", [0.01, 0.5, 0.51, 3.3, 50.0, 50.01])
def test_pair_blur_is_scipys_gaussian_filter(sigma):
    from scipy import ndimage

    img = np.random.default_rng(0).random((40, 48, 3))
    ref = ndimage.gaussian_filter(img, [sigma, sigma, 0], mode="constant")
    x = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0)
    ours = gaussian_blur(x, sigma, padding="zeros", truncate=4.0, rounding="nearest")[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - ref).max() <= 1e-12 * np.abs(ref).max()


def test_right_rule_is_the_engines_right_sum_bit_for_bit(real_model, photo):
    x, t = photo
    steps = 8
    pts = straight_path(x, torch.zeros_like(x), torch.linspace(0, 1, steps + 1))
    g, _, _ = score_and_grad(real_model, pts[1:].flatten(0, 1), t.repeat(steps))
    expected = (g.view_as(pts[1:]) * (pts[1:] - pts[:-1])).sum(0)
    default = uni_lab.explain("ig", real_model, x, t, steps=steps).attribution
    right = uni_lab.explain("ig", real_model, x, t, steps=steps, rule="right").attribution
    assert torch.equal(default, expected) and torch.equal(right, expected)


def test_left_rule_ig_on_a_linear_model_is_the_closed_form():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 5))
    model = uni_lab.wrap(net, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=(6, 6), name="linear")
    x, t, steps = torch.rand(2, 3, 6, 6), torch.tensor([1, 3]), 7
    w, b = net[1].weight.double(), net[1].bias.double()
    diff = x.double().flatten(1)

    def grad_prob(z):  # ∇_z softmax(Wz + b)_c = p_c (W_c − Σ_j p_j W_j)
        p = (z @ w.T + b).softmax(-1)
        return p.gather(1, t[:, None]) * (w[t] - p @ w)

    closed = {"left": sum(grad_prob(k / steps * diff) for k in range(steps)) * diff / steps,
              "right": sum(grad_prob(k / steps * diff) for k in range(1, steps + 1)) * diff / steps}
    for rule, want in closed.items():
        exp = uni_lab.explain("ig", model, x, t, steps=steps, rule=rule)
        assert torch.allclose(exp.attribution.double().flatten(1), want, rtol=1e-5, atol=1e-8)
    assert not torch.allclose(closed["left"], closed["right"], rtol=1e-3)
    left = uni_lab.explain("ig", model, x, t, steps=steps, rule="left")
    assert torch.isfinite(left.trace["grad_norm"][:, 0]).all()  # the left sum evaluates ∇F at the baseline
    # a linear logit has one gradient: both sums are the exact W_c ⊙ (x − 0)
    exact = (w[t] * diff).float().view_as(x)
    for rule in ("left", "right"):
        assert torch.allclose(uni_lab.explain("ig", model, x, t, steps=steps, rule=rule, output="logit").attribution,
                              exact, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method,params,message", [
    ("ig", {"rule": "middle"}, "rule must be one of"),
    ("guided_ig", {"rule": "trapezoid"}, "rule must be one of"),
    ("blur_ig", {"rule": "Left"}, "rule must be one of"),
    ("blur_ig", {"blur": "zeros4"}, r"blur_ig\.blur must be one of \('reflect3', 'pair'\)"),
    ("blur_ig", {"derivative": "central"}, "derivative must be one of"),
    ("blur_ig", {"grad_step": 0.0}, "grad_step must be > 0"),
])
def test_bad_rule_and_blur_settings_are_one_clear_line(method, params, message):
    model = uni_lab.wrap(nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)), mean=(0.0,) * 3, std=(1.0,) * 3,
                         input_size=(4, 4))
    with pytest.raises(InputError, match=message) as err:
        uni_lab.explain(method, model, torch.rand(1, 3, 4, 4), torch.tensor([0]), **params)
    assert "\n" not in str(err.value)
