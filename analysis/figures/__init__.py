"""The pipeline's unit: one module per figure of the paper (and the proxies they read, and the Pareto plot of the
designed variant). Each registers itself as `FIGURE = Figure(...)` (`analysis.pipeline.Figure`): its typed preset
`Section`, its stage `run(ctx, section)`, and its report section; and it has `tables(out)` (the run's files) and
`summarize(tables)` (shared by the report and the figure's notebook).

Adding a figure is writing its module and adding its line to MODULES: the preset gains its section, the pipeline
its stage and `--only` choice, the report its section, the notebooks their input.
"""

from __future__ import annotations

import importlib

MODULES = (  # in the order their stages run
    "analysis.figures.proxies",
    "analysis.figures.fig2",
    "analysis.figures.fig3",
    "analysis.figures.fig4",
    "analysis.figures.fig5",
    "analysis.figures.pareto",
)


def registered() -> list:
    """Every figure's registration (`analysis.pipeline.Figure`), in stage order."""
    return [importlib.import_module(module).FIGURE for module in MODULES]
