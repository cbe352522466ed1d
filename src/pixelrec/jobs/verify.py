"""Check a prepared dataset end to end before a long run (`pixelrec verify`).

Every reader already refuses the damage it meets with one line (see docs/data.md, "Damaged datasets");
this module runs those same checks over the whole dataset at once, plus what no reader checks on its
own path: meta.json's counts against the arrays and tables, the split's needs (three interactions a
user, items in range and each with an interaction, time order), every image-store entry decoded, and
the files that runs leave beside the dataset (text tokens, prefix caches) and feature files against
its item order. Each problem is one line; a problem that leaves the rest uncheckable ends the check.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from pixelrec.data import images as image_store
from pixelrec.data import text_tokens
from pixelrec.data.prepared import CURE, PREFIX_CACHE_DIR, TEXT_TOKENS_DIR, PreparedData
from pixelrec.errors import UserError
from pixelrec.runs.directory import dataset_fingerprint
from pixelrec.storage.feature_files import dataset_order_sha256, load_features
from pixelrec.storage.files import npy_info
from pixelrec.towers import prefix_cache

CHUNK = 1 << 24  # interactions checked at a time: bounded memory at full PixelRec size
TOKENS_CURE = "remove it; the next text run tokenises the items again"
PREFIX_CURE = "remove it, or let the next training run build it again"


@dataclass
class Verification:
    """What `verify_dataset` found: one line per problem, and counts for the closing "ok" line."""

    root: Path
    problems: list[str] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    @contextmanager
    def check(self) -> Iterator[None]:
        """Record a UserError raised inside as a problem and go on with the next check."""
        try:
            yield
        except UserError as err:
            self.problems.append(str(err))

    def summary(self) -> str:
        """The one line printed when nothing is wrong."""
        c = self.counts
        images = (f"{c['images']:,} images decoded at {c['image_size']} px ({c['placeholders']} placeholders)"
                  if "images" in c else "no image store")
        building = f" (+{c['incomplete_caches']} being built)" if c.get("incomplete_caches") else ""
        extras = (f"{c['token_arrays']} text-token arrays, {c['prefix_caches']} prefix caches{building}, "
                  f"{c['features']} feature files")
        return (f"ok: {self.root}: {c['n_users']:,} users, {c['n_items']:,} items, {c['n_interactions']:,} "
                f"interactions; {images}; {extras} intact; fingerprint {c['fingerprint'][:12]}")


def verify_dataset(root: str | Path, *, features: Sequence[str | Path] = (), workers: int = 1,
                   progress: bool = True) -> Verification:
    """Check the prepared dataset at `root` (and `features` files made for it); never raises a UserError."""
    result = Verification(Path(root))
    with result.check():
        data = PreparedData(root)  # meta.json, user_ptr and item_seq against it
    if result.problems:
        return result
    result.counts.update(n_users=data.n_users, n_items=data.n_items, n_interactions=len(data.item_seq))
    _check_meta(data, result)
    with result.check():
        _check_interactions(data)
    with result.check():
        _check_tokens(data, "items.parquet", data.item_tokens)
    with result.check():
        _check_tokens(data, "users.parquet", data.user_tokens)
    with result.check():
        _check_cold_items(data)
    if result.problems:  # the rest reads item tokens and indices: not worth checking against a broken core
        return result

    result.counts["fingerprint"] = dataset_fingerprint(data)
    order = dataset_order_sha256(data.item_tokens)
    with result.check():
        _check_images(data, result, workers, progress)
    _check_token_arrays(data, order, result)
    _check_prefix_caches(data, order, result)
    result.counts["features"] = 0
    for path in features:
        with result.check():
            load_features(path, data.n_items, order, spatial=True)
            result.counts["features"] += 1
    return result


# --- meta.json, arrays and tables -----------------------------------------------------------
def _check_meta(data: PreparedData, result: Verification) -> None:
    """The split and the drop counts: n_*_read less what each stage dropped is what is left."""
    meta_path = data.root / "meta.json"
    if data.meta.get("split") != "leave-one-out":
        result.problems.append(f"{meta_path}: split {data.meta.get('split')!r}, expected 'leave-one-out'; {CURE}")
    dropped = data.meta.get("dropped")
    if not isinstance(dropped, dict):
        result.problems.append(f"{meta_path}: no 'dropped' counts; {CURE}")
        return
    left = {"users": data.n_users, "items": data.n_items, "interactions": len(data.item_seq)}
    read = {"users": "n_users_read", "items": "n_items_read", "interactions": "n_rows_read"}
    for what, count in left.items():
        total = data.meta.get(read[what])
        gone = sum(v for k, v in dropped.items() if k.endswith(f"_{what}") and isinstance(v, int))
        if not isinstance(total, int) or total - gone != count:
            result.problems.append(f"{meta_path}: {read[what]} {total} less {gone:,} dropped {what} is not the "
                                   f"{count:,} {what} of the dataset; {CURE}")


def _check_interactions(data: PreparedData) -> None:
    """Each user has the three interactions leave-one-out needs, in time order; each item index is in
    1..n_items and has at least one interaction."""
    ptr = np.asarray(data.user_ptr)
    lengths = np.diff(ptr)
    short = np.flatnonzero(lengths[1:] < 3) + 1  # lengths[u] is user u's count; user 0 is padding
    if len(short):
        user = int(short[0])
        raise UserError(f"{data.root / 'user_ptr.npy'}: user index {user} has {int(lengths[user])} interactions "
                        f"({len(short):,} users have fewer than 3, which leave-one-out needs); {CURE}")
    seq, stamps = data.item_seq, data.timestamps
    counts = np.zeros(data.n_items + 1, dtype=np.int64)
    for start in range(0, len(seq), CHUNK):
        items = np.asarray(seq[start : start + CHUNK])
        bad = np.flatnonzero((items < 1) | (items > data.n_items))
        if len(bad):
            raise UserError(f"{data.root / 'item_seq.npy'}: interaction {start + int(bad[0])} has item index "
                            f"{int(items[bad[0]])}, outside 1..{data.n_items}; {CURE}")
        counts += np.bincount(items, minlength=data.n_items + 1)
        times = np.asarray(stamps[start : start + CHUNK + 1])  # one more: the step into the next chunk
        earlier = np.diff(times) < 0
        earlier[ptr[(ptr > start) & (ptr < start + len(times))] - start - 1] = False  # a new user may start earlier
        if earlier.any():
            at = start + int(np.argmax(earlier)) + 1
            user = int(np.searchsorted(ptr, at, side="right")) - 1
            raise UserError(f"{data.root / 'timestamps.npy'}: interaction {at} of user index {user} is earlier than "
                            f"the one before it (each user's interactions are in time order); {CURE}")
    unused = np.flatnonzero(counts[1:] == 0) + 1
    if len(unused):
        raise UserError(f"{data.root / 'item_seq.npy'}: item index {int(unused[0])} has no interaction "
                        f"({len(unused):,} items have none); {CURE}")


def _check_tokens(data: PreparedData, file: str, tokens: np.ndarray) -> None:
    """A table's tokens (row count already checked by its reader): none empty, none twice."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        column = pa.array(tokens[1:], type=pa.string(), from_pandas=True)
    except pa.ArrowException:
        raise UserError(f"{data.root / file}: ids that are not text; {CURE}") from None
    empty = pc.fill_null(pc.equal(column, ""), True).to_numpy(zero_copy_only=False)
    if empty.any():
        raise UserError(f"{data.root / file}: row {int(np.argmax(empty)) + 1} has an empty id; {CURE}")
    if len(pc.unique(column)) != len(column):
        counts = pc.value_counts(column)
        twice = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
        raise UserError(f"{data.root / file}: {len(twice):,} ids appear more than once, e.g. {twice[0].as_py()}; "
                        f"{CURE}")


def _check_cold_items(data: PreparedData) -> None:
    """cold_items.npy as meta.json describes it: its count, indices in range, each once."""
    described = data.meta.get("cold_items")
    cold = data.cold_items
    path = data.root / "cold_items.npy"
    if described is None:
        if path.is_file():
            raise UserError(f"{path}: present, but meta.json records no cold items; {CURE}")
        return
    if not path.is_file():
        raise UserError(f"{path}: missing from the prepared dataset; {CURE}")
    if len(cold) != described.get("count"):
        raise UserError(f"{path}: {len(cold):,} items, meta.json has {described.get('count')}; {CURE}")
    if len(cold) and (cold.min() < 1 or cold.max() > data.n_items or len(np.unique(cold)) != len(cold)):
        raise UserError(f"{path}: item indices outside 1..{data.n_items} or repeated; {CURE}")


# --- the image store and the files beside the dataset ---------------------------------------
def _check_images(data: PreparedData, result: Verification, workers: int, progress: bool) -> None:
    """Every item has an entry, and every entry decodes to size x size RGB (verify_image_store)."""
    described = data.meta.get("image_store")
    if not described:
        return
    path = data.image_store_path
    size = described.get("size")
    if not isinstance(size, int) or size < 1:
        raise UserError(f"{data.root / 'meta.json'}: image_store has no valid size; {CURE}")
    tokens = [str(t) for t in data.item_tokens[1:]]
    placeholders = described.get("placeholders") or []
    keys = image_store.store_keys(path)  # checks the store's file before anything maps it
    present = set(keys)
    missing = [t for t in tokens if t not in present]
    if missing:
        result.problems.append(f"{path}: {len(missing):,} of {len(tokens):,} items have no image: "
                               f"{image_store._listing(missing, len(missing))}; {image_store.CURE}")
    known = set(tokens)
    foreign = [k for k in keys if k not in known]
    if foreign:
        result.problems.append(f"{path}: entries for {len(foreign):,} items not in the dataset: "
                               f"{image_store._listing(foreign, len(foreign))}; {image_store.CURE}")
    strange = [t for t in placeholders if t not in known]
    if strange:
        result.problems.append(f"{data.root / 'meta.json'}: placeholders for items not in the dataset: "
                               f"{image_store._listing(strange, len(strange))}; {CURE}")
    stored = [k for k in keys if k in known]
    bad = image_store.verify_image_store(path, size, workers=workers, progress=progress, keys=stored)
    if bad:
        result.problems.append(f"{path}: {len(bad):,} of {len(stored):,} stored images do not decode as {size}x{size} "
                               f"RGB: {image_store._listing(bad, len(bad))}; {image_store.CURE}")
    result.counts.update(images=len(stored) - len(bad), image_size=size, placeholders=len(placeholders))


def _for_dataset(sidecar: dict[str, Any], data: PreparedData, order: str, npy: Path, cure: str) -> None:
    """A file beside the dataset was made for its items (count and order)."""
    if sidecar.get("n_items") != data.n_items or sidecar.get("item_order_sha256") not in (order, None):
        raise UserError(f"{npy}: made for another item list ({sidecar.get('n_items')} items) than this dataset's "
                        f"{data.n_items:,}; {cure}")


def _check_token_arrays(data: PreparedData, order: str, result: Verification) -> None:
    """text_tokens/: each array with a sidecar (one without is never used) has the sidecar's shape."""
    result.counts["token_arrays"] = 0
    for npy in sorted((data.root / TEXT_TOKENS_DIR).glob("tokens-*.npy")):
        sidecar = text_tokens._read_sidecar(npy)
        if sidecar is None or sidecar.get("format") != text_tokens.FORMAT:
            continue  # an array whose sidecar was never written: tokenised again when needed
        with result.check():
            _for_dataset(sidecar, data, order, npy, TOKENS_CURE)
            info = npy_info(npy, TOKENS_CURE)
            want = (data.n_items, sidecar.get("max_tokens"))
            if info.shape != want or info.dtype != np.int32:
                raise UserError(f"{npy}: holds {info.dtype} {info.shape}, its sidecar says int32 {want}; {TOKENS_CURE}")
            result.counts["token_arrays"] += 1


def _check_prefix_caches(data: PreparedData, order: str, result: Verification) -> None:
    """prefix_cache/: each cache with rows written is intact for its sidecar (prefix_cache._intact)."""
    result.counts.update(prefix_caches=0, incomplete_caches=0)
    for npy in sorted((data.root / PREFIX_CACHE_DIR).glob("prefix-*.npy")):
        sidecar = prefix_cache._read_sidecar(npy)
        if sidecar is None or not sidecar.get("rows_done"):
            continue  # nothing recorded in it yet: the next run starts it over
        with result.check():
            _for_dataset(sidecar, data, order, npy, PREFIX_CURE)
            try:
                shape = tuple(int(n) for n in sidecar["shape"])
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{prefix_cache.sidecar_path(npy)}: no valid shape; {PREFIX_CURE}") from None
            damage = prefix_cache._intact(npy, data.n_items, shape)
            if damage:
                raise UserError(f"{damage}; {PREFIX_CURE}")
            result.counts["prefix_caches" if sidecar.get("complete") else "incomplete_caches"] += 1
