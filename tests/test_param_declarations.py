"""Plugin parameters are declared once, in the signature, and refused before anything is computed.

The first tests are generated from the registry: for every declared parameter of every registered
plugin (built-ins, entry points, test plugins), a value of the wrong type, one outside a declared
range and one outside a ``Literal``'s choices must each be refused by validation, in one line
naming ``plugin.param``. A plugin added later is covered without editing this file.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Annotated

import pytest
import torch
from annotated_types import Ge, Gt, Le, Lt, MultipleOf

import uni_lab
from uni_lab.errors import InputError, PluginError, UniLabError
from uni_lab.evaluation.selection import select as plan
from uni_lab.methods import resolve, route_params
from uni_lab.registry import Registry, registry

TESTS = Path(__file__).parent


def _wrong_type(accepts):
    """A ``--set``-able value of none of the declared types (a list where strings are accepted)."""
    if accepts.types:
        return [1, 2] if str in accepts.types else "not-a-number"
    return 12345 if all(isinstance(c, str) for c in accepts.choices) else "not-a-choice"


def _outside(bound, integer: bool):
    """A value just outside one bound: the bound itself where it is strict, one step past it otherwise."""
    step = 1 if integer else 0.5
    if isinstance(bound, Gt):
        return bound.gt
    if isinstance(bound, Lt):
        return bound.lt
    if isinstance(bound, Ge):
        return bound.ge - step
    assert isinstance(bound, Le), bound
    return bound.le + step


def _cases():
    cases = []
    for p in uni_lab.list_plugins():
        for param, accepts in p.declared.items():
            if accepts.types or accepts.choices is not None:
                cases.append(pytest.param(p, param, _wrong_type(accepts), id=f"{p.kind}.{p.name}.{param}-type"))
            integer = int in accepts.types and float not in accepts.types
            for bound in accepts.bounds:
                cases.append(pytest.param(p, param, _outside(bound, integer), id=f"{p.kind}.{p.name}.{param}-{bound}"))
            if accepts.choices:
                other = "no_such_choice" if isinstance(accepts.choices[0], str) else 99
                cases.append(pytest.param(p, param, other, id=f"{p.kind}.{p.name}.{param}-choice"))
    return cases


CASES = _cases()


def test_the_generated_cases_cover_the_builtins():
    """Guards the generator: the declarations it reads exist (a registry that read none would pass vacuously)."""
    ids = {c.id for c in CASES}
    for expected in ("metric.deletion.n_steps-Ge(ge=1)", "metric.mufidelity.n_subsets-Ge(ge=2)",
                     "explainer.ig.rule-choice", "baseline.uni.norm-choice", "baseline.uni.eps-Gt(gt=0)",
                     "attack.brightness.severity-choice", "explainer.guided_ig.fraction-Le(le=1)",
                     "explainer.smoothgrad.samples-type"):
        assert expected in ids, expected
    assert len(CASES) > 150


@pytest.mark.parametrize("plugin,param,value", CASES)
def test_every_declared_parameter_refuses_a_bad_value_in_validation(plugin, param, value):
    with pytest.raises(UniLabError) as err:
        plugin.validate(plugin.resolved_params({param: value}))
    message = str(err.value)
    assert f"{plugin.name}.{param} must be" in message and "\n" not in message, message
    with pytest.raises(UniLabError):  # the door --set goes through refuses it as well
        route_params({f"{plugin.kind}.{plugin.name}.{param}": value})


@pytest.mark.parametrize("plugin,param,value", [c for c in CASES if c.values[0].kind == "explainer"][::7])
def test_resolve_refuses_before_a_method_exists(plugin, param, value):
    with pytest.raises(UniLabError):
        resolve(plugin.name, route_params({f"explainer.{plugin.name}.{param}": value}))


def test_message_is_one_line_with_the_bound_and_an_example():
    with pytest.raises(InputError) as err:
        route_params({"deletion.n_steps": -4})
    assert str(err.value) == "deletion.n_steps must be >= 1, got -4; e.g. --set deletion.n_steps=32."
    with pytest.raises(InputError, match=r"^guided_ig\.fraction must be > 0 and <= 1, got 1\.5; e\.g\."):
        route_params({"guided_ig.fraction": 1.5})
    with pytest.raises(InputError, match=r"^uni\.norm must be one of \('linf', 'l2'\), got 'l3'"):
        route_params({"baseline.uni.norm": "l3"})
    with pytest.raises(PluginError, match=r"^smoothgrad\.samples must be an int, got 'many'"):
        route_params({"smoothgrad.samples": "many"})


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), "nan", "inf", "-Infinity"])
def test_a_number_that_is_not_finite_is_refused_as_such(value):
    """eps = inf passed every bound (inf > 0) and reached PGD, where inf · 0 makes NaN baselines;
    `--set uni.eps=nan` arrives as text and was called "not a float"."""
    with pytest.raises(InputError, match=r"^uni\.eps must be a finite number, got .*; e\.g\. --set uni\.eps=0\.025\.$"):
        route_params({"uni.eps": value})
    with pytest.raises(InputError, match=r"^uni\.norm must be one of"):  # text meant as a choice stays a choice
        route_params({"baseline.uni.norm": "inf"})


def test_metric_and_attack_values_are_refused_by_the_evaluation_plan():
    """``plan`` is what run and evaluate build before they touch a store."""
    with pytest.raises(InputError, match=r"mufidelity\.n_subsets must be >= 2, got 0"):
        plan(metrics="mufidelity", sets={"mufidelity.n_subsets": 0})
    with pytest.raises(InputError, match=r"road\.order must be one of \('morf', 'lerf'\)"):
        plan(metrics="road", sets={"road.order": "random"})
    with pytest.raises(InputError, match=r"road\.fractions must be a non-empty list of fractions in \(0, 1\)"):
        plan(metrics="road", sets={"road.fractions": [0.5, 1.0]})
    with pytest.raises(InputError, match=r"riemann_stability\.steps must be a non-empty list of step counts"):
        plan(metrics="riemann_stability", sets={"riemann_stability.steps": [0, 4]})
    with pytest.raises(InputError, match=r"brightness\.severity must be one of \(1, 2, 3, 4, 5\), got 7"):
        plan(corruptions="brightness", severities=[1], sets={"brightness.severity": 7})
    with pytest.raises(InputError, match=r"fgsm_attribution\.eps must be > 0"):
        plan(attacks="fgsm_attribution", sets={"fgsm_attribution.eps": 0.0})
    with pytest.raises(PluginError, match=r"unknown baseline 'nope'"):  # a check= hook: the reference list
        resolve("deeplift_shap", route_params({"deeplift_shap.baselines": "black,nope"}))


def test_a_choice_is_matched_in_kind_not_by_python_equality():
    corruption = uni_lab.get("attack", "brightness")
    for value in (True, 3.0, "3"):  # True == 1 and 3.0 == 3 in Python; neither is a severity
        with pytest.raises(InputError, match="severity must be one of"):
            corruption.validate({"severity": value})
    assert corruption.validate({"severity": 3}) == {"severity": 3}


def _module(tmp_path, monkeypatch, name: str, source: str):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    return importlib.import_module(name)


def test_future_annotations_are_resolved_and_checked(tmp_path, monkeypatch):
    """``from __future__ import annotations`` makes every annotation a string; they are read all the same."""
    _module(tmp_path, monkeypatch, "future_params_plugin", '''
        from __future__ import annotations
        from typing import Annotated, Literal
        from annotated_types import Ge, Interval
        import uni_lab

        MODES = ("soft", "hard")

        @uni_lab.baseline("_test_future")
        def future(x, model, target, *, level: Annotated[float, Interval(ge=0, le=1)] = 0.5,
                   count: Annotated[int, Ge(1)] | None = None, mode: Literal[MODES] = "soft"):
            return x * level
    ''')
    try:
        plugin = uni_lab.get("baseline", "_test_future")
        assert plugin.validate({"level": 1.0, "count": None, "mode": "hard"})
        for bad, match in (({"level": 1.5}, r"level must be >= 0 and <= 1, got 1\.5"),
                           ({"count": 0}, r"count must be >= 1, got 0"),
                           ({"mode": "medium"}, r"mode must be one of \('soft', 'hard'\)")):
            with pytest.raises(InputError, match=match):
                plugin.validate(bad)
    finally:
        registry.unregister("baseline", "_test_future")
        sys.modules.pop("future_params_plugin", None)


def test_an_unresolvable_annotation_is_refused_at_registration(tmp_path, monkeypatch):
    with pytest.raises(PluginError, match=r"baseline '_test_unresolved': the annotation of parameter 'level' "
                                          r"\('Fraction'\) cannot be resolved"):
        _module(tmp_path, monkeypatch, "unresolved_params_plugin", '''
            from __future__ import annotations
            import uni_lab

            @uni_lab.baseline("_test_unresolved")
            def unresolved(x, model, target, *, level: Fraction = 0.5):
                return x
        ''')
    sys.modules.pop("unresolved_params_plugin", None)
    assert "_test_unresolved" not in registry.index()["baseline"]


def test_a_call_argument_typed_for_type_checkers_only_is_fine(tmp_path, monkeypatch):
    """Only the user parameters must resolve: ``x: torch.Tensor`` under TYPE_CHECKING is no user's business."""
    _module(tmp_path, monkeypatch, "checker_only_plugin", '''
        from __future__ import annotations
        from typing import TYPE_CHECKING, Annotated
        from annotated_types import Gt
        import uni_lab

        if TYPE_CHECKING:
            import torch

        @uni_lab.baseline("_test_checker_only")
        def checker_only(x: torch.Tensor, model, target, *, level: Annotated[float, Gt(0)] = 0.5):
            return x * level
    ''')
    try:
        with pytest.raises(InputError, match=r"_test_checker_only\.level must be > 0, got 0"):
            uni_lab.get("baseline", "_test_checker_only").validate({"level": 0})
    finally:
        registry.unregister("baseline", "_test_checker_only")
        sys.modules.pop("checker_only_plugin", None)


def test_a_default_its_own_declaration_refuses_is_refused_at_registration():
    def bad(x, model, target, *, level: Annotated[float, Gt(0)] = 0.0):
        return x

    with pytest.raises(PluginError, match=r"the default level=0\.0 is not > 0"):
        uni_lab.baseline("_test_bad_default")(bad)
    assert "_test_bad_default" not in registry.index()["baseline"]


def test_a_marker_nothing_checks_is_refused_not_ignored():
    def even(x, model, target, *, size: Annotated[int, MultipleOf(2)] = 4):
        return x

    with pytest.raises(PluginError, match=r"parameter 'size': MultipleOf.*not checked by uni_lab"):
        uni_lab.baseline("_test_multiple")(even)


def test_random_is_declared_at_registration_and_read_by_methods():
    assert resolve("ig:uniform").has_random_part() and resolve("smoothgrad(ig:black)").has_random_part()
    assert not resolve("ig:black").has_random_part() and not resolve("uni").has_random_part()
    assert resolve("uni", route_params({"uni.start": "uniform"})).has_random_part()  # UNI's random PGD start
    assert resolve("deeplift_shap").has_random_part()  # its default references include uniform noise
    assert not resolve("deeplift_shap", route_params({"deeplift_shap.baselines": "black,blur"})).has_random_part()

    @uni_lab.baseline("_test_noisy", random=True)
    def noisy(x, model, target, seeds=None):
        return torch.rand_like(x)

    try:  # a user's plugin is measured like a built-in: no central list to edit
        assert resolve("ig:_test_noisy").has_random_part()
    finally:
        registry.unregister("baseline", "_test_noisy")


def test_a_raw_hookimpl_declares_checks_and_randomness_by_attribute():
    def grey(x, model, target, seeds=None, *, level: float = 0.5):
        return torch.full_like(x, level)

    def check(*, level, **_):
        if level == 0.25:
            raise InputError("level 0.25 is reserved")

    grey.uni_lab_random = True
    grey.uni_lab_check = check

    class Raw:
        @uni_lab.hookimpl
        def uni_lab_baselines(self):
            return {"raw_grey_random": grey}

    reg = Registry(entry_point_group=None)
    reg.register_module(Raw(), name="raw-random")
    plugin = reg.get("baseline", "raw_grey_random")
    assert plugin.is_random()
    with pytest.raises(InputError, match="reserved"):
        plugin.validate({"level": 0.25})


def _cli(*args, cwd: Path):
    cmd = [sys.executable, "-m", "uni_lab", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def _images(folder: Path) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype("uint8")).save(folder / f"im{i}.png")
    return folder


def test_cli_refuses_metric_parameters_in_one_line_with_exit_2(tmp_path):
    """``run`` refuses before it creates the store; ``evaluate`` before it changes the existing one."""
    plugin = str(TESTS / "tiny_plugin.py")
    images = _images(tmp_path / "imgs")
    base = ["--plugins", plugin, "--model", "tiny16", "--images", str(images), "--methods", "saliency",
            "--device", "cpu", "--no-progress", "--no-seed-stability"]
    out = tmp_path / "s.zarr"
    bad = _cli("run", *base, "--metrics", "deletion", "--set", "deletion.n_steps=-4", "--out", str(out), cwd=tmp_path)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.strip() == "uni-lab run: error: deletion.n_steps must be >= 1, got -4; e.g. --set deletion.n_steps=32."
    assert not out.exists()

    made = _cli("run", *base, "--out", str(out), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    before = sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*"))
    bad = _cli("evaluate", str(out), "--plugins", plugin, "--metrics", "mufidelity", "--set", "mufidelity.n_subsets=0",
               "--device", "cpu", "--no-progress", cwd=tmp_path)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.strip() == ("uni-lab evaluate: error: mufidelity.n_subsets must be >= 2, got 0; "
                                  "e.g. --set mufidelity.n_subsets=128.")
    assert sorted((p.relative_to(out), p.stat().st_mtime_ns) for p in out.rglob("*")) == before
