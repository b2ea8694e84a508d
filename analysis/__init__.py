"""The paper's analyses, one script each; every script is importable (functions returning DataFrames) and
runnable (`python analysis/<name>.py --help` or `python -m analysis.<name>`)."""
