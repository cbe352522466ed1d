"""`pixelrec report`: a Markdown table of finished runs."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run directories (or their results.json)")
    parser.add_argument("--split", choices=["valid", "test"], default="test")


def run(args: argparse.Namespace) -> int:
    from pixelrec.bench.tables import load_results, summary_table

    print(summary_table(load_results(args.runs), args.split))
    return 0
