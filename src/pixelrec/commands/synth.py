"""`pixelrec synth`: write a synthetic dataset in the PixelRec raw layout (see `pixelrec.data.synth`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pixelrec.commands import at_least
from pixelrec.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write (created)")
    parser.add_argument("--users", type=at_least(1), default=2000, metavar="N")
    parser.add_argument("--items", type=at_least(1), default=500, metavar="N")
    parser.add_argument("--mean-len", type=float, default=12.0, metavar="L", help="mean interactions per user (min 5 each)")
    parser.add_argument("--image-size", type=at_least(8), default=64, metavar="PX", help="cover side in pixels")
    parser.add_argument("--seed", type=int, default=0, metavar="S")


def run(args: argparse.Namespace) -> int:
    from pixelrec.data.synth import write_synthetic

    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"{args.out}: exists and is not a folder")
    counts = write_synthetic(args.out, users=args.users, items=args.items, mean_len=args.mean_len,
                             image_size=args.image_size, seed=args.seed)
    print(f"wrote {args.out}: {counts['users']:,} users, {counts['items']:,} items "
          f"({counts['clusters']} visual clusters), {counts['interactions']:,} interactions")
    return 0
