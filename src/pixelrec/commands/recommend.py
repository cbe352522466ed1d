"""`pixelrec recommend`: top-k items for users of a trained run, history masked as in evaluation;
with --new-items, among the catalogue and items embedded after training by `pixelrec embed`."""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from pixelrec.commands import add_run_argument, at_least, run_data, run_directory
from pixelrec.errors import UserError

#: The command's line in `pixelrec --help`, and its place there (the order of a workflow).
SUMMARY = 'top-k items for users of a trained run (CSV, optional contact sheet of covers)'
ORDER = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", action="append", help="user token as in the interactions file (repeatable)")
    who.add_argument("--users-file", metavar="FILE", help="text file with one user token per line (batch mode)")
    parser.add_argument("-k", type=at_least(1), default=10, help="items per user; a user who has not had that "
                        "many items gets all those they have not had")
    parser.add_argument("--checkpoint", choices=["best", "last"], default="best", help="the run's weights to use")
    parser.add_argument("--out", metavar="FILE.csv", help="write the CSV to this file instead of printing it")
    parser.add_argument("--image", metavar="FILE.png", help="contact sheet: each user's recent and recommended "
                        "covers with their titles (the first 20 users)")
    parser.add_argument("--new-items", metavar="F.npy", help="vectors of items not in the catalogue, written for "
                        "this run by `pixelrec embed`: ranked with the catalogue and marked new (CSV column new, "
                        "a frame on the contact sheet)")


EXAMPLE_NAMES = {"--out": "recommendations.csv", "--image": "sheet.png"}


def _file_argument(flag: str, value: str | None) -> Path | None:
    """An output file: refused (one line) when it names a folder, or a folder that does not exist."""
    if value is None:
        return None
    path = Path(value)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give the path of a file, e.g. {path / EXAMPLE_NAMES[flag]}")
    if not path.parent.is_dir():
        raise UserError(f"{flag} {path}: folder {path.parent} does not exist")
    return path


def run(args: argparse.Namespace) -> int:
    from pixelrec.jobs import recommend
    from pixelrec.storage.atomic import atomic_write

    out, image = _file_argument("--out", args.out), _file_argument("--image", args.image)
    tokens = args.user or _read_tokens(Path(args.users_file))
    found, loaded, new = recommend.recommend(run_directory(args), tokens, k=args.k, checkpoint=args.checkpoint,
                                             data=run_data(args), new_items=args.new_items)
    data = loaded.data
    if image is not None and data.image_store_path is None:
        raise UserError(f"--image: {data.root} was prepared without covers (no image store)")
    if found.note:
        print(f"note: {found.note}", file=sys.stderr)
    buffer = io.StringIO()
    columns = ["user_id", "rank", "item_id", "score", "title"] + (["new"] if new is not None else [])
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({**row, "score": f"{row['score']:.6g}"} for row in found.rows())
    said = sys.stdout if out is not None else sys.stderr  # "wrote" lines never mix with a CSV on stdout
    if out is None:
        sys.stdout.write(buffer.getvalue())
    else:
        atomic_write(out, buffer.getvalue().encode())
        print(f"wrote {out}: {_count(sum(map(len, found.items)), 'recommendation')} for {_count(len(tokens), 'user')}",
              file=said)
    if image is not None:
        from pixelrec.evaluation.ranking import user_indices
        from pixelrec.jobs.contact_sheet import contact_sheet

        titles = recommend.item_titles(data)
        titles = titles if new is None else new.extend_titles(titles, data.n_items)
        sheet = contact_sheet(data, list(user_indices(data, tokens)), found.indices, titles, image, new_items=new)
        drawn = (_count(len(tokens), "user") if len(sheet.users) == len(tokens)
                 else f"the first {len(sheet.users)} of {len(tokens)} users")
        print(f"wrote {image}: recent and recommended covers of {drawn}", file=said)
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _read_tokens(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"{path}: users file not found")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file of user tokens") from None
    tokens = [line.strip() for line in text.splitlines() if line.strip()]
    if not tokens:
        raise UserError(f"{path}: no user tokens in the file")
    return tokens
