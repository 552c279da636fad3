"""Ghorbani et al.'s iterative attack, and the attack's second-order passes sized to the memory plan (issue 16)."""
from __future__ import annotations

import pytest
import torch

import uni_lab
from conftest import make_data
from uni_lab.engine import scores
from uni_lab.explanation import Explanation
from uni_lab.plugins.attacks import (HVP_ACTIVATION_COPIES, fgsm_attribution, hvp_pass_size, ifgsm_attribution, objective_gradient,
                                     softplus_copy)
from uni_lab.plugins.metric_robustness import pixel_map, topk_mask

K = 32


@pytest.fixture(scope="module")
def batch(tiny_model):
    x, _ = make_data(n=16, seed=3)
    return x, tiny_model(x).argmax(-1)


def _whole_graph_gradient(model, x, target, baseline, steps, output, top):
    """The attack's objective gradient as it was computed before: one create_graph graph for everything."""
    xa = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        if baseline is None:
            prob, logit = scores(model(xa), target)
            (a,) = torch.autograd.grad((prob if output == "prob" else logit).sum(), xa, create_graph=True)
        else:
            total = torch.zeros_like(xa)
            for alpha in torch.arange(1, steps + 1, dtype=x.dtype) / steps:
                point = baseline + alpha * (xa - baseline)
                prob, logit = scores(model(point), target)
                (g,) = torch.autograd.grad((prob if output == "prob" else logit).sum(), point, create_graph=True)
                total = total + g
            a = (xa - baseline) * total / steps
        s = pixel_map(a)
        share = (s * top).sum(1) / s.sum(1).clamp_min(1e-12)
        (grad,) = torch.autograd.grad(share.sum(), xa)
    return grad


@pytest.mark.parametrize("with_baseline", [True, False])
@pytest.mark.parametrize("output", ["prob", "logit"])
def test_objective_gradient_in_passes_equals_the_whole_graph_in_any_partition(tiny_model, batch, with_baseline, output):
    x, target = batch
    grads = uni_lab.explain("saliency", tiny_model, x, target, output=output).attribution
    top = topk_mask(pixel_map(grads), K)
    x = x.double()  # in float64 the two orders of evaluation agree to rounding, so a wrong term would show
    smooth = softplus_copy(tiny_model).double()
    baseline = torch.zeros_like(x) if with_baseline else None
    ref = _whole_graph_gradient(smooth, x, target, baseline, 4, output, top)
    assert ref.abs().max() > 0
    for size in (1, 5, 64):  # points per double-backward pass: 1, a remainder pass, all at once
        ours = objective_gradient(smooth, x, target, baseline, 4, output, top, size)
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12 * float(ref.abs().max()))
    # an image's gradient does not depend on the images beside it
    alone = objective_gradient(smooth, x[2:3], target[2:3], None if baseline is None else baseline[2:3], 4, output,
                               top[2:3], 3)
    torch.testing.assert_close(alone, ref[2:3], rtol=1e-9, atol=1e-12 * float(ref.abs().max()))


def test_pass_size_comes_from_the_plan_not_the_batch(tiny_model, batch, monkeypatch):
    from uni_lab import accel

    x, _ = batch
    smooth = softplus_copy(tiny_model)
    free = hvp_pass_size(smooth, x)
    monkeypatch.setitem(accel.PLAN_BYTES, "cpu", 3 * HVP_ACTIVATION_COPIES * accel.activation_bytes(smooth, x[:1]))
    assert hvp_pass_size(smooth, x) == 3 < free


def test_ifgsm_keeps_the_label_stays_in_the_ball_and_applies_where_one_step_is_rejected(tiny_model, batch):
    x, target = batch
    exp = Explanation(uni_lab.explain("saliency", tiny_model, x, target, output="logit").attribution)
    eps = 0.6  # the one-step attack rejects some of these (test_attacks.py)
    one = fgsm_attribution(tiny_model, x, target, None, exp, eps=eps, k=K, output="logit")
    it = ifgsm_attribution(tiny_model, x, target, None, exp, eps=eps, step_size=0.05, iterations=12, k=K,
                           output="logit")
    with torch.no_grad():
        assert torch.equal(tiny_model(it).argmax(-1), target)
    moved = lambda a: (a - x).abs().flatten(1).max(1).values > 0  # noqa: E731
    linf = (it - x).abs().flatten(1).max(1).values
    assert (linf <= eps + 1e-6).all() and (it >= 0).all() and (it <= 1).all()
    assert moved(it).sum() > moved(one).sum(), (moved(it), moved(one))
    # the attack lowers the surrogate's mass on the old top-k more than its first step does
    first = ifgsm_attribution(tiny_model, x, target, None, exp, eps=eps, step_size=0.05, iterations=1, k=K,
                              output="logit")
    share = lambda a: (pixel_map(uni_lab.explain("saliency", tiny_model, a, target, output="logit").attribution)  # noqa: E731
                       * topk_mask(pixel_map(exp.attribution), K)).sum(1)
    assert share(it).mean() < share(first).mean() < share(x).mean()


def test_ifgsm_stops_an_image_at_its_first_label_changing_step(tiny_model, batch):
    x, target = batch
    exp = Explanation(uni_lab.explain("saliency", tiny_model, x, target, output="logit").attribution)
    huge = ifgsm_attribution(tiny_model, x, target, None, exp, eps=1.0, step_size=1.0, iterations=3, k=K,
                             output="logit")  # a full-range step: flips every label the first time, or never
    unmoved = (huge == x).flatten(1).all(1)
    with torch.no_grad():
        assert torch.equal(tiny_model(huge).argmax(-1), target)
    assert unmoved.any()


def test_double_backward_passes_hold_at_most_the_planned_points(tiny_model, batch, monkeypatch):
    """Issue 16: the old surrogate kept one create_graph graph for every step of the whole batch
    (8 images × 8 steps at 224² went past 8 GB); now no pass holds more points than the plan allows."""
    from uni_lab import accel
    from uni_lab.plugins import attacks

    x, target = batch
    smooth = softplus_copy(tiny_model)
    monkeypatch.setitem(accel.PLAN_BYTES, "cpu", 3 * HVP_ACTIVATION_COPIES * accel.activation_bytes(smooth, x[:1]))
    seen = []
    real = attacks._class_score
    monkeypatch.setattr(attacks, "_class_score", lambda m, p, t, o: (seen.append(p.shape[0]), real(m, p, t, o))[1])
    exp = Explanation(torch.zeros_like(x), baseline=torch.zeros_like(x))
    fgsm_attribution(tiny_model, x, target, None, exp, k=K, surrogate_steps=8, output="logit")
    assert max(seen) <= 3 and sum(seen) == 2 * 8 * x.shape[0]  # first-order and second-order passes, every point


def test_evaluate_runs_the_iterative_attack_and_reports_its_applied_share(tiny_model, tmp_path):
    import xarray as xr

    from uni_lab import evaluate

    out = uni_lab.run(models=tiny_model, images=["chelsea", "coffee"], methods=["ig:black"], steps=4,
                      out=tmp_path / "s.zarr", progress=False, seed_stability=False).path
    res = evaluate(out, attacks="ifgsm_attribution", perturbed_metrics="robustness", models=[tiny_model],
                   sets={"ifgsm_attribution.k": 20, "ifgsm_attribution.iterations": 3, "robustness.k": 20},
                   progress=False)
    ds = xr.open_zarr(out)
    assert list(ds.attack.values) == ["ifgsm_attribution"] and bool(ds.done_attack.all())
    assert (ds.attack_linf.values <= 8 / 255 + 1e-6).all() and (ds.attack_label_kept.values == 1).all()
    row = res.table.iloc[0]
    assert 0 <= row["attack_accepted[ifgsm_attribution]"] <= 1 and "attack_robustness_spearman[ifgsm_attribution]" in row
