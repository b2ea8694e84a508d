"""`efficientvit list`: the registered models and their families, or the pretrained names (efficientvit.hub)."""

from __future__ import annotations

import argparse

from .. import hub
from ..models import list_models, model_family

HELP = "list the registered models, or the pretrained names"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", help="only this family (efficientvit, deit, swin)")
    parser.add_argument(
        "--pretrained",
        action="store_true",
        help="the pretrained names a --checkpoint takes, with the model each builds, its classes and the "
        "evaluation transform published with the weights",
    )


def run(args: argparse.Namespace) -> None:
    if not args.pretrained:
        for name in list_models(args.family):
            print(f"{name:24s} {model_family(name)}")
        return
    print(f"{'name':51s} {'model':16s} {'classes':>7s}  input  crop  interpolation")
    for name in hub.names():
        pretrained = hub.resolve(name)
        if args.family in (None, model_family(pretrained.spec.name)):
            cfg = pretrained.pretrained_cfg
            print(
                f"{name:51s} {pretrained.spec.name:16s} {cfg['num_classes']:7d}  {cfg['input_size'][-1]:5d}  "
                f"{cfg['crop_pct']:.3f} {cfg['interpolation']}"
            )
