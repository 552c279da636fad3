"""No file in the tree cites a document that is not in the tree (issue 15): code and docs once cited
sections of a methods document that lived outside the project."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = (".py", ".md", ".ipynb", ".toml", ".sh", ".txt", ".cfg", ".json")


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.splitlines() if line.endswith(TEXT) and (ROOT / line).is_file()]


def _sections() -> set[str]:
    return set(re.findall(r"^## (\d+)\.", (ROOT / "docs" / "methods.md").read_text(), re.M))


def test_every_cited_document_and_section_is_in_the_tree():
    sections = _sections()
    assert sections, "docs/methods.md has no numbered sections"
    files = _tracked()
    names = {p.name for p in files}
    missing = []
    for path in files:
        text = path.read_text(errors="replace")
        rel = path.relative_to(ROOT)
        for doc in re.findall(r"\b([A-Za-z][\w-]*\.md)\b", text):
            # a document of the tree by its name (README.md, BENCHMARKS.md, docs/methods.md)
            if doc not in names:
                missing.append(f"{rel}: {doc}")
        for sec in re.findall(r"methods\.md §(\d+)", text):
            if sec not in sections:
                missing.append(f"{rel}: docs/methods.md §{sec}")
        for cited in re.findall(r"\b((?:docs|benchmarks|figures|notebooks)/[\w./-]+\.(?:md|json|py|ipynb|sh|csv))\b",
                                text):
            if "NAME" not in cited and not (ROOT / cited).exists():
                missing.append(f"{rel}: {cited}")
    assert not missing, "cited but not in the tree:\n" + "\n".join(sorted(set(missing)))


def test_code_map_lists_every_module():
    """docs/layout.md, one line per module, stays true: a new module without its line fails here."""
    text = (ROOT / "docs" / "layout.md").read_text()
    listed = set(re.findall(r"^((?:uni_lab|plugins|figures)/[\w/]+\.py)\s", text, re.M))
    modules = {str(p.relative_to(ROOT)) for p in _tracked() if p.suffix == ".py"
               and str(p.relative_to(ROOT)).startswith(("uni_lab/", "plugins/", "figures/"))
               and p.name != "__main__.py"}
    assert modules - listed == set(), f"modules without a line in docs/layout.md: {sorted(modules - listed)}"
    assert listed - modules == set(), f"docs/layout.md lists modules that are gone: {sorted(listed - modules)}"
