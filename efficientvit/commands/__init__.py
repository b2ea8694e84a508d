"""The `efficientvit` subcommands that have no library module of their own (the others live beside their work:
train.py, subnet.py, bench.py, export.py). Each module: `HELP`, `add_arguments(parser)`, `run(args)`."""
