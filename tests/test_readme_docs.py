"""The documentation site's generated parts: every method has a page, and the CLI reference and the
parameter tables say what the parsers and the registry say (docs/hooks/generated.py, run by
``mkdocs build``). The build itself is CI's last step; here it is the slow test."""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import uni_lab

REPO = Path(__file__).resolve().parents[1]
HOOK = REPO / "docs" / "hooks" / "generated.py"


def test_every_registered_explainer_has_a_page_and_every_page_an_explainer():
    pages = {p.stem for p in (REPO / "docs" / "explainers").glob("*.md")} - {"index"}
    # the built-in ones: other tests register their own (tests/tiny_plugin.py's 'boom') in this process
    registered = {p.name for p in uni_lab.list_plugins("explainer") if p.origin.startswith("uni_lab.plugins.")}
    assert registered - pages == set(), f"explainers without a page in docs/explainers/: {sorted(registered - pages)}"
    assert pages - registered == set(), f"pages of no registered explainer: {sorted(pages - registered)}"
    nav = (REPO / "mkdocs.yml").read_text()
    assert all(f"explainers/{name}.md" in nav for name in pages), "a method page missing from mkdocs.yml's nav"


@pytest.fixture(scope="module")
def hook():
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    spec = importlib.util.spec_from_file_location("uni_lab_docs_hook", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_lists_every_option_of_every_subcommand(hook):
    from uni_lab import cli

    text = hook.cli_reference()
    parser, _ = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        assert f"## `uni-lab {name}`" in text
        section = text.split(f"## `uni-lab {name}`")[1].split("\n## ")[0]
        options = [o for a in p._actions for o in a.option_strings if o not in ("-h", "--help")]
        missing = [o for o in options if f"`{o}`" not in section]
        assert not missing, f"uni-lab {name}: options missing from the CLI reference: {missing}"


def test_parameter_tables_are_the_registry_s(hook):
    for plugin in [*uni_lab.list_plugins("explainer"), uni_lab.get("baseline", "uni")]:
        table = hook.params_table(plugin.kind, plugin.name)
        for param, default in plugin.params.items():
            assert f"| `{param}` | `{default!r}` |" in table, (plugin.name, param)
    assert "| `eps` | `0.025` | a float, > 0 |" in hook.params_table("baseline", "uni")


def test_run_reference_lists_every_run_keyword(hook):
    import inspect

    text = hook.signature_reference("run")
    for name in inspect.signature(uni_lab.run).parameters:
        assert f"- ``{name}`` (" in text, name
    assert ":class:" not in text and ":func:" not in text


@pytest.mark.slow
def test_site_builds_strictly(tmp_path):
    """What CI's last step does: warnings and broken links fail, the tutorial notebooks execute."""
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.skip("the docs extra is not installed: pip install -e '.[docs]'")
    out = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=REPO,
                         capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "site" / "notebooks" / "tutorial_store" / "index.html").exists()
