"""Metrics: known answers by construction, independent (numpy/scipy) recomputations, and the store."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import xarray as xr
from torch import nn

import uni_lab
from uni_lab.errors import StoreError
from uni_lab import evaluate
from uni_lab.evaluation import MethodCall
from uni_lab.explanation import Explanation
from uni_lab.methods import resolve
from uni_lab.ops import gaussian_blur
from uni_lab.plugins.metric_faithfulness import cell_subsets, deletion, insertion, mufidelity
from uni_lab.plugins.metric_path import completeness_error, curvature, monotonicity, riemann_stability
from uni_lab.plugins.metric_robustness import robustness, spearman_rows, topk_intersection
from uni_lab.plugins.metric_bias import bias
from uni_lab.plugins.metric_sanity import sanity


def linear_classifier(h=16, w=16, classes=3, seed=0):
    """f(x) = W·x + b over pixel space (identity normalisation)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * h * w, classes))
    return uni_lab.wrap(net, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=(h, w), name="linear")


def images(n=3, h=16, w=16, seed=1):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


# --- mufidelity ------------------------------------------------------------------------------------

def test_mufidelity_is_one_for_ig_black_on_a_linear_model_and_near_zero_for_noise():
    """For f = w·x and the black baseline, IG is exactly x ⊙ w, and removing a subset S drops the
    logit by exactly Σ_{i∈S} x_i w_i: the correlation is 1 up to float error."""
    model, x = linear_classifier(), images(4)
    target = model(x).argmax(-1)
    ig = uni_lab.explain("ig:black", model, x, target, steps=4, output="logit").attribution
    seeds = torch.arange(4)
    mf = mufidelity(model, x, target, ig, seeds, output="logit")["mufidelity"]
    assert torch.allclose(mf, torch.ones_like(mf), atol=1e-5), mf
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    mf_noise = mufidelity(model, x, target, noise, seeds, output="logit")["mufidelity"]
    assert mf_noise.abs().max() < 0.35 and mf_noise.abs().mean() < 0.2, mf_noise  # 128 subsets: sd ≈ 0.09


def _numpy_mufidelity(W, b, x, target, attribution, cells, output):
    """The definition in plain numpy on the same subsets (cells), for a linear softmax model."""
    n, _, h, w = x.shape
    grid = cells.shape[-1]
    row_edges = np.array([round(k * h / grid) for k in range(grid + 1)])
    col_edges = np.array([round(k * w / grid) for k in range(grid + 1)])
    out = []
    for i in range(n):
        def f(img):
            z = W @ img.reshape(-1) + b
            p = np.exp(z - z.max())
            return (p / p.sum())[target[i]] if output == "prob" else z[target[i]]
        sums, drops = [], []
        for subset in cells[i]:
            mask = np.zeros((h, w), bool)
            for r, c in zip(*np.nonzero(subset)):
                mask[row_edges[r]:row_edges[r + 1], col_edges[c]:col_edges[c + 1]] = True
            sums.append(attribution[i][:, mask].sum())
            drops.append(f(x[i]) - f(np.where(mask, 0.0, x[i])))
        out.append(np.corrcoef(sums, drops)[0, 1])
    return np.array(out)


@pytest.mark.parametrize("output", ["prob", "logit"])
def test_mufidelity_matches_an_independent_numpy_computation(output):
    model, x = linear_classifier(h=20, w=18), images(3, 20, 18)
    target = model(x).argmax(-1)
    attribution = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)) + x  # partly faithful
    seeds = torch.tensor([11, 12, 13])
    ours = mufidelity(model, x, target, attribution, seeds, n_subsets=64, grid=5, fraction=0.3, output=output)
    cells = cell_subsets(3, seeds, n_subsets=64, grid=5, fraction=0.3).numpy()
    lin = model.net[1]
    ref = _numpy_mufidelity(lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy(),
                            x.double().numpy(), target.numpy(), attribution.double().numpy(), cells, output)
    np.testing.assert_allclose(ours["mufidelity"].numpy(), ref, atol=1e-5)


def test_mufidelity_subsets_follow_the_image_seed_not_the_batch():
    a = cell_subsets(3, torch.tensor([7, 8, 9]))
    b = cell_subsets(1, torch.tensor([8]))
    assert torch.equal(a[1], b[0]) and not torch.equal(a[0], a[1])
    assert (a.flatten(2).sum(-1) == 16).all()  # 20% of 81 cells


# --- deletion / insertion ---------------------------------------------------------------------------

class LeftHalf(nn.Module):
    """Two classes; logit_0 = a·(mean of the left half of the image − 0.5), logit_1 = 0."""

    def __init__(self, a=8.0):
        super().__init__()
        self.a = a

    def forward(self, x):
        m = x[..., : x.shape[-1] // 2].mean((1, 2, 3))
        return torch.stack([self.a * (m - 0.5), torch.zeros_like(m)], 1)


def _left_half_model():
    return uni_lab.wrap(LeftHalf(), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=(16, 16))


def test_deletion_equals_its_closed_form_on_a_model_known_by_construction():
    """All-ones 16×16 image, the model reads only the left half (128 pixels), and the map ranks
    the left half first: after k steps of 8 pixels the left-half mean is 1 − k/16 (0 from k = 16
    on), so F_0 = σ(8(1 − k/16 − 0.5)) and the AUC is a trapezoid over those 33 values."""
    model, x, target = _left_half_model(), torch.ones(1, 3, 16, 16), torch.tensor([0])
    left = torch.zeros(1, 3, 16, 16)
    left[..., :8] = 1.0
    attribution = left + 1e-3 * torch.rand(1, 3, 16, 16)  # ties broken, left half still first
    out = deletion(model, x, target, attribution, n_steps=32)
    k = np.arange(33)
    mean_left = np.clip(1 - k / 16, 0, 1)
    expected_curve = 1 / (1 + np.exp(-8 * (mean_left - 0.5)))
    np.testing.assert_allclose(out["curve"].values[0], expected_curve, atol=1e-6)
    np.testing.assert_allclose(out["deletion"].numpy(), np.trapezoid(expected_curve, k / 32), atol=1e-6)
    worst = deletion(model, x, target, -attribution, n_steps=32)["deletion"]  # right half removed first
    assert worst.item() > out["deletion"].item() + 0.3


def test_insertion_curve_runs_from_the_blurred_image_to_the_image():
    model = _left_half_model()
    target = torch.tensor([0])
    flat = torch.full((1, 3, 16, 16), 0.8)  # a constant image is its own blur: F_c never moves
    out = insertion(model, flat, target, torch.rand(1, 3, 16, 16), n_steps=16)
    expected = 1 / (1 + math.exp(-8 * 0.3))
    np.testing.assert_allclose(out["curve"].values[0], expected, atol=1e-6)
    np.testing.assert_allclose(out["insertion"].item(), expected, atol=1e-6)
    x = torch.zeros(1, 3, 16, 16)
    x[..., :8] = 1.0
    good = insertion(model, x, target, x.clone(), n_steps=16)  # the map points at the left half
    bad = insertion(model, x, target, 1 - x, n_steps=16)
    start = model(gaussian_blur(x, 5.0)).softmax(-1)[0, 0].item()
    assert good["curve"].values[0, 0] == pytest.approx(start, abs=1e-6)  # starts at F_c(blur(x))
    assert good["curve"].values[0, -1] == pytest.approx(1 / (1 + math.exp(-4)), abs=1e-6)  # ends at F_c(x)
    # the wrong order spends its first 8 steps (16 px each) on the right half, which the model ignores
    np.testing.assert_allclose(bad["curve"].values[0, :9], start, atol=1e-6)
    assert (np.diff(good["curve"].values[0]) >= -1e-9).all()
    assert good["insertion"].item() > bad["insertion"].item() + 0.03


# --- robustness, monotonicity, curvature, completeness -----------------------------------------------

def test_spearman_and_topk_match_scipy_and_hand_counts():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 50, generator=g), torch.rand(3, 50, generator=g)
    b[0] = a[0].round(decimals=1)  # ties
    ref = [scipy.stats.spearmanr(a[i], b[i]).statistic for i in range(3)]
    np.testing.assert_allclose(spearman_rows(a, b).numpy(), ref, atol=1e-12)
    x = torch.tensor([[5.0, 4, 3, 2, 1, 0]])
    y = torch.tensor([[5.0, 0, 3, 2, 4, 1]])
    assert topk_intersection(x, y, 3).item() == pytest.approx(2 / 3)
    same = robustness(torch.rand(2, 3, 8, 8), torch.ones(2, 3, 8, 8), k=5)
    assert torch.isnan(same["spearman"]).all()  # a constant reference map has no ranking


def _trace_explanation(prob, alpha=None):
    prob = torch.tensor(prob, dtype=torch.float64)
    alpha = torch.linspace(0, 1, prob.shape[1]).expand_as(prob) if alpha is None else alpha
    tr = {"alpha": alpha, "prob": prob, "logit": prob.logit(), "grad_norm": prob, "distance": prob}
    return Explanation(torch.zeros(prob.shape[0], 3, 4, 4), torch.zeros(prob.shape[0], 3, 4, 4), tr)


def test_monotonicity_fraction_and_conformance_on_hand_made_paths():
    exp = _trace_explanation([[0.1, 0.2, 0.15, 0.5, 0.9], [0.3, 0.1, 0.4, 0.5, 0.6], [0.1, 0.3, 0.9, 0.7, 0.8]])
    out = monotonicity(torch.zeros(3, 3, 4, 4), exp)
    np.testing.assert_allclose(out["fraction"].numpy(), [0.75, 0.75, 0.75])
    np.testing.assert_array_equal(out["conformant"].numpy(), [1.0, 0.0, 0.0])  # min not at 0; max not at 1
    none = monotonicity(torch.zeros(2, 3, 4, 4), Explanation(torch.zeros(2, 3, 4, 4)))
    assert torch.isnan(none["fraction"]).all()


def test_curvature_second_difference_and_gradient_cosine(tiny_model, tiny_batch):
    x, _ = tiny_batch
    target = tiny_model(x).argmax(-1)
    exp = uni_lab.explain("ig:black", tiny_model, x, target, steps=6)
    out = curvature(tiny_model, x, target, exp)
    f = exp.trace["prob"].double().numpy()
    np.testing.assert_allclose(out["second_difference"].numpy(), np.abs(np.diff(f, 2, axis=1)).mean(1), rtol=1e-9)
    assert torch.isfinite(out["grad_cosine"]).all() and (out["grad_cosine"].abs() <= 1 + 1e-9).all()
    # a path that is not the straight line from the stored baseline is not reconstructed: NaN, not a guess
    bent = Explanation(exp.attribution, exp.baseline + 0.3, exp.trace)
    assert torch.isnan(curvature(tiny_model, x, target, bent)["grad_cosine"]).all()


def test_completeness_error_recomputed_matches_the_engine(tiny_model, tiny_batch):
    x, _ = tiny_batch
    target = tiny_model(x).argmax(-1)
    exp = uni_lab.explain("ig:blur", tiny_model, x, target, steps=5, output="logit")
    out = completeness_error(tiny_model, x, target, exp.attribution, exp, output="logit")["recomputed"]
    torch.testing.assert_close(out, exp.completeness_error.double(), rtol=1e-4, atol=1e-6)


class Smooth(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.Tanh(), nn.Linear(32, 3))

    def forward(self, x):
        return self.body(x)


def test_riemann_stability_error_falls_as_steps_grow_on_a_smooth_model():
    """IG's right Riemann sum converges as O(1/B) on a smooth model: the relative error against
    B = 256 falls at every doubling and the rank correlation rises towards 1."""
    model = uni_lab.wrap(Smooth(), mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(8, 8))
    x = images(3, 8, 8)
    target = model(x).argmax(-1)
    explain = MethodCall(resolve("ig:black", defaults={"output": "logit"}))
    out = riemann_stability(model, x, target, explain, None, steps=(1, 2, 4, 8, 16, 32, 64))
    err, rho = out["rel_error"].values, out["spearman"].values
    assert out["rel_error"].dims == ("image", "steps")
    assert (np.diff(err, axis=1) < 0).all(), err
    assert (err[:, -1] < 0.05 * err[:, 0]).all(), err
    assert (rho[:, -1] > 0.99).all() and (rho[:, -1] >= rho[:, 0]).all(), rho


def test_riemann_stability_is_nan_for_a_method_without_steps():
    class NoSteps:
        def accepts(self, name):
            return False

    out = riemann_stability(None, torch.zeros(2, 3, 4, 4), None, NoSteps(), steps=(1, 2))
    assert np.isnan(out["spearman"].values).all()


# --- bias ----------------------------------------------------------------------------------------

def test_bias_identities():
    x = images(2, 32, 32)
    a = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    black = Explanation(a, torch.zeros_like(x))
    out = bias(x, a, black)
    # with the black baseline |x − x'| is x itself: colour and intensity bias coincide
    torch.testing.assert_close(out["colour"], out["intensity"])
    # a map proportional to the image is maximally intensity-biased
    assert bias(x, x.clone(), black)["intensity"].sub(1).abs().max() < 1e-9
    checker = ((torch.arange(32).view(-1, 1) + torch.arange(32).view(1, -1)) % 2).float().expand(2, 3, 32, 32)
    assert bias(x, checker, None)["frequency"].sub(1).abs().max() < 1e-9  # all power at Nyquist
    wave = torch.cos(2 * math.pi * torch.arange(32) / 32).view(1, 1, 1, -1).expand(2, 3, 32, 32)
    assert bias(x, wave, None)["frequency"].max() < 1e-9  # all power at 1/32 cycles/pixel
    assert torch.isnan(bias(x, a, None)["colour"]).all()  # no baseline, no colour bias
    uniform = bias(x, torch.ones_like(x), None)["texture"]
    assert ((uniform - 0.5).abs() < 0.05).all()  # uniform mass: the smooth half holds about half of it


# --- sanity --------------------------------------------------------------------------------------

def test_sanity_is_one_for_a_map_that_ignores_the_model_and_leaves_the_model_untouched(tiny_model, tiny_batch):
    x, _ = tiny_batch
    target = tiny_model(x).argmax(-1)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}

    def edge_detector(model, xx, tt, seeds=None):  # no dependence on the weights at all
        return Explanation(torch.nn.functional.pad(xx.diff(dim=2).abs(), (0, 0, 0, 1)))

    out = sanity(tiny_model, x, target, edge_detector(None, x, None).attribution, edge_detector, None, stages=3)
    np.testing.assert_allclose(out["spearman"].values, 1.0, atol=1e-12)
    np.testing.assert_allclose(out["layers_randomised"].values[:, -1], 1.0)
    ig = MethodCall(resolve("ig:black"))
    real = sanity(tiny_model, x, target, ig(tiny_model, x, target).attribution, ig, None, stages=3)
    assert real["spearman"].values[:, -1].mean() < 0.9  # IG does depend on the weights
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, before[k]), k


# --- evaluate: the store -------------------------------------------------------------------------

@pytest.fixture()
def tiny_store(tmp_path, tiny_model):
    out = tmp_path / "tiny.zarr"
    uni_lab.run(models=[tiny_model], images=["chelsea", "coffee", "rocket"], methods=["ig:black", "ig:blur"],
                steps=4, out=out, progress=False)
    return out


def test_evaluate_fills_labelled_variables_without_recomputing_stored_maps(tiny_store, tiny_model):
    before = xr.open_zarr(tiny_store)["attribution"].values.copy()
    res = evaluate(tiny_store, metrics="mufidelity,deletion,monotonicity", attacks="random_noise",
                   corruptions="brightness", severities=[1, 4], models=[tiny_model], batch_size=2, progress=False,
                   sets={"robustness.k": 20, "mufidelity.n_subsets": 16})
    ds = xr.open_zarr(tiny_store)
    np.testing.assert_array_equal(ds["attribution"].values, before)
    assert ds["mufidelity"].dims == ("model", "xai_method", "image")
    assert ds["deletion_curve"].dims == ("model", "xai_method", "image", "fraction")
    assert ds["attack_robustness_topk"].dims == ("model", "xai_method", "image", "attack")
    assert ds["corruption_bias_colour"].dims == ("model", "xai_method", "image", "corruption", "severity")
    assert ds["corruption_input"].dims == ("model", "image", "corruption", "severity", "channel", "y", "x")
    assert bool(ds["done_mufidelity"].all()) and bool(ds["done_attack_robustness"].all())
    sev = ds["done_corruption"].sel(corruption="brightness")
    assert ds.severity.values.tolist() == [1, 4] and bool(sev.all())  # the asked severities, no holes
    assert '"n_subsets": 16' in ds["mufidelity"].attrs["uni_lab_params"]
    assert np.isfinite(ds["mufidelity"].values).all()
    # scalars: one chunk file per block of images, holding all their attacks/severities; maps one label each
    block = min(json.loads(ds.attrs["uni_lab_chunks"])["images"], ds.sizes["image"])
    assert ds["corruption_bias_colour"].encoding["chunks"] == (1, 1, block, ds.sizes["corruption"], ds.sizes["severity"])
    assert ds["corruption_attribution"].encoding["chunks"][:5] == (1, 1, 1, 1, 1)
    # the stored corrupted input is the corruption of the stored input, pixel for pixel
    from uni_lab.plugins.corruptions import corrupt
    from uni_lab.seeding import image_seed

    x = torch.from_numpy(ds["input"].sel(model="tiny", image=["coffee"]).values)
    again = corrupt(x, "brightness", 4, [image_seed(0, "coffee")])
    np.testing.assert_allclose(ds["corruption_input"].sel(model="tiny", image="coffee", corruption="brightness",
                                                          severity=4).values, again[0].numpy(), atol=1e-6)
    assert {"mufidelity", "deletion", "monotonicity_fraction", "attack_robustness_topk[random_noise]",
            "corruption_bias_colour[corruptions]"} <= set(res.table.columns)


@pytest.fixture()
def counting_metric():
    """A user metric that counts the images it sees and fails on demand (an interrupted evaluation)."""
    from uni_lab.registry import registry

    calls = []

    @uni_lab.metric("_test_counting")
    def counting(attribution, *, fail_on: str = ""):
        """Counts images; fails on its second call when fail_on is set."""
        calls.append(attribution.shape[0])
        if fail_on and len(calls) == 2:
            raise RuntimeError("boom")
        return {"_test_counting": attribution.abs().flatten(1).sum(1)}

    yield calls
    registry.unregister("metric", "_test_counting")


def test_evaluate_resumes_only_missing_items_and_refuses_other_parameters(tiny_store, tiny_model, counting_metric):
    calls = counting_metric

    with pytest.raises(uni_lab.UniLabError, match="_test_counting"):
        evaluate(tiny_store, metrics="_test_counting", models=[tiny_model], batch_size=2, progress=False,
                 sets={"_test_counting.fail_on": "x"}, methods="ig:black")
    done = xr.open_zarr(tiny_store)["done__test_counting"].sel(xai_method="ig:black").values[0]
    assert done.tolist() == [True, True, False]  # the first batch is kept, the failed one is not marked done
    with pytest.raises(StoreError, match="fail_on"):
        evaluate(tiny_store, metrics="_test_counting", models=[tiny_model], progress=False)
    calls.clear()
    evaluate(tiny_store, metrics="_test_counting", models=[tiny_model], progress=False,
             sets={"_test_counting.fail_on": "x"}, methods="ig:black")
    assert calls == [1]  # only the missing image
    calls.clear()
    evaluate(tiny_store, metrics="_test_counting", models=[tiny_model], progress=False, recompute=True)
    assert sum(calls) == 6  # other parameters, recomputed: every item of both methods


def test_evaluate_grows_the_attack_dim_and_keeps_earlier_results(tiny_store, tiny_model):
    evaluate(tiny_store, attacks="random_noise", models=[tiny_model], progress=False, sets={"robustness.k": 20},
             perturbed_metrics="robustness")
    first = xr.open_zarr(tiny_store)["attack_robustness_spearman"].sel(attack="random_noise").values.copy()
    evaluate(tiny_store, attacks="fgsm_attribution", models=[tiny_model], progress=False,
             sets={"robustness.k": 20, "fgsm_attribution.k": 20}, perturbed_metrics="robustness")
    ds = xr.open_zarr(tiny_store)
    assert list(ds.attack.values) == ["random_noise", "fgsm_attribution"]
    np.testing.assert_array_equal(ds["attack_robustness_spearman"].sel(attack="random_noise").values, first)
    assert bool(ds["done_attack"].all())
    assert (ds["attack_label_kept"].values == 1).all()


def test_evaluate_errors_name_the_fix(tiny_store, tiny_model, tmp_path):
    with pytest.raises(StoreError, match="random weights|models="):
        evaluate(tiny_store, metrics="deletion", progress=False)  # the in-memory tiny model cannot be reloaded
    with pytest.raises(uni_lab.PluginError, match="not a corruption"):
        evaluate(tiny_store, corruptions="fgsm_attribution", models=[tiny_model], progress=False)
    with pytest.raises(uni_lab.PluginError, match="unknown metric"):
        evaluate(tiny_store, metrics="nope", models=[tiny_model], progress=False)
    with pytest.raises(StoreError, match="no store"):
        evaluate(tmp_path / "missing.zarr", metrics="deletion")
    other = uni_lab.wrap(nn.Sequential(nn.Flatten(), nn.Linear(768, 4)), mean=(0.5,) * 3, std=(0.25,) * 3,
                         input_size=(16, 16), name="tiny")
    with pytest.raises(StoreError, match="does not reproduce"):
        evaluate(tiny_store, metrics="deletion", models=[other], progress=False)


def test_cli_run_with_metrics_then_evaluate_more(tmp_path, tiny_model, capsys):
    """`uni-lab run --metrics ... --attacks ...` evaluates the new store; `uni-lab evaluate` adds to it."""
    import copy

    from uni_lab.cli import main
    from uni_lab.registry import registry

    @uni_lab.model("_test_tiny_cli")
    def tiny_cli(weights=None):
        """The session's tiny model under a registered name, so the store can reload it."""
        clf = copy.deepcopy(tiny_model)
        clf.name = "_test_tiny_cli"
        return clf

    out = str(tmp_path / "cli.zarr")
    try:
        rc = main(["run", "--model", "_test_tiny_cli", "--images", "chelsea", "coffee", "--methods", "ig:black",
                   "--steps", "4", "--out", out, "--no-progress", "--metrics", "deletion,monotonicity",
                   "--attacks", "random_noise", "--set", "robustness.k=20"])
        assert rc == 0
        printed = capsys.readouterr().out
        assert "deletion" in printed and "attack_robustness_topk[random_noise]" in printed
        rc = main(["evaluate", out, "--corruptions", "gaussian_noise", "--severities", "2", "--set", "robustness.k=20",
                   "--no-progress"])
        assert rc == 0
        ds = xr.open_zarr(out)
        assert bool(ds["done_corruption_robustness"].sel(corruption="gaussian_noise", severity=2).all())
        assert bool(ds["done_deletion"].all())
        assert main(["evaluate", out]) == 2  # nothing asked for
        assert main(["evaluate", out, "--metrics", "deletion", "--set", "deletion.n_steps=8"]) == 2  # other params
        assert "--recompute" in capsys.readouterr().err
    finally:
        registry.unregister("model", "_test_tiny_cli")


def test_two_evaluations_of_one_store_cannot_overlap(tiny_store, tiny_model):
    from uni_lab.locks import evaluation_lock
    from uni_lab.store import Store

    with evaluation_lock(Store(tiny_store)):
        with pytest.raises(StoreError, match="being written by another uni-lab process"):
            evaluate(tiny_store, metrics="monotonicity", models=[tiny_model], progress=False)
    evaluate(tiny_store, metrics="monotonicity", models=[tiny_model], progress=False)  # released


def test_evaluation_lock_holds_while_zarr_rewrites_the_group_metadata(tiny_store):
    import zarr

    from uni_lab.locks import evaluation_lock
    from uni_lab.store import Store

    with evaluation_lock(Store(tiny_store)):
        zarr.consolidate_metadata(str(tiny_store))  # what adding a variable does to .zgroup and .zmetadata
        group = Path(tiny_store) / ".zgroup"
        fresh = group.with_name(".zgroup.new")
        fresh.write_bytes(group.read_bytes())
        os.replace(fresh, group)  # a new inode, as when a writer replaces the file
        with pytest.raises(StoreError, match="being written by another uni-lab process"):
            with evaluation_lock(Store(tiny_store)):
                pass
