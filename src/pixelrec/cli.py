"""The `pixelrec` command: a thin shell that parses arguments and calls library functions.

Each sub-command lives in `pixelrec.commands.<name>` and provides `add_arguments(parser)` and
`run(args) -> int`. Modules are imported only when their command runs, so `pixelrec --help` stays
fast and an optional dependency matters only to the command that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from pixelrec.errors import UserError

COMMANDS = {
    "synth": "write a synthetic dataset in the PixelRec raw layout (interactions, item info, covers)",
    "prepare": "turn raw PixelRec or RecBole files into a prepared dataset with an image store",
    "stats": "print the dataset statistics table of a prepared dataset",
    "extract": "frozen image features of every item (ViNet), resumable; or --import features made elsewhere",
    "train": "train a recommender (item encoder x backbone x loss) and evaluate it",
    "evaluate": "re-evaluate a finished run on the valid or test split",
    "recommend": "top-k items for users of a trained run (CSV, optional contact sheet of covers)",
    "report": "tables of finished runs, bench directories and studies; with --out, PNG figures and report.md",
    "bench": "run the model x item kind x image encoder matrix (resumable) into results.csv and a paper-style table",
    "tune": "hyper-parameter search with Optuna (grid or TPE, median pruning), resumable; writes best.yaml",
    "export": "user and item vectors of a trained run as .npy with their tokens, for serving elsewhere",
}


def _command_module(name: str):
    return importlib.import_module(f"pixelrec.commands.{name}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pixelrec", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in COMMANDS.items():
        command_parser = sub.add_parser(name, help=summary, description=summary)
        if only == name:
            _command_module(name).add_arguments(command_parser)
    return parser


def _rank_prefix() -> str:
    """Under torchrun every rank may report: say which one."""
    world = os.environ.get("WORLD_SIZE", "1")
    return f"[rank {os.environ.get('RANK', '?')} of {world}] " if world not in ("", "1") else ""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        parser = build_parser(only=chosen)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return int(_command_module(args.command).run(args) or 0)
    except UserError as err:
        print(f"pixelrec: error: {_rank_prefix()}{err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pixelrec: interrupted", file=sys.stderr)
        return 130
