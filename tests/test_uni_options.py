"""UNI's matching options (start, step rule, restarts, KL stop) and the run's partition of work."""
import pytest
import torch

import uni_lab
from uni_lab.errors import InputError
from uni_lab.plugins.ig import integrated_gradients
from uni_lab.plugins.uni import restart_seeds

SEEDS = torch.arange(4)


def test_zero_start_makes_the_baseline_independent_of_the_seed(tiny_model, tiny_batch):
    x, _ = tiny_batch
    target = tiny_model(x).argmax(-1)
    base = uni_lab.create("baseline", "uni", start="zero")
    assert torch.equal(base(x, tiny_model, target, seeds=SEEDS), base(x, tiny_model, target, seeds=SEEDS + 100))
    rand = uni_lab.create("baseline", "uni", start="uniform")
    assert not torch.equal(rand(x, tiny_model, target, seeds=SEEDS), rand(x, tiny_model, target, seeds=SEEDS + 100))


@pytest.mark.parametrize("norm,rule", [("linf", "l2"), ("l2", "sign"), ("l2", "l2")])
def test_every_norm_and_step_rule_stays_in_its_ball(tiny_model, tiny_batch, norm, rule):
    x, _ = tiny_batch
    target = tiny_model(x).argmax(-1)
    eps = 0.03
    # a uniform start: the tiny model's softmax saturates at x, where the KL gradient underflows to 0
    xb = uni_lab.create("baseline", "uni", norm=norm, step_rule=rule, eps=eps, step_size=0.02, start="uniform")(
        x, tiny_model, target, seeds=SEEDS)
    delta = (xb - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1) / delta.shape[1] ** 0.5
    assert torch.all(size <= eps + 1e-6) and torch.all(size > 0)


def test_restarts_are_the_mean_of_single_starts(tiny_model, tiny_batch):
    """restarts=R is the mean of the R maps of seeded single starts, restart 0 being the run's own seed."""
    x, _ = tiny_batch
    target = tiny_model(x).argmax(-1)
    three = uni_lab.explain("uni", tiny_model, x, target, seeds=SEEDS, steps=6, restarts=3)
    singles = [uni_lab.explain("uni", tiny_model, x, target, seeds=restart_seeds(SEEDS, r), steps=6) for r in range(3)]
    assert torch.equal(restart_seeds(SEEDS, 0), SEEDS)
    torch.testing.assert_close(three.attribution, torch.stack([s.attribution for s in singles]).mean(0))
    torch.testing.assert_close(three.trace["prob"], torch.stack([s.trace["prob"] for s in singles]).mean(0))
    torch.testing.assert_close(three.baseline, torch.stack([s.baseline for s in singles]).mean(0))
    one = uni_lab.explain("uni", tiny_model, x, target, seeds=SEEDS, steps=6, restarts=1)
    assert torch.equal(one.attribution, singles[0].attribution)


def test_kl_stop_freezes_converged_images(tiny_model, tiny_batch):
    x, _ = tiny_batch
    target = tiny_model(x).argmax(-1)
    frozen = uni_lab.create("baseline", "uni", start="zero", kl_tol=1e9)(x, tiny_model, target)
    assert torch.equal(frozen, x), "a KL below the tolerance from the start leaves x' at the start"


@pytest.mark.parametrize("bad", [{"start": "x"}, {"step_rule": "adam"}, {"kl_tol": -1.0}])
def test_bad_uni_options_are_refused(tiny_model, tiny_batch, bad):
    x, _ = tiny_batch
    with pytest.raises(InputError, match="uni\\."):
        uni_lab.create("baseline", "uni", **bad)(x, tiny_model, torch.zeros(4, dtype=torch.long))
    with pytest.raises(InputError, match="restarts"):
        uni_lab.explain("uni", tiny_model, x, torch.zeros(4, dtype=torch.long), restarts=0)


def test_maps_do_not_depend_on_the_free_memory(tiny_model, tiny_batch, monkeypatch):
    """The partition of work into passes is planned from constants, not from the memory free now:
    a tight and a loose memory budget give bitwise-equal maps and the same recorded pass size."""
    from uni_lab.engine import partition

    x, _ = tiny_batch
    target = tiny_model(x).argmax(-1)
    monkeypatch.setenv("UNI_LAB_MEMORY_BUDGET", "2KiB")
    tight = uni_lab.explain("uni", tiny_model, x, target, seeds=SEEDS, steps=5)
    plan_tight, warning = partition(tiny_model, x[:1], 4)
    assert warning and "memory budget" in warning and "internal_batch_size" in warning
    monkeypatch.setenv("UNI_LAB_MEMORY_BUDGET", "8GiB")
    loose = uni_lab.explain("uni", tiny_model, x, target, seeds=SEEDS, steps=5)
    plan_loose, warning = partition(tiny_model, x[:1], 4)
    assert warning is None and plan_tight == plan_loose
    assert torch.equal(tight.attribution, loose.attribution) and torch.equal(tight.baseline, loose.baseline)
    ig = lambda: integrated_gradients(tiny_model, x, target, steps=7).attribution
    monkeypatch.setenv("UNI_LAB_MEMORY_BUDGET", "1KiB")
    first = ig()
    monkeypatch.delenv("UNI_LAB_MEMORY_BUDGET")
    assert torch.equal(first, ig())


def test_runs_are_bitwise_whatever_the_budget_and_close_whatever_the_batch(tmp_path, monkeypatch):
    """The same command twice, with the memory budget changed between them, writes the same bits;
    batches of 1, 2 and all images (another partition of the same work) agree to float rounding."""
    import json

    import numpy as np
    import xarray as xr
    from store_runs import ATOL, RTOL, assert_same_store, make_images, run_inprocess, values

    images = make_images(tmp_path / "imgs", n=4)
    monkeypatch.setenv("UNI_LAB_MEMORY_BUDGET", "64MiB")
    run_inprocess(images, tmp_path / "a.zarr", batch_size=4)
    monkeypatch.setenv("UNI_LAB_MEMORY_BUDGET", "16GiB")
    run_inprocess(images, tmp_path / "b.zarr", batch_size=4)
    assert_same_store(tmp_path / "b.zarr", tmp_path / "a.zarr", bitwise=True)
    for b in (1, 2):
        run_inprocess(images, tmp_path / f"b{b}.zarr", batch_size=b)
        got, want = values(tmp_path / f"b{b}.zarr"), values(tmp_path / "a.zarr")
        for name in ("attribution", "baseline", "trace_prob", "trace_logit"):  # the maps and their paths
            np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL, err_msg=name)
        assert json.loads(xr.open_zarr(tmp_path / f"b{b}.zarr").attrs["uni_lab_partition"])["batch_size"] == b
    with pytest.warns(UserWarning, match="another partition of the work.*batch_size 4 -> 2"):
        run_inprocess(images, tmp_path / "a.zarr", batch_size=2)  # a resume: nothing left to compute


def test_unlearned_targets_are_bitwise_whatever_the_batch(tiny_model, tiny_batch):
    """Unlearning chunks are padded to full size, so an image's unlearned distribution is the same
    bits alone, in a pair or in the whole batch (PGD amplifies differences of 1e-7 about ×10 a step)."""
    from uni_lab.plugins.uni import unlearned_log_probs

    x, _ = tiny_batch
    target = tiny_model(x).argmax(-1)
    whole = unlearned_log_probs(tiny_model, x, target)
    assert torch.equal(whole[2:3], unlearned_log_probs(tiny_model, x[2:3], target[2:3]))
    assert torch.equal(whole[2:], unlearned_log_probs(tiny_model, x[2:], target[2:]))
