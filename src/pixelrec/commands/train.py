"""`pixelrec train`: build item encoder x backbone x loss from the configuration and train it."""

from __future__ import annotations

import argparse
from pathlib import Path

from pixelrec.commands import results_json
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
    parser.add_argument("--init-from", metavar="RUN_DIR", help="start a new run from another run's weights "
                        "(train.init_from; the item encoder's tower and projection, see train.init_parts); "
                        "ID tables never cross datasets")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly where it stopped "
                        "(--epochs, --device and a few --set keys may change; they are written to its config.yaml)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run files in a non-empty --out (other files there stay)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")


def flags_of(args: argparse.Namespace) -> dict:
    flags: dict = {}
    pairs = [("data", "path", args.data), ("items", "kind", args.items), ("items", "encoder", args.encoder),
             ("loss", "name", args.loss), ("train", "epochs", args.epochs), ("train", "device", args.device),
             ("train", "seed", args.seed), ("train", "init_from", args.init_from)]
    for section, key, value in pairs:
        if value is not None:
            flags.setdefault(section, {})[key] = value
    return flags


def run(args: argparse.Namespace) -> int:
    from pixelrec import distributed
    from pixelrec.config import dump
    from pixelrec.runs.directory import default_run_dir
    from pixelrec.training.trainer import train

    if args.resume:
        out = Path(args.resume)
        base = _resumable_base(out, args)
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
        results = train(config, out, resume=bool(args.resume), overwrite=args.overwrite)
        if job.main:
            print(results_json({"run": str(out), "valid": results.get("valid"), "test": results.get("test")}))
    finally:
        distributed.leave()
    return 0


def _resumable_base(run: Path, args: argparse.Namespace) -> dict:
    """The saved configuration of the run to resume, after the checks that need no model: flags that
    contradict resuming, another model, a dataset that is no longer where the run recorded it."""
    from pixelrec.config import read_yaml
    from pixelrec.errors import UserError

    if args.out:
        raise UserError(f"--resume {run} continues that run in place; drop --out {args.out}")
    if args.overwrite:
        raise UserError(f"--overwrite starts a run anew and --resume {run} continues it; choose one")
    if not (run / "config.yaml").is_file():
        raise UserError(f"{run}: not a run directory (no config.yaml); nothing to resume")
    base = read_yaml(run / "config.yaml")
    saved_model = (base.get("model") or {}).get("name")
    if args.model and args.model != saved_model:
        raise UserError(f"{run}: cannot change on --resume: model.name ({saved_model} -> {args.model}); "
                        "start a new run with --out")
    saved_data = (base.get("data") or {}).get("path")
    if not args.data and saved_data and not Path(saved_data).is_dir():
        raise UserError(f"{run}: its dataset {saved_data} is not there any more; pass --data DIR where it is now")
    return base
