"""`uni-lab bench` on tiny settings: the keys, finite positive ratios, the Captum cross-check;
and the background store writer it measures. No timed assertions: timings depend on the machine."""
from __future__ import annotations

import json
import math
import statistics
import re
import threading
import time

import pytest
import torch
import xarray as xr

import uni_lab
from uni_lab import cli
from uni_lab.bench import GOALS, bench, bench_batch, format_table, measure, phase_split
from uni_lab.errors import InputError, StoreError
from uni_lab.writer import StoreWriter

RATIOS = ("uni_vs_floor", "uni_vs_floor_incl_baseline_point", "uni_batched_vs_naive", "ig_vs_captum",
          "ig_vs_captum_with_delta", "ig_vs_captum_same_graph", "store_share", "store_busy_share")
KEYS = RATIOS + ("device", "model", "batch_size", "T", "B", "images_per_s", "goals", "met", "seconds",
                 "cpu_seconds", "uni_phases_s", "ig_vs_captum_max_rel_diff")


def _finite_positive(v) -> bool:
    return isinstance(v, float) and math.isfinite(v) and v > 0


@pytest.fixture
def one_thread():
    """Oversubscribed CI machines turn OpenMP barriers into waits for a time slice; tiny passes
    gain nothing from two threads anyway."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


T, B, BATCH = 1, 2, 4  # UNI's PGD steps, Riemann steps and batch in the tiny bench


@pytest.fixture(scope="module")
def tiny_bench(tiny_model):
    """One bench on the tiny model, read by the tests below. UNI from a uniform start: from x itself the
    tiny net's KL gradient underflows, x' = x and both maps are ~0, so their relative difference would
    measure nothing."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setitem(uni_lab.get("baseline", "uni").params, "start", "uniform")
            return bench(tiny_model, batch_size=BATCH, size=16, steps=B, pgd_steps=T, reps=3,
                         methods=["ig:black", "saliency"], method_batch=2, store_methods=["ig:black", "uni"])
    finally:
        torch.set_num_threads(before)


def test_bench_on_tiny_model(tiny_bench):
    res = tiny_bench
    assert set(KEYS) <= set(res)
    for key in RATIOS:
        assert _finite_positive(res[key]), (key, res[key])
    assert res["store_share"] < 1 and res["store_busy_share"] < 1
    assert (res["model"], res["batch_size"], res["T"], res["B"], res["device"]) == ("tiny", BATCH, T, B, "cpu")
    assert res["size"] == [16, 16] and res["reps"] == 3
    assert set(res["images_per_s"]) == {"ig:black", "saliency"} and not res["method_errors"]
    assert all(_finite_positive(v) for v in res["images_per_s"].values())
    # same maths as Captum's right-Riemann IG; the naive loop is the same UNI
    assert res["ig_vs_captum_max_rel_diff"] < 1e-4
    assert res["uni_batched_vs_naive_map_max_rel_diff"] < 1e-3
    json.loads(json.dumps(res))  # JSON-ready as returned


def test_bench_ratios_are_the_seconds_they_divide(tiny_bench):
    """Each ratio is the quotient of the medians it names, in wall and in CPU seconds."""
    res = tiny_bench
    s, cpu = res["seconds"], res["cpu_seconds"]
    assert set(s) == set(cpu) == {"uni", "floor", "uni_naive", "ig", "captum_ig", "captum_ig_delta",
                                  "captum_ig_same_graph"}
    assert all(_finite_positive(v) for v in [*s.values(), *cpu.values()])
    quotients = {"uni_vs_floor": s["uni"] / s["floor"],
                 "uni_vs_floor_incl_baseline_point": s["uni"] / s["floor"] * (1 + T + B) / (2 + T + B),
                 "uni_batched_vs_naive": s["uni_naive"] / s["uni"], "ig_vs_captum": s["ig"] / s["captum_ig"],
                 "ig_vs_captum_with_delta": s["ig"] / s["captum_ig_delta"],
                 "ig_vs_captum_same_graph": s["ig"] / s["captum_ig_same_graph"]}
    for key, value in quotients.items():
        assert res[key] == pytest.approx(value, rel=1e-12), key
    by_rep = res["seconds_by_rep"]
    assert s == pytest.approx({k: statistics.median(v) for k, v in by_rep.items()}, rel=1e-12)
    assert res["uni_vs_floor_by_rep"] == pytest.approx([u / f for u, f in zip(by_rep["uni"], by_rep["floor"])],
                                                       rel=1e-12)
    assert len(res["uni_vs_floor_by_rep"]) == res["reps"]
    assert res["cpu_ratios"] == pytest.approx({"uni_vs_floor": cpu["uni"] / cpu["floor"],
                                               "uni_batched_vs_naive": cpu["uni_naive"] / cpu["uni"],
                                               "ig_vs_captum": cpu["ig"] / cpu["captum_ig"]}, rel=1e-12)


def test_bench_phases_sum_to_unis_time_and_the_floor_says_its_count(tiny_bench):
    res = tiny_bench
    phases, passes = res["uni_phases_s"], res["uni_phases_in_floor_passes"]
    assert set(phases) == set(passes) == {"unlearn", "match", "integrate"}
    assert all(_finite_positive(v) for v in phases.values()), phases
    # the split comes from the reps whose median is UNI's time, so the phases add up to it
    assert sum(phases.values()) == pytest.approx(res["seconds"]["uni"], rel=1e-9)
    pass_s = res["seconds"]["floor"] / (1 + T + B)
    assert passes == pytest.approx({k: v / pass_s for k, v in phases.items()}, rel=1e-9)
    assert sum(passes.values()) == pytest.approx(res["uni_vs_floor"] * (1 + T + B), rel=1e-9)
    assert res["floor_counts"] == ("1+T+B = 4 passes, each a forward and input gradient (engine.score_and_grad) "
                                   "through the fast view at batch 4")


def test_bench_goals_are_judged_on_the_reported_ratios(tiny_bench):
    res = tiny_bench
    assert set(res["goals"]) == set(res["met"]) == set(GOALS)
    for key, (op, bound) in GOALS.items():  # the CPU goals: no CUDA_GOALS on this device
        assert res["goals"][key] == f"{op} {bound}"
        assert res["met"][key] is (res[key] <= bound if op == "<=" else res[key] >= bound), key
    table = format_table(res)
    for key in RATIOS:
        assert re.search(rf"^{key} +{res[key]:.3f}\b", table, re.M), key


def test_phase_split_is_the_median_reps_split():
    walls = [3.0, 1.0, 2.0, 10.0]
    splits = [{"unlearn": 1.0, "match": 1.0}, {"unlearn": 0.2, "match": 0.3},
              {"unlearn": 0.6, "match": 0.4}, {"unlearn": 5.0, "match": 1.0}]
    got = phase_split(walls, splits)  # the middle two reps: 2.0 and 3.0 s
    assert got == pytest.approx({"unlearn": 0.8, "match": 0.7, "integrate": 1.0})
    assert sum(got.values()) == pytest.approx(2.5)
    assert phase_split(walls[:3], splits[:3]) == pytest.approx({"unlearn": 0.6, "match": 0.4, "integrate": 1.0})


def test_bench_cli_json(capsys, one_thread):
    code = cli.main(["bench", "--model", "mobilenet_v3_small", "--weights", "random", "--size", "16",
                     "--batch-size", "2", "--steps", "2", "--pgd-steps", "1", "--methods", "ig:black", "--method-batch", "1",
                     "--no-store", "--json", "--quiet"])
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    assert "store_share" not in res
    for key in ("uni_vs_floor", "uni_batched_vs_naive", "ig_vs_captum"):
        assert math.isfinite(res[key]) and res[key] > 0
    assert res["model"] == "mobilenet_v3_small" and res["images_per_s"]["ig:black"] > 0


def test_bench_rejects_too_few_reps_and_bad_sizes():
    with pytest.raises(InputError, match="3 repetitions"):
        measure({"a": lambda: None}, 2, "cpu")
    with pytest.raises(InputError, match="--size"):
        bench("efficientnet_lite0", size=4)
    with pytest.raises(InputError, match="--steps >= 2"):
        bench("efficientnet_lite0", steps=1)


def test_bench_batch_is_distinct_real_images():
    x = bench_batch(16, 16)
    assert x.shape == (16, 3, 16, 16) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert len({tuple(v.flatten()[:64].tolist()) for v in x}) == 16


class FakeStore:
    """Records calls; a write can be told to fail or to be slow."""

    def __init__(self, path, fail_on=None, delay=0.0):
        self.path = path
        self.log = []
        self.fail_on = fail_on
        self.delay = delay
        self.threads = set()

    def write_item(self, mi, mei, ii, values):
        time.sleep(self.delay)
        self.threads.add(threading.current_thread().name)
        if ii == self.fail_on:
            raise StoreError(f"disk full at {ii}")
        self.log.append(("item", ii))

    def write_inputs(self, mi, ii, *rest):
        self.log.append(("inputs", ii))

    def done(self):
        return list(self.log)


def test_store_writer_writes_in_order_off_the_main_thread(tmp_path):
    store = FakeStore(tmp_path / "a", delay=0.01)
    w = StoreWriter(store, max_pending=2)
    w.write_inputs(0, 0, None)
    for ii in range(5):
        w.write_item(0, 0, ii, {})
    assert w.done() == [("inputs", 0)] + [("item", ii) for ii in range(5)]  # a read sees every write
    w.close()
    assert store.threads and threading.current_thread().name not in store.threads
    t = w.timings()
    assert t["store_writes"] == 6 and t["store_busy_s"] >= 0.05 and t["store_main_s"] > 0


def test_store_writer_reports_a_failed_write(tmp_path):
    w = StoreWriter(FakeStore(tmp_path / "b", fail_on=1))
    for ii in range(3):
        w.write_item(0, 0, ii, {})
    with pytest.raises(StoreError, match="disk full"):
        w.close()


def test_a_new_writer_waits_for_an_abandoned_one(tmp_path):
    store = FakeStore(tmp_path / "c", delay=0.02)
    old = StoreWriter(store)
    for ii in range(5):
        old.write_item(0, 0, ii, {})
    StoreWriter(store).close()  # e.g. a rerun after a failed run that never closed its writer
    assert len(store.log) == 5


def test_runner_reports_store_timings(tiny_model, tmp_path):
    res = uni_lab.run(tiny_model, images=["chelsea", "coffee"], methods=["ig:black"], steps=2, batch_size=1,
                      out=tmp_path / "s.zarr", progress=False)
    t = res.timings
    assert t["store_writes"] >= 4 and 0 < t["store_main_s"] < t["wall_s"]
    ds = xr.open_zarr(res.path)
    assert bool(ds["done"].all()) and bool(torch.isfinite(torch.as_tensor(ds["attribution"].values)).all())


def test_fresh_store_is_created_on_the_writer_thread(tiny_model, tmp_path, monkeypatch):
    """A run into a new --out queues the store's creation behind nothing and its first writes
    behind it; a creation that fails there still stops the run with the store's own error."""
    from uni_lab.store import Store

    threads = []
    create = Store.open_or_create

    def spy(self, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return create(self, *args, **kwargs)

    monkeypatch.setattr(Store, "open_or_create", spy)
    res = uni_lab.run(tiny_model, images=["chelsea", "coffee"], methods=["ig:black"], steps=2,
                      out=tmp_path / "s.zarr", progress=False)
    assert threads and threads[0].startswith("uni-lab-store")
    assert bool(xr.open_zarr(res.path)["done"].all())

    def broken(self, *args, **kwargs):
        raise StoreError(f"cannot write the store at '{self.path}' (disk full)")

    monkeypatch.setattr(Store, "open_or_create", broken)
    with pytest.raises(StoreError, match="disk full"):
        uni_lab.run(tiny_model, images=["chelsea"], methods=["ig:black"], steps=2, out=tmp_path / "t.zarr",
                    progress=False)
    assert not Store(tmp_path / "t.zarr").exists()


def test_region_writes_match_item_writes_for_scattered_images(tiny_model, tmp_path):
    """A batch of images that are not consecutive in the store (a resumed run's gaps) is written
    in runs of region writes, done flags last; the store then holds what the run wrote."""
    import shutil

    import numpy as np

    from uni_lab.store import Store, _runs

    assert _runs([0, 1, 2, 5, 6, 9]) == [(0, 3, slice(0, 3)), (5, 7, slice(3, 5)), (9, 10, slice(5, 6))]
    res = uni_lab.run(tiny_model, images=["chelsea", "coffee", "astronaut", "rocket"], methods=["ig:black"],
                      steps=2, batch_size=4, out=tmp_path / "a.zarr", progress=False)
    names = ["attribution", "trace_prob", "trace_alpha", "completeness_error", "seconds"]
    ref = xr.open_zarr(res.path).load()
    order = [0, 2, 3]
    for single in (False, True):
        path = tmp_path / f"b{int(single)}.zarr"
        shutil.copytree(res.path, path)
        st = Store(path)
        g = st.group()
        for n in names:
            g[n][0, 0] = np.nan
        g["done"][0, 0] = False
        rows = {n: ref[n].values[0, 0][order] for n in names}
        rows = {n: v[..., :-1] if n.startswith("trace_") else v for n, v in rows.items()}  # short: padded
        if single:
            for j, i in enumerate(order):
                st.write_item(0, 0, i, {n: v[j] for n, v in rows.items()})
        else:
            st.write_items(0, 0, order, rows)
        back = xr.open_zarr(path).load()
        assert back["done"].values[0, 0].tolist() == [True, False, True, True]
        for n in names:
            got, want = back[n].values[0, 0], ref[n].values[0, 0]
            assert np.isnan(got[1]).all()
            if n.startswith("trace_"):
                np.testing.assert_array_equal(got[order][..., :-1], want[order][..., :-1])
                assert np.isnan(got[order][..., -1]).all()
            else:
                np.testing.assert_array_equal(got[order], want[order])
