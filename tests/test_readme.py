"""The README's snippets, and those of the documentation pages it was split into, run as written.

Each fenced block is one of:

- ``<!-- readme-test: ci -->`` before it (the README only): a set-up command; ``.ci/run`` must run
  the same steps (CI executes them on a clean clone), and the slow test runs the main job it ends with;
- ``<!-- readme-test: docs -->`` (the README only): the documentation build, which ``.ci/run`` runs
  after the tests;
- a ``python`` block: executed as written, in a folder whose ``runs/`` holds small real stores of
  the embedded model at the paths the snippets read (same schema and labels, fewer methods);
- a ``bash`` block: every ``uni-lab`` command in it is parsed by the real CLI parser here, and the
  block is executed as written by the slow test (``<!-- readme-test: fast -->``: here too);
  ``<!-- readme-test: skip REASON -->``: only parsed, for commands that need what no test
  machine has (an ImageNet folder, GPUs).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# the pages the README's how-to moved to; the reports (methods.md, results_real_model.md, ...) hold
# record commands of hour-long measurements, not snippets to run
PAGES = [README, *(REPO / "docs" / p for p in ("index.md", "getting-started.md", "store.md", "plugins.md", "findings.md")),
         *sorted((REPO / "docs" / "guide").glob("*.md")), *sorted((REPO / "docs" / "explainers").glob("*.md"))]
_BLOCK = re.compile(r"(?:<!-- readme-test: (?P<mark>[^>]*?) -->\s*\n)?```(?P<lang>\w+)\n(?P<body>.*?)\n```", re.S)


def blocks(page: Path = README) -> list[dict]:
    text = page.read_text()
    name = page.relative_to(REPO).as_posix()
    found = [{"mark": (m["mark"] or "").strip(), "lang": m["lang"], "body": m["body"], "page": name,
              "line": text[:m.start("body")].count("\n") + 1, "where": f"{name} line {text[:m.start('body')].count(chr(10)) + 1}"}
             for m in _BLOCK.finditer(text)]
    assert found or page != README, "no code blocks found in README.md"
    return found


def _ids(bs):
    return [f"{b['page']}:{b['line']}" for b in bs]


ALL = [b for page in PAGES for b in blocks(page)]
PYTHON = [b for b in ALL if b["lang"] == "python"]
BASH = [b for b in ALL if b["lang"] == "bash" and b["mark"] not in ("ci", "docs")]
SETUP = [b for b in blocks() if b["mark"] == "ci"]
DOCS = [b for b in blocks() if b["mark"] == "docs"]


def test_every_block_is_covered():
    unknown = [b["where"] for b in ALL if b["lang"] not in ("python", "bash")]
    assert not unknown, f"blocks at {unknown} are neither python nor bash; say how to test them"
    assert len(SETUP) == 2, "the README must hold exactly the two set-up commands, marked <!-- readme-test: ci -->"
    assert len(DOCS) == 1, "the README must hold the documentation build, marked <!-- readme-test: docs -->"
    assert all(b["mark"] not in ("ci", "docs") for b in ALL if b["page"] != "README.md"), "set-up marks are the README's"
    for b in BASH:
        assert not b["mark"] or b["mark"] == "fast" or re.match(r"skip \S", b["mark"]), b


def _ci_steps() -> list[str]:
    ci = (REPO / ".ci" / "run").read_text()
    return [" ".join(w for w in shlex.split(line) if w != "-q") for line in ci.splitlines()
            if line.strip() and not line.startswith("#")]


def _in_ci(block: dict) -> list[str]:
    """The block's ``&&`` steps that ``.ci/run`` does not run, in ``.ci/run``'s order."""
    ci_steps, missing, at = _ci_steps(), [], -1
    for step in [s.strip() for s in block["body"].split("&&")]:
        words = " ".join(w for w in shlex.split(step) if w != "-q")
        hits = [i for i, c in enumerate(ci_steps) if words == c or words.replace('"', "") == c.replace('"', "")]
        after = [i for i in hits if i > at]
        if not after:
            missing.append(step)
        else:
            at = after[0]
    return missing


def test_setup_commands_are_what_ci_runs():
    main_job, tests = SETUP
    assert main_job["body"].strip().endswith("&& uni-lab run")
    missing = _in_ci(tests)
    assert not missing, f"README set-up steps {missing} are not in .ci/run (in this order)"
    assert any(w.startswith("pip install -e .[figures") or w.startswith("pip install -e .[test,figures") for w in
               [" ".join(shlex.split(s.strip())) for s in main_job["body"].split("&&")])


def test_docs_build_is_what_ci_runs_after_the_tests():
    """The README's one command that builds the site is in .ci/run, after the test command, with --strict."""
    (docs,) = DOCS
    assert "mkdocs build --strict" in docs["body"]
    assert not _in_ci(docs), f"README docs build `{docs['body']}` is not in .ci/run"
    steps = _ci_steps()
    assert steps.index("mkdocs build --strict") > steps.index("python -m pytest")


def _uni_lab_commands(body: str) -> list[list[str]]:
    cmds = []
    for line in body.splitlines():
        words = shlex.split(line, comments=True)
        if "uni_lab" in words and "-m" in words:  # torchrun ... -m uni_lab run ...
            words = ["uni-lab", *words[words.index("uni_lab") + 1:]]
        if words[:1] == ["uni-lab"]:
            cmds.append(words[1:])
    return cmds


@pytest.mark.parametrize("block", BASH, ids=_ids(BASH))
def test_bash_commands_parse(block, capsys):
    from uni_lab import cli

    parser, _ = cli.build_parser()
    for args in _uni_lab_commands(block["body"]):
        try:
            parser.parse_args(args)
        except SystemExit as exc:
            pytest.fail(f"{block['where']}: `uni-lab {' '.join(args)}` does not parse "
                        f"({capsys.readouterr().err.strip()}; exit {exc.code})")


@pytest.fixture(scope="module")
def small_stores(tmp_path_factory) -> Path:
    """``runs/default.zarr`` and ``runs/figures/methods.zarr`` as the snippets expect them: the embedded
    model on chelsea and coffee, UNI with a short path (the snippets read labels, not values)."""
    import uni_lab

    root = tmp_path_factory.mktemp("readme")
    uni_lab.run(images=["chelsea", "coffee"], methods=["uni"], steps=2, sets={"uni.pgd_steps": 1},
                out=root / "runs/default.zarr", progress=False, device="cpu", seed_stability=False)
    shutil.copytree(root / "runs/default.zarr", root / "runs/figures/methods.zarr")
    return root


def _env() -> dict:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "MPLBACKEND": "Agg"}


@pytest.mark.parametrize("block", PYTHON, ids=_ids(PYTHON))
def test_python_snippet_runs_as_written(block, small_stores):
    out = subprocess.run([sys.executable, "-c", block["body"]], cwd=small_stores, env=_env(), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, f"{block['where']}:\n{block['body']}\n{out.stderr[-3000:]}"


def _run_bash(block: dict, cwd: Path) -> None:
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", block["body"]], cwd=cwd, env=_env(), capture_output=True,
                         text=True, timeout=3600)
    assert out.returncode == 0, f"{block['where']}:\n{block['body']}\n{out.stderr[-3000:]}"


FAST = [b for b in BASH if b["mark"] == "fast"]
SLOW = [b for b in BASH if not b["mark"]]


@pytest.mark.parametrize("block", FAST, ids=_ids(FAST))
def test_cheap_bash_block_runs_as_written(block, small_stores):
    _run_bash(block, small_stores)


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory) -> Path:
    """The tracked tree, so blocks that write (figures into docs/, stores into runs/) leave the checkout alone."""
    dest = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dest / f)
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("block", SLOW, ids=_ids(SLOW))
def test_bash_block_runs_as_written(block, repo_copy):
    _run_bash(block, repo_copy)


@pytest.mark.slow
def test_main_job_runs_as_written(repo_copy):
    """The set-up command's last step (the installs are CI's): the default job on the eight photographs."""
    _run_bash({"where": SETUP[0]["where"], "body": "uni-lab run"}, repo_copy)
    assert (repo_copy / "runs" / "default.zarr" / ".zmetadata").exists()
