"""Every notebook runs headless against the small result fixtures and writes its figures."""

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_and_writes_its_figure(path, tmp_path, monkeypatch):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "tests" / "fixtures" / "results", results)
    monkeypatch.setenv("EFFICIENTVIT_RESULTS", str(results))
    notebook = nbformat.read(path, as_version=4)
        # run from notebooks/, as a user would, so the paper's values (notebooks/paper/) are found
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
                   ).execute()
    figures = list((results / "figures").glob(f"{path.stem}*.png"))
    assert figures and all(f.stat().st_size > 1000 for f in figures)
