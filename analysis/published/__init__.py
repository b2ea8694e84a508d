"""The paper's published figures and tables as CSV (README.md here says how each was obtained), shipped with the
package: the report and the notebooks draw them beside our results."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

FOLDER = Path(__file__).parent


def paper_table(name: str) -> pd.DataFrame:
    """One of the CSVs here by its name without `.csv`, e.g. `fig3_mhsa_proportion_top1`."""
    path = FOLDER / f"{name}.csv"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in FOLDER.glob("*.csv")))
        raise FileNotFoundError(f"no published table {name!r}; there are: {known}")
    return pd.read_csv(path, comment="#")
