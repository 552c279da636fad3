"""The schema module is the one statement of what a store holds: the writer, the evaluation,
the checker, the documented schema (docs/store.md) and the ``ds.uni`` readers must all agree with it."""
from __future__ import annotations

import re
import types
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import small_stores
from uni_lab import schema
from uni_lab.check import expected_dims
from uni_lab.skeleton import skeleton

SCHEMA_PAGE = Path(__file__).resolve().parents[1] / "docs" / "store.md"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    return xr.open_zarr(small_stores.evaluated_store(tmp_path_factory.getbasetemp()))


@pytest.mark.parametrize("n_images,size", [(1, (8, 8)), (37, (64, 64)), (600, (224, 224))])
def test_skeleton_is_the_schema(n_images, size):
    images = [types.SimpleNamespace(id=f"i{k}", source="s") for k in range(n_images)]
    ds = skeleton(["m", "n"], ["a", "b", "c"], images, size, 5, {}, "cpu")
    assert list(ds.data_vars) == list(schema.RUN_VARIABLES)
    layout = schema.chunking(n_images, size)
    for name, var in schema.RUN_VARIABLES.items():
        got = ds[name]
        assert got.dims == var.dims and got.dtype == np.dtype(var.dtype), name
        assert got.attrs.get("description") == var.description, name
        assert tuple(got.encoding["chunks"]) == schema.run_chunks(var.dims, dict(ds.sizes), layout), name
        # a block of images is whole map chunks, so shards never share a chunk file
        assert layout["images"] % got.encoding["chunks"][var.dims.index("image")] == 0, name
    assert expected_dims() == {n: v.dims for n, v in schema.RUN_VARIABLES.items()}


def test_schema_page_lists_every_run_variable_with_its_dims():
    table = SCHEMA_PAGE.read_text()
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 2 and "`" in cells[0]:
            for name in re.findall(r"`([a-z_<>*]+)`", cells[0]):
                rows[name] = tuple(d.strip() for d in cells[1].split(","))
    for name, var in schema.RUN_VARIABLES.items():
        assert name in rows, f"docs/store.md's schema table lacks {name}"
        assert rows[name] == var.dims, (name, rows[name])


def test_evaluation_names_are_built_from_declared_data():
    assert schema.metric_variable("deletion", "deletion") == "deletion"
    assert schema.metric_variable("deletion", "curve", "attack") == "attack_deletion_curve"
    assert schema.metric_flag("bias", "corruption") == "done_corruption_bias"
    attacked = xr.Variable(schema.ITEM + ("attack",), np.zeros((1, 1, 1, 1)), {"uni_lab_metric": "robustness"})
    assert schema.flag_of(attacked) == "done_attack_robustness"
    # the condition is read from the dims, not the name: a clean metric may be called attack_*
    clean = xr.Variable(schema.ITEM, np.zeros((1, 1, 1)), {"uni_lab_metric": "attack_success"})
    assert schema.flag_of(clean) == "done_attack_success"
    assert schema.is_metric("attack_success", clean) and not schema.is_flag("attack_success", clean)
    assert schema.condition_in(schema.IMAGE + ("corruption", "severity")).kind == "corruption"
    assert schema.condition_in(schema.ITEM + ("step",)).kind == "clean"
    with pytest.raises(ValueError, match="unknown condition"):
        schema.metric_flag("bias", "noise")


def test_every_evaluation_variable_is_named_by_the_schema(evaluated):
    ds = evaluated
    declared = set(schema.RUN_VARIABLES)
    for kind in ("attack", "corruption"):
        declared |= set(schema.perturbed_variables(kind))
    metrics = {v for v in ds.data_vars if schema.is_metric(v, ds[v])}
    flags = {schema.flag_of(ds[v]) for v in metrics}
    assert metrics and flags <= set(ds.data_vars)
    assert set(ds.data_vars) == declared | metrics | flags, set(ds.data_vars) ^ (declared | metrics | flags)
    for kind in ("attack", "corruption"):
        for name, var in schema.perturbed_variables(kind).items():
            assert ds[name].dims == var.dims and ds[name].dtype == np.dtype(var.dtype), name
    for v in metrics:  # a metric's dims: the item, its condition's dims, then its own; its name the condition's
        kind = schema.condition_in(ds[v].dims)
        assert ds[v].dims[:3 + len(kind.dims)] == schema.ITEM + kind.dims, v
        assert v.startswith(kind.prefix + ds[v].attrs["uni_lab_metric"]), v
    assert {v for v in ds.data_vars if schema.is_flag(v, ds[v])} == {v for v in ds.data_vars if v.startswith("done_")}


def test_readers_on_the_accessor(evaluated):
    ds = evaluated.load()
    assert ds.uni.done_methods() == list(small_stores.METHODS)
    values = ds.uni.evaluated("mufidelity")
    flag = ds[schema.metric_flag("mufidelity")]
    assert values.notnull().sum() == flag.sum() > 0  # where the flag is set, and only there
    assert ds.uni.is_evaluated(schema.metric_flag("bias", "corruption"), corruption=list(small_stores.CORRUPTIONS))
    assert not ds.uni.is_evaluated(schema.metric_flag("bias", "corruption"), corruption=["frost"])
    assert ds.uni.evaluated("no_such_metric") is None
    assert ds.uni.method_steps("uni") == 4 and ds.uni.evaluation_params("mufidelity").startswith("mufidelity(")
    assert "methods: uni" in ds.uni.caption() and "B = 4" in ds.uni.caption()
