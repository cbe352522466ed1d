"""`pixelrec export`: a run's user and item vectors as .npy with their tokens, for serving elsewhere;
or (--tower) its trained image tower, for items.image.encoder_weights and `pixelrec extract`."""

from __future__ import annotations

import argparse

from pixelrec.commands import add_run_argument, run_data, run_directory
from pixelrec.errors import UserError

#: The command's line in `pixelrec --help`, and its place there (the order of a workflow).
SUMMARY = ('user and item vectors of a trained run as .npy with their tokens, for serving elsewhere; or '
           'its image tower (--tower) for items.image.encoder_weights and extract')
ORDER = 12


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)
    parser.add_argument("--out", metavar="DIR", help="where items.npy, users.npy, items.txt, users.txt and "
                        "export.json go")
    parser.add_argument("--tower", metavar="OUT.safetensors", help="write the run's trained image tower (timm "
                        "weights; its description in OUT.json) for items.image.encoder_weights and extract --encoder-weights")
    parser.add_argument("--new-items", metavar="F.npy", help="with --out: append these new items' vectors (from "
                        "`pixelrec embed` with this run) after the catalogue's")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best",
                        help="best (last.pt, said so, when the run has no best.pt) or last")
    parser.add_argument("--batch-size", type=int, default=1024, metavar="N", help="users per forward pass")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an earlier export "
                        "(other files in --out stay)")


def run(args: argparse.Namespace) -> int:
    from pixelrec.jobs.export import export_tower, export_vectors

    if not args.out and not args.tower:
        raise UserError("what to export? --out DIR (user and item vectors) or --tower OUT.safetensors "
                        "(the image tower)")
    if args.new_items and not args.out:
        raise UserError("--new-items goes with --out DIR: the new items' vectors are appended to items.npy there")
    if args.tower:
        tower = export_tower(run_directory(args), args.tower, args.checkpoint, run_data(args), args.overwrite)
        source = tower["source"]
        print(f"wrote {args.tower}: {tower['timm_name']} tower ({tower['image_size']} px, pooling {tower['pooling']}) "
              f"from {source['checkpoint']} (epoch {source['epoch']}); use it as items.image.encoder_weights={args.tower} "
              f"or `pixelrec extract --encoder-weights {args.tower}`")
    if args.out:
        manifest = export_vectors(run_directory(args), args.out, args.checkpoint, args.batch_size, run_data(args),
                                  new_items=args.new_items, overwrite=args.overwrite)
        new = f" ({manifest['new_items']['count']:,} of them new)" if "new_items" in manifest else ""
        print(f"wrote {args.out}: {manifest['n_users']:,} users and {manifest['n_items']:,} items{new} x "
              f"{manifest['dim']} from {manifest['checkpoint']} (epoch {manifest['epoch']}) "
              f"(score = users . items; mask each user's history as `pixelrec recommend` does)")
    return 0
