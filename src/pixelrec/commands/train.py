"""`pixelrec train`: build item encoder x backbone x loss from the configuration and train it."""

from __future__ import annotations

import argparse

from pixelrec.commands import results_json

#: The command's line in `pixelrec --help`, and its place there (the order of a workflow).
SUMMARY = 'train a recommender (item encoder x backbone x loss) and evaluate it'
ORDER = 6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="prepared dataset directory (from `pixelrec prepare`)")
    parser.add_argument("--model", help="backbone: sasrec, gru4rec, bert4rec, mf, pop, ...")
    from pixelrec.items import ITEM_ENCODERS

    parser.add_argument("--items", choices=ITEM_ENCODERS.names(), help="item encoder kind")
    parser.add_argument("--encoder", help="the item kind's encoder: the image encoder (items.image.encoder: a short "
                        "or timm name) for pixels, features, multimodal; the text model (items.text.encoder) for text")
    parser.add_argument("--loss", choices=["bpr", "softmax", "full-softmax"], help="loss.name (default: the "
                        "configuration's: bpr, softmax for pixels, text and multimodal items)")
    parser.add_argument("--epochs", type=int, help="train.epochs, the most epochs to train; early stopping may end "
                        "sooner (default: the configuration's, 200)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--seed", type=int, help="train.seed, for every random stream of the run (default: the "
                        "configuration's, 0)")
    parser.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML file(s), later ones win")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="set",
                        help="override any key, e.g. --set train.lr=1e-4 (repeatable)")
    parser.add_argument("--out", help="run directory (default runs/<model>-<items>-<time>)")
    parser.add_argument("--init-from", metavar="RUN_DIR", help="start a new run from another run's weights "
                        "(train.init_from; the item encoder's tower and projection, see train.init_parts); "
                        "ID tables never cross datasets")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly where it stopped "
                        "(--epochs, --device and a few --set keys may change; they are written to its config.yaml)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run files in a non-empty --out (other files there stay)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")


def settings_of(args: argparse.Namespace) -> dict:
    """The train job's arguments from the command line (`--resume RUN` continues the run in RUN)."""
    return dict(data=args.data, model=args.model, items=args.items, encoder=args.encoder, loss=args.loss,
                epochs=args.epochs, device=args.device, seed=args.seed, init_from=args.init_from, config=args.config,
                set=args.set, out=args.resume or args.out, resume=bool(args.resume), overwrite=args.overwrite)


def run(args: argparse.Namespace) -> int:
    from pixelrec import distributed
    from pixelrec.config import dump
    from pixelrec.errors import UserError
    from pixelrec.jobs import train

    if args.resume and args.out:
        raise UserError(f"--resume {args.resume} continues that run in place; drop --out {args.out}")
    if args.print_config:
        config, _ = train.resolve_training(**settings_of(args))
        print(dump(config), end="")
        return 0
    try:
        out, results = train.train(**settings_of(args))
        if distributed.current().main:
            print(results_json({"run": str(out), "valid": results.get("valid"), "test": results.get("test")}))
    finally:
        distributed.leave()
    return 0
