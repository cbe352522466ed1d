"""`pixelrec bench`: run the model x item kind x image encoder matrix, resumably, into one directory."""

from __future__ import annotations

import argparse

#: The command's line in `pixelrec --help`, and its place there (the order of a workflow).
SUMMARY = ('run the model x item kind x image encoder matrix (resumable) into results.csv and a '
           'paper-style table')
ORDER = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR", help="prepared dataset (from `pixelrec prepare`)")
    parser.add_argument("--models", required=True, help="comma-separated backbones, e.g. mf,sasrec,gru4rec")
    parser.add_argument("--items", default="id", help="comma-separated item kinds: id,pixels,features,id+features,"
                        "text,multimodal")
    parser.add_argument("--encoders", default="", help="comma-separated image encoders for pixels, features and "
                        "multimodal cells, e.g. clip-rn50,clip-vit-b32 (default: the configuration's; pixels and "
                        "multimodal cells without one take clip-vit-b32)")
    parser.add_argument("--features", metavar="PATTERN", help="feature file of features cells; {encoder} is "
                        "replaced by the cell's encoder, e.g. feats/{encoder}.npy")
    parser.add_argument("--weights", metavar="PATTERN", help="image encoder weights of pixels and multimodal cells; "
                        "{encoder} is replaced by the cell's encoder, e.g. weights/{encoder}.safetensors (cells whose "
                        "variant starts the item encoder from a run, train.init_from, take none)")
    parser.add_argument("--text-model", metavar="DIR", help="text model of text and multimodal cells: a Hugging Face "
                        "model directory")
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML file(s) or presets layered over every cell's defaults, later ones win")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="set",
                        help="override a key in every cell, e.g. --set train.epochs=5 (repeatable)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME[:SECTION.KEY=VALUE;...]",
                        dest="variants", help="run every cell once per variant, with its settings over --set, e.g. "
                        "--variant random --variant 'pre:train.init_from=runs/a' (repeatable; the name ends the "
                        "cell's directory name)")
    parser.add_argument("--out", required=True, metavar="DIR", help="benchmark directory; rerun to continue it")


def split_list(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']."""
    return [part.strip() for part in text.split(",") if part.strip()]


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from pixelrec.bench.matrix import BenchSpec, cells_of, parse_variant, run_matrix
    from pixelrec.errors import UserError

    variants = [parse_variant(text) for text in args.variants]
    names = [v.name for v in variants]
    if len(set(names)) < len(names):
        raise UserError(f"--variant: each name once, not {', '.join(sorted({n for n in names if names.count(n) > 1}))} twice")
    spec = BenchSpec(data=args.data, cells=cells_of(split_list(args.models), split_list(args.items),
                                                    split_list(args.encoders), names or None),
                     files=args.config, sets=args.set, features=args.features, weights=args.weights,
                     text_model=args.text_model, variants=variants)
    from pixelrec.commands import in_flags

    try:  # each cell's line speaks of bench's own options (--features, --text-model), as its errors do
        rows = run_matrix(spec, Path(args.out), log=lambda line: print(in_flags(line, args.flags)))
    except KeyboardInterrupt:
        print(f"interrupted: rerun the same command to continue {args.out}", file=sys.stderr)
        raise
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    if not counts.get("done"):  # no table of nothing: the first failure, and where the others are
        failed = next((row for row in rows if row["status"] == "failed"), rows[0])
        raise UserError(f"no cell finished: {failed['model']}-{failed['items']} {failed['status']}: {failed['reason']} "
                        f"(every cell's status: {Path(args.out) / 'results.md'})")
    print((Path(args.out) / "results.md").read_text(), end="")
    print(f"{len(rows)} cells: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
          + f"; see {Path(args.out) / 'results.csv'}")
    return 1 if counts.get("failed") else 0
