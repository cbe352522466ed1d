"""Frozen text features for every item of a prepared dataset (ViNet over text).

`extract_text_features` runs a Hugging Face text model, wholly frozen and in eval mode, over the
dataset's stored tokenisation (data/text_tokens: the token array that text items train on), pools each
item's hidden states (the mean over its tokens, or the first token) and writes the same `.npy` +
sidecar as image extraction, through the same machinery (storage/row_files): resumable, one writer per file,
disk reserved before rows are written. `items.kind=features` reads the file like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from pixelrec.data.prepared import PreparedData
from pixelrec.data.text_tokens import ItemTexts
from pixelrec.errors import UserError
from pixelrec.items.text import DEFAULT_FIELDS
from pixelrec.jobs.extract import _as_data
from pixelrec.storage import locks
from pixelrec.storage.feature_files import DTYPES, FORMAT, VERSION, dataset_order_sha256
from pixelrec.storage.row_files import check_output, npy_path, write_item_rows
from pixelrec.towers.text_tower import TEXT_POOLINGS, pool_tokens, text_tower


def extract_text_features(
    data: PreparedData | str | Path,
    out: str | Path,
    model: str,
    *,
    text_fields: Sequence[str] = DEFAULT_FIELDS,
    max_tokens: int = 32,
    pooling: str = "mean",
    batch_size: int = 256,
    workers: int = 0,
    dtype: str = "fp16",
    device: str | torch.device = "cpu",
    tokens_dir: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the pooled frozen output of text model `model` (a directory, or a hub name in the local
    cache) for every item to `out` (+ sidecar), resuming a matching interrupted run; returns the
    sidecar with `rows_written` (0: the file was already complete). The items' texts are tokenised
    once and stored (in `tokens_dir`, default text_tokens/ in the dataset), as for text items."""
    data, out, device = _as_data(data), npy_path(out), torch.device(device)
    pooling = "mean" if pooling == "default" else pooling
    if pooling not in TEXT_POOLINGS:
        raise UserError(f"pooling={pooling}: a text model pools by {' or '.join(TEXT_POOLINGS)}")
    check_output(out, dtype, batch_size, workers)
    with locks.hold(locks.lock_path(out), f"feature file {out}"):  # first: a second writer learns it at once
        tower, tokenizer = text_tower(model, "model")
        tower.check_length(max_tokens, "max_tokens")
        tower.freeze(0)
        tower.eval().to(device)
        tokens = ItemTexts.from_prepared(data).tokens(tokenizer, list(text_fields), max_tokens, tokens_dir)
        wanted = {
            "format": FORMAT, "version": VERSION, "encoder": tower.name, "modality": "text",
            "text_model": type(tower.model).__name__, "timm_name": None,
            "weights_sha256": tower.prefix_sha256(), "pretrained": None, "seed": None, "image_size": None,
            "pooling": pooling, "preprocessing": None, "text_fields": list(text_fields), "max_tokens": max_tokens,
            "tokens": tokens.path.name, "dtype": DTYPES[dtype], "dim": tower.width, "n_items": data.n_items,
            "item_order_sha256": dataset_order_sha256(data.item_tokens), "dataset": data.name,
        }

        def not_finite(row: int) -> str:
            return (f"{out}: the text model's output for item {data.item_tokens[row + 1]} (row {row}) is not "
                    f"finite in {DTYPES[dtype]}; try dtype=fp32")

        return write_item_rows(out, wanted, overwrite, tokens, data.n_items,
                               lambda ids: pool_tokens(tower(ids), ids, pooling), not_finite,
                               desc=f"extract {tower.name}", batch_size=batch_size, workers=workers, device=device,
                               progress=progress, fp16=device.type == "cuda" and dtype == "fp16", unit="item")
