"""Sub-commands of the `pixelrec` tool, one module each (see `pixelrec.cli`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pixelrec.errors import UserError


def at_least(minimum: int):
    """An argparse type: an integer no smaller than `minimum` (argparse's usage error otherwise)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


def add_run_argument(parser: argparse.ArgumentParser) -> None:
    """The run directory, as `RUN` or `--run RUN` (torchrun takes `--run` for its own `--run-path`)."""
    parser.add_argument("run_dir", nargs="?", metavar="RUN", help="run directory written by `pixelrec train`")
    parser.add_argument("--run", help="the same, as an option")


def run_directory(args: argparse.Namespace) -> Path:
    chosen = args.run or args.run_dir
    if not chosen:
        raise UserError("which run? give its directory: RUN or --run RUN")
    return Path(chosen)
