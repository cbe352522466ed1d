"""Read a prepared dataset directory and expose the leave-one-out split.

Layout written by `pixelrec prepare` (see docs/data.md):
  meta.json        counts, source, options, drop counts, image-store description
  user_ptr.npy     int64 [n_users + 2]: interactions of user u are item_seq[user_ptr[u]:user_ptr[u+1]];
                   user 0 is padding and owns no interactions
  item_seq.npy     int32 [n_interactions]: item index per interaction, grouped by user, sorted by time
  timestamps.npy   int64 [n_interactions]
  items.parquet    one row per item, row r is item index r + 1 (index 0 is padding): item_id + attributes
  users.parquet    one row per user, row r is user index r + 1: user_id
  images.lmdb/     optional image store keyed by item token
Every user has at least 3 interactions, so the last is test, the second-last valid, the rest train.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np

from pixelrec.errors import UserError
from pixelrec.storage.files import open_npy, printable

#: Folders that training writes into a prepared dataset (the default of items.cache_dir): frozen
#: prefixes of image and text towers, and tokenised item texts. They are pixelrec's caches of this
#: dataset: `prepare` and `verify` know them, and a dataset prepared again rebuilds them when needed.
PREFIX_CACHE_DIR = "prefix_cache"
TEXT_TOKENS_DIR = "text_tokens"
CACHE_DIRS = (PREFIX_CACHE_DIR, TEXT_TOKENS_DIR)

FORMAT_NAME = "pixelrec-prepared"
FORMAT_VERSION = 1
SPLITS = ("valid", "test")
CURE = "the dataset is damaged: prepare it again (`pixelrec prepare`)"


class PreparedData:
    """Memory-mapped view of a prepared dataset; cheap to open, safe to share with workers."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise UserError(f"{self.root}: not a prepared dataset (no meta.json); run `pixelrec prepare` first")
        try:
            self.meta: dict = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise UserError(f"{meta_path}: unreadable ({err})") from None
        if self.meta.get("format") != FORMAT_NAME or self.meta.get("version") != FORMAT_VERSION:
            raise UserError(f"{meta_path}: not a {FORMAT_NAME} v{FORMAT_VERSION} dataset; prepare it again")
        try:
            self.n_users: int = int(self.meta["n_users"])
            self.n_items: int = int(self.meta["n_items"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{meta_path}: no valid n_users / n_items; {CURE}") from None
        self.user_ptr: np.ndarray = self._array("user_ptr.npy", (self.n_users + 2,))
        self.item_seq: np.ndarray = self._array("item_seq.npy", (self._interactions(),))

    def _array(self, name: str, shape: tuple[int, ...] | None = None, mmap: bool = True) -> np.ndarray:
        """A prepared array, its header and size checked before it is mapped, its shape against meta.json."""
        path = self.root / name
        if not path.is_file():
            raise UserError(f"{path}: missing from the prepared dataset; {CURE}")
        array = open_npy(path, CURE, "r" if mmap else None)
        if array.dtype.kind not in "iu" or (shape is not None and array.shape != shape):
            want = f"{shape}" if shape is not None else "integers"
            raise UserError(f"{path}: holds {array.dtype} {array.shape}, meta.json implies {want}; {CURE}")
        return array

    def _interactions(self) -> int:
        """Interactions, from the end of user_ptr (and meta.json where it says): item_seq's length."""
        total = int(self.user_ptr[-1])
        if self.user_ptr[0] != 0 or self.user_ptr[1] != 0 or total < 0:
            raise UserError(f"{self.root / 'user_ptr.npy'}: does not start 0, 0 (padding user); {CURE}")
        stated = self.meta.get("n_interactions", total)
        if stated != total:
            raise UserError(f"{self.root / 'user_ptr.npy'}: ends at {total}, meta.json has {stated} interactions; "
                            f"{CURE}")
        return total

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.root.name)

    @cached_property
    def timestamps(self) -> np.ndarray:
        return self._array("timestamps.npy", self.item_seq.shape)

    @cached_property
    def lengths(self) -> np.ndarray:
        """Interactions per user index (index 0, padding, has 0)."""
        return np.diff(self.user_ptr)

    # --- leave-one-out split -------------------------------------------------------------
    @cached_property
    def train_end(self) -> np.ndarray:
        """Exclusive end of each user's training part in item_seq (user 0: 0)."""
        end = self.user_ptr[1:] - 2
        end[0] = 0
        return end.astype(np.int64)

    @cached_property
    def train_start(self) -> np.ndarray:
        """Start of each user's interactions (and training part) in item_seq (user 0: 0)."""
        return np.asarray(self.user_ptr[:-1], dtype=np.int64)

    def target_positions(self, split: str, users: np.ndarray | None = None) -> np.ndarray:
        """Position in item_seq of each user's `split` target, for `users` (default: 1..n_users)."""
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        ends = self.user_ptr[2:] if users is None else self.user_ptr[np.asarray(users, dtype=np.int64) + 1]
        last = np.asarray(ends, dtype=np.int64) - 1
        return last if split == "test" else last - 1

    @cached_property
    def train_popularity(self) -> np.ndarray:
        """Training interactions per item index (index 0 = padding = 0): every interaction counted,
        less each user's valid and test targets (no per-interaction temporaries at full scale)."""
        size = self.n_items + 1
        held_out = np.concatenate([self.item_seq[self.target_positions(split)] for split in SPLITS])
        return (np.bincount(self.item_seq, minlength=size) - np.bincount(held_out, minlength=size)).astype(np.int64)

    @cached_property
    def cold_items(self) -> np.ndarray:
        """Item indices held out of training entirely (empty unless prepared with --cold-items)."""
        path = self.root / "cold_items.npy"
        return self._array(path.name, mmap=False) if path.is_file() else np.zeros(0, dtype=np.int64)

    # --- tokens --------------------------------------------------------------------------
    @cached_property
    def item_tokens(self) -> np.ndarray:
        """Item token per index; index 0 is the empty string (padding)."""
        return self._tokens("items.parquet", "item_id")

    @cached_property
    def user_tokens(self) -> np.ndarray:
        return self._tokens("users.parquet", "user_id")

    def _tokens(self, file: str, column: str) -> np.ndarray:
        table = self._table(file, [column])
        count = self.n_items if file == "items.parquet" else self.n_users
        if table.num_rows != count:
            raise UserError(f"{self.root / file}: {table.num_rows} rows, meta.json has {count}; {CURE}")
        tokens = table.column(column).to_numpy(zero_copy_only=False).astype(object)
        return np.concatenate([np.array([""], dtype=object), tokens])

    def _table(self, file: str, columns: list[str] | None = None):
        """A parquet table of the dataset; a missing, damaged or foreign file is a one-line error."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.root / file
        if not path.is_file():
            raise UserError(f"{path}: missing from the prepared dataset; {CURE}")
        try:
            return pq.read_table(path, columns=columns)
        except (pa.ArrowException, OSError, KeyError) as err:
            raise UserError(f"{path}: not a readable table ({printable(str(err), 80)}); {CURE}") from None

    def item_table(self):
        """The full per-item table (pyarrow.Table), row r = item index r + 1."""
        return self._table("items.parquet")

    @property
    def image_store_path(self) -> Path | None:
        store = self.meta.get("image_store")
        return self.root / store["path"] if store else None
