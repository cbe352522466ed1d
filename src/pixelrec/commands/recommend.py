"""`pixelrec recommend`: top-k items for users of a trained run, history masked as in evaluation."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from pixelrec.commands import add_run_argument, run_directory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", action="append", help="user token as in the interactions file (repeatable)")
    who.add_argument("--users-file", help="text file with one user token per line (batch mode)")
    parser.add_argument("-k", type=int, default=10, help="number of items per user")
    parser.add_argument("--out", help="write CSV here instead of printing")
    parser.add_argument("--image", help="PNG contact sheet of the first user's recent and recommended covers")


def run(args: argparse.Namespace) -> int:
    from pixelrec.errors import UserError
    from pixelrec.evaluate.run import load_run, recommend, user_indices

    if args.k < 1:
        raise UserError(f"-k must be at least 1, not {args.k}")
    tokens = args.user or _read_tokens(Path(args.users_file))
    config, data, model = load_run(run_directory(args))
    users = user_indices(data, tokens)
    items, scores = recommend(model, data, users, args.k, config.data.max_len)
    titles = _titles(data)
    rows = [
        {"user_id": token, "rank": r + 1, "item_id": data.item_tokens[item], "score": f"{score:.6g}",
         "title": titles[item] if titles is not None else ""}
        for token, user_items, user_scores in zip(tokens, items, scores)
        for r, (item, score) in enumerate(zip(user_items, user_scores))
    ]
    handle = open(args.out, "w", newline="") if args.out else sys.stdout
    writer = csv.DictWriter(handle, fieldnames=["user_id", "rank", "item_id", "score", "title"])
    writer.writeheader()
    writer.writerows(rows)
    if args.out:
        handle.close()
    if args.image:
        from pixelrec.evaluate.contact_sheet import contact_sheet

        contact_sheet(data, int(users[0]), items[0], titles, Path(args.image))
    return 0


def _read_tokens(path: Path) -> list[str]:
    from pixelrec.errors import UserError

    if not path.is_file():
        raise UserError(f"{path}: users file not found")
    tokens = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not tokens:
        raise UserError(f"{path}: no user tokens in the file")
    return tokens


def _titles(data):
    table = data.item_table()
    if "title" not in table.column_names:
        return None
    return [""] + [str(t or "") for t in table.column("title").to_pylist()]
