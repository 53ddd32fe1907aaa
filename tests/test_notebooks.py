"""Every notebook runs top to bottom (with SSD_JAX_NOTEBOOK_SMOKE=1: tiny settings),
so they cannot rot. The quickstart notebook trains the tiny config; the inference
notebook then runs on the checkpoint it wrote."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")


def run_notebook(name: str, **env: str) -> nbformat.NotebookNode:
    notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    saved = dict(os.environ)
    os.environ.pop("MPLBACKEND", None)  # the kernel's inline backend returns the figures
    os.environ.update({"SSD_JAX_NOTEBOOK_SMOKE": "1", **env})
    try:  # the kernel inherits this process's environment
        NotebookClient(
            notebook,
            timeout=600,
            kernel_name="python3",
            resources={"metadata": {"path": NOTEBOOKS}},
        ).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return notebook


def figures(notebook: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in out.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )


def outputs(notebook: nbformat.NotebookNode) -> str:
    return "\n".join(
        str(out.get("text", "")) + str(out.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )


def test_every_notebook_is_tested():
    assert sorted(n for n in os.listdir(NOTEBOOKS) if n.endswith(".ipynb")) == [
        "augmentation.ipynb",
        "default_boxes_and_matching.ipynb",
        "inference.ipynb",
        "quickstart.ipynb",
    ]


@pytest.mark.slow
def test_quickstart_then_inference_notebooks(tmp_path):
    workdir = str(tmp_path / "run")
    notebook = run_notebook("quickstart.ipynb", SSD_JAX_WORKDIR=workdir)
    text = outputs(notebook)
    assert figures(notebook) == 2  # learning curve, detections
    assert os.path.isdir(os.path.join(workdir, "checkpoints"))
    assert "map_area" in text  # the evaluation table was printed
    notebook = run_notebook(
        "inference.ipynb", SSD_JAX_CHECKPOINT=os.path.join(workdir, "checkpoints")
    )
    text = outputs(notebook)
    assert figures(notebook) == 1
    assert "input size: 300" in text and "MB;" in text


@pytest.mark.parametrize("name", ["default_boxes_and_matching.ipynb", "augmentation.ipynb"])
def test_visualization_notebooks(name):
    notebook = run_notebook(name)
    text = outputs(notebook)
    assert figures(notebook) == 2
    if name == "default_boxes_and_matching.ipynb":
        assert "(8732, 4)" in text and "positive default boxes" in text
