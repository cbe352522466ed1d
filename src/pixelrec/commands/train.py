"""`pixelrec train`: build item encoder x backbone x loss from the configuration and train it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pixelrec.config import resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="prepared dataset directory (from `pixelrec prepare`)")
    parser.add_argument("--model", help="backbone: sasrec, gru4rec, bert4rec, mf, pop, ...")
    from pixelrec.items import ITEM_ENCODERS

    parser.add_argument("--items", choices=ITEM_ENCODERS.names(), help="item encoder kind")
    parser.add_argument("--encoder", help="image encoder for pixels/features (short name or timm name)")
    parser.add_argument("--loss", choices=["bpr", "softmax", "full-softmax"])
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML file(s), later ones win")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="sets",
                        help="override any key, e.g. --set train.lr=1e-4 (repeatable)")
    parser.add_argument("--out", help="run directory (default runs/<model>-<items>-<time>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly where it stopped")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")


def flags_of(args: argparse.Namespace) -> dict:
    flags: dict = {}
    pairs = [("data", "path", args.data), ("items", "kind", args.items), ("items", "encoder", args.encoder),
             ("loss", "name", args.loss), ("train", "epochs", args.epochs), ("train", "device", args.device),
             ("train", "seed", args.seed)]
    for section, key, value in pairs:
        if value is not None:
            flags.setdefault(section, {})[key] = value
    return flags


def run(args: argparse.Namespace) -> int:
    from pixelrec import distributed
    from pixelrec.config import dump, read_yaml
    from pixelrec.train.rundir import default_run_dir
    from pixelrec.train.trainer import train

    if args.resume:
        out = Path(args.resume)
        base = read_yaml(out / "config.yaml")
        config = resolve(files=args.config, flags=flags_of(args), sets=args.sets, base=base)
    else:
        config = resolve(model=args.model, files=args.config, flags=flags_of(args), sets=args.sets)
        out = Path(args.out) if args.out else None
    if args.print_config:
        print(dump(config), end="")
        return 0
    job, _ = distributed.join(config.train.device, config.train.dist_timeout_minutes)
    try:
        if out is None:  # one name for the whole job: rank 0's
            out = distributed.gather_objects(default_run_dir(config.model_name, config.items.kind) if job.main else None)[0]
        results = train(config, out, resume=bool(args.resume))
        if job.main:
            print(json.dumps({"run": str(out), "valid": results.get("valid"), "test": results.get("test")}, indent=2))
    finally:
        distributed.leave()
    return 0
