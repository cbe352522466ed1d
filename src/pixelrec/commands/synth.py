"""`pixelrec synth`: write a synthetic dataset in the PixelRec raw layout (see `pixelrec.data.synth`)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from pixelrec.commands import at_least
from pixelrec.errors import UserError

#: The command's line in `pixelrec --help`, and its place there (the order of a workflow).
SUMMARY = 'write a synthetic dataset in the PixelRec raw layout (interactions, item info, covers)'
ORDER = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write (created)")
    parser.add_argument("--users", type=at_least(1), default=2000, metavar="N", help="users to write")
    parser.add_argument("--items", type=at_least(1), default=500, metavar="N", help="items (covers) to write")
    parser.add_argument("--mean-len", type=float, default=12.0, metavar="L", help="mean interactions per user (min 5 each)")
    parser.add_argument("--image-size", type=at_least(8), default=64, metavar="PX", help="cover side in pixels")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed: the same seed writes the "
                        "same files")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out (all of it)")


def run(args: argparse.Namespace) -> int:
    import os

    from pixelrec.data.prepare import claimed_output, publish
    from pixelrec.data.synth import write_synthetic

    out = args.out if args.out.name not in ("", ".", "..") else args.out.resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    with claimed_output(out, "folder"):
        if out.is_dir() and any(out.iterdir()) and not args.overwrite:
            raise UserError(f"{out}: not empty; choose a new folder, or pass --overwrite to replace it and "
                            "everything in it")
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"  # the next run cleans it up after a kill
        try:
            counts = write_synthetic(tmp, users=args.users, items=args.items, mean_len=args.mean_len,
                                     image_size=args.image_size, seed=args.seed)
            publish(tmp, out)
        except OSError as err:
            raise UserError(f"{out.parent}: cannot write the synthetic dataset ({err.strerror or err})") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {args.out}: {counts['users']:,} users, {counts['items']:,} items "
          f"({counts['clusters']} visual clusters), {counts['interactions']:,} interactions")
    return 0
