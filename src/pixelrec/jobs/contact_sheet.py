"""A labelled contact sheet: for each user, their recent covers above the covers recommended to them.

Each user is a block: a header line, then two rows of covers titled "recent" and "recommended" in a
left margin. Under each cover: its token (recommended ones with their rank), then the item's whole
title, wrapped to the tile's width (a title longer than MAX_TITLE_LINES lines ends in an ellipsis).
New items (from `pixelrec embed`, not in the catalogue) have a coloured border and "(new)" after
their token; their covers are read from the files they were embedded from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pixelrec.data.images import ImageStore, to_rgb
from pixelrec.data.prepared import PreparedData
from pixelrec.errors import UserError

if TYPE_CHECKING:
    from pixelrec.jobs.new_items import NewItems

TILE = 128
GAP = 6  # between covers
MARGIN = 96  # left column with the row titles
PAD = 4
MAX_TITLE_LINES = 6
MAX_USERS = 20  # a taller sheet stops being readable; the caller says which users were drawn
ROW_TITLES = ("recent", "recommended")
NEW_BORDER = (230, 90, 10)  # the frame around a new item's cover
NEW_BORDER_WIDTH = 4


@dataclass
class Sheet:
    """What was drawn: the file, its size, the users drawn (tokens) and every text with its place."""

    path: Path
    size: tuple[int, int]
    users: list[str]
    texts: list[tuple[str, tuple[int, int]]] = field(default_factory=list)


def wrap(text: str, width: float, measure) -> list[str]:
    """Lines of `text` no wider than `width` (by `measure`): broken at spaces, and inside a word only
    when the word alone is wider (titles without spaces, as in Chinese)."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if measure(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = ""
        for char in word:
            if current and measure(current + char) > width:
                lines.append(current)
                current = ""
            current += char
    if current:
        lines.append(current)
    return lines


def contact_sheet(data: PreparedData, users: list[int], recommended: list[np.ndarray | list[int]],
                  titles: list[str] | None, out: Path, recent: int = 5, max_users: int | None = None,
                  new_items: NewItems | None = None) -> Sheet:
    """Write a PNG with, for each of the first `max_users` (default MAX_USERS) users (indices), their
    last `recent` items and their recommended items, every cover labelled; returns what was drawn.
    Indices above the catalogue are `new_items` (index n_items + 1 is its first), drawn marked."""
    if data.image_store_path is None:
        raise UserError(f"{data.root}: prepared without covers; a contact sheet needs an image store")
    store = ImageStore.from_prepared(data)
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def measure(text: str) -> float:
        return probe.textlength(text, font=font)

    line = int(font.getbbox("Ag")[3]) + 3
    blocks = []
    for user, chosen in list(zip(users, recommended))[: max_users or MAX_USERS]:
        history = np.asarray(data.item_seq[data.user_ptr[user] : data.user_ptr[user + 1]])[-recent:]
        rows = []
        for name, items in zip(ROW_TITLES, (history, np.asarray(chosen, dtype=np.int64))):
            labels = []
            for column, item in enumerate(items):
                title = wrap(titles[item], TILE - 2 * PAD, measure) if titles else []
                if len(title) > MAX_TITLE_LINES:
                    title = title[: MAX_TITLE_LINES - 1] + [title[MAX_TITLE_LINES - 1] + "…"]
                new = item > data.n_items
                token = new_items.tokens[item - data.n_items - 1] if new else str(data.item_tokens[item])
                token = f"{token} (new)" if new else token
                labels.append([f"{column + 1}. {token}" if name == "recommended" else token, *title])
            rows.append((name, items, labels, line * max((len(lab) for lab in labels), default=1) + PAD))
        blocks.append((str(data.user_tokens[user]), rows))

    columns = max((len(items) for _, rows in blocks for _, items, _, _ in rows), default=1)
    height = sum(line + PAD + sum(TILE + label for *_, label in rows) for _, rows in blocks) + PAD
    sheet = Image.new("RGB", (MARGIN + max(columns, 1) * (TILE + GAP), height), "white")
    draw = ImageDraw.Draw(sheet)
    drawn = Sheet(Path(out), sheet.size, [token for token, _ in blocks])

    def text(xy: tuple[int, int], value: str, **style) -> None:
        draw.text(xy, value, fill="black", font=font, **style)
        drawn.texts.append((value, xy))

    top = PAD
    for token, rows in blocks:
        text((PAD, top), f"user {token}")
        top += line + PAD
        for name, items, labels, label_height in rows:
            text((PAD, top + TILE // 2 - line // 2), name)
            images = _cover_pixels(store, items, data.n_items, new_items)
            for column, (item, pixels, label) in enumerate(zip(items, images, labels)):
                left = MARGIN + column * (TILE + GAP)
                sheet.paste(Image.fromarray(pixels).resize((TILE, TILE)), (left, top))
                if item > data.n_items:
                    draw.rectangle([left, top, left + TILE - 1, top + TILE - 1], outline=NEW_BORDER,
                                   width=NEW_BORDER_WIDTH)
                text((left + PAD, top + TILE + 2), "\n".join(label), spacing=3)
            top += TILE + label_height
        draw.line([(0, top - 1), (sheet.width, top - 1)], fill="#cccccc")
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        sheet.save(out, format=None if Path(out).suffix else "PNG")  # the format follows the extension
    except ValueError as err:
        raise UserError(f"{out}: cannot write the contact sheet ({err})") from None
    return drawn


def _cover_pixels(store: Any, items: np.ndarray, n_items: int, new_items: NewItems | None) -> list[np.ndarray]:
    """[S, S, 3] uint8 of each item: catalogue covers from the image store, new items' from their files."""
    items = np.asarray(items, dtype=np.int64)
    out: list[np.ndarray] = [np.zeros(0, np.uint8)] * len(items)
    old = np.flatnonzero(items <= n_items)
    if len(old):
        for row, pixels in zip(old.tolist(), store.read(items[old]).permute(0, 2, 3, 1).cpu().numpy()):
            out[row] = pixels
    for row in np.flatnonzero(items > n_items).tolist():
        if new_items is None:
            raise ValueError(f"item index {items[row]} is beyond the catalogue and no new items were given")
        out[row] = _new_cover(new_items, int(items[row]) - n_items - 1, store.size)
    return out


def _new_cover(new_items: NewItems, row: int, size: int) -> np.ndarray:
    """A new item's cover from the file it was embedded from, at the store's size."""
    path = new_items.covers[row]
    if path is None:  # embedded by a text run from its item info alone: a blank tile, framed as new
        return np.full((size, size, 3), 235, np.uint8)
    try:
        with Image.open(path) as image:
            return np.asarray(to_rgb(image).resize((size, size), Image.Resampling.BICUBIC))
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(f"contact sheet: cannot read {path}, the cover of new item {new_items.tokens[row]} "
                        f"({type(err).__name__}); it was there when `pixelrec embed` read it") from None
