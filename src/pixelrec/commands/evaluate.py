"""`pixelrec evaluate`: re-evaluate a run's best checkpoint with full ranking (under torchrun the
catalogue and the users are shared out between the ranks). The JSON says which checkpoint was
evaluated, at which epoch, and whether the run had finished; so does a line on stderr."""

from __future__ import annotations

import argparse
import sys

from pixelrec.commands import add_run_argument, results_json, run_data, run_directory

#: The command's line in `pixelrec --help`, and its place there (the order of a workflow).
SUMMARY = 're-evaluate a finished run on the valid or test split'
ORDER = 7


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)
    parser.add_argument("--split", choices=["valid", "test", "both"], default="both",
                        help="which held-out interactions to score: each user's second-last (valid), last (test) or both")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best",
                        help="best (the best validation epoch; last.pt, said so, when there is none) or last")


def run(args: argparse.Namespace) -> int:
    from pixelrec import distributed
    from pixelrec.jobs.evaluate import evaluate_run

    splits = ["valid", "test"] if args.split == "both" else [args.split]
    run_dir = run_directory(args)
    try:
        metrics = evaluate_run(run_dir, splits, args.checkpoint, run_data(args))
        if distributed.current().main:
            used = metrics["checkpoint"]
            note = f"; {used['note']}" if "note" in used else ""
            state = "finished run" if used["run_finished"] else "unfinished run"
            print(f"evaluated {run_dir / used['file']} (epoch {used['epoch']}, {state}){note}", file=sys.stderr)
            print(results_json(metrics))
    finally:
        distributed.leave()
    return 0
