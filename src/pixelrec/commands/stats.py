"""`pixelrec stats`: the dataset statistics table of a prepared dataset (see `pixelrec.data.stats`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: The command's line in `pixelrec --help`, and its place there (the order of a workflow).
SUMMARY = 'print the dataset statistics table of a prepared dataset'
ORDER = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", type=Path, help="prepared dataset folder (from `pixelrec prepare`)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def run(args: argparse.Namespace) -> int:
    from pixelrec.data.stats import dataset_stats, format_stats

    stats = dataset_stats(args.data)
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0
