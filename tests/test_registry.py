"""The plugin registry: decorators, pluggy hooks, entry points, and its error messages."""
import sys
import textwrap

import pytest
import torch

import uni_lab
from uni_lab.errors import PluginError
from uni_lab.registry import Registry, registry


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


def test_a_decorated_plugin_is_in_the_table_at_once_and_unregister_takes_it_out():
    before = registry.index()["baseline"]

    @uni_lab.baseline("_test_at_once")
    def at_once(x, model, target):
        return x

    try:
        assert uni_lab.get("baseline", "_test_at_once").obj is at_once  # no rebuild, no cache to clear
        assert "_test_at_once" not in before  # index() is a copy, not a view callers could change
    finally:
        assert registry.unregister("baseline", "_test_at_once").obj is at_once
    with pytest.raises(PluginError, match=r"unknown baseline '_test_at_once'\. Available baselines: black"):
        uni_lab.get("baseline", "_test_at_once")
    with pytest.raises(PluginError, match=r"unknown baseline '_test_at_once'"):
        registry.unregister("baseline", "_test_at_once")
    uni_lab.baseline("_test_at_once")(lambda x, model, target: x)  # the name is free again, for any origin
    registry.unregister("baseline", "_test_at_once")


def test_a_refused_signature_leaves_nothing_behind():
    with pytest.raises(PluginError, match="model, target"):
        uni_lab.baseline("_test_refused")(lambda x, *, level=0.5: x)
    assert "_test_refused" not in registry.index()["baseline"]


def _raw(hook: str, name: str):
    class Raw:
        pass

    setattr(Raw, hook, uni_lab.hookimpl(lambda self: {name: lambda x, model, target: x}))
    return Raw()


def _lonely(x, model, target):
    return x


@pytest.mark.parametrize("first", ["decorated", "raw"])
def test_a_raw_hookimpl_module_and_a_decorator_share_one_name_rule(first):
    """Whichever comes second is refused, with one message naming both origins."""
    def decorate():
        uni_lab.baseline("_test_shared")(_lonely)

    module = _raw("uni_lab_baselines", "_test_shared")
    try:
        if first == "decorated":
            decorate()
            with pytest.raises(PluginError, match=r"^duplicate baseline name '_test_shared': already registered by "
                                                  r"\S*test_registry:_lonely, registered again by raw-shared:_test_shared"):
                registry.register_module(module, name="raw-shared")
            assert registry.get("baseline", "_test_shared").obj is _lonely
        else:
            registry.register_module(module, name="raw-shared")
            with pytest.raises(PluginError, match=r"^duplicate baseline name '_test_shared': already registered by "
                                                  r"raw-shared:_test_shared, registered again by \S*test_registry:_lonely"):
                decorate()
            assert registry.get("baseline", "_test_shared").origin == "raw-shared:_test_shared"
            registry.register_module(module, name="raw-shared")  # a re-run cell: the same origin replaces
    finally:
        registry.unregister("baseline", "_test_shared")
        if registry.pm.has_plugin("raw-shared"):
            registry.pm.unregister(name="raw-shared")


def test_a_hookimpl_that_is_no_hook_or_returns_no_mapping_is_refused():
    reg = Registry(entry_point_group=None)
    with pytest.raises(PluginError, match=r"plugin 'typo' implements uni_lab_baseline, which is no uni_lab hook; "
                                          r"the hooks are: uni_lab_baselines"):
        reg.register_module(_raw("uni_lab_baseline", "x"), name="typo")

    class Listed:
        @uni_lab.hookimpl
        def uni_lab_paths(self):
            return [lambda x, baseline, alphas: x]

    with pytest.raises(PluginError, match=r"uni_lab_paths of plugin 'listed' returned list"):
        reg.register_module(Listed(), name="listed")
    assert reg.list() == []


def test_a_fresh_registry_gets_a_module_s_decorated_and_hooked_plugins(tmp_path, monkeypatch):
    (tmp_path / "both_kinds_uni_plugin.py").write_text(textwrap.dedent('''
        import uni_lab

        @uni_lab.baseline("_test_decorated_here")
        def decorated(x, model, target):
            return x

        @uni_lab.hookimpl
        def uni_lab_paths():
            return {"_test_hooked_here": lambda x, baseline, alphas: x}
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    import both_kinds_uni_plugin

    try:
        reg = Registry(entry_point_group=None)
        reg.register_module(both_kinds_uni_plugin)
        assert {(p.kind, p.name, p.origin) for p in reg.list()} == {
            ("baseline", "_test_decorated_here", "both_kinds_uni_plugin:decorated"),
            ("path", "_test_hooked_here", "both_kinds_uni_plugin:_test_hooked_here")}
        assert reg.get("baseline", "_test_decorated_here") is uni_lab.get("baseline", "_test_decorated_here")
    finally:
        registry.unregister("baseline", "_test_decorated_here")
        sys.modules.pop("both_kinds_uni_plugin", None)


def _distribution(tmp_path, module: str, source: str, ep: str):
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    dist = tmp_path / f"{module}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[uni_lab]\n{ep} = {module}\n")


def test_an_entry_point_that_fails_to_import_is_one_line_and_keeps_out_nothing_else(tmp_path, monkeypatch):
    _distribution(tmp_path, "broken_uni_plugin", "import torch\nraise RuntimeError('no GPU driver')\n", "broken")
    monkeypatch.syspath_prepend(str(tmp_path))  # first on sys.path: found before the built-ins
    reg = Registry()
    with pytest.raises(PluginError) as err:
        reg.get("baseline", "black")
    assert str(err.value) == ("the plugin 'broken' in the 'uni_lab' entry-point group failed to load: "
                              "RuntimeError('no GPU driver')")
    assert reg.get("baseline", "black").origin == "uni_lab.plugins.baselines:black"  # loaded all the same, once
    sys.modules.pop("broken_uni_plugin", None)


def test_uni_lab_registry_is_the_module_and_the_readme_calls_work():
    """`uni_lab.registry` was once the Registry instance, hiding the module of the same name; the README's
    `uni_lab.registry.register_module(module)` and `.unregister(kind, name)` are the module's functions."""
    import types

    assert isinstance(uni_lab.registry, types.ModuleType) and uni_lab.registry.Registry is Registry
    module = _raw("uni_lab_baselines", "_test_by_module")
    try:
        uni_lab.registry.register_module(module, name="raw-by-module")
        assert uni_lab.get("baseline", "_test_by_module").origin == "raw-by-module:_test_by_module"
        assert uni_lab.registry.unregister("baseline", "_test_by_module").name == "_test_by_module"
        assert "_test_by_module" not in registry.index()["baseline"]
    finally:
        if registry.pm.has_plugin("raw-by-module"):
            registry.pm.unregister(name="raw-by-module")
