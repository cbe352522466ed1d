"""`pixelrec report`: tables of finished runs and, with --out, figures (PNG) and report.md."""

from __future__ import annotations

import argparse

#: The command's line in `pixelrec --help`, and its place there (the order of a workflow).
SUMMARY = 'tables of finished runs, bench directories and studies; with --out, PNG figures and report.md'
ORDER = 9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run directories (or their results.json), `pixelrec bench` "
                        "directories and `pixelrec tune` study directories")
    parser.add_argument("--split", choices=["valid", "test"], default="test", help="the split whose metrics are shown")
    parser.add_argument("--latest", action="store_true", help="of several runs of one cell (the same model, items, "
                        "encoder, dataset, profile and every setting that can change a result) keep only the newest, "
                        "saying which runs it dropped; by default all are shown")
    parser.add_argument("--out", metavar="DIR", help="write report.md and PNG figures into this folder: encoders-"
                        "<model>.png (parameters and Recall@10 per image encoder), curves.png, study-<name>.png")


def run(args: argparse.Namespace) -> int:
    from pixelrec.bench.report import check_out, collect, load_study, tables_text, trials_text, write_report

    if args.out:
        check_out(args.out)  # before any output, so a wrong --out leaves one line and nothing else
    inputs = collect(args.runs, latest=args.latest)
    text = tables_text(inputs, args.split)
    for study_dir in inputs.studies:
        text += f"\n## Study {study_dir}\n\n{trials_text(load_study(study_dir))}\n"
    print(text, end="")
    if args.out:
        for path in write_report(inputs, args.out, args.split):
            print(f"wrote {path}")
    return 0
