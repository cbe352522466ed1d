"""A labelled contact sheet: for each user, their recent covers above the covers recommended to them.

Each user is a block: a header line, then two rows of covers titled "recent" and "recommended" in a
left margin. Under each cover: its token (recommended ones with their rank), then the item's whole
title, wrapped to the tile's width (a title longer than MAX_TITLE_LINES lines ends in an ellipsis).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pixelrec.data.prepared import PreparedData
from pixelrec.errors import UserError

TILE = 128
GAP = 6  # between covers
MARGIN = 96  # left column with the row titles
PAD = 4
MAX_TITLE_LINES = 6
MAX_USERS = 20  # a taller sheet stops being readable; the caller says which users were drawn
ROW_TITLES = ("recent", "recommended")


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
                  titles: list[str] | None, out: Path, recent: int = 5, max_users: int | None = None) -> Sheet:
    """Write a PNG with, for each of the first `max_users` (default MAX_USERS) users (indices), their
    last `recent` items and their recommended items, every cover labelled; returns what was drawn."""
    from pixelrec.data.images import ImageStore

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
                token = str(data.item_tokens[item])
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
            images = store.read(items).permute(0, 2, 3, 1).numpy() if len(items) else []
            for column, (pixels, label) in enumerate(zip(images, labels)):
                left = MARGIN + column * (TILE + GAP)
                sheet.paste(Image.fromarray(pixels).resize((TILE, TILE)), (left, top))
                text((left + PAD, top + TILE + 2), "\n".join(label), spacing=3)
            top += TILE + label_height
        draw.line([(0, top - 1), (sheet.width, top - 1)], fill="#cccccc")
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        sheet.save(out, format=None if Path(out).suffix else "PNG")  # the format follows the extension
    except ValueError as err:
        raise UserError(f"{out}: cannot write the contact sheet ({err})") from None
    return drawn
