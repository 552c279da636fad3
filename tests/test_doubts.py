"""Doubtful results are named in the summary and in the store, never shown as good numbers alone."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr
import zarr
from torch import nn

import uni_lab
from conftest import TinyCNN, train_tiny
from uni_lab.doubts import FEATURELESS_RATIO, of, record, recorded
from uni_lab.schema import DOUBTS_ATTR
from uni_lab.store import Store, open_store
from uni_lab.summary import format_table, summarize

IMAGES = ["chelsea", "coffee"]


class ConstantHead(nn.Module):
    """A network whose output ignores its input: the last layer times 0, plus a bias (what a model
    with an all-zero head, one class, or truncated integer weights gives)."""

    def __init__(self):
        super().__init__()
        self.net = TinyCNN()
        self.bias = nn.Parameter(torch.tensor([0.5, 2.0, -1.0, 0.0]))

    def forward(self, x):
        return self.net(x) * 0 + self.bias


def _run(model, methods, out):
    return uni_lab.run(models=model, images=IMAGES, methods=methods, steps=2, out=out, progress=False)


def _recorded(path) -> list[dict]:
    return json.loads(xr.open_zarr(path).attrs[DOUBTS_ATTR])


def test_constant_output_is_named_in_summary_and_store(tmp_path):
    clf = uni_lab.wrap(ConstantHead(), mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(16, 16), name="const")
    res = _run(clf, ["ig:black", "saliency"], tmp_path / "c.zarr")
    doubts = _recorded(res.path)
    kinds = {(d["kind"], d["method"]) for d in doubts}
    assert ("constant_output", None) in kinds
    assert {("zero_map", "ig:black"), ("zero_map", "saliency")} <= kinds
    assert all(d["model"] == "const" and d["images"] == IMAGES for d in doubts)
    assert open_store(res.path).uni.doubts() == doubts  # what a notebook reads
    # the degenerate numbers (completeness error 0, monotone fraction 1) carry the flag in their row
    row = res.summary.set_index("method").loc["ig:black"]
    assert row["completeness_error"] == 0 and row["monotone_fraction"] == 1
    assert "constant output" in row["doubt"] and "zero map 2/2" in row["doubt"]
    text = format_table(res.summary)
    assert "doubt: const: F_c(x) (prob) took one value" in text
    assert "doubt: ig:black on const: the map is zero everywhere on 2 of 2 images (chelsea, coffee)" in text


def test_normal_model_has_no_doubt(tmp_path):
    res = _run(train_tiny(), ["ig:black", "saliency"], tmp_path / "n.zarr")
    assert _recorded(res.path) == []
    assert "doubt" not in res.summary.columns
    assert "doubt" not in format_table(res.summary)


@pytest.fixture(scope="module")
def uni_store(tmp_path_factory):
    return _run(train_tiny(), ["uni", "ig:black"], tmp_path_factory.mktemp("doubts") / "u.zarr").path


def _set_ratio(path, method_index: int, ratios) -> None:
    """Write prob_baseline = ratio · prob_input for one method of the store's one model."""
    g = zarr.open_group(str(path), mode="r+")
    prob_input = g["prob_input"][0]
    g["prob_baseline"][0, method_index] = np.asarray(ratios) * prob_input


def test_uni_baseline_that_is_not_featureless_is_flagged(uni_store):
    ds = open_store(uni_store)
    methods = list(map(str, ds.xai_method.values))
    # chelsea above the bar, coffee below it; IG-black's baseline is not UNI's and never judged by it
    _set_ratio(uni_store, methods.index("uni"), [3 * FEATURELESS_RATIO, FEATURELESS_RATIO / 2])
    _set_ratio(uni_store, methods.index("ig:black"), [0.9, 0.9])
    found = record(Store(uni_store), refresh=True)
    flagged = [d for d in found if d["kind"] == "baseline_not_featureless"]
    assert [(d["method"], d["images"]) for d in flagged] == [("uni", ["chelsea"])]
    assert flagged[0]["ratios"]["chelsea"] == pytest.approx(0.3)
    assert _recorded(uni_store) == found
    summary = summarize(open_store(uni_store))
    assert summary.set_index("method").loc["uni", "doubt"] == "baseline not featureless 1/2"
    assert summary.set_index("method").loc["ig:black", "doubt"] == ""
    assert "doubt: uni on tiny: the baseline is not featureless on 1 of 2 images" in format_table(summary)
    assert "chelsea 0.30" in format_table(summary)


def test_featureless_uni_baseline_is_not_flagged(uni_store):
    _set_ratio(uni_store, list(map(str, open_store(uni_store).xai_method.values)).index("uni"),
               [FEATURELESS_RATIO, FEATURELESS_RATIO / 10])  # the bar itself passes: F_c(x') <= 0.1 F_c(x)
    assert record(Store(uni_store), refresh=True) == []
    assert "doubt" not in summarize(open_store(uni_store)).columns


def test_recorded_doubts_are_not_used_once_items_changed(uni_store):
    uni = list(map(str, open_store(uni_store).xai_method.values)).index("uni")
    _set_ratio(uni_store, uni, [0.5, 0.5])
    assert [sorted(d["images"]) for d in record(Store(uni_store), refresh=True)] == [["chelsea", "coffee"]]
    g = zarr.open_group(str(uni_store), mode="r+")
    g["done"][0, uni, 1] = False  # coffee's item undone, as `uni-lab check --repair` leaves a damaged one
    try:
        ds = open_store(uni_store)
        assert recorded(ds) is None
        assert [d["images"] for d in of(ds)] == [["chelsea"]]
    finally:
        g["done"][0, uni, 1] = True


def test_model_explained_at_another_size_is_flagged(tmp_path):
    """A store holds one input per image, at the first model's size: a second model with another
    input size is warned about before any compute, and named in the store and the summary."""
    small = uni_lab.wrap(train_tiny().net, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(16, 16), name="small")
    large = uni_lab.wrap(train_tiny(seed=1).net, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=(24, 24), name="large")
    with pytest.warns(UserWarning, match=r"at small's 16×16: large \(24×24\) will be explained at that size"):
        res = _run([small, large], ["ig:black"], tmp_path / "s.zarr")
    doubts = [d for d in _recorded(res.path) if d["kind"] == "not_native_size"]
    assert [(d["model"], d["input_size"], d["size"], d["images"]) for d in doubts] == \
        [("large", [24, 24], [16, 16], IMAGES)]
    assert "not its input size" in res.summary.set_index("model").loc["large", "doubt"]
    assert "doubt: large: explained at 16×16" in format_table(res.summary)
