"""`pixelrec export`: a run's user and item vectors as .npy with their tokens, for serving elsewhere."""

from __future__ import annotations

import argparse

from pixelrec.commands import add_run_argument, run_data, run_directory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="where items.npy, users.npy, items.txt, "
                        "users.txt and export.json go")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best",
                        help="best (last.pt, said so, when the run has no best.pt) or last")
    parser.add_argument("--batch-size", type=int, default=1024, metavar="N", help="users per forward pass")


def run(args: argparse.Namespace) -> int:
    from pixelrec.bench.export import export_vectors

    manifest = export_vectors(run_directory(args), args.out, args.checkpoint, args.batch_size, run_data(args))
    print(f"wrote {args.out}: {manifest['n_users']:,} users and {manifest['n_items']:,} items x {manifest['dim']} "
          f"from {manifest['checkpoint']} (epoch {manifest['epoch']}) "
          f"(score = users . items; mask each user's history as `pixelrec recommend` does)")
    return 0
