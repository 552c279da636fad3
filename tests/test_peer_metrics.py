"""The metrics of issue 14 against Captum and Quantus on the same maps and perturbations.

Quantus treats every array element as a feature, so its cross-checks run on a one-channel
CNN and grey photographs (an element is then a pixel, as in uni_lab's metrics); Quantus's
``"black"`` is the image minimum, so the checks pass the baseline value 0 itself.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import uni_lab
from uni_lab.evaluation import MethodCall
from uni_lab.methods import resolve

SEEDS = torch.tensor([5, 6])


def grey_cnn(seed: int = 0) -> uni_lab.Classifier:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5))
    return uni_lab.wrap(net, mean=(0.5,), std=(0.25,), input_size=(32, 32), name="grey32")


@pytest.fixture(scope="module")
def grey():
    from skimage import data
    from skimage.color import rgb2gray
    from skimage.transform import resize

    imgs = [resize(rgb2gray(getattr(data, n)()), (32, 32), anti_aliasing=True) for n in ("chelsea", "coffee")]
    x = torch.from_numpy(np.stack(imgs)).unsqueeze(1).float().contiguous()
    model = grey_cnn()
    with torch.no_grad():
        t = model(x).argmax(-1)
    return model, x, t


def _saliency(model, x, t):
    call = MethodCall(resolve("saliency"))
    return call, call(model, x, t).attribution


def test_max_sensitivity_matches_captum_given_the_same_perturbations(grey):
    from captum.metrics import sensitivity_max

    from uni_lab.plugins.metric_sensitivity import max_sensitivity, perturbation

    model, x, t = grey
    call, a = _saliency(model, x, t)
    ours = max_sensitivity(model, x, t, a, call, seeds=SEEDS, n_samples=6)["max_sensitivity"]
    for i in range(2):
        deltas = torch.cat([perturbation(x[i:i + 1], SEEDS[i:i + 1], "sensitivity", s, "uniform", 0.02)
                            for s in range(6)])
        first = lambda inp: inp[0] if isinstance(inp, tuple) else inp  # Captum passes tuples of inputs
        # Captum iterates over what explanation_func returns as a tuple of inputs' maps
        ref = sensitivity_max(lambda inp, target: (call(model, first(inp), t[i].expand(len(first(inp)))).attribution,),
                              x[i:i + 1],
                              perturb_func=lambda inp, perturb_radius: first(inp) + deltas, n_perturb_samples=6,
                              target=t[i:i + 1])
        np.testing.assert_allclose(float(ours[i]), float(ref), rtol=1e-5)
    assert (ours > 0).all()


@pytest.mark.parametrize("name", ["MaxSensitivity", "AvgSensitivity", "LocalLipschitzEstimate"])
def test_sensitivities_match_quantus_through_the_explain_func_bridge(grey, name):
    import quantus

    from uni_lab.plugins import metric_sensitivity as ms
    from uni_lab.quantus_bridge import explain_func

    model, x, t = grey
    call, a = _saliency(model, x, t)
    n = 5
    kind, stream, scale = ("normal", "local_lipschitz", 0.1) if name == "LocalLipschitzEstimate" else \
        ("uniform", "sensitivity", 0.02)
    if name == "LocalLipschitzEstimate":
        ours = ms.local_lipschitz(model, x, t, a, call, seeds=SEEDS, n_samples=n)["local_lipschitz"]
    else:
        fn = ms.max_sensitivity if name == "MaxSensitivity" else ms.avg_sensitivity
        ours = fn(model, x, t, a, call, seeds=SEEDS, n_samples=n)[fn.__name__]
    steps = iter(range(n))

    def replay(arr, indices=None, indexed_axes=None, **kwargs):  # Quantus's perturbation s is ours
        s = next(steps)
        delta = torch.cat([ms.perturbation(x[i:i + 1], SEEDS[i:i + 1], stream, s, kind, scale) for i in range(2)])
        return arr + delta.numpy().reshape(arr.shape)

    kwargs = dict(nr_samples=n, perturb_func=replay, abs=False, normalise=False, disable_warnings=True)
    if name == "LocalLipschitzEstimate":
        kwargs["perturb_std"] = 0.1
    metric = getattr(quantus, name)(**kwargs)
    ref = metric(model=model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=a.numpy(), explain_func=explain_func,
                 explain_func_kwargs={"method": "saliency", "output": "prob"}, device="cpu", batch_size=2)
    np.testing.assert_allclose(ours.numpy(), np.asarray(ref, dtype=float), rtol=1e-4)


def test_infidelity_matches_captum_and_is_zero_for_the_gradient_of_a_linear_model(grey):
    from captum.metrics import infidelity as captum_infidelity

    from uni_lab.captum import Scores, image_seeds, seeded
    from uni_lab.plugins.metric_infidelity import infidelity

    model, x, t = grey
    _, a = _saliency(model, x, t)
    ours = infidelity(model, x, t, a, seeds=SEEDS, n_samples=16)["infidelity"]
    for i, seed in enumerate(image_seeds(SEEDS, "infidelity", 2)):
        with seeded(seed):
            ref = captum_infidelity(Scores(model), lambda inp: (lambda e: (e, inp - e))(torch.randn_like(inp) * 0.1),
                                    x[i:i + 1], a[i:i + 1], target=t[i:i + 1], n_perturb_samples=16, normalize=True)
        np.testing.assert_allclose(float(ours[i]), float(ref), rtol=1e-5)
    torch.manual_seed(0)
    linear = uni_lab.wrap(nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 3)), mean=(0,), std=(1,))
    tl = torch.tensor([0, 2])
    grad = uni_lab.explain("saliency", linear, x, target=tl, output="logit").attribution
    exact = infidelity(linear, x, tl, grad, seeds=SEEDS, output="logit", normalize=False)["infidelity"]
    wrong = infidelity(linear, x, tl, grad.flip(-1), seeds=SEEDS, output="logit", normalize=False)["infidelity"]
    assert float(exact.max()) < 1e-8 < float(wrong.min())


def test_road_imputation_and_curve_match_quantus(grey):
    import quantus
    from quantus.functions.perturb_func import noisy_linear_imputation

    from uni_lab.plugins.metric_road import linear_imputation, road

    model, x, t = grey
    _, a = _saliency(model, x, t)
    rng = np.random.default_rng(0)
    img, removed = rng.random((3, 24, 24)), rng.random((24, 24)) < 0.7
    np.testing.assert_allclose(linear_imputation(img, removed),
                               noisy_linear_imputation(img, np.flatnonzero(removed), noise=0.0), atol=1e-12)
    percentages = [10, 30, 50, 70, 90]
    ours = road(model, x, t, a, seeds=SEEDS, fractions=[p / 100 for p in percentages], noise=0.0)
    for i in range(2):  # one image a call: Quantus keeps only the mean over a call's images
        metric = quantus.ROAD(percentages=percentages, noise=0.0, abs=False, normalise=False, disable_warnings=True)
        metric(model=model, x_batch=x[i:i + 1].numpy(), y_batch=t[i:i + 1].numpy(), a_batch=a[i:i + 1].numpy(),
               device="cpu", batch_size=1)
        np.testing.assert_array_equal(ours["kept"].values[i], [metric.evaluation_scores[p] for p in percentages])
    assert 0 < ours["kept"].values.mean() < 1  # the check sees both outcomes
    assert ours["curve"].dims == ("image", "road_fraction") and np.isfinite(ours["road"].numpy()).all()


def test_deletion_matches_quantus_pixel_flipping_with_a_zero_baseline(grey):
    import quantus

    from uni_lab.plugins.metric_faithfulness import deletion
    from uni_lab.plugins.metric_road import pixel_flipping

    model, x, t = grey
    _, a = _saliency(model, x, t)
    ours = deletion(model, x, t, a, n_steps=16)["curve"].values
    metric = quantus.PixelFlipping(features_in_step=64, perturb_baseline=0.0, abs=False, normalise=False,
                                   disable_warnings=True)
    ref = np.asarray(metric(model=model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=a.numpy(), device="cpu",
                            batch_size=2, softmax=True), dtype=float)
    np.testing.assert_allclose(ours[:, 1:], ref, rtol=1e-5, atol=1e-7)  # Quantus's curve starts after the first step
    black = pixel_flipping(model, x, t, a, n_steps=16, replacement="black")["curve"].values
    np.testing.assert_allclose(black, ours, rtol=1e-6)
    noisy = pixel_flipping(model, x, t, a, seeds=SEEDS, n_steps=16)["curve"].values
    assert not np.allclose(noisy, ours)


def test_mufidelity_matches_quantus_faithfulness_correlation_on_the_same_subsets(grey, monkeypatch):
    import quantus

    from uni_lab.plugins.metric_faithfulness import cell_subsets, mufidelity

    model, x, t = grey
    _, a = _saliency(model, x, t)
    n_runs = 24
    ours = mufidelity(model, x, t, a, seeds=SEEDS, n_subsets=n_runs, grid=32, fraction=0.2)["mufidelity"]
    subsets = cell_subsets(2, SEEDS, n_subsets=n_runs, grid=32, fraction=0.2)  # (N, S, 32, 32)
    for i in range(2):
        runs = iter(subsets[i].flatten(1).numpy())
        monkeypatch.setattr(np.random, "choice", lambda n, size, replace=False: np.flatnonzero(next(runs)))
        metric = quantus.FaithfulnessCorrelation(nr_runs=n_runs, subset_size=int(subsets[i, 0].sum()),
                                                 perturb_baseline=0.0, abs=False, normalise=False,
                                                 return_aggregate=False, disable_warnings=True)
        ref = metric(model=model, x_batch=x[i:i + 1].numpy(), y_batch=t[i:i + 1].numpy(), a_batch=a[i:i + 1].numpy(),
                     device="cpu", batch_size=1, softmax=True)
        np.testing.assert_allclose(float(ours[i]), float(ref[0]), rtol=1e-4)


def test_evaluate_adds_the_new_metrics_to_a_store(tmp_path):
    import xarray as xr

    from conftest import train_tiny
    from uni_lab import evaluate

    clf = train_tiny()
    out = uni_lab.run(models=clf, images=["chelsea", "coffee"], methods=["ig:black", "saliency"], steps=4,
                      out=tmp_path / "s.zarr", progress=False).path
    res = evaluate(out, metrics="max_sensitivity,avg_sensitivity,local_lipschitz,infidelity,road,pixel_flipping,"
                   "deletion", models=[clf], sets=["max_sensitivity.n_samples=3", "avg_sensitivity.n_samples=3",
                                                   "local_lipschitz.n_samples=3", "infidelity.n_samples=8"],
                   progress=False)
    ds = xr.open_zarr(out)
    for v in ("max_sensitivity", "avg_sensitivity", "local_lipschitz", "infidelity", "road", "road_accuracy",
              "road_curve", "pixel_flipping", "pixel_flipping_curve", "deletion_curve"):
        assert np.isfinite(ds[v].values).all(), v
    assert (ds.max_sensitivity >= ds.avg_sensitivity).all()
    assert {"max_sensitivity", "infidelity", "road"} <= set(res.table.columns)
