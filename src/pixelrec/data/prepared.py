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

FORMAT_NAME = "pixelrec-prepared"
FORMAT_VERSION = 1
SPLITS = ("valid", "test")


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
        self.n_users: int = int(self.meta["n_users"])
        self.n_items: int = int(self.meta["n_items"])
        self.user_ptr: np.ndarray = self._array("user_ptr.npy")
        self.item_seq: np.ndarray = self._array("item_seq.npy")

    def _array(self, name: str) -> np.ndarray:
        path = self.root / name
        if not path.is_file():
            raise UserError(f"{path}: missing from the prepared dataset; prepare it again")
        return np.load(path, mmap_mode="r")

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.root.name)

    @cached_property
    def timestamps(self) -> np.ndarray:
        return self._array("timestamps.npy")

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
        return np.load(path) if path.is_file() else np.zeros(0, dtype=np.int64)

    # --- tokens --------------------------------------------------------------------------
    @cached_property
    def item_tokens(self) -> np.ndarray:
        """Item token per index; index 0 is the empty string (padding)."""
        return self._tokens("items.parquet", "item_id")

    @cached_property
    def user_tokens(self) -> np.ndarray:
        return self._tokens("users.parquet", "user_id")

    def _tokens(self, file: str, column: str) -> np.ndarray:
        import pyarrow.parquet as pq

        table = pq.read_table(self.root / file, columns=[column])
        tokens = table.column(column).to_numpy(zero_copy_only=False).astype(object)
        return np.concatenate([np.array([""], dtype=object), tokens])

    def item_table(self):
        """The full per-item table (pyarrow.Table), row r = item index r + 1."""
        import pyarrow.parquet as pq

        return pq.read_table(self.root / "items.parquet")

    @property
    def image_store_path(self) -> Path | None:
        store = self.meta.get("image_store")
        return self.root / store["path"] if store else None
