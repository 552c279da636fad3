"""The README's snippets, run as written.

Each fenced block is one of:

- ``<!-- readme-test: ci -->`` before it: a set-up command; ``.ci/run`` must run the same steps
  (CI executes them on a clean clone), and the slow test runs the main job it ends with;
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
_BLOCK = re.compile(r"(?:<!-- readme-test: (?P<mark>[^>]*?) -->\s*\n)?```(?P<lang>\w+)\n(?P<body>.*?)\n```", re.S)


def blocks() -> list[dict]:
    found = [{"mark": (m["mark"] or "").strip(), "lang": m["lang"], "body": m["body"],
              "line": README.read_text()[:m.start("body")].count("\n") + 1}
             for m in _BLOCK.finditer(README.read_text())]
    assert found, "no code blocks found in README.md"
    return found


def _ids(bs):
    return [f"line{b['line']}" for b in bs]


PYTHON = [b for b in blocks() if b["lang"] == "python"]
BASH = [b for b in blocks() if b["lang"] == "bash" and not b["mark"].startswith("ci")]
SETUP = [b for b in blocks() if b["mark"].startswith("ci")]


def test_every_block_is_covered():
    unknown = [b["line"] for b in blocks() if b["lang"] not in ("python", "bash")]
    assert not unknown, f"README blocks at lines {unknown} are neither python nor bash; say how to test them"
    assert len(SETUP) == 2, "the README must hold exactly the two set-up commands, marked <!-- readme-test: ci -->"
    for b in BASH:
        assert not b["mark"] or b["mark"] == "fast" or re.match(r"skip \S", b["mark"]), b


def test_setup_commands_are_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    ci_steps = [" ".join(w for w in shlex.split(line) if w != "-q") for line in ci.splitlines()
                if line.strip() and not line.startswith("#")]
    main_job, tests = SETUP
    assert main_job["body"].strip().endswith("&& uni-lab run")
    for step in [s.strip() for s in tests["body"].split("&&")]:
        words = " ".join(w for w in shlex.split(step) if w != "-q")
        assert any(words == c or words.replace('"', "") == c.replace('"', "") for c in ci_steps), (
            f"README set-up step `{step}` is not in .ci/run")
    assert any(w.startswith("pip install -e .[figures") or w.startswith("pip install -e .[test,figures") for w in
               [" ".join(shlex.split(s.strip())) for s in main_job["body"].split("&&")])


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
            pytest.fail(f"README line {block['line']}: `uni-lab {' '.join(args)}` does not parse "
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
    assert out.returncode == 0, f"README line {block['line']}:\n{block['body']}\n{out.stderr[-3000:]}"


def _run_bash(block: dict, cwd: Path) -> None:
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", block["body"]], cwd=cwd, env=_env(), capture_output=True,
                         text=True, timeout=3600)
    assert out.returncode == 0, f"README line {block['line']}:\n{block['body']}\n{out.stderr[-3000:]}"


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
    _run_bash({"line": SETUP[0]["line"], "body": "uni-lab run"}, repo_copy)
    assert (repo_copy / "runs" / "default.zarr" / ".zmetadata").exists()
