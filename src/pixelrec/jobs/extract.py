"""Frozen image features for every item of a prepared dataset (ViNet), or features brought from elsewhere.

`extract_features` runs the pixels adapter's tower (pre-processing -> timm tower -> pooling, no
projection) in eval mode without gradients over the image store, batch by batch through DataLoader
workers, into a memory-mapped `.npy` (row r = item index r + 1). After each chunk is flushed the
sidecar records the rows done (written atomically), so an interrupted run continues where it stopped
and gives the same bytes as an uninterrupted one (items/text_features fills the same files from a text
model, through the same machinery). `import_features` re-orders an existing array
(e.g. the PixelRec release's features) into the dataset's item order, checking every row it keeps.
Both hold a lock beside the file for their whole run (one writer per file) and reserve the array's
blocks before writing rows, so a full disk is one line, never a SIGBUS.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from pixelrec.data.images import ImageStore
from pixelrec.data.prepared import PreparedData
from pixelrec.errors import UserError
from pixelrec.progress import log
from pixelrec.storage import locks
from pixelrec.storage.feature_files import (
    CHECK_ROWS,
    DTYPES,
    FORMAT,
    VERSION,
    dataset_order_sha256,
    file_sha256,
    first_non_finite,
    sidecar_path,
    write_sidecar,
)
from pixelrec.storage.files import open_npy
from pixelrec.storage.row_files import check_output, create_rows, npy_path, write_errors, write_item_rows
from pixelrec.towers.caveats import tower_caveats
from pixelrec.towers.image_tower import Preprocess, check_pooling, create_tower, pool, refuse_unfit_size, tokens
from pixelrec.towers.names import timm_name
from pixelrec.towers.tower_file import EXTRACT_NAMES, tower_settings


class FeatureTower(nn.Module):
    """uint8 images [B, 3, S, S] -> pooled features [B, dim]: the pixels adapter's pre-processing,
    timm tower and pooling, frozen in eval mode; pooling `none` keeps every position of the last map
    (or every patch token, class tokens left out): [B, components, dim]. Random weights are drawn from `seed`."""

    def __init__(self, encoder: str, encoder_weights: str | None = None, pretrained: bool = False,
                 image_size: int | None = None, pooling: str = "default", preprocess: str = "encoder",
                 seed: int = 0) -> None:
        super().__init__()
        # a tower exported from a run (`pixelrec export --tower`) brings its own size, pooling, ...
        encoder, image_size, pooling, preprocess, _, timm_args = tower_settings(
            encoder_weights, encoder=encoder, image_size=image_size, pooling=pooling, preprocess=preprocess,
            names=EXTRACT_NAMES, poolings=EXTRACT_POOLINGS)
        with torch.random.fork_rng(devices=[]):  # the same tower every run, without touching the caller's RNG
            torch.manual_seed(seed)
            self.tower = create_tower(encoder, encoder_weights, pretrained, image_size, timm_args=timm_args)
        check_pooling(self.tower, pooling, encoder, EXTRACT_POOLINGS)
        self.preprocess = Preprocess(self.tower, image_size, preprocess)
        self.pooling, self.style = pooling, preprocess
        self.requires_grad_(False)
        self.eval()
        refuse_unfit_size(self.tower, self.pooled, self.preprocess.size, encoder, pooling)

    def forward(self, images: Tensor) -> Tensor:
        return self.pooled(self.preprocess(images))

    def pooled(self, inputs: Tensor) -> Tensor:
        """What the file stores for normalised inputs: pooled vectors, or the tokens with pooling none."""
        features = self.tower.forward_features(inputs)
        if self.pooling == "none":
            return tokens(self.tower, features)[:, getattr(self.tower, "num_prefix_tokens", 0) :]
        return pool(self.tower, features, self.pooling)

    def describe(self) -> dict[str, Any]:
        """The pre-processing, as the sidecar records it."""
        return {"style": self.style, **self.preprocess.describe()}


#: The poolings of image extraction: `none` writes spatial features (see feature_store).
EXTRACT_POOLINGS = ("default", "cls", "mean", "none")


def _as_data(data: PreparedData | str | Path) -> PreparedData:
    return data if isinstance(data, PreparedData) else PreparedData(data)


def extract_features(
    data: PreparedData | str | Path,
    out: str | Path,
    encoder: str,
    *,
    encoder_weights: str | None = None,
    pretrained: bool = False,
    image_size: int | None = None,
    pooling: str = "default",
    preprocess: str = "encoder",
    seed: int = 0,
    batch_size: int = 256,
    workers: int = 2,
    dtype: str = "fp16",
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the pooled features of every item to `out` (+ sidecar), resuming a matching interrupted
    run (byte-identical to an uninterrupted one at the same batch size and device); returns the sidecar
    with `rows_written`, the rows this call computed (0: the file was already complete). One writer
    per file: a second one, `overwrite` or not, is refused with the first one's PID."""
    data, out, device = _as_data(data), npy_path(out), torch.device(device)
    check_output(out, dtype, batch_size, workers)
    with locks.hold(locks.lock_path(out), f"feature file {out}"):  # first: a second writer learns it at once
        store = ImageStore.from_prepared(data)
        tower = FeatureTower(encoder, encoder_weights, pretrained, image_size, pooling, preprocess, seed).to(device)
        caveats = tower_caveats(encoder, weights=encoder_weights, pretrained=pretrained, stored_size=store.size,
                                input_size=tower.preprocess.size, hint="give encoder_weights=FILE")
        for caveat in caveats:
            log.warning(caveat["message"])
        with torch.inference_mode():
            probe = tower(torch.zeros(1, 3, store.size, store.size, dtype=torch.uint8, device=device))
        dim, components = int(probe.shape[-1]), int(probe.shape[1]) if probe.dim() == 3 else 1
        random_init = not (encoder_weights or pretrained)
        wanted = {
            "format": FORMAT, "version": VERSION, "encoder": encoder, "timm_name": timm_name(encoder),
            "weights_sha256": file_sha256(encoder_weights) if encoder_weights else None, "pretrained": pretrained,
            "seed": seed if random_init else None, "image_size": tower.preprocess.size, "pooling": tower.pooling,
            "preprocessing": tower.describe(), "dtype": DTYPES[dtype], "dim": dim, "components": components,
            "n_items": data.n_items,
            "item_order_sha256": dataset_order_sha256(data.item_tokens), "dataset": data.name,
            "caveats": caveats,  # a note for readers, not part of the extraction's identity
        }

        def not_finite(row: int) -> str:
            return (f"{out}: the encoder's output for item {data.item_tokens[row + 1]} (row {row}) is not finite "
                    f"in {DTYPES[dtype]}; try dtype=fp32")

        return write_item_rows(out, wanted, overwrite, store, data.n_items, tower, not_finite, desc=f"extract {encoder}",
                               batch_size=batch_size, workers=workers, device=device, progress=progress,
                               fp16=device.type == "cuda" and dtype == "fp16")


# --- import --------------------------------------------------------------------------------
def read_order(path: str | Path) -> list[str]:
    """Item tokens in the rows' order: one per line, or the first column of a CSV with an item_id header."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: order file not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    first = lines[0].split(",")[0].strip().strip('"') if lines else ""
    if path.suffix.lower() == ".csv" or first == "item_id":
        rows = list(csv.reader(lines))
        if rows and rows[0] and rows[0][0].strip() == "item_id":
            rows = rows[1:]
        return [row[0].strip() if row else "" for row in rows]
    return [line.strip() for line in lines]


def _rows_of_items(order: list[str], item_tokens: np.ndarray, path: Path) -> np.ndarray:
    """Row in `order` of each prepared item (index 1..n); a missing or twice-listed item is an error."""
    import pyarrow as pa
    import pyarrow.compute as pc

    listed = pa.array(order, pa.string())
    ours = pa.array([str(t) for t in item_tokens[1:]], pa.string())
    counts = pc.value_counts(pc.filter(listed, pc.is_in(listed, value_set=ours)))
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(repeated):
        twice = str(repeated[0])
        lines = [i + 1 for i, t in enumerate(order) if t == twice][:2]
        raise UserError(f"{path}: item {twice} is listed more than once (entries {lines[0]} and {lines[1]})")
    found = pc.index_in(ours, value_set=listed)
    if found.null_count:
        missing = [str(t) for t in pc.filter(ours, pc.is_null(found)).to_pylist()]
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(f"{path}: prepared item {', '.join(missing[:3])}{more} not listed; the features must cover "
                        "every item of the dataset")
    return found.to_numpy(zero_copy_only=False).astype(np.int64)


def _import_layout(source: Path) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """The array to import and how a block of its rows becomes feature rows: [n, dim] as it is;
    spatial features [n, M, dim] as they are, [n, H, W, dim] or [n, dim, H, W] (a CNN's last map, e.g.
    the released RN50 layer-4 maps) as [n, H*W, dim]."""
    array = open_npy(source, "check the file to import")
    if array.dtype.kind != "f":
        raise UserError(f"{source}: dtype {array.dtype} is not a float type")
    if array.ndim in (2, 3):
        return array, lambda block: block
    if array.ndim == 4 and array.shape[1] == array.shape[2] != array.shape[3]:  # [n, H, W, dim]
        return array, lambda block: block.reshape(len(block), -1, block.shape[-1])
    if array.ndim == 4 and array.shape[2] == array.shape[3] != array.shape[1]:  # [n, dim, H, W]
        return array, lambda block: block.reshape(len(block), block.shape[1], -1).transpose(0, 2, 1)
    raise UserError(f"{source}: expected [items, dim], spatial [items, components, dim] or a square map "
                    f"[items, H, W, dim] / [items, dim, H, W], got shape {tuple(array.shape)}")


def import_features(
    data: PreparedData | str | Path,
    source: str | Path,
    order: str | Path,
    out: str | Path,
    *,
    dtype: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write `source` (rows in the order of `order`) in the dataset's item order to `out` + sidecar;
    every kept row must be finite. dtype: fp16 | fp32 | None (keep float16/float32; float64 -> float32)."""
    data, out, source, order = _as_data(data), npy_path(out), Path(source), Path(order)
    if not overwrite and (out.exists() or sidecar_path(out).exists()):
        raise UserError(f"{out}: already exists; use overwrite=True to replace it")
    if not source.is_file():
        raise UserError(f"{source}: feature file not found")
    array, as_rows = _import_layout(source)
    tokens = read_order(order)
    if len(tokens) != array.shape[0]:
        raise UserError(f"{source}: {array.shape[0]} rows, but {order} lists {len(tokens)} items")
    rows = _rows_of_items(tokens, data.item_tokens, order)
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"dtype={dtype}: choose one of {', '.join(DTYPES)}")
    target = np.dtype(DTYPES[dtype] if dtype else ("float16" if array.dtype == np.float16 else "float32"))
    shape = as_rows(array[:1]).shape[1:]  # (dim,) or (components, dim)
    sidecar = {
        "format": FORMAT, "version": VERSION, "encoder": None, "timm_name": None, "weights_sha256": None,
        "pretrained": None, "seed": None, "image_size": None, "pooling": None, "preprocessing": None,
        "source": {"file": source.name, "sha256": file_sha256(source), "order": order.name},
        "dtype": target.name, "dim": int(shape[-1]), "components": shape[0] if len(shape) == 2 else 1,
        "n_items": data.n_items, "item_order_sha256": dataset_order_sha256(data.item_tokens), "dataset": data.name,
        "rows_done": data.n_items, "complete": True,
    }
    with locks.hold(locks.lock_path(out), f"feature file {out}"), write_errors(out, "the feature file"):
        if not overwrite and (out.exists() or sidecar_path(out).exists()):  # written while this one read
            raise UserError(f"{out}: already exists; use overwrite=True to replace it")
        sidecar_path(out).unlink(missing_ok=True)
        partial = out.with_name(f".{out.name}.partial")
        try:
            written = create_rows(partial, (data.n_items, *shape), target)
            for begin in range(0, data.n_items, CHECK_ROWS):
                picked = rows[begin : begin + CHECK_ROWS]
                block = as_rows(np.asarray(array[picked]))
                converted = block.astype(target)
                for values, problem in ((block, "is not finite (NaN or infinity)"), (converted, f"overflows {target}")):
                    bad = first_non_finite(values)
                    if bad is not None:
                        raise UserError(f"{source}: row {picked[bad]} (item {tokens[picked[bad]]}) {problem}")
                written[begin : begin + len(block)] = converted
            written.flush()
            del written
            os.replace(partial, out)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        write_sidecar(out, sidecar)
    return sidecar
