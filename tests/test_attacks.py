"""Attacks and corruptions: the label survives, the attack does damage the control does not, seeds hold."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import uni_lab
from conftest import make_data
from uni_lab.engine import score_and_grad
from uni_lab.explanation import Explanation
from uni_lab.plugins.attacks import fgsm_attribution, random_noise, softplus_copy
from uni_lab.plugins.corruptions import FAMILIES, corrupt
from uni_lab.plugins.metric_robustness import pixel_map, topk_intersection

EPS = 8 / 255
K = 32  # of 256 pixels, the share Ghorbani et al.'s k = 1000 is of a 224×224 image, scaled up for 16×16


def _gradients(model, x, target):
    return score_and_grad(model, x, target, "logit")[0]


@pytest.fixture(scope="module")
def batch(tiny_model):
    x, _ = make_data(n=16, seed=3)
    target = tiny_model(x).argmax(-1)
    return x, target, torch.arange(16) + 100


@pytest.mark.parametrize("iterations", [1, 5])
def test_fgsm_keeps_the_label_and_lowers_topk_intersection_of_plain_gradients(tiny_model, batch, iterations):
    """Plain gradients of a small trained ReLU network: the attack moves the top-k pixels away
    (lower intersection than the same-budget noise control) and never changes the label."""
    x, target, seeds = batch
    grads = _gradients(tiny_model, x, target)
    exp = Explanation(grads)  # no baseline: the attack's surrogate is the gradient itself
    adv = fgsm_attribution(tiny_model, x, target, seeds, exp, k=K, iterations=iterations, output="logit")
    noisy = random_noise(tiny_model, x, target, seeds)
    with torch.no_grad():
        assert torch.equal(tiny_model(adv).argmax(-1), target)
        assert torch.equal(tiny_model(noisy).argmax(-1), target)
    linf = (adv - x).abs().flatten(1).max(1).values
    assert (linf <= EPS + 1e-6).all() and (adv >= 0).all() and (adv <= 1).all()
    assert (linf > 0).float().mean() >= 0.5, "most candidates should keep the label and be accepted"
    ref = pixel_map(grads)
    topk_attack = topk_intersection(ref, pixel_map(_gradients(tiny_model, adv, target)), K)
    topk_noise = topk_intersection(ref, pixel_map(_gradients(tiny_model, noisy, target)), K)
    # measured here: 0.88 (one step) and 0.86 (5 steps) against 0.96 for the noise control; a
    # piecewise-linear net only changes its gradient where ReLUs switch, so 8/255 moves it little
    assert topk_attack.mean() < topk_noise.mean(), (topk_attack.mean(), topk_noise.mean())
    assert (topk_attack < topk_noise).float().mean() >= 0.75, (topk_attack, topk_noise)


def test_a_candidate_that_flips_the_label_is_rejected(tiny_model, batch):
    x, target, seeds = batch
    exp = Explanation(_gradients(tiny_model, x, target))
    adv = fgsm_attribution(tiny_model, x, target, seeds, exp, eps=0.6, k=K, output="logit")  # far too large
    with torch.no_grad():
        assert torch.equal(tiny_model(adv).argmax(-1), target)
    rejected = (adv == x).flatten(1).all(1)
    assert rejected.any(), "ε = 0.6 should flip some labels, and those images must come back unchanged"


def test_fgsm_with_a_baseline_attacks_through_integrated_gradients(tiny_model, batch):
    x, target, seeds = batch
    ig = uni_lab.explain("ig:black", tiny_model, x, target, steps=8, output="logit")
    adv = fgsm_attribution(tiny_model, x, target, seeds, ig, k=K, surrogate_steps=4, output="logit")
    with torch.no_grad():
        assert torch.equal(tiny_model(adv).argmax(-1), target)
    assert ((adv - x).abs().flatten(1).max(1).values <= EPS + 1e-6).all()


def test_softplus_copy_has_curvature_where_relu_has_none(tiny_model, batch):
    """The reason for the copy: the input-Hessian of a ReLU net is zero almost everywhere."""
    x, target, _ = batch
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    smooth = softplus_copy(tiny_model, beta=10.0)
    assert not any(type(m) is nn.ReLU for m in smooth.modules())
    assert sum(type(m) is nn.ReLU for m in tiny_model.modules()) == 2  # the original keeps its ReLUs
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, before[k])
    with torch.no_grad():
        assert (smooth(x).argmax(-1) == target).float().mean() > 0.8  # a close copy, not another model

    def hvp_norm(model):
        xx = x[:2].clone().requires_grad_(True)
        g = torch.autograd.grad(model(xx).gather(1, target[:2, None]).sum(), xx, create_graph=True)[0]
        (h,) = torch.autograd.grad(g.square().sum(), xx, allow_unused=True)
        return 0.0 if h is None else float(h.norm())

    assert hvp_norm(tiny_model) == 0.0
    assert hvp_norm(smooth) > 0.0


def test_random_noise_is_seeded_per_image_and_within_budget(tiny_model, batch):
    x, target, seeds = batch
    a = random_noise(tiny_model, x, target, seeds)
    b = random_noise(tiny_model, x[3:5], target[3:5], seeds[3:5])
    torch.testing.assert_close(a[3:5], b)
    assert ((a - x).abs().max() <= EPS + 1e-6)
    assert not torch.equal(a, random_noise(tiny_model, x, target, seeds + 1))


# --- ImageNet-C corruptions ------------------------------------------------------------------------

ALL = [n for names in FAMILIES.values() for n in names]


def test_the_six_corruptions_are_registered_with_severity():
    for name in ALL:
        plugin = uni_lab.get("attack", name)
        assert "severity" in plugin.params
    assert "severity" not in uni_lab.get("attack", "fgsm_attribution").params


@pytest.mark.parametrize("name", ALL)
def test_corruption_is_the_maintained_implementation_seeded_and_grows_with_severity(name):
    from corrupt_tta import corrupt as reference

    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    seeds = torch.tensor([5, 6, 7])
    out = {s: corrupt(x, name, s, seeds) for s in (1, 3, 5)}
    for y in out.values():
        assert y.shape == x.shape and y.dtype == x.dtype and (y >= 0).all() and (y <= 1).all()
    torch.testing.assert_close(corrupt(x[1:2], name, 3, seeds[1:2]), out[3][1:2])  # batch-independent
    state = np.random.get_state()
    corrupt(x, name, 2, seeds)
    assert np.array_equal(np.random.get_state()[1], state[1]), "the global NumPy state must be restored"
    dist = [float((out[s] - x).abs().mean()) for s in (1, 3, 5)]
    if name != "saturate":  # ImageNet-C's saturate scales saturation by 0.3, 0.1, 2, 5, 20: not monotone in distance
        assert dist[0] < dist[1] < dist[2], dist
    # the same pixels as calling corrupt-tta directly with the same seed
    from uni_lab.plugins.corruptions import _numpy_seed
    import zlib

    img = x[0].permute(1, 2, 0).numpy().astype(np.float32) * 255
    with _numpy_seed(5 + zlib.crc32(f"{name}:3".encode())):
        direct = reference(img, severity=3, corruption_name=name) / 255.0
    np.testing.assert_allclose(out[3][0].permute(1, 2, 0).numpy(), np.clip(direct, 0, 1), atol=1e-5)


def test_corruption_severity_out_of_range_is_a_clear_error():
    with pytest.raises(uni_lab.InputError, match="severity"):
        corrupt(torch.rand(1, 3, 8, 8), "brightness", 6)


def test_backtracking_halves_a_rejected_step_instead_of_giving_up(tiny_model, batch):
    x, target, seeds = batch
    exp = Explanation(_gradients(tiny_model, x, target))
    plain = fgsm_attribution(tiny_model, x, target, seeds, exp, eps=0.6, k=K, output="logit")
    halved = fgsm_attribution(tiny_model, x, target, seeds, exp, eps=0.6, k=K, output="logit", backtrack=4)
    with torch.no_grad():
        assert torch.equal(tiny_model(halved).argmax(-1), target)
    moved = lambda a: (a - x).abs().flatten(1).max(1).values > 0  # noqa: E731
    assert moved(halved).sum() > moved(plain).sum()
    linf = (halved - x).abs().flatten(1).max(1).values
    assert (linf <= 0.6 + 1e-6).all()
    # an image accepted at the full step is unchanged by backtracking
    full = moved(plain)
    torch.testing.assert_close(halved[full], plain[full])
