"""The pipeline's unit: one module per figure of the paper (and the proxies they read, and the Pareto plot of the
designed variant). Each has its typed preset `Section`, its stage `run(...)`, `tables(out)` (the run's files),
`summarize(tables)` (shared by the report and the figure's notebook) and `report(out)` (its Markdown)."""
