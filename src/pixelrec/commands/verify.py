"""`pixelrec verify`: check a prepared dataset end to end before a long run (see `pixelrec.jobs.verify`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pixelrec.commands import at_least

#: The command's line in `pixelrec --help`, and its place there (the order of a workflow).
SUMMARY = 'check a prepared dataset end to end (tables, image store, caches, feature files) before a long run'
ORDER = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, help="prepared dataset folder (from `pixelrec prepare`)")
    parser.add_argument("--workers", type=at_least(1), default=None,
                        help="processes decoding the image store (default: all cores)")
    parser.add_argument("--features", nargs="+", action="extend", type=Path, default=[], metavar="F.npy",
                        help="feature files (from `pixelrec extract`) to check against the dataset's items")


def run(args: argparse.Namespace) -> int:
    from pixelrec.jobs.verify import verify_dataset

    result = verify_dataset(args.data, features=args.features, workers=args.workers or os.cpu_count() or 1)
    for line in result.problems:
        print(f"pixelrec: error: {line}", file=sys.stderr)
    if not result.ok:
        return 2
    print(result.summary())
    return 0
