"""A labelled contact sheet: a user's recent covers above the covers recommended to them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pixelrec.data.prepared import PreparedData
from pixelrec.errors import UserError

TILE = 128
LABEL = 28


def contact_sheet(data: PreparedData, user: int, recommended: np.ndarray, titles: list[str] | None, out: Path,
                  recent: int = 5) -> None:
    """Write a PNG: row 1 the user's last `recent` items, row 2 the recommended items, each labelled."""
    from pixelrec.data.images import ImageStore

    if data.image_store_path is None:
        raise UserError(f"{data.root}: prepared without covers; --image needs an image store")
    store = ImageStore.from_prepared(data)
    history = np.asarray(data.item_seq[data.user_ptr[user] : data.user_ptr[user + 1]])[-recent:]
    rows = [("recent", history), ("recommended", np.asarray(recommended))]
    columns = max(len(history), len(recommended))
    sheet = Image.new("RGB", (columns * TILE, len(rows) * (TILE + LABEL) + LABEL), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), f"user {data.user_tokens[user]}", fill="black")
    for r, (name, items) in enumerate(rows):
        top = LABEL + r * (TILE + LABEL)
        images = store.read(items).permute(0, 2, 3, 1).numpy()
        for c, (item, pixels) in enumerate(zip(items, images)):
            sheet.paste(Image.fromarray(pixels).resize((TILE, TILE)), (c * TILE, top))
            label = f"{name[0]}{c + 1} {data.item_tokens[item]} {titles[item][:14] if titles else ''}"
            draw.text((c * TILE + 2, top + TILE + 2), label, fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
