"""seed_stability (maps under R seed sets) and monotonicity's Spearman of α against F_c (issue 12)."""
from __future__ import annotations

import numpy as np
import torch
import xarray as xr

import uni_lab
from uni_lab.evaluation import MethodCall
from uni_lab.explanation import Explanation
from uni_lab.methods import resolve
from uni_lab.plugins.metric_path import monotonicity
from uni_lab.plugins.metric_seed import seed_sets, seed_stability
from uni_lab.seeding import image_seed

from test_metrics import _trace_explanation  # a path from given F_c values, α evenly spaced


def _stability(spec, model, batch):
    x, _ = batch
    target = model(x).argmax(-1)
    seeds = torch.tensor([image_seed(0, f"im{i}") for i in range(len(x))])
    explain = MethodCall(resolve(spec, defaults={"steps": 4}))
    stored = explain(model, x, target, seeds).attribution
    return seed_stability(model, x, target, stored, explain, seeds)


def test_seed_sets_start_with_the_run_seeds_and_do_not_depend_on_the_batch():
    seeds = torch.tensor([5, 7, 9])
    assert torch.equal(seed_sets(seeds, 0), seeds)
    sets = [seed_sets(seeds, r) for r in (1, 2)]
    assert len({int(s) for t in [seeds, *sets] for s in t}) == 9  # all distinct
    assert torch.equal(seed_sets(seeds[1:], 2), sets[1][1:])


def test_a_deterministic_method_is_exactly_stable(tiny_model, tiny_batch):
    out = _stability("ig:black", tiny_model, tiny_batch)
    for key in ("spearman_mean", "spearman_min"):
        assert torch.equal(out[key], torch.ones(4, dtype=torch.float64)), out[key]
    for key in ("rel_l2_mean", "rel_l2_max", "rel_l2_stored"):
        assert torch.equal(out[key], torch.zeros(4, dtype=torch.float64)), out[key]


def test_a_random_baseline_moves_the_map(tiny_model, tiny_batch):
    out = _stability("ig:uniform", tiny_model, tiny_batch)
    assert (out["spearman_mean"] < 1).all() and (out["spearman_min"] <= out["spearman_mean"]).all(), out
    assert (out["rel_l2_mean"] > 0.01).all() and (out["rel_l2_max"] >= out["rel_l2_mean"]).all(), out
    assert (out["rel_l2_stored"] < 1e-6).all(), out  # set 0 reproduces the stored map


def test_paper_monotonicity_is_the_rank_correlation_of_alpha_and_the_score():
    exp = _trace_explanation([[0.1, 0.2, 0.4, 0.5, 0.9], [0.9, 0.6, 0.4, 0.2, 0.1], [0.1, 0.3, 0.9, 0.7, 0.8]])
    rho = monotonicity(torch.zeros(3, 3, 4, 4), exp)["spearman"].numpy()
    np.testing.assert_allclose(rho, [1.0, -1.0, 0.7], atol=1e-12)  # ranks 1,2,5,3,4: 1 - 6·(0+0+4+1+1)/(5·24)
    assert set(monotonicity(torch.zeros(3, 3, 4, 4), exp)) == {"fraction", "conformant", "spearman"}
    none = monotonicity(torch.zeros(2, 3, 4, 4), Explanation(torch.zeros(2, 3, 4, 4)))["spearman"]
    assert torch.isnan(none).all()


def test_cli_evaluate_stores_seed_stability_per_item(tmp_path, tiny_model):
    import copy

    from uni_lab.cli import main
    from uni_lab.registry import registry

    @uni_lab.model("_test_tiny_seed")
    def tiny_seed(weights=None):
        """The session's tiny model under a registered name, so the store can reload it."""
        clf = copy.deepcopy(tiny_model)
        clf.name = "_test_tiny_seed"
        return clf

    out = tmp_path / "seed.zarr"
    try:
        uni_lab.run(models=[tiny_seed()], images=["chelsea", "coffee"], methods=["ig:black", "ig:uniform"], steps=4,
                    out=out, progress=False)
        assert main(["evaluate", str(out), "--metrics", "seed_stability,monotonicity", "--no-progress"]) == 0
    finally:
        registry.unregister("model", "_test_tiny_seed")
    ds = xr.open_zarr(out)
    for key in ("spearman_mean", "spearman_min", "rel_l2_mean", "rel_l2_max", "rel_l2_stored"):
        assert ds[f"seed_stability_{key}"].dims == ("model", "xai_method", "image")
    assert bool(ds["done_seed_stability"].all())
    assert '"n_seeds": 3' in ds["seed_stability_spearman_mean"].attrs["uni_lab_params"]
    sp = ds["seed_stability_spearman_mean"].sel(model="_test_tiny_seed")
    assert (sp.sel(xai_method="ig:black").values == 1).all()
    assert (sp.sel(xai_method="ig:uniform").values < 1).all()
    assert (ds["seed_stability_rel_l2_stored"].values < 1e-5).all()  # the run's seeds give the stored maps again
    mono, prob = ds["monotonicity_spearman"].values, ds["trace_prob"].values
    flat = np.nanmax(prob, -1) == np.nanmin(prob, -1)  # a saturated F_c = 1 path has no ranks: NaN
    np.testing.assert_array_equal(np.isnan(mono), flat)
    assert (np.abs(mono[~flat]) <= 1 + 1e-12).all()
