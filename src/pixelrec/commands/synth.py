"""`pixelrec synth`: write a synthetic dataset in the PixelRec raw layout (see `pixelrec.data.synth`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pixelrec.errors import UserError


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write (created)")
    parser.add_argument("--users", type=_positive, default=2000, metavar="N")
    parser.add_argument("--items", type=_positive, default=500, metavar="N")
    parser.add_argument("--mean-len", type=float, default=12.0, metavar="L", help="mean interactions per user (min 5 each)")
    parser.add_argument("--image-size", type=_positive, default=64, metavar="PX", help="cover side in pixels")
    parser.add_argument("--seed", type=int, default=0, metavar="S")


def run(args: argparse.Namespace) -> int:
    from pixelrec.data.synth import write_synthetic

    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"{args.out}: exists and is not a folder")
    if args.image_size < 8:
        raise UserError(f"--image-size must be at least 8, not {args.image_size}")
    counts = write_synthetic(args.out, users=args.users, items=args.items, mean_len=args.mean_len,
                             image_size=args.image_size, seed=args.seed)
    print(f"wrote {args.out}: {counts['users']:,} users, {counts['items']:,} items "
          f"({counts['clusters']} visual clusters), {counts['interactions']:,} interactions")
    return 0
