"""Every notebook runs headless against the small result fixtures and writes its figures."""

import shutil
from pathlib import Path

import pytest

from analysis.report import execute_notebook

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_and_writes_its_figure(path, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "tests" / "fixtures" / "results", results)
    execute_notebook(path, results)
    figures = list((results / "figures").glob(f"{path.stem}*.png"))
    assert figures and all(f.stat().st_size > 1000 for f in figures)
    if path.stem.startswith("fig5"):  # the fixture holds a Pareto table: its plot is drawn too
        assert (results / "figures" / "fig5_pareto.png").stat().st_size > 1000
