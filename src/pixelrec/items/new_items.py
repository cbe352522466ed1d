"""Items that arrived after training, scored from their covers by a pixel run (`pixelrec embed`).

A new cover goes through what `prepare` does to covers (RGB, square-resized to the image store's
size, JPEG at its quality) and what training does to stored images (decoded, then resized and
normalised by the item encoder), so a catalogue item's cover gives the run's own vector for it.
The rows are the vectors the run scores items with: the item encoder, then the backbone's item
transform (DSSM's item tower; nothing for most backbones). They go to a `.npy` whose sidecar (the
feature files' format, `kind: new-items`) names the run, the checkpoint's sha256, and each row's
item token and cover file, written through `pixelrec extract`'s resumable machinery.
`load_new_items` reads them back for `recommend` and `export`, refusing vectors of other weights.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pixelrec import locks
from pixelrec.data.images import encode_cover, scan_covers
from pixelrec.data.raw import COVER_SUFFIXES
from pixelrec.errors import UserError
from pixelrec.items.base import ItemLookup
from pixelrec.items.extract import _open, fill_item_rows, npy_path, write_errors
from pixelrec.items.feature_store import (
    FORMAT, VERSION, file_sha256, first_non_finite, item_order_sha256, read_feature_array, read_sidecar,
)

KIND = "new-items"
_SHOWN = 5  # names listed in one error line
_WHY = {
    "id": "its items are ID vectors learned for the catalogue's items",
    "features": "its items are rows of the catalogue's feature file; it has no image tower",
    "id+features": "its items are learned ID vectors and rows of the catalogue's feature file; it has no image tower",
    "text": "new items of text runs are not supported yet",
    "multimodal": "new items of multimodal (cover + text) runs are not supported yet",
}


def _listing(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def refuse_kind(run: Path, kind: str) -> None:
    """One line for a run whose items cannot be made from a cover (anything but pixels)."""
    if kind == "pixels":
        return
    why = _WHY.get(kind, "it has no image tower")
    raise UserError(f"{run}: a run with items.kind={kind} cannot score new items from their covers: {why} "
                    "(pixel runs can: items.kind=pixels)")


def check_scoring(model: Any, run: Path) -> None:
    """Refuse a backbone that does not score by user . item, or whose scoring vector of an item is not
    a function of that item's vector alone (a graph over the catalogue, a popularity table)."""
    from pixelrec.models.base import Backbone

    backbone = model.backbone
    name = getattr(backbone, "registered_name", type(backbone).__name__)
    if type(backbone).score_catalogue is not Backbone.score_catalogue:
        raise UserError(f"{run}: model {name} does not score items by a dot product of user and item vectors; "
                        "it cannot rank new items")
    if not backbone.scores_items_alone:
        raise UserError(f"{run}: model {name} scores an item by more than its own vector (the catalogue's graph "
                        "or counts); it cannot score items from their covers alone")


# --- covers ---------------------------------------------------------------------------------
@dataclass
class Covers:
    """New items' covers, encoded as the image store holds covers."""

    folder: Path
    tokens: list[str]
    files: list[str]  # file names in `folder`, row by row
    jpegs: list[bytes]

    def sha256(self) -> str:
        """One hash of every encoded cover in row order: other pixels, other vectors."""
        digest = hashlib.sha256()
        for data in self.jpegs:
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        return digest.hexdigest()


def read_covers(folder: Path, tokens: list[str] | None, size: int, quality: int, workers: int = 0) -> Covers:
    """The covers of `tokens` (default: every cover in `folder`, by token) resized and JPEG-encoded as
    `prepare` stores them; a missing folder or cover, or a file that is not a readable image, is one
    line naming them, before anything is written."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--covers {folder}: covers folder not found")
    found = scan_covers(folder)
    if tokens is None:
        tokens = sorted(found)
        if not tokens:
            raise UserError(f"--covers {folder}: no covers here (<item_id> with {', '.join(COVER_SUFFIXES)})")
    missing = [t for t in tokens if t not in found]
    if missing:
        raise UserError(f"--covers {folder}: no cover file for new item {_listing(missing)} (expected "
                        f"{folder / (missing[0] + '.jpg')} or .jpeg, .png, .webp)")
    files = [found[t] for t in tokens]
    tasks = [(str(folder / name), size, quality) for name in files]
    if workers > 1 and len(tasks) >= 64:
        with multiprocessing.get_context().Pool(workers) as pool:
            jpegs = pool.map(encode_cover, tasks, chunksize=32)
    else:
        jpegs = [encode_cover(task) for task in tasks]
    bad = [str(folder / name) for name, data in zip(files, jpegs) if data is None]
    if bad:
        raise UserError(f"--covers: {len(bad)} cover file{'s are' if len(bad) > 1 else ' is'} corrupt, truncated or "
                        f"not an image: {_listing(bad)}")
    return Covers(folder, list(tokens), files, jpegs)


class _CoverImages:
    """`read(rows)` as an image store's: uint8 [B, 3, S, S] of the covers at 1-based rows."""

    def __init__(self, jpegs: list[bytes]) -> None:
        self.jpegs = jpegs

    def read(self, rows: np.ndarray) -> Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg

        with warnings.catch_warnings():  # torchvision 0.29 warns on every call that torchcodec takes over
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision")
            return torch.stack([decode_jpeg(torch.frombuffer(bytearray(self.jpegs[int(r) - 1]), dtype=torch.uint8),
                                            mode=ImageReadMode.RGB) for r in np.asarray(rows)])


def read_item_list(path: Path) -> tuple[list[str], list[str] | None]:
    """(item tokens, titles or None) of an item-info CSV, in its row order; a token listed twice is an error."""
    from pixelrec.data.raw import read_item_info

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--item-info {path}: file not found")
    table = read_item_info(path)
    tokens = [str(t or "").strip() for t in table.column("item_id").to_pylist()]
    seen: dict[str, int] = {}
    for row, token in enumerate(tokens, start=2):
        if not token:
            raise UserError(f"{path}: line {row}: empty item_id")
        if token in seen:
            raise UserError(f"{path}: item {token} is listed twice (lines {seen[token]} and {row})")
        seen[token] = row
    titles = None
    if "title" in table.column_names:
        titles = [str(t or "") for t in table.column("title").to_pylist()]
    return tokens, titles


# --- embedding --------------------------------------------------------------------------------
def embed_new_items(run: str | Path, covers: str | Path, out: str | Path, *, item_info: str | Path | None = None,
                    checkpoint: str = "best", data_path: str | Path | None = None, batch_size: int = 64,
                    workers: int = 0, allow_catalogue: bool = False, overwrite: bool = False,
                    progress: bool = True) -> dict[str, Any]:
    """Write the scoring vectors of the items whose covers are in `covers` (those `item_info` lists,
    else all) to `out` + sidecar with a pixel run's `checkpoint`, resuming a matching interrupted
    call; returns the sidecar with `rows_written` (0: it was already complete). An item of the
    run's catalogue is refused unless `allow_catalogue` (its vector then equals the run's own)."""
    from pixelrec.evaluate.run import open_run
    from pixelrec.train.trainer import config_of_run

    run, out = Path(run), npy_path(out)
    if batch_size < 1 or workers < 0:
        raise UserError(f"--batch-size must be >= 1 and --workers >= 0 (got {batch_size}, {workers})")
    if not run.is_dir():
        raise UserError(f"{run}: no such run directory")
    refuse_kind(run, config_of_run(run).items.kind)  # before anything is loaded
    tokens, titles = read_item_list(Path(item_info)) if item_info else (None, None)
    loaded = open_run(run, checkpoint, data_path)
    model, data = loaded.model, loaded.data
    check_scoring(model, run)
    store = data.meta["image_store"]
    found = read_covers(Path(covers), tokens, int(store["size"]), int(store.get("quality", 90)), workers)
    known = sorted(set(found.tokens) & {str(t) for t in data.item_tokens[1:]})
    if known and not allow_catalogue:
        raise UserError(f"item {_listing(known)} already in the catalogue of {run} (dataset {data.name}); embed "
                        f"only new items (their vectors are the run's own; --allow-catalogue embeds them anyway)")
    n = len(found.tokens)
    source = _CoverImages(found.jpegs)
    device, encoder, backbone = model.device, model.item_encoder, model.backbone
    autocast = encoder.amp and device.type == "cuda"  # as the run encodes its catalogue

    def vectors(images: Tensor) -> Tensor:
        ids = torch.arange(1, len(images) + 1, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            encoded = encoder(ids, images).float()
        return backbone.score_vectors(ItemLookup(ids, encoded, len(ids)), ids).float()

    with torch.inference_mode():
        dim = int(vectors(source.read(np.array([1])).to(device)).shape[-1])
    wanted = {
        "format": FORMAT, "version": VERSION, "kind": KIND, "run": str(run.resolve()),
        "checkpoint": loaded.checkpoint.name, "checkpoint_sha256": file_sha256(loaded.checkpoint),
        "model": loaded.config.model_name, "items": loaded.config.items.kind, "encoder": loaded.config.items.encoder,
        "dataset": data.name, "image_size": int(store["size"]), "jpeg_quality": int(store.get("quality", 90)),
        "dtype": "float32", "dim": dim, "n_items": n, "item_order_sha256": item_order_sha256(found.tokens),
        "covers": str(found.folder.resolve()), "covers_sha256": found.sha256(), "tokens": found.tokens,
        "files": found.files, "titles": titles,  # item info's order is the rows' order
    }
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{out.parent}: cannot create the folder for --out ({err.strerror or err})") from None
    with locks.hold(locks.lock_path(out), f"vectors file {out}"), write_errors(out, "the vectors file"):
        sidecar, array = _open(out, wanted, overwrite)
        if array is None:
            return {**sidecar, "rows_written": 0}
        start = int(sidecar["rows_done"])

        def not_finite(row: int) -> str:
            return f"{out}: the vector of new item {found.tokens[row]} (row {row}) is not finite"

        with torch.inference_mode():
            fill_item_rows(out, array, sidecar, source, start, n, batch_size, workers, device,
                           lambda images: vectors(images).cpu().numpy(), "embed covers", progress, not_finite)
        del array
    return {**sidecar, "rows_written": n - start}


# --- reading them back ------------------------------------------------------------------------
@dataclass
class NewItems:
    """New items' scoring vectors for one run, as `pixelrec embed` wrote them."""

    path: Path
    tokens: list[str]
    titles: list[str] | None
    covers: list[Path]  # each item's cover file
    vectors: Tensor  # [n, d] float32

    def __len__(self) -> int:
        return len(self.tokens)

    def extend_titles(self, titles: list[str] | None, n_items: int) -> list[str] | None:
        """Titles by item index (as `api.item_titles`) with the new items' after the catalogue's; None
        when neither has titles."""
        if titles is None and self.titles is None:
            return None
        return (titles or [""] * (n_items + 1)) + (self.titles or [""] * len(self))


def load_new_items(path: str | Path, run: Path, checkpoint: Path, catalogue: np.ndarray) -> NewItems:
    """The vectors in `path`, checked to come from `checkpoint` (the weights in use, by sha256) and to
    hold no item of `catalogue` (the dataset's item tokens, index 0 padding)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--new-items {path}: file not found; write it with `pixelrec embed`")
    sidecar = read_sidecar(path)
    if sidecar is None or sidecar.get("kind") != KIND:
        raise UserError(f"--new-items {path}: not new items' vectors from `pixelrec embed` "
                        f"({'no sidecar ' + path.with_suffix('.json').name if sidecar is None else 'a feature file'})")
    if not sidecar.get("complete"):
        raise UserError(f"--new-items {path}: incomplete ({sidecar.get('rows_done', 0)} of {sidecar.get('n_items')} "
                        "rows); run the same `pixelrec embed` command again to finish it")
    if sidecar.get("checkpoint_sha256") != file_sha256(checkpoint):
        raise UserError(f"--new-items {path}: made with other weights ({sidecar.get('checkpoint')} of run "
                        f"{sidecar.get('run')}) than {checkpoint}; embed the covers again with this run "
                        f"(pixelrec embed --run {run} ...)")
    tokens = [str(t) for t in sidecar["tokens"]]
    array = read_feature_array(path, cure="embed the covers again with `pixelrec embed --overwrite`")
    if array.shape != (len(tokens), sidecar["dim"]):
        raise UserError(f"--new-items {path}: holds {tuple(array.shape)}, its sidecar says "
                        f"({len(tokens)}, {sidecar['dim']}); embed the covers again")
    values = np.array(array, dtype=np.float32)
    bad = first_non_finite(values)
    if bad is not None:
        raise UserError(f"--new-items {path}: the vector of {tokens[bad]} (row {bad}) is not finite")
    known = sorted(set(tokens) & {str(t) for t in catalogue[1:]})
    if known:
        raise UserError(f"--new-items {path}: item {_listing(known)} already in the run's catalogue (embedded with "
                        "--allow-catalogue); embed only new items to rank them with the catalogue")
    folder = Path(sidecar["covers"])
    return NewItems(path, tokens, sidecar.get("titles"), [folder / name for name in sidecar["files"]],
                    torch.from_numpy(values))


def new_items_for_run(path: str | Path, run: Path, kind: str, model: Any, checkpoint: Path,
                      catalogue: np.ndarray) -> NewItems:
    """The new items of `path` for ranking with a loaded run (its item kind, model and checkpoint file):
    refused in one line where the run cannot score new items or the vectors are not its own."""
    refuse_kind(run, kind)
    check_scoring(model, run)
    return load_new_items(path, run, checkpoint, catalogue)
