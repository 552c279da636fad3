"""A guard that keeps the core readable: no function in ``uni_lab/`` longer than MAX_LINES lines or
taking more than MAX_PARAMS parameters, except the few listed here, each with its reason."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

MAX_LINES = 80
MAX_PARAMS = 10
ROOT = Path(__file__).resolve().parents[1] / "uni_lab"

# "module.py:function": why it may be larger. A new entry needs a reason a reviewer would accept.
EXCEPTIONS = {
    "bench.py:bench": "its parameters are the workload of `uni-lab bench` (model, sizes, steps, reps), each a flag; "
                      "the timed phases read best in one place",
    "skeleton.py:skeleton": "one argument per dimension and attribute of the store it lays out",
}


def _functions():
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                params = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")]
                yield f"{path.relative_to(ROOT).as_posix()}:{node.name}", node.end_lineno - node.lineno + 1, len(params)


def test_functions_are_small():
    too_big = [f"{name} ({lines} lines, {params} parameters)" for name, lines, params in _functions()
               if (lines > MAX_LINES or params > MAX_PARAMS) and name not in EXCEPTIONS]
    assert not too_big, f"split these or list them in EXCEPTIONS with a reason: {too_big}"


def test_every_exception_is_still_needed():
    sizes = {name: (lines, params) for name, lines, params in _functions()}
    stale = [name for name in EXCEPTIONS if name not in sizes
             or sizes[name][0] <= MAX_LINES and sizes[name][1] <= MAX_PARAMS]
    assert not stale, f"no longer needed, remove from EXCEPTIONS: {stale}"


def test_the_guard_can_fail(tmp_path, monkeypatch):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES + 1))
    (tmp_path / "big.py").write_text(f"def big(a, b, c, d, e, f, g, h, i, j, k):\n{body}\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError, match=r"big.py:big \(82 lines, 11 parameters\)"):
        test_functions_are_small()
