"""`pixelrec tune`: an Optuna study (grid or TPE, optional median pruning) over one backbone's settings."""

from __future__ import annotations

import argparse

#: The command's line in `pixelrec --help`, and its place there (the order of a workflow).
SUMMARY = 'hyper-parameter search with Optuna (grid or TPE, median pruning), resumable; writes best.yaml'
ORDER = 11


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR", help="prepared dataset (from `pixelrec prepare`)")
    parser.add_argument("--model", required=True, help="backbone: sasrec, gru4rec, mf, ...")
    parser.add_argument("--items", help="item encoder kind: id, pixels, features, id+features")
    parser.add_argument("--encoder", help="image encoder for pixels/features")
    parser.add_argument("--study", required=True, metavar="DIR", dest="study_dir", help="study directory (study.db, "
                        "trials/, best.yaml); rerun to continue it")
    parser.add_argument("--sampler", choices=["grid", "tpe"], default="grid", help="grid: every combination of "
                        "--grid; tpe: Optuna's TPE sampler over the same values")
    parser.add_argument("--trials", type=int, metavar="N", help="finished trials wanted in the study "
                        "(default: the whole grid; 20 for tpe)")
    parser.add_argument("--grid", metavar="SPACE", help="search space, e.g. \"model.embedding_size=64,128;"
                        "train.lr=1e-4,1e-3\" (default: the paper's grid, see docs/bench.md)")
    parser.add_argument("--prune", action="store_true", help="median pruning on the validation metric per epoch")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (grid order, TPE)")
    parser.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML file(s) or presets")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="set",
                        help="fixed override for every trial (repeatable)")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from pixelrec.bench.tune import PAPER_GRID, TuneSpec, best_trial, parse_grid, run_study, trials_table

    spec = TuneSpec(data=args.data, model=args.model, items=args.items, encoder=args.encoder, files=args.config,
                    sets=args.set, grid=parse_grid(args.grid) if args.grid else dict(PAPER_GRID),
                    sampler=args.sampler, trials=args.trials, prune=args.prune, seed=args.seed)
    try:
        study = run_study(spec, Path(args.study_dir))
    except KeyboardInterrupt:
        print(f"interrupted: the running trial is kept; rerun the same command to continue {args.study_dir}",
              file=sys.stderr)
        raise
    print(trials_table(study))
    best = best_trial(study)
    if best is None:
        print("no trial completed")
        return 1
    from pixelrec.units import percent

    print(f"best: trial {best.number}, objective {percent(best.value)}; "
          f"configuration in {Path(args.study_dir) / 'best.yaml'}")
    return 0
