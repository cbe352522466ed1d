"""Turn raw interactions into a prepared dataset: remap, sort, de-duplicate, filter, split, write.

The steps, all vectorised over interactions (numpy / pyarrow, no per-row Python loops):
  1. read tokens -> codes in order of first appearance (`raw.read_interactions`);
  2. sort by (user, timestamp, original row) with two stable passes (time, then user);
  3. drop exact duplicate (user, item, timestamp) rows, keeping the first;
  4. drop users with fewer than 3 interactions; optionally sample users, then an iterative k-core;
  5. optionally hold out cold items (kept only as valid/test targets);
  6. renumber users and items compactly from 1 in code order, write the arrays, tables and image store.
Every stage counts the users, interactions and items it removes (`meta.json`'s `dropped`). Output is
built in a hidden sibling folder and swapped into place last (see `publish`), one run at a time per
output folder (a lock beside it); what killed runs left behind is put back or removed (`recover`).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import lmdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from pixelrec.data import images as image_store
from pixelrec.data.prepared import CACHE_DIRS, FORMAT_NAME, FORMAT_VERSION
from pixelrec.data.raw import Interactions, RawSource, find_raw, read_interactions, read_item_info
from pixelrec.errors import UserError
from pixelrec.progress import bar, log
from pixelrec.schema import IMAGE_SIDE
from pixelrec.storage import locks
from pixelrec.storage.files import disk_full, free_bytes, printable, size_text

MIN_USER_INTERACTIONS = 3  # last = test, second-last = valid, at least one to train on


@dataclass
class Sequences:
    """Per-user sorted interactions with compact indices, plus which codes the indices came from."""

    user_ptr: np.ndarray  # int64 [n_users + 2]
    item_seq: np.ndarray  # int32, item index per interaction
    timestamps: np.ndarray  # int64
    item_codes: np.ndarray  # code of item index i + 1
    user_codes: np.ndarray  # code of user index u + 1
    cold_items: np.ndarray  # int64 item indices held out of training
    dropped: dict = field(default_factory=dict)


def _bar(desc: str, progress: bool, **kwargs) -> tqdm:
    return bar(desc, progress, **kwargs)


@contextmanager
def _stage(desc: str, progress: bool) -> Iterator[None]:
    """A one-step bar for a step that is a single vectorised call: shows what is running and how long it took."""
    with _bar(desc, progress, total=1, bar_format="{desc}: {elapsed}") as bar:
        yield
        bar.update(1)


# --- sorting and filtering -----------------------------------------------------------------
def stable_order(values: np.ndarray, overwrite: bool = False) -> np.ndarray:
    """Stable argsort of non-negative integers, several times faster than numpy's: (value, row) packed
    into one int64 and sorted as plain values. `overwrite` lets it reuse an int64 input's memory."""
    n = len(values)
    row_bits = max(1, int(n - 1).bit_length())
    top = int(values.max()) if n else 0
    if top.bit_length() + row_bits > 63:
        return np.argsort(values, kind="stable")
    packed = values if overwrite and values.dtype == np.int64 else values.astype(np.int64)
    packed <<= row_bits
    packed |= np.arange(n, dtype=np.int64)
    packed.sort()
    packed &= (1 << row_bits) - 1
    return packed


def sort_by_user_time(users: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Row order by (user, timestamp, original row): a stable time pass, then a stable user pass."""
    if len(timestamps) < 2 or bool(np.all(timestamps[1:] >= timestamps[:-1])):
        return stable_order(users)  # already in time order, as logs usually are
    by_time = stable_order(timestamps - timestamps.min(), overwrite=True)
    by_user = stable_order(users[by_time])
    return np.take(by_time, by_user, out=by_user, mode="clip")  # in place: each slot is read, then written


def duplicate_mask(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """True for rows (sorted by user, time, row) repeating an earlier (user, item, timestamp) row."""
    dup = np.zeros(len(items), dtype=bool)
    tie = (users[1:] == users[:-1]) & (timestamps[1:] == timestamps[:-1])
    if not tie.any():
        return dup
    in_run = np.zeros(len(items), dtype=bool)
    in_run[1:] |= tie
    in_run[:-1] |= tie
    pos = np.flatnonzero(in_run)  # rows sharing (user, timestamp) with a neighbour; few in real logs
    starts_run = np.ones(len(pos), dtype=bool)
    starts_run[1:] = ~tie[pos[1:] - 1]
    run = np.cumsum(starts_run)
    order = np.lexsort((pos, items[pos], run))
    same = (run[order][1:] == run[order][:-1]) & (items[pos][order][1:] == items[pos][order][:-1])
    dup[pos[order][1:][same]] = True
    return dup


def release_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps the holes left by many mid-sized arrays)."""
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _counts(codes: np.ndarray, keep: np.ndarray, size: int) -> np.ndarray:
    return np.bincount(codes[keep], minlength=size)


def _alive(codes: np.ndarray, keep: np.ndarray, size: int) -> int:
    """How many distinct codes still have a kept row."""
    return int(np.count_nonzero(_counts(codes, keep, size)))


def filter_rows(users: np.ndarray, items: np.ndarray, keep: np.ndarray, n_users: int, n_items: int, *,
                kcore: int, sample_users: int | None, rng: np.random.Generator, dropped: dict) -> None:
    """Update `keep` in place: users with < 3 interactions, then a user sample, then an iterative k-core.
    Each stage counts the users, interactions and items it removes (an item goes when its last row does)."""
    count = _counts(users, keep, n_users)
    short = (count > 0) & (count < MIN_USER_INTERACTIONS)
    items_alive = n_items  # every item code has a row, and de-duplication keeps each first row
    dropped["short_users"] = int(short.sum())
    dropped["short_user_interactions"] = int(count[short].sum())
    keep &= ~short[users]
    if short.any():
        after = _alive(items, keep, n_items)
        dropped["short_user_items"], items_alive = items_alive - after, after
    else:
        dropped["short_user_items"] = 0
    if sample_users is not None:
        alive = np.flatnonzero(count >= MIN_USER_INTERACTIONS)
        unsampled = np.zeros(n_users, dtype=bool)
        if sample_users < len(alive):
            unsampled[alive] = True
            unsampled[rng.choice(alive, size=sample_users, replace=False)] = False
        before = int(keep.sum())
        keep &= ~unsampled[users]
        after = _alive(items, keep, n_items)
        dropped.update(unsampled_users=int(unsampled.sum()), unsampled_interactions=before - int(keep.sum()),
                       unsampled_items=items_alive - after)
        items_alive = after
    if kcore > 1:
        users_alive = _alive(users, keep, n_users)
        before = int(keep.sum())
        while True:
            ucount, icount = _counts(users, keep, n_users), _counts(items, keep, n_items)
            bad_u = (ucount > 0) & (ucount < max(kcore, MIN_USER_INTERACTIONS))
            bad_i = (icount > 0) & (icount < kcore)
            if not (bad_u.any() or bad_i.any()):
                break
            keep &= ~bad_u[users] & ~bad_i[items]
        # by what is left, not by what fell below k: a user or item can lose its last row to the other side
        dropped.update(kcore_users=users_alive - int(np.count_nonzero(ucount)),
                       kcore_items=items_alive - int(np.count_nonzero(icount)),
                       kcore_interactions=before - int(keep.sum()))


def _positions(users: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """For rows grouped by user: each row's position within its user, and its user's length."""
    count = np.bincount(users, minlength=n_users)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    return np.arange(len(users)) - start[users], count[users]


def hold_out_cold(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, fraction: float,
                  rng: np.random.Generator, dropped: dict) -> tuple[np.ndarray, np.ndarray]:
    """Pick cold item codes; return (row keep mask, cold codes): cold items leave every training part."""
    present = np.flatnonzero(np.bincount(items, minlength=n_items))
    cold = np.sort(rng.choice(present, size=int(round(fraction * len(present))), replace=False))
    is_cold = np.zeros(n_items, dtype=bool)
    is_cold[cold] = True
    pos, length = _positions(users, n_users)
    keep = ~(is_cold[items] & (pos < length - 2))
    dropped["cold_training_interactions"] = int((~keep).sum())
    count = _counts(users, keep, n_users)
    no_train = (count > 0) & (count < MIN_USER_INTERACTIONS)
    dropped["cold_users"] = int(no_train.sum())
    dropped["cold_user_interactions"] = int(count[no_train].sum())
    keep &= ~no_train[users]
    # cold items that were never a valid/test target, and items only the dropped users had
    dropped["cold_lost_items"] = len(present) - _alive(items, keep, n_items)
    return keep, cold


def build_sequences(data: Interactions, *, kcore: int = 0, sample_users: int | None = None, seed: int = 0,
                    cold_items: float = 0.0, progress: bool = False) -> Sequences:
    """Sort, de-duplicate, filter and renumber interactions into per-user time-ordered sequences."""
    n_users, n_items = len(data.user_tokens), len(data.item_tokens)
    dropped: dict = {}
    with _stage("sort by user and time", progress):
        order = sort_by_user_time(data.users, data.timestamps)
        # permute one array at a time and release the unsorted one: peak memory matters at 195.8M rows
        users, data.users = data.users[order], None
        items, data.items = data.items[order], None
        ts, data.timestamps = data.timestamps[order], None
        del order
    with _stage("drop duplicates and short users", progress):
        keep = ~duplicate_mask(users, items, ts)
        dropped["duplicate_interactions"] = int(len(keep) - keep.sum())
        filter_rows(users, items, keep, n_users, n_items, kcore=kcore, sample_users=sample_users,
                    rng=np.random.default_rng(seed), dropped=dropped)
        if not keep.all():
            users, items, ts = users[keep], items[keep], ts[keep]
    cold = np.zeros(0, dtype=np.int64)
    if cold_items > 0 and len(users):
        with _stage("hold out cold items", progress):
            keep, cold = hold_out_cold(users, items, n_users, n_items, cold_items,
                                       np.random.default_rng([seed, 1]), dropped)
            users, items, ts = users[keep], items[keep], ts[keep]
    if not len(users):
        raise UserError(f"{data.path}: no users left after filtering (" +
                        ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in dropped.items() if v) + ")")
    with _stage("renumber users and items", progress):
        user_count = np.bincount(users, minlength=n_users)
        user_codes = np.flatnonzero(user_count)
        item_codes = np.flatnonzero(np.bincount(items, minlength=n_items))
        item_index = np.zeros(n_items, dtype=np.int32)
        item_index[item_codes] = np.arange(1, len(item_codes) + 1, dtype=np.int32)
        user_ptr = np.zeros(len(user_codes) + 2, dtype=np.int64)
        np.cumsum(user_count[user_codes], out=user_ptr[2:])
        item_seq = item_index[items]
        cold = np.sort(item_index[cold][item_index[cold] > 0]).astype(np.int64)
    return Sequences(user_ptr, item_seq, ts.astype(np.int64, copy=False), item_codes, user_codes, cold, dropped)


# --- writing -------------------------------------------------------------------------------
#: What `prepare` writes into a dataset folder, and the caches training adds (`CACHE_DIRS`); anything
#: else there is the user's.
PREPARED_ENTRIES = frozenset({"meta.json", "user_ptr.npy", "item_seq.npy", "timestamps.npy", "cold_items.npy",
                              "items.parquet", "users.parquet", image_store.STORE_DIR, *CACHE_DIRS})
_LEFTOVER = re.compile(r"\.(tmp|old)-\d+")
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
_NEARLY_FULL = 1 << 20


def _item_table(tokens: pa.Array, info: pa.Table | None) -> pa.Table:
    """item_id plus item-info attributes (null where an item has no info row), one row per item index."""
    if info is None:
        return pa.table({"item_id": tokens})
    rows = pc.index_in(tokens, value_set=info.column("item_id").combine_chunks())
    attributes = info.drop_columns(["item_id"]).take(rows)
    return pa.table({"item_id": tokens, **{name: attributes.column(name) for name in attributes.column_names}})


def _info_summary(info: pa.Table, read: pa.Array, kept: pa.Array) -> dict:
    """How the item-info rows meet the interactions: items there that have none, items kept without info."""
    listed = pc.unique(pc.drop_null(info.column("item_id").combine_chunks()))
    return {"rows": info.num_rows,
            "items_without_interactions": len(listed) - int(pc.sum(pc.is_in(listed, value_set=read)).as_py() or 0),
            "items_without_info": len(kept) - int(pc.sum(pc.is_in(kept, value_set=listed)).as_py() or 0)}


def _refuse_raw(out: Path, raw: Path) -> None:
    if out.resolve() == raw.resolve() or out.resolve() in raw.resolve().parents:
        raise UserError(f"{out}: would replace the raw data; choose another out=")


def _is_prepared_meta(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


def _check_out(out: Path, overwrite: bool) -> None:
    """`out` must be absent, empty or a prepared dataset and nothing else; `overwrite` replaces any folder."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose another out=")
    if not out.is_dir():
        return
    try:
        names = sorted(os.listdir(out))
    except OSError as err:
        raise UserError(f"{out}: cannot read ({err.strerror or err}); choose another out=") from None
    if not names or overwrite:
        return
    foreign = [n for n in names if n not in PREPARED_ENTRIES]
    shown = foreign or names
    listing = ", ".join(shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")
    replace = "pass overwrite=True to replace the folder and everything in it"
    if not _is_prepared_meta(out / "meta.json"):
        raise UserError(f"{out}: not empty and not a prepared dataset (holds {listing}); choose another out=, "
                        f"or {replace}")
    if foreign:
        raise UserError(f"{out}: holds files that are not part of the prepared dataset ({listing}); move them "
                        f"away, choose another out=, or {replace}")


def _leftovers(out: Path) -> list[Path]:
    """Hidden build (`.NAME.tmp-PID`) and previous (`.NAME.old-PID`) folders of `prepare` runs that were killed."""
    prefix = f".{out.name}."
    try:
        names = sorted(os.listdir(out.parent))
    except OSError:
        return []
    return [out.parent / n for n in names if n.startswith(prefix) and _LEFTOVER.fullmatch(n[len(prefix) - 1:])]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover(out: Path) -> list[str]:
    """Undo what killed runs of `prepare` (or `synth`) left beside `out`; call it holding `out`'s lock.
    A folder moved aside between the two renames of a replacement goes back to `out` if nothing is
    there; every other leftover is removed. Returns one line per thing done."""
    out = Path(out)
    leftovers, done = _leftovers(out), []
    if not out.exists():
        previous = [p for p in leftovers if ".old-" in p.name and p.is_dir()]
        if previous:
            os.replace(previous[-1], out)
            leftovers.remove(previous[-1])
            done.append(f"{out}: put back from {previous[-1].name}, where an interrupted run had moved it")
    for path in leftovers:
        _remove(path)
    if leftovers:
        done.append(f"{out.parent}: removed what interrupted runs left: " + ", ".join(p.name for p in leftovers))
    return done


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 with RENAME_EXCHANGE); False where that is not possible."""
    try:
        rename = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    rename.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if rename(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def publish(tmp: Path, out: Path) -> None:
    """Move the finished build into place. An existing dataset is swapped with the build in one step, so
    `out` always holds the old or the new dataset; where the swap is not available, two renames, and a
    run killed between them leaves the old dataset in `.NAME.old-PID`, which the next run puts back."""
    image_store.release_env(out / image_store.STORE_DIR)
    if not out.exists():
        os.replace(tmp, out)
    elif _exchange(tmp, out):
        _remove(tmp)  # the old dataset, now
    else:
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old, out)
            raise
        _remove(old)


def _tree_bytes(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def _write_failure(err: BaseException, out: Path, written: int) -> UserError:
    """A failed write of the dataset as one line: what, where, and what to do. LMDB reports a short write
    (what a full disk gives it) as an I/O error, so that is a full disk too when almost nothing is free."""
    free = free_bytes(out.parent)
    short_write = isinstance(err, lmdb.Error) and "Input/output error" in str(err) and (free or 0) < _NEARLY_FULL
    if disk_full(err) or short_write:
        return UserError(f"{out.parent}: disk full while writing the dataset {out.name} (it needs more than the "
                         f"{size_text(written)} that fitted; {size_text(free)} free now, nothing was kept); free some "
                         "space or choose another out=")
    text = getattr(err, "strerror", None) or printable(str(err), 100)
    return UserError(f"{out.parent}: cannot write the dataset {out.name} ({text}); choose another out=")


def prepare(raw: str | Path, out: str | Path, *, image_size: int = 224, workers: int | None = None,
            kcore: int = 0, sample_users: int | None = None, seed: int = 0, missing_images: str = "fail",
            images: bool = True, cold_items: float = 0.0, name: str | None = None, jpeg_quality: int = 90,
            overwrite: bool = False, progress: bool = True) -> dict:
    """Prepare raw PixelRec/RecBole files into `out` (see `pixelrec.data.prepared`); returns meta.json's content.

    One `prepare` at a time per `out` (a lock beside it). `out` must be absent, empty or a prepared dataset
    with nothing else in it, unless `overwrite`. Leftovers of killed runs for `out` are cleaned up first.
    """
    raw, out = Path(raw), Path(out)
    if out.name in ("", ".", ".."):
        out = out.resolve()  # its lock and build folder go beside it, in its parent
    if missing_images not in ("fail", "placeholder"):
        raise UserError(f"missing_images must be 'fail' or 'placeholder', not {missing_images!r}")
    if not 0.0 <= cold_items < 1.0:
        raise UserError(f"cold_items={cold_items}: must be a fraction in [0, 1)")
    if sample_users is not None and sample_users < 1:
        raise UserError(f"sample_users={sample_users}: must be at least 1")
    if not IMAGE_SIDE.allows(image_size):
        raise UserError(f"image_size={image_size}: allowed {IMAGE_SIDE} pixels per side")
    source = find_raw(raw)
    _refuse_raw(out, raw)
    with claimed_output(out, "dataset"):
        _check_out(out, overwrite)
        caches = [name for name in CACHE_DIRS if (out / name).is_dir()]
        if caches:
            log.info(f"{out}: the caches of the dataset it replaces go with it "
                     f"({', '.join(f'{name}/' for name in caches)}; training builds them again when needed)")
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        try:
            tmp.mkdir()
            meta = _build(source, tmp, image_size=image_size, workers=workers or os.cpu_count() or 1, kcore=kcore,
                          sample_users=sample_users, seed=seed, missing_images=missing_images, images=images,
                          cold_items=cold_items, name=name or (raw.name if raw.is_dir() else raw.stem),
                          jpeg_quality=jpeg_quality, progress=progress)
            publish(tmp, out)
        except BaseException as err:
            written = _tree_bytes(tmp) if isinstance(err, (OSError, lmdb.Error)) else 0
            _remove(tmp)
            if isinstance(err, (OSError, lmdb.Error)):
                raise _write_failure(err, out, written) from None
            raise
    return meta


@contextmanager
def claimed_output(out: Path, what: str) -> Iterator[None]:
    """An output folder being replaced: its parent created, one writer at a time (the lock names the
    holder's PID), and what a killed run of the same command left beside it restored or removed."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{out.parent}: cannot create the folder for out= ({err.strerror or err})") from None
    with locks.hold(locks.lock_path(out), f"{what} {out}"):
        for line in recover(out):
            log.info(line)
        yield


def _build(source: RawSource, tmp: Path, *, image_size: int, workers: int, kcore: int, sample_users: int | None,
           seed: int, missing_images: str, images: bool, cold_items: float, name: str, jpeg_quality: int,
           progress: bool) -> dict:
    info = read_item_info(source.item_info) if source.item_info is not None else None  # its errors come first
    size = source.interactions.stat().st_size
    with _bar(f"read {source.interactions.name}", progress, total=size, unit="B", unit_scale=True) as bar:
        data = read_interactions(source, bar.update)
    release_memory()
    n_rows, n_users_read, n_items_read = len(data.items), len(data.user_tokens), len(data.item_tokens)
    seqs = build_sequences(data, kcore=kcore, sample_users=sample_users, seed=seed, cold_items=cold_items,
                           progress=progress)
    with _stage("write arrays and tables", progress):
        np.save(tmp / "user_ptr.npy", seqs.user_ptr)
        np.save(tmp / "item_seq.npy", seqs.item_seq)
        np.save(tmp / "timestamps.npy", seqs.timestamps)
        if cold_items > 0:
            np.save(tmp / "cold_items.npy", seqs.cold_items)
        item_tokens = data.item_tokens.take(pa.array(seqs.item_codes))
        user_tokens = data.user_tokens.take(pa.array(seqs.user_codes))
        info_summary = _info_summary(info, data.item_tokens, item_tokens) if info is not None else None
        del data
        pq.write_table(pa.table({"user_id": user_tokens}), tmp / "users.parquet")
        pq.write_table(_item_table(item_tokens, info), tmp / "items.parquet")
    store = None
    if images and source.covers is not None:
        store = image_store.build_image_store(
            tmp / "images.lmdb", item_tokens.to_pylist(), source.covers, size=image_size, workers=workers,
            missing=missing_images, quality=jpeg_quality, progress=progress)
    meta = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "name": name, "source": source.describe(),
        "n_users": len(seqs.user_codes), "n_items": len(seqs.item_codes), "n_interactions": len(seqs.item_seq),
        "n_rows_read": n_rows, "n_users_read": n_users_read, "n_items_read": n_items_read, "split": "leave-one-out",
        "options": {"kcore": kcore, "sample_users": sample_users, "seed": seed, "cold_items": cold_items,
                    "images": images, "image_size": image_size, "missing_images": missing_images},
        "dropped": seqs.dropped,
        "item_info": info_summary,
        "cold_items": {"path": "cold_items.npy", "count": len(seqs.cold_items)} if cold_items > 0 else None,
        "image_store": store,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
