"""Items that arrived after training, scored from their covers and texts by a run (`pixelrec embed`).

What the item encoder needs of a new item it names itself (`new_items_from`: covers for pixels,
item info for text, both for multimodal) and makes its inputs from what is read here
(`new_item_inputs`), so every kind goes through one path: the encoder's own forward. A new cover
goes through what `prepare` does to covers (RGB, square-resized to the image store's size, JPEG at
its quality) and what training does to stored images (decoded, then resized and normalised by the
item encoder); a new item's text is its item-info fields joined and tokenised as the catalogue's
were; so a catalogue item gives the run's own vector for it. The rows are the vectors the run
scores items with: the item encoder, then the backbone's item transform (DSSM's item tower; nothing
for most backbones). They go to a `.npy` whose sidecar (the feature files' format, `kind:
new-items`) names the run, the checkpoint's sha256, and each row's item token and cover file,
written through `pixelrec extract`'s resumable machinery. `load_new_items` reads them back for
`recommend` and `export`, refusing vectors of other weights.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from pixelrec.data.images import encode_cover, scan_covers
from pixelrec.data.raw import COVER_SUFFIXES, read_item_info
from pixelrec.data.text_tokens import joined_texts
from pixelrec.errors import UserError
from pixelrec.items import ITEM_ENCODERS
from pixelrec.items.base import ItemLookup
from pixelrec.models.base import Backbone
from pixelrec.runs.directory import config_of_run
from pixelrec.runs.loading import open_run
from pixelrec.storage import locks
from pixelrec.storage.atomic import atomic_write
from pixelrec.storage.feature_files import (
    FORMAT,
    VERSION,
    file_sha256,
    first_non_finite,
    item_order_sha256,
    read_feature_array,
    read_sidecar,
)
from pixelrec.storage.row_files import npy_path, write_errors, write_item_rows

if TYPE_CHECKING:
    import pyarrow as pa

KIND = "new-items"
_SHOWN = 5  # names listed in one error line


def _listing(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def new_items_from(kind: str) -> tuple[str, ...]:
    """What the item encoder of `kind` reads of a new item ("covers", "item info"); empty: it cannot."""
    return tuple(getattr(ITEM_ENCODERS.get(kind), "new_items_from", ()))


def refuse_kind(run: Path, kind: str) -> None:
    """One line for a run whose items cannot be made from what a new item brings (ID tables, feature rows)."""
    if new_items_from(kind):
        return
    why = ITEM_ENCODERS.get(kind).new_items_refusal
    able = ITEM_ENCODERS.names_where(lambda cls: bool(cls.new_items_from))
    listed = f"{', '.join(able[:-1])} or {able[-1]}" if len(able) > 1 else able[0]
    raise UserError(f"{run}: a run with items.kind={kind} cannot score new items from their covers or texts: {why} "
                    f"(runs with items.kind={listed} can)")


def check_scoring(model: Any, run: Path) -> None:
    """Refuse a backbone that does not score by user . item, or whose scoring vector of an item is not
    a function of that item's vector alone (a graph over the catalogue, a popularity table)."""
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
    """New items' covers: their files, and (where the run encodes covers) their bytes as the image store
    holds covers."""

    folder: Path
    tokens: list[str]
    files: list[str]  # file names in `folder`, row by row
    jpegs: list[bytes] | None = None  # None: only located (a text run shows them on the contact sheet)

    def sha256(self) -> str | None:
        """One hash of every encoded cover in row order: other pixels, other vectors."""
        if self.jpegs is None:
            return None
        digest = hashlib.sha256()
        for data in self.jpegs:
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        return digest.hexdigest()


def find_covers(folder: Path, tokens: list[str] | None) -> Covers:
    """The cover files of `tokens` (default: every cover in `folder`, by token); a missing folder or
    cover is one line naming them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"covers={folder}: covers folder not found")
    found = scan_covers(folder)
    if tokens is None:
        tokens = sorted(found)
        if not tokens:
            raise UserError(f"covers={folder}: no covers here (<item_id> with {', '.join(COVER_SUFFIXES)})")
    missing = [t for t in tokens if t not in found]
    if missing:
        raise UserError(f"covers={folder}: no cover file for new item {_listing(missing)} (expected "
                        f"{folder / (missing[0] + '.jpg')} or .jpeg, .png, .webp)")
    return Covers(folder, list(tokens), [found[t] for t in tokens])


def read_covers(folder: Path, tokens: list[str] | None, size: int, quality: int, workers: int = 0) -> Covers:
    """The covers of `tokens` (default: every cover in `folder`) resized and JPEG-encoded as `prepare`
    stores them; a missing folder or cover, or a file that is not a readable image, is one line naming
    them, before anything is written."""
    covers = find_covers(folder, tokens)
    tasks = [(str(covers.folder / name), size, quality) for name in covers.files]
    if workers > 1 and len(tasks) >= 64:
        with multiprocessing.get_context().Pool(workers) as pool:
            jpegs = pool.map(encode_cover, tasks, chunksize=32)
    else:
        jpegs = [encode_cover(task) for task in tasks]
    bad = [str(covers.folder / name) for name, data in zip(covers.files, jpegs) if data is None]
    if bad:
        raise UserError(f"covers=: {len(bad)} cover file{'s are' if len(bad) > 1 else ' is'} corrupt, truncated or "
                        f"not an image: {_listing(bad)}")
    covers.jpegs = jpegs
    return covers


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


# --- item info --------------------------------------------------------------------------------
@dataclass
class ItemInfo:
    """The new items' item-info rows, in the file's order."""

    path: Path
    tokens: list[str]
    table: pa.Table

    @property
    def titles(self) -> list[str] | None:
        if "title" not in self.table.column_names:
            return None
        return [str(t or "") for t in self.table.column("title").to_pylist()]


def read_item_list(path: Path) -> ItemInfo:
    """The rows of an item-info CSV, read as `prepare` reads item info; a token listed twice is an error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"item_info={path}: file not found")
    table = read_item_info(path)
    tokens = [str(t or "").strip() for t in table.column("item_id").to_pylist()]
    seen: dict[str, int] = {}
    for row, token in enumerate(tokens, start=2):
        if not token:
            raise UserError(f"{path}: line {row}: empty item_id")
        if token in seen:
            raise UserError(f"{path}: item {token} is listed twice (lines {seen[token]} and {row})")
        seen[token] = row
    return ItemInfo(path, tokens, table)


@dataclass
class NewItemData:
    """What `embed` read of the new items, row by row: the item encoder makes its inputs from it
    (`ItemEncoder.new_item_inputs`)."""

    tokens: list[str]
    covers: Covers | None
    info: ItemInfo | None

    @property
    def images(self) -> _CoverImages:
        """The covers as an image store reads them (uint8 [B, 3, S, S] by 1-based row)."""
        if self.covers is None or self.covers.jpegs is None:
            raise UserError("covers=DIR is needed: this run encodes new items from their covers")
        return _CoverImages(self.covers.jpegs)

    def texts(self, fields: list[str], separator: str) -> list[str]:
        """Each item's text as the catalogue's were made (`ItemTexts.texts`): its non-empty `fields`,
        trimmed, joined by `separator`; a missing column or an item with no text is one line."""
        if self.info is None:
            raise UserError(f"item_info=CSV is needed: this run encodes new items from their {', '.join(fields)}")
        path, table = self.info.path, self.info.table
        missing = [f for f in fields if f not in table.column_names]
        if missing:
            raise UserError(f"item_info={path}: no text column {missing[0]!r}, which the run's items are made of "
                            f"(items.text.fields: {', '.join(fields)}; the file has: {', '.join(table.column_names)})")
        texts = joined_texts(table, fields, separator)
        empty = [token for token, text in zip(self.tokens, texts) if not text]
        if empty:
            raise UserError(f"item_info={path}: new item {_listing(empty)} has no text in {', '.join(fields)}; "
                            "give every new item some text there")
        return texts


def _rows_of(inputs: Any) -> int:
    """Items in a batch of inputs: a tensor's first dimension, or a tuple's first part's."""
    return _rows_of(inputs[0]) if isinstance(inputs, tuple) else int(inputs.shape[0])


# --- embedding --------------------------------------------------------------------------------
def embed_new_items(run: str | Path, covers: str | Path | None, out: str | Path, *,
                    item_info: str | Path | None = None, checkpoint: str = "best",
                    data_path: str | Path | None = None, batch_size: int = 64, workers: int = 0,
                    allow_catalogue: bool = False, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Write the scoring vectors of new items to `out` + sidecar with the run's `checkpoint`, from
    what its item encoder needs of them: covers in `covers` (those `item_info` lists, else all) for
    pixels, texts in `item_info` for text, both for multimodal; resumes a matching interrupted call
    and returns the sidecar with `rows_written` (0: it was already complete). An item of the run's
    catalogue is refused unless `allow_catalogue` (its vector then equals the run's own)."""
    run, out = Path(run), npy_path(out)
    if batch_size < 1 or workers < 0:
        raise UserError(f"batch_size= must be >= 1 and workers= >= 0 (got {batch_size}, {workers})")
    if not run.is_dir():
        raise UserError(f"{run}: no such run directory")
    kind = config_of_run(run).items.kind
    refuse_kind(run, kind)  # before anything is loaded
    needs = new_items_from(kind)
    if "covers" in needs and covers is None:
        raise UserError(f"covers=DIR is needed: a run with items.kind={kind} encodes new items from their covers")
    if "item info" in needs and item_info is None:
        raise UserError(f"item_info=CSV is needed: a run with items.kind={kind} encodes new items from their texts "
                        "(its items.text.fields)")
    info = read_item_list(Path(item_info)) if item_info else None
    loaded = open_run(run, checkpoint, data_path)
    model, data = loaded.model, loaded.data
    check_scoring(model, run)
    store = data.meta.get("image_store") if "covers" in needs else None
    size, quality = (int(store["size"]), int(store.get("quality", 90))) if store else (None, None)
    found = None
    if covers is not None:  # a text run keeps them for the contact sheet only
        listed = info.tokens if info else None
        found = (read_covers(Path(covers), listed, size, quality, workers) if size and quality
                 else find_covers(Path(covers), listed))
    tokens = found.tokens if found is not None else info.tokens  # type: ignore[union-attr]  (one was required)
    known = sorted(set(tokens) & {str(t) for t in data.item_tokens[1:]})
    if known and not allow_catalogue:
        raise UserError(f"item {_listing(known)} already in the catalogue of {run} (dataset {data.name}); embed "
                        f"only new items (their vectors are the run's own; allow_catalogue=True embeds them anyway)")
    n = len(tokens)
    device, encoder, backbone = model.device, model.item_encoder, model.backbone
    source = encoder.new_item_inputs(NewItemData(tokens, found, info))  # every input checked before a row is written
    autocast = encoder.amp and device.type == "cuda"  # as the run encodes its catalogue

    def vectors(inputs: Any) -> Tensor:
        ids = torch.arange(1, _rows_of(inputs) + 1, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            encoded = encoder(ids, inputs).float()
        return backbone.score_vectors(ItemLookup(ids, encoded, len(ids)), ids).float()

    with torch.inference_mode():
        dim = int(vectors(source.read(np.array([1])).to(device)).shape[-1])
    wanted = {
        "format": FORMAT, "version": VERSION, "kind": KIND, "run": str(run.resolve()),
        "checkpoint": loaded.checkpoint.name, "checkpoint_sha256": file_sha256(loaded.checkpoint),
        "model": loaded.config.model_name, "items": kind, "encoder": loaded.config.items.encoder,
        "dataset": data.name, "image_size": size, "jpeg_quality": quality,
        "dtype": "float32", "dim": dim, "n_items": n, "item_order_sha256": item_order_sha256(tokens),
        "covers": str(found.folder.resolve()) if found else None, "covers_sha256": found.sha256() if found else None,
        "item_info_sha256": file_sha256(info.path) if info else None,
    }
    listing = {"tokens": tokens, "files": found.files if found else None,  # row by row
               "titles": info.titles if info else None}
    listing_bytes = json.dumps(listing, ensure_ascii=False).encode("utf-8")
    # the rows' tokens, files and titles in a file of their own, written once: the sidecar, rewritten
    # after every batch, only names it by its hash
    wanted |= {"items_file": items_path(out).name, "items_sha256": hashlib.sha256(listing_bytes).hexdigest()}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{out.parent}: cannot create the folder for out= ({err.strerror or err})") from None
    def not_finite(row: int) -> str:
        return f"{out}: the vector of new item {tokens[row]} (row {row}) is not finite"

    with locks.hold(locks.lock_path(out), f"vectors file {out}"):
        with write_errors(out, "the vectors file"):
            atomic_write(items_path(out), listing_bytes)
        return write_item_rows(out, wanted, overwrite, source, n, vectors, not_finite, desc="embed new items",
                               batch_size=batch_size, workers=workers, device=device, progress=progress,
                               unit="item", what="the vectors file")


# --- reading them back ------------------------------------------------------------------------
@dataclass
class NewItems:
    """New items' scoring vectors for one run, as `pixelrec embed` wrote them."""

    path: Path
    tokens: list[str]
    titles: list[str] | None
    covers: list[Path | None]  # each item's cover file (None: embedded from its text, no cover given)
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
        raise UserError(f"new_items={path}: file not found; write it with `pixelrec embed`")
    sidecar = read_sidecar(path)
    if sidecar is None or sidecar.get("kind") != KIND:
        raise UserError(f"new_items={path}: not new items' vectors from `pixelrec embed` "
                        f"({'no sidecar ' + path.with_suffix('.json').name if sidecar is None else 'a feature file'})")
    if not sidecar.get("complete"):
        raise UserError(f"new_items={path}: incomplete ({sidecar.get('rows_done', 0)} of {sidecar.get('n_items')} "
                        "rows); run the same `pixelrec embed` command again to finish it")
    if sidecar.get("checkpoint_sha256") != file_sha256(checkpoint):
        raise UserError(f"new_items={path}: made with other weights ({sidecar.get('checkpoint')} of run "
                        f"{sidecar.get('run')}) than {checkpoint}; embed the covers again with this run, "
                        f"{run}")
    listing = read_listing(path, sidecar)
    tokens = [str(t) for t in listing["tokens"]]
    array = read_feature_array(path, cure="embed the covers again with `pixelrec embed --overwrite`")
    if array.shape != (len(tokens), sidecar["dim"]):
        raise UserError(f"new_items={path}: holds {tuple(array.shape)}, its sidecar says "
                        f"({len(tokens)}, {sidecar['dim']}); embed the covers again")
    values = np.array(array, dtype=np.float32)
    bad = first_non_finite(values)
    if bad is not None:
        raise UserError(f"new_items={path}: the vector of {tokens[bad]} (row {bad}) is not finite")
    known = sorted(set(tokens) & {str(t) for t in catalogue[1:]})
    if known:
        raise UserError(f"new_items={path}: item {_listing(known)} already in the run's catalogue (embedded "
                        "allowing catalogue items); embed only new items to rank them with the catalogue")
    folder, files = sidecar.get("covers"), listing.get("files")
    covers = confined(Path(folder), files, path) if folder and files else [None] * len(tokens)
    return NewItems(path, tokens, listing.get("titles"), covers, torch.from_numpy(values))


def confined(folder: Path, names: list[Any], source: Path) -> list[Path]:
    """The cover files `names` inside `folder`: each a plain file name, whose real path (links resolved)
    stays in the folder; anything else in a list someone handed over is one line naming it."""
    root = folder.resolve()
    paths = []
    for name in names:
        plain = isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name \
            and "\0" not in name
        path = root / name if plain else None
        if path is None or not path.resolve().is_relative_to(root):
            raise UserError(f"new_items={source}: its item list names a cover {str(name)[:80]!r} outside the "
                            f"covers folder {folder}; only plain file names inside that folder are read")
        paths.append(path)
    return paths


def items_path(out: Path) -> Path:
    """F.items.json beside F.npy: the new items' tokens, cover files and titles, row by row."""
    return out.with_name(out.stem + ".items.json")


def read_listing(path: Path, sidecar: dict[str, Any]) -> dict[str, Any]:
    """The rows' tokens, files and titles of new items' vectors `path`, checked against the sidecar's hash."""
    listing = items_path(path)
    try:
        data = listing.read_bytes()
    except OSError:
        raise UserError(f"new_items={path}: its item list {listing.name} is missing; embed the covers again") from None
    if hashlib.sha256(data).hexdigest() != sidecar.get("items_sha256"):
        raise UserError(f"new_items={path}: its item list {listing.name} is not the one its vectors were made "
                        "for; embed the covers again with `pixelrec embed --overwrite`")
    try:
        found = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        found = None
    tokens = found.get("tokens") if isinstance(found, dict) else None
    shaped = isinstance(tokens, list) and all(
        found.get(key) is None or (isinstance(found[key], list) and len(found[key]) == len(tokens))
        for key in ("files", "titles"))
    if not shaped:
        raise UserError(f"new_items={path}: its item list {listing.name} is not a list of tokens, files and titles "
                        "row by row; embed the covers again with `pixelrec embed --overwrite`")
    return found


def new_items_for_run(path: str | Path, run: Path, kind: str, model: Any, checkpoint: Path,
                      catalogue: np.ndarray) -> NewItems:
    """The new items of `path` for ranking with a loaded run (its item kind, model and checkpoint file):
    refused in one line where the run cannot score new items or the vectors are not its own."""
    refuse_kind(run, kind)
    check_scoring(model, run)
    return load_new_items(path, run, checkpoint, catalogue)
