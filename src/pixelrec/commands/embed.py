"""`pixelrec embed`: vectors of items not in the catalogue, from their covers and texts, with a trained
pixels, text or multimodal run."""

from __future__ import annotations

import argparse

from pixelrec.commands import add_run_argument, at_least, run_data, run_directory, say_written

#: The command's line in `pixelrec --help`, and its place there (the order of a workflow).
SUMMARY = ('vectors of new items (not in the catalogue) from their covers and texts, with a trained '
           'pixels, text or multimodal run; resumable')
ORDER = 13


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)
    parser.add_argument("--covers", metavar="DIR", help="folder of the new items' covers, <item_id>.jpg (or .jpeg, "
                        ".png, .webp); needed by pixels and multimodal runs, kept for the contact sheet by text runs")
    parser.add_argument("--item-info", metavar="CSV", help="item info of the new items (item_id, title, tag, ...): "
                        "embed the items it lists, in its order, with their titles; needed by text and multimodal "
                        "runs (their items.text.fields are read from it); pixels runs: default every cover in --covers")
    parser.add_argument("--out", required=True, metavar="F.npy", help="vectors file; its sidecar F.json holds the "
                        "item tokens in row order and the run's checkpoint hash")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best", help="the run's weights to use")
    parser.add_argument("--batch-size", type=at_least(1), default=64, metavar="N", help="items per forward pass")
    parser.add_argument("--workers", type=at_least(0), default=0, metavar="N",
                        help="processes that read the items' inputs (decoded covers, token rows)")
    parser.add_argument("--allow-catalogue", action="store_true", help="embed items already in the "
                        "catalogue too (to compare with the run's own vectors) instead of refusing them")
    parser.add_argument("--overwrite", action="store_true", help="start over instead of resuming or refusing")


def run(args: argparse.Namespace) -> int:
    from pixelrec.jobs.new_items import embed_new_items

    run_dir = run_directory(args)
    sidecar = embed_new_items(run_dir, args.covers, args.out, item_info=args.item_info, checkpoint=args.checkpoint,
                              data_path=run_data(args), batch_size=args.batch_size, workers=args.workers,
                              allow_catalogue=args.allow_catalogue, overwrite=args.overwrite)
    what = (f"{sidecar['n_items']:,} items x {sidecar['dim']} from {sidecar['checkpoint']} of {run_dir}; "
            f"rank them with `pixelrec recommend --run {run_dir} --new-items {args.out} --user ...`")
    say_written(args.out, sidecar, what, done="embedded", again="embeds them")
    return 0
