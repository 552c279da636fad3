"""The notebooks run top to bottom against a small store, and are committed without outputs."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import small_stores

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("path_traces.ipynb", "bias_analysis.ipynb")


@pytest.fixture(scope="session")
def evaluated(tmp_path_factory):
    return small_stores.evaluated_store(tmp_path_factory.getbasetemp())


def execute(name: str, store: Path, monkeypatch) -> nbformat.NotebookNode:
    monkeypatch.setenv("UNI_LAB_STORE", str(store))  # the kernel inherits this process's environment
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the inline backend, so figures become outputs
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def text_outputs(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", "") if o.get("output_type") == "stream" else o.get("data", {}).get("text/plain", ""))
    return "\n".join(out)


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_path_traces_runs_on_a_store(evaluated, monkeypatch):
    nb = execute("path_traces.ipynb", evaluated, monkeypatch)
    text = text_outputs(nb)
    n_paths = len(small_stores.METHODS) * len(small_stores.IMAGES)
    assert f"from {n_paths} paths" in text
    assert f"Spearman(curvature, completeness error) over {n_paths} paths" in text
    assert any(o.get("data", {}).get("image/png") for c in nb.cells for o in c.get("outputs", []))


def png_sizes(nb) -> list[tuple[int, int]]:
    """(width, height) of every figure a run notebook shows, in order."""
    import base64
    import io

    from PIL import Image

    return [Image.open(io.BytesIO(base64.b64decode(o["data"]["image/png"]))).size
            for c in nb.cells for o in c.get("outputs", []) if o.get("data", {}).get("image/png")]


def test_path_traces_wraps_eight_photographs(tmp_path, monkeypatch):
    """Eight photographs are two rows of four facets, not one row of eight whose titles run together."""
    import uni_lab
    from conftest import train_tiny
    from uni_lab.data import SKIMAGE_PHOTOS

    store = tmp_path / "eight.zarr"
    uni_lab.run(models=train_tiny(), images=list(SKIMAGE_PHOTOS)[:8], methods=["ig:black"], steps=2, out=store,
                progress=False)
    width, height = png_sizes(execute("path_traces.ipynb", store, monkeypatch))[0]
    # one row of eight 1.2-aspect facets is about 10 times as wide as high; two rows of four about 2.5
    assert width / height < 4, (width, height)


def test_bias_analysis_runs_on_a_store(evaluated, monkeypatch):
    nb = execute("bias_analysis.ipynb", evaluated, monkeypatch)
    text = text_outputs(nb)
    assert "corruptions ['" in text and "mean |drift|" in text
    for method in small_stores.METHODS:
        assert method in text


def test_bias_analysis_says_what_a_store_lacks(tmp_path, monkeypatch):
    """On a store without corruptions the notebook stops at once with the command that adds them."""
    import uni_lab
    from conftest import train_tiny

    store = tmp_path / "plain.zarr"
    uni_lab.run(models=train_tiny(), images=["chelsea"], methods=["ig:black"], steps=2, out=store, progress=False)
    from nbclient.exceptions import CellExecutionError

    with pytest.raises(CellExecutionError, match="uni-lab evaluate"):
        execute("bias_analysis.ipynb", store, monkeypatch)
