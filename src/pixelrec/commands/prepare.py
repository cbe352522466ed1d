"""`pixelrec prepare`: raw PixelRec or RecBole files -> a prepared dataset (see `pixelrec.data.prepare`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pixelrec.commands import at_least

#: The command's line in `pixelrec --help`, and its place there (the order of a workflow).
SUMMARY = 'turn raw PixelRec or RecBole files into a prepared dataset with an image store'
ORDER = 2


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1), not {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--raw", type=Path, required=True, metavar="DIR_OR_FILE",
                        help="raw folder (interactions CSV or RecBole .inter, item-info CSV, covers/) or one file")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="prepared dataset folder to write")
    parser.add_argument("--name", help="dataset name recorded in meta.json (default: the raw folder's name)")
    parser.add_argument("--image-size", type=at_least(8), default=224, metavar="PX",
                        help="stored square image side (default 224, as the paper)")
    parser.add_argument("--workers", type=at_least(1), default=None, metavar="N",
                        help="processes encoding images (default: all cores)")
    parser.add_argument("--kcore", type=at_least(0), default=0, metavar="K", help="iterative k-core on users and items")
    parser.add_argument("--sample-users", type=at_least(1), default=None, metavar="N",
                        help="keep this many users, sampled uniformly after the >=3-interaction filter")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed for --sample-users and --cold-items")
    parser.add_argument("--missing-images", choices=("fail", "placeholder"), default="fail",
                        help="missing/corrupt covers: fail (default) or use a grey placeholder and record it")
    parser.add_argument("--no-images", action="store_true", help="skip the image store (ID-only use)")
    parser.add_argument("--cold-items", type=_fraction, default=0.0, metavar="FRACTION",
                        help="fraction of items held out of training (kept only as valid/test targets)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out even if it holds more than a prepared dataset (all of it is removed)")


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def run(args: argparse.Namespace) -> int:
    from pixelrec.data.prepare import prepare

    meta = prepare(args.raw, args.out, image_size=args.image_size, workers=args.workers, kcore=args.kcore,
                   sample_users=args.sample_users, seed=args.seed, missing_images=args.missing_images,
                   images=not args.no_images, cold_items=args.cold_items, name=args.name, overwrite=args.overwrite)
    files = meta["source"]["files"]
    print(f"read {files['interactions']} ({meta['source']['kind']}): {meta['n_rows_read']:,} rows, "
          f"{_plural(meta['n_users_read'], 'user')}, {_plural(meta['n_items_read'], 'item')}")
    dropped = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in meta["dropped"].items() if v)
    print(f"dropped: {dropped or 'nothing'}")
    print(f"kept {meta['n_users']:,} of {meta['n_users_read']:,} users and {meta['n_items']:,} of "
          f"{meta['n_items_read']:,} items")
    info = meta["item_info"]
    if info is None:
        print("no item info (no CSV with an item_id column beside the interactions): items have no titles or counts")
    else:
        notes = [f"{_plural(info['items_without_interactions'], 'item')} there without interactions left out"
                 if info["items_without_interactions"] else "",
                 f"{_plural(info['items_without_info'], 'kept item')} without a row"
                 if info["items_without_info"] else ""]
        print(f"item info {files['item_info']}: {_plural(info['rows'], 'row')}" + "".join(f"; {n}" for n in notes if n))
    if meta["image_store"] is None:
        reason = "--no-images" if args.no_images else "no covers/ or images/ folder next to the interactions"
        print(f"no image store ({reason}): the dataset is for ID and feature models only")
    else:
        store = meta["image_store"]
        grey = f", {len(store['placeholders'])} grey placeholders" if store["placeholders"] else ""
        unused = (f"; {_plural(store['unused_covers'], 'cover file')} of items not in the dataset not stored"
                  if store.get("unused_covers") else "")
        print(f"image store: {meta['n_items']:,} covers at {store['size']}x{store['size']} JPEG{grey}{unused}")
    if meta["cold_items"]:
        print(f"cold items held out of training: {meta['cold_items']['count']:,}")
    print(f"wrote {args.out}: {meta['n_users']:,} users, {meta['n_items']:,} items, "
          f"{meta['n_interactions']:,} interactions (leave-one-out split)")
    return 0
