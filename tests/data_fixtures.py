"""Fixtures and helpers for the data tests: hand-made raw files in the PixelRec and RecBole layouts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelrec.cli import main

# (item_id, user_id, timestamp) in file order. u1: i3@5, i1@10, i2@20. u2: i2@5, i1@7, i4@7 (tie: file order),
# i3@9, and a repeat of (i1, u2, 7) that is dropped as a duplicate. u3 has 2 interactions and is dropped.
HAND_ROWS = [("i1", "u1", 10), ("i2", "u2", 5), ("i3", "u1", 5), ("i2", "u1", 20), ("i1", "u2", 7),
             ("i4", "u2", 7), ("i3", "u2", 9), ("i1", "u3", 1), ("i2", "u3", 2), ("i1", "u2", 7)]
HAND_SEQUENCES = [[3, 1, 2], [2, 1, 4, 3]]  # item indices by first appearance: i1=1, i2=2, i3=3, i4=4


def write_interactions(path: Path, rows, header: str = "item_id,user_id,timestamp") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(",".join(str(v) for v in row) + "\n" for row in rows))
    return path


def cover(seed: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    """A smooth random colour image (JPEG-friendly, so round trips compare closely)."""
    rng = np.random.default_rng(seed)
    low = Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8))
    return low.resize(size, Image.Resampling.BILINEAR)


def write_covers(folder: Path, tokens, sizes=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, token in enumerate(tokens):
        cover(k, (sizes or {}).get(token, (40, 30))).save(folder / f"{token}.jpg", quality=95)


def write_item_info(path: Path, tokens) -> Path:
    lines = ["item_id,view_number,comment_number,thumbup_number,share_number,coin_number,favorite_number,"
             "barrage_number,title,tag,description"]
    for k, token in enumerate(tokens):
        lines.append(f'{token},{100 + k},{k},1,2,3,4,5,"title {k}, with comma","t{k}","say ""hi"" {k}"')
    path.write_text("\n".join(lines) + "\n")
    return path


def hand_raw(root: Path, covers: bool = True) -> Path:
    """The hand-made example as a PixelRec raw folder (subset-named CSV, item info, covers/)."""
    write_interactions(root / "Tiny.csv", HAND_ROWS)
    write_item_info(root / "item_info.csv", ["i1", "i2", "i3", "i4"])
    if covers:
        write_covers(root / "covers", ["i1", "i2", "i3", "i4"])
    return root


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """Run `pixelrec ARGV` in-process; (exit status, stdout, stderr)."""
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_line(err: str) -> str:
    """The single line of a user-facing error: no traceback, no second line."""
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    return lines[0]


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data_synth_raw(tmp_path_factory) -> Path:
    """A small synthetic raw dataset (60 users, 40 items, 32 px covers), written once per module."""
    from pixelrec.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("synth") / "raw"
    write_synthetic(root, users=60, items=40, mean_len=8, image_size=32, seed=3)
    return root
