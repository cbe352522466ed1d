"""`pixelrec evaluate`: re-evaluate a run's best checkpoint with full ranking (under torchrun the
catalogue and the users are shared out between the ranks)."""

from __future__ import annotations

import argparse
import json

from pixelrec.commands import add_run_argument, run_directory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)
    parser.add_argument("--split", choices=["valid", "test", "both"], default="both")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best")
    parser.add_argument("--data", help="evaluate on another prepared dataset with the same items")


def run(args: argparse.Namespace) -> int:
    from pixelrec import distributed
    from pixelrec.evaluate.run import evaluate_run

    splits = ["valid", "test"] if args.split == "both" else [args.split]
    try:
        metrics = evaluate_run(run_directory(args), splits, args.checkpoint, args.data)
        if distributed.current().main:
            print(json.dumps(metrics, indent=2))
    finally:
        distributed.leave()
    return 0
