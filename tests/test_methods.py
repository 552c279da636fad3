"""The method zoo against independent implementations: Captum and PAIR's ``saliency``.

Tolerances: methods that compute the same floating-point operations as the reference
(saliency, noise tunnels, Guided Backprop, DeepLIFT through the same Captum rules) must agree
to float32 rounding (1e-5 relative). Guided IG must walk PAIR's path to float64 rounding
(1e-12); its attribution differs from PAIR's by design (PAIR's left Riemann sum against the
engine's right sum), so it is compared with the right sum along PAIR's own points (1e-10).
BlurIG differs from PAIR by the path derivative (PAIR: its own forward difference in σ
times Δσ; the engine: the difference of consecutive path points), an O(Δσ) discretisation
gap that must shrink as the steps grow and be below 2% at 64 steps.
"""
from __future__ import annotations

import contextlib
import copy
import types
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import uni_lab
from uni_lab.errors import InputError
from uni_lab.plugins import rules as rules_module
from uni_lab.plugins import smoothgrad as smoothgrad_module
from uni_lab.plugins.guided_ig import guided_path

from conftest import TinyCNN

REL = 1e-5


def rel_err(a, b):
    return float((a - b).detach().norm() / b.detach().norm().clamp_min(1e-30))


@pytest.fixture(scope="module")
def batch(tiny_model, tiny_batch):
    x = tiny_batch[0]
    return x, tiny_model(x).argmax(-1).detach()


@pytest.fixture(scope="module")
def soft_model():
    """An untrained tiny CNN: unsaturated softmax, so probabilities and their gradients are informative."""
    torch.manual_seed(3)
    return uni_lab.wrap(TinyCNN(), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(16, 16), name="soft")


def with_softmax(model, output):
    return nn.Sequential(model, nn.Softmax(dim=-1)) if output == "prob" else model


@contextlib.contextmanager
def quiet():
    """Captum warns about the hooks it sets and inputs it marks as requiring gradients."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ---------------------------------------------------------------- Captum cross-checks


@pytest.mark.parametrize("output", ["prob", "logit"])
def test_saliency_and_input_x_gradient_match_captum(soft_model, tiny_batch, output):
    from captum.attr import InputXGradient, Saliency

    x = tiny_batch[0]
    t = soft_model(x).argmax(-1)
    ref = with_softmax(soft_model, output)
    ours = uni_lab.explain("saliency", soft_model, x, t, output=output).attribution
    theirs = Saliency(ref).attribute(x.clone().requires_grad_(True), target=t, abs=False)
    assert rel_err(ours, theirs) < REL
    ours = uni_lab.explain("input_x_gradient", soft_model, x, t, output=output).attribution
    theirs = InputXGradient(ref).attribute(x.clone().requires_grad_(True), target=t)
    assert rel_err(ours, theirs) < REL


@pytest.mark.parametrize("inner", ["saliency", "ig:black"])
def test_noise_tunnel_matches_captum_with_the_same_noise(soft_model, tiny_batch, monkeypatch, inner):
    """Captum draws its own noise; the test records it and hands the same noise to ours."""
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    x = tiny_batch[0][:2]
    t = soft_model(x).argmax(-1)
    n, steps = 4, 5
    seen = []

    class Recorder(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, z):
            seen.append(z.detach().clone())
            return self.m(z)

    rec = Recorder(soft_model)
    if inner == "saliency":
        base = Saliency(rec)
        extra = {"abs": False}
    else:
        base = IntegratedGradients(rec)
        extra = {"baselines": 0.0, "n_steps": steps, "method": "riemann_right"}
    theirs = NoiseTunnel(base).attribute(x.clone().requires_grad_(True), nt_type="smoothgrad", nt_samples=n,
                                         stdevs=0.1, target=t, **extra)
    # Captum stacks copies image-major (repeat_interleave); the last rows it evaluated are the
    # noisy inputs themselves (IG's α = 1 comes last)
    noisy = seen[-1][-n * x.shape[0]:].view(x.shape[0], n, *x.shape[1:])
    eps = (noisy - x.unsqueeze(1)).transpose(0, 1).contiguous()
    monkeypatch.setattr(smoothgrad_module, "noise", lambda x_, seeds, samples, level: eps)
    spec = "smoothgrad" if inner == "saliency" else f"smoothgrad({inner})"
    sets = {"smoothgrad.samples": n, "smoothgrad.output": "logit"}
    if inner != "saliency":
        sets.update({"ig.steps": steps, "ig.output": "logit"})
    ours = uni_lab.explain(spec, soft_model, x, t, sets=sets).attribution
    assert rel_err(ours, theirs) < REL


def test_noise_level_scales_with_each_image_range():
    x = torch.rand(2, 3, 16, 16)
    x[1] *= 0.5  # half the value range
    eps = smoothgrad_module.noise(x, torch.tensor([1, 2]), 20, 0.15)
    rng = x.flatten(1).amax(1) - x.flatten(1).amin(1)
    std = eps.transpose(0, 1).flatten(1).std(1)
    assert torch.allclose(std, 0.15 * rng, rtol=0.03)


def test_smoothgrad_is_seeded_per_image_not_per_batch(soft_model, tiny_batch):
    x = tiny_batch[0]
    t = soft_model(x).argmax(-1)
    seeds = torch.tensor([11, 12, 13, 14])
    whole = uni_lab.explain("smoothgrad", soft_model, x, t, seeds=seeds, samples=3).attribution
    alone = uni_lab.explain("smoothgrad", soft_model, x[2:3], t[2:3], seeds=seeds[2:3], samples=3).attribution
    assert torch.allclose(whole[2:3], alone, atol=1e-7)
    other = uni_lab.explain("smoothgrad", soft_model, x, t, seeds=seeds + 1, samples=3).attribution
    assert not torch.allclose(whole, other)


def test_smoothgrad_around_a_path_method_keeps_a_trace_and_completeness(soft_model, tiny_batch):
    x = tiny_batch[0][:2]
    t = soft_model(x).argmax(-1)
    run = lambda steps: uni_lab.explain("smoothgrad(ig:black)", soft_model, x, t, seeds=torch.tensor([1, 2]),
                                        sets={"smoothgrad.samples": 3, "ig.steps": steps, "ig.output": "logit"})
    coarse, exp = run(8), run(128)
    assert exp.trace["alpha"].shape == (2, 129)
    assert torch.allclose(exp.trace["alpha"][0], torch.linspace(0, 1, 129))
    # the mean trace's change is the mean of the copies' changes, which the mean map must sum to
    delta = exp.trace["logit"][:, -1] - exp.trace["logit"][:, 0]
    err = (exp.attribution.flatten(1).sum(1) - delta).abs() / delta.abs()
    assert torch.allclose(exp.completeness_error, err, rtol=1e-4)
    assert float(exp.completeness_error.mean()) < float(coarse.completeness_error.mean())


@pytest.mark.parametrize("output", ["prob", "logit"])
def test_rule_methods_match_captum_on_a_plain_relu_net(soft_model, tiny_batch, output):
    from captum.attr import DeepLift, GuidedBackprop

    x = tiny_batch[0]
    t = soft_model(x).argmax(-1)
    ref = with_softmax(soft_model, output)
    with quiet():
        theirs = GuidedBackprop(ref).attribute(x.clone(), target=t)
        ours = uni_lab.explain("guided_backprop", soft_model, x, t, output=output).attribution
        assert rel_err(ours, theirs) < REL
        # Captum's softmax rule normalises over its whole batch: one image per call
        per_call = 1 if output == "prob" else len(x)
        theirs = torch.cat([DeepLift(ref).attribute(x[i:i + per_call].clone(), target=t[i:i + per_call],
                                                    baselines=torch.zeros_like(x[i:i + per_call]))
                            for i in range(0, len(x), per_call)])
        ours = uni_lab.explain("deeplift", soft_model, x, t, output=output).attribution
        assert rel_err(ours, theirs) < REL


class _GuidedReLU(torch.autograd.Function):
    """Guided Backprop's rule written out: positive gradients, where the unit was open (0 < x < cap)."""

    @staticmethod
    def forward(ctx, x, cap):
        ctx.save_for_backward(x)
        ctx.cap = cap
        return x.clamp(0, cap)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g.clamp_min(0) * ((x > 0) & (x < ctx.cap)), None


class _Relu6Net(nn.Module):
    """Conv → ReLU6 → conv → ReLU6 → linear, with a switch for the hand-written guided rule."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.a1, self.a2 = nn.ReLU6(), nn.ReLU6()
        self.head = nn.Linear(8 * 8 * 8, 4)
        self.guided = False

    def act(self, module, z):
        return _GuidedReLU.apply(z, 6.0) if self.guided else module(z)

    def forward(self, x):
        z = self.act(self.a1, self.c1(x) * 8)  # scaled so that some units saturate at 6
        return self.head(self.act(self.a2, self.c2(z)).flatten(1))


def test_guided_backprop_on_relu6_is_the_guided_rule_written_out(tiny_batch):
    torch.manual_seed(0)
    net = _Relu6Net()
    clf = uni_lab.wrap(net, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(16, 16))
    x = tiny_batch[0]
    t = clf(x).argmax(-1)
    ours = uni_lab.explain("guided_backprop", clf, x, t, output="logit").attribution
    net.guided = True
    xg = x.clone().requires_grad_(True)
    (by_hand,) = torch.autograd.grad(clf(xg).gather(1, t[:, None]).sum(), xg)
    net.guided = False
    with torch.no_grad():
        assert (net.c1((x - 0.5) / 0.25) * 8 > 6).any()  # the cap at 6 is exercised
    assert rel_err(ours, by_hand) < REL


@pytest.mark.parametrize("arch", ["resnet18", pytest.param("vgg16_bn", marks=pytest.mark.slow), "efficientnet_lite0"])
def test_deeplift_sums_to_the_logit_change(arch):
    """Summation-to-delta, DeepLIFT's defining property, checked without Captum's own delta.

    Holds to float rounding on EfficientNet-Lite0 (ReLU6 through the two-ReLU rewrite) and on
    VGG (non-overlapping 2×2 max pools). ResNet's stem max pool has overlapping 3×3/stride-2
    windows, where Captum's max-pool rule (max_unpool writes, it does not add) loses
    contributions, so there the recorded error is large: a documented Captum limitation.
    """
    torch.manual_seed(0)
    kw = {} if arch == "efficientnet_lite0" else {"num_classes": 10}
    clf = uni_lab.create_model(arch, weights="random", **kw)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    t = clf(x).argmax(-1)
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    exp = uni_lab.explain("deeplift", clf, x, t, output="logit")
    assert all(torch.equal(before[k], v) for k, v in clf.state_dict().items())
    if arch == "resnet18":
        assert float(exp.completeness_error.max()) > 0.01  # the overlapping max-pool limitation, if Captum fixes it this fails
    else:
        assert float(exp.completeness_error.max()) < 1e-4


def test_reused_relus_break_raw_captum_deeplift_but_not_ours():
    from captum.attr import DeepLift

    torch.manual_seed(0)
    clf = uni_lab.create_model("resnet18", weights="random", num_classes=10)
    x = torch.rand(1, 3, 32, 32)
    with quiet():
        with pytest.raises(RuntimeError, match="used more than once"):
            DeepLift(clf).attribute(x, baselines=torch.zeros_like(x), target=0)
    assert torch.isfinite(uni_lab.explain("deeplift", clf, x, torch.tensor([0])).attribution).all()


def test_adjacent_rule_modules_keep_deeplift_complete():
    """MaxPool directly followed by ReLU: raw Captum records the pool's output gradient before
    the ReLU's rule rewrites it; the fresh-input copy in rules.py restores summation-to-delta."""
    from captum.attr import DeepLift

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.MaxPool2d(2, 2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 7 * 7, 3))
    clf = uni_lab.wrap(net, input_size=(16, 16))
    x = torch.rand(2, 3, 16, 16)
    t = torch.tensor([0, 1])
    ours = uni_lab.explain("deeplift", clf, x, t, output="logit")
    assert float(ours.completeness_error.max()) < 1e-4
    with quiet():
        _, delta = DeepLift(clf).attribute(x, baselines=torch.zeros_like(x), target=t, return_convergence_delta=True)
    with torch.no_grad():
        change = clf(x).gather(1, t[:, None]).squeeze(1) - clf(torch.zeros_like(x)).gather(1, t[:, None]).squeeze(1)
    assert float((delta.abs() / change.abs()).max()) > 1e-3  # the Captum behaviour the copy works around


@pytest.mark.parametrize("method", ["guided_backprop", "deeplift"])
def test_rule_methods_refuse_activations_without_a_rule(method, tiny_batch):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GELU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 4))
    clf = uni_lab.wrap(net, input_size=(16, 16), name="gelu_net")
    x = tiny_batch[0]
    with pytest.raises(InputError, match=rf"GELU \(x1\).*{method}\.unsupported=gradient"):
        uni_lab.explain(method, clf, x)
    exp = uni_lab.explain(method, clf, x, unsupported="gradient")
    assert torch.isfinite(exp.attribution).all() and exp.attribution.abs().sum() > 0
    with pytest.raises(InputError, match="unsupported must be one of"):
        uni_lab.explain(method, clf, x, unsupported="ignore")


def test_rule_model_shares_parameters_and_leaves_the_model_alone(tiny_model, tiny_batch):
    x = tiny_batch[0]
    net = rules_module.rule_model(tiny_model, x, "deeplift", prob=False)
    ours = {id(p) for p in net.parameters()}
    assert ours == {id(p) for p in tiny_model.parameters()}
    assert not any(isinstance(m, rules_module.FreshInput) for m in tiny_model.modules())


# ---------------------------------------------------------------- PAIR cross-checks


class _NumpyCompat(types.ModuleType):
    """PAIR's saliency 0.2.1 calls np.quantile(..., interpolation=...), a keyword NumPy 2 removed;
    this stand-in renames it to method= and passes everything else through to NumPy."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def quantile(a, q, interpolation="linear", **kwargs):
        return np.quantile(a, q, method=interpolation, **kwargs)


def _pair_call(model, target):
    """PAIR's call_model_function for one image: gradients of the target logit, HWC layout."""
    import saliency.core as sal

    points, grads = [], []

    def call(xb, call_model_args=None, expected_keys=None):
        z = torch.from_numpy(np.asarray(xb)).permute(0, 3, 1, 2).requires_grad_(True)
        points.append(z.detach()[0].clone())
        (g,) = torch.autograd.grad(model(z)[:, target].sum(), z)
        grads.append(g[0])
        return {sal.base.INPUT_OUTPUT_GRADIENTS: g.permute(0, 2, 3, 1).numpy()}

    return call, points, grads


@pytest.fixture(scope="module")
def model64(tiny_model, tiny_batch):
    """The tiny model and batch in float64, PAIR's precision."""
    m = copy.deepcopy(tiny_model).double()
    x = tiny_batch[0].double()
    return m, x, m(x).argmax(-1).detach()


@pytest.mark.parametrize("fraction,max_dist", [(0.25, 0.02), (0.1, 1.0)])  # PAIR's defaults; ours
def test_guided_ig_walks_pairs_path(model64, monkeypatch, fraction, max_dist):
    import saliency.core as sal
    from saliency.core import guided_ig as pair_gig

    monkeypatch.setattr(pair_gig, "np", _NumpyCompat("numpy"))
    m, x, t = model64
    steps = 12

    def grad_at(p):
        p = p.clone().requires_grad_(True)
        return torch.autograd.grad(m(p).gather(1, t[:, None]).sum(), p)[0]

    gen = guided_path(x, torch.zeros_like(x), steps, fraction, max_dist)
    ours = [next(gen)[1][0]]
    for _ in range(steps):
        ours.append(gen.send((grad_at(ours[-1]).unsqueeze(0), None, None))[1][0])
    ours = torch.stack(ours)
    exp = uni_lab.explain("guided_ig", m, x, t, steps=steps, fraction=fraction, max_dist=max_dist, output="logit")
    for i in range(x.shape[0]):
        call, points, grads = _pair_call(m, int(t[i]))
        sal.GuidedIG().GetMask(x[i].permute(1, 2, 0).numpy(), call, x_steps=steps, fraction=fraction,
                               max_dist=max_dist)
        pair_path = torch.stack(points)  # γ_0 .. γ_{B−1}: PAIR never evaluates x itself
        assert float((ours[:steps, i] - pair_path).abs().max()) < 1e-12
        # the engine's right Riemann sum along PAIR's points
        pts = torch.cat([pair_path, x[i:i + 1]])
        g = grads + [grad_at(x)[i]]
        right = sum(g[k] * (pts[k] - pts[k - 1]) for k in range(1, steps + 1))
        assert float((right - exp.attribution[i]).abs().max() / exp.attribution[i].abs().max()) < 1e-10
    # the path shrinks the L1 distance to x linearly in α
    l1 = (ours - x.unsqueeze(0)).abs().flatten(2).sum(2)
    assert torch.allclose(l1 / l1[0], (1 - torch.linspace(0, 1, steps + 1, dtype=l1.dtype))[:, None], atol=1e-9)


def test_blur_ig_matches_pair_as_steps_grow(model64, monkeypatch):
    import saliency.core as sal
    from saliency.core import blur_ig as pair_blur

    from uni_lab.ops import gaussian_blur

    # the same blur kernel for both (PAIR's own pads with zeros, ours reflects)
    def blur_hwc(img, sigma):
        z = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).unsqueeze(0)
        return gaussian_blur(z, sigma)[0].permute(1, 2, 0).numpy()

    monkeypatch.setattr(pair_blur, "gaussian_blur", blur_hwc)
    m, x, t = model64
    x, t = x[:1], t[:1]
    errs = {}
    for steps in (16, 64):
        exp = uni_lab.explain("blur_ig", m, x, t, steps=steps, sigma_max=3.0, output="logit")
        errs[steps] = []
        for i in range(x.shape[0]):
            call, _, _ = _pair_call(m, int(t[i]))
            mask = sal.BlurIG().GetMask(x[i].permute(1, 2, 0).numpy(), call, max_sigma=3.0, steps=steps,
                                        grad_step=0.01, batch_size=1)
            errs[steps].append(rel_err(exp.attribution[i], torch.from_numpy(mask).permute(2, 0, 1)))
    assert max(errs[64]) < 0.02
    assert max(errs[64]) < min(errs[16]) / 3


# ---------------------------------------------------------------- AGI


def _agi_by_hand(model, x, c, false_classes, steps, step_size):
    """docs/methods.md §3 written out for one image: Σ_j Σ_t −∇F_c(x_t) ⊙ (x_{t+1} − x_t)."""
    total = torch.zeros_like(x)
    stopped = 0
    for j in false_classes:
        xt = x.clone()
        for _ in range(steps):
            z = xt.clone().requires_grad_(True)
            logits = model(z.unsqueeze(0))[0]
            if int(logits.argmax()) == j:
                stopped += 1
                break
            (g_adv,) = torch.autograd.grad(logits.softmax(-1)[j], z)
            z2 = xt.clone().requires_grad_(True)
            (g_c,) = torch.autograd.grad(model(z2.unsqueeze(0))[0, c], z2)
            nxt = (xt + step_size * g_adv.sign()).clamp(0, 1)
            total += -g_c * (nxt - xt)
            xt = nxt
    return total, stopped


def test_agi_equals_the_written_out_algorithm(soft_model, tiny_batch):
    x = tiny_batch[0][:2]
    t = soft_model(x).argmax(-1)
    k, steps, step = 2, 6, 0.05
    exp = uni_lab.explain("agi", soft_model, x, t, top_k=k, steps=steps, step_size=step, output="logit")
    with torch.no_grad():
        false = soft_model(x).scatter(1, t[:, None], -torch.inf).topk(k, dim=1).indices
    stopped = 0
    for i in range(2):
        ref, s = _agi_by_hand(soft_model, x[i], int(t[i]), false[i].tolist(), steps, step)
        stopped += s
        assert rel_err(exp.attribution[i], ref) < 1e-4
    assert stopped > 0  # early stopping is exercised
    # trace: K paths averaged, ending at x; completeness against the summed changes
    assert exp.trace["prob"].shape == (2, steps + 1)
    assert torch.allclose(exp.trace["distance"][:, -1], torch.zeros(2))
    logit_x = soft_model(x).gather(1, t[:, None]).squeeze(1)
    assert torch.allclose(exp.trace["logit"][:, -1], logit_x, atol=1e-5)
    delta = k * (exp.trace["logit"][:, -1] - exp.trace["logit"][:, 0])
    err = (exp.attribution.flatten(1).sum(1) - delta).abs() / delta.abs()
    assert torch.allclose(exp.completeness_error, err, rtol=1e-4, atol=1e-6)


def test_agi_rejects_more_false_classes_than_the_model_has(soft_model, tiny_batch):
    with pytest.raises(InputError, match="top_k must be between 1 and 3"):
        uni_lab.explain("agi", soft_model, tiny_batch[0], top_k=4)


# ---------------------------------------------------------------- the paths on the engine


@pytest.mark.parametrize("spec", ["blur_ig", "guided_ig"])
def test_path_methods_converge_to_complete(tiny_model, batch, spec):
    # the trained model: logit changes along the path are large, so relative errors are meaningful
    x, t = batch[0][:2], batch[1][:2]
    coarse = uni_lab.explain(spec, tiny_model, x, t, steps=4, output="logit")
    fine = uni_lab.explain(spec, tiny_model, x, t, steps=64, output="logit")
    assert fine.trace["alpha"].shape == (2, 65)
    assert float(fine.completeness_error.max()) < 0.05
    assert float(fine.completeness_error.max()) < float(coarse.completeness_error.min()) / 3
    assert float(fine.completeness_error.mean()) < float(coarse.completeness_error.mean())
    assert torch.allclose(fine.trace["distance"][:, -1], torch.zeros(2))


def test_blur_ig_baseline_is_the_most_blurred_image(soft_model, tiny_batch):
    from uni_lab.ops import gaussian_blur

    x = tiny_batch[0][:2]
    exp = uni_lab.explain("blur_ig", soft_model, x, steps=3, sigma_max=5.0)
    assert torch.allclose(exp.baseline, gaussian_blur(x, 5.0))


def test_every_method_fills_a_store_through_the_runner(soft_model, tmp_path):
    import xarray as xr

    specs = ["saliency", "input_x_gradient", "smoothgrad", "smoothgrad(ig:black)", "smoothgrad(uni)", "blur_ig",
             "guided_ig", "agi", "guided_backprop", "deeplift"]
    res = uni_lab.run(models=soft_model, images=["chelsea", "coffee"], methods=specs, steps=3, out=tmp_path / "zoo.zarr",
                      sets={"smoothgrad.samples": 2, "agi.top_k": 2, "blur_ig.sigma_max": 4.0, "uni.pgd_steps": 2},
                      progress=False)
    ds = xr.open_zarr(res.path)
    assert bool(ds.done.all())
    path_methods = ["smoothgrad(ig:black)", "smoothgrad(uni)", "blur_ig", "guided_ig", "agi"]
    for spec in specs:
        item = ds.sel(xai_method=spec)
        assert np.isfinite(item.attribution.values).all(), spec
        has_trace = bool(np.isfinite(item.trace_prob.values).all())
        assert has_trace == (spec in path_methods), spec
        complete = np.isfinite(item.completeness_error.values).all()
        assert complete == (spec in path_methods + ["input_x_gradient", "deeplift"]), spec
