"""Every notebook runs headless against the small result fixtures and writes its figures, as the pipeline draws
them (one kernel shared by the notebooks, each drawn once until its notebook or the tables change)."""

import shutil
from pathlib import Path

from analysis.report import DRAWN, draw_figures, inputs_digest

ROOT = Path(__file__).parents[1]
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))


def test_every_notebook_executes_and_writes_its_figures_and_draws_nothing_again_from_the_same_tables(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "tests" / "fixtures" / "results", results)
    draw_figures(results)
    figures = results / "figures"
    for notebook in NOTEBOOKS:
        drawn = list(figures.glob(f"{notebook}*.png"))
        assert drawn and all(f.stat().st_size > 1000 for f in drawn), f"{notebook} drew no figure"
    assert (figures / "fig5_pareto.png").stat().st_size > 1000  # the fixture holds a Pareto table: plotted too
    stamps = {p: p.stat().st_mtime_ns for p in figures.glob("*.png")}
    sweep = results / "mhsa_sweep" / "sweep.csv"
    sweep.write_text(sweep.read_text())  # the same tables: nothing is drawn again
    draw_figures(results)
    assert {p: p.stat().st_mtime_ns for p in figures.glob("*.png")} == stamps
    before = inputs_digest(ROOT / "notebooks" / "fig3_mhsa_sweep.ipynb", [sweep])
    sweep.write_text(sweep.read_text() + "\n")  # a changed table: the notebooks are drawn again
    assert inputs_digest(ROOT / "notebooks" / "fig3_mhsa_sweep.ipynb", [sweep]) != before
    assert (figures / DRAWN).exists()
