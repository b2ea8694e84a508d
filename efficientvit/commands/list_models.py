"""`efficientvit list`: the registered models and their families."""

from __future__ import annotations

import argparse

from ..models import list_models, model_family

HELP = "list the registered models"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", help="only this family (efficientvit, deit, swin)")


def run(args: argparse.Namespace) -> None:
    for name in list_models(args.family):
        print(f"{name:24s} {model_family(name)}")
