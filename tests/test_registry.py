"""The plugin registry: decorators, pluggy hooks, entry points, and its error messages."""
import sys
import textwrap

import pytest
import torch

import uni_lab
from uni_lab.errors import PluginError
from uni_lab.registry import Registry


@uni_lab.baseline("test_half")
def half(x, model, target, *, level: float = 0.5):
    """Constant half-grey, for registry tests."""
    return torch.full_like(x, level)


def test_decorated_function_is_registered_with_params_and_description():
    p = uni_lab.get("baseline", "test_half")
    assert p.params == {"level": 0.5}
    assert p.description == "Constant half-grey, for registry tests."
    assert p.origin.endswith("test_registry:half")
    out = uni_lab.create("baseline", "test_half", level=0.25)(torch.zeros(1, 3, 2, 2), None, None)
    assert torch.all(out == 0.25)


def test_builtins_use_the_public_decorator_and_arrive_by_entry_point():
    names = {p.name for p in uni_lab.list_plugins("baseline")}
    assert {"black", "white", "mean", "uniform", "gaussian", "blur", "uni"} <= names
    assert uni_lab.get("baseline", "blur").origin.startswith("uni_lab.plugins.baselines:")
    assert [p.name for p in uni_lab.list_plugins("explainer", "ig*")] == ["ig"]


def test_unknown_name_lists_available_ones():
    with pytest.raises(PluginError, match=r"unknown baseline 'nope'.*black.*uniform"):
        uni_lab.get("baseline", "nope")


def test_unknown_parameter_lists_valid_ones():
    with pytest.raises(PluginError, match=r"no parameter 'sigmaa'.*sigma"):
        uni_lab.create("baseline", "blur", sigmaa=3)


def test_duplicate_name_names_both_origins():
    def other(x, model, target):
        return x

    with pytest.raises(PluginError, match=r"duplicate baseline name 'test_half'.*test_registry:half.*other"):
        uni_lab.baseline("test_half")(other)


def test_reregistering_the_same_function_is_allowed():
    uni_lab.baseline("test_half")(half)  # a re-run notebook cell must not fail
    assert uni_lab.get("baseline", "test_half").obj is half


def test_raw_hookimpl_module_and_duplicate_across_hooks():
    class Raw:
        @uni_lab.hookimpl
        def uni_lab_baselines(self):
            return {"raw_grey": lambda x, model, target: torch.full_like(x, 0.3)}

    reg = Registry()
    reg.register_module(Raw(), name="raw-plugin")
    assert reg.get("baseline", "raw_grey").origin == "raw-plugin:raw_grey"

    class Clash:
        @uni_lab.hookimpl
        def uni_lab_baselines(self):
            return {"black": lambda x, model, target: x}

    with pytest.raises(PluginError, match=r"duplicate baseline name 'black'.*uni_lab.plugins.baselines:black.*clash-plugin"):
        reg.register_module(Clash(), name="clash-plugin")  # refused at registration, not at the next lookup
    assert not reg.pm.has_plugin("clash-plugin")  # all or nothing: fixed, it can be registered again
    assert reg.get("baseline", "black").origin == "uni_lab.plugins.baselines:black"


def test_third_party_distribution_registers_through_entry_points(tmp_path, monkeypatch):
    """A real (unpacked) distribution on sys.path with an entry_points.txt in the uni_lab group."""
    pkg = tmp_path / "thirdparty_uni_plugin.py"
    pkg.write_text(textwrap.dedent('''
        import torch, uni_lab

        @uni_lab.hookimpl
        def uni_lab_baselines():
            return {"thirdparty_dark": lambda x, model, target: torch.full_like(x, 0.1)}
    '''))
    dist = tmp_path / "thirdparty_uni_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-uni-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[uni_lab]\nthirdparty = thirdparty_uni_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry()
    plugin = reg.get("baseline", "thirdparty_dark")
    assert plugin.origin == "thirdparty:thirdparty_dark"
    assert torch.allclose(plugin(torch.zeros(1, 3, 2, 2), None, None), torch.full((1, 3, 2, 2), 0.1))
    sys.modules.pop("thirdparty_uni_plugin", None)
