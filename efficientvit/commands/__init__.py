"""The `efficientvit` subcommands that are only a front end: the work is in a library module or package (the
evaluator, the bench) or is small enough to live here. The others live beside their work (train.py, subnet.py,
export.py). Each module: `HELP`, `add_arguments(parser)`, `run(args)`."""
