"""Shared fixtures: hand-made prepared datasets written directly in the prepared format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

# Test models are tiny: one thread per process avoids thread hand-offs that cost more than the
# work, and lets `pytest -n 2` use both cores with one process each.
torch.set_num_threads(1)


def write_prepared(root: Path, sequences: list[list[int]], n_items: int | None = None, cold_items=None) -> Path:
    """Write `sequences` (item indices >= 1, one list per user, in time order) as a prepared dataset."""
    root.mkdir(parents=True, exist_ok=True)
    n_items = n_items or max(max(s) for s in sequences)
    lengths = [0] + [len(s) for s in sequences]
    ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = np.concatenate([np.asarray(s) for s in sequences]).astype(np.int32)
    np.save(root / "user_ptr.npy", ptr)
    np.save(root / "item_seq.npy", items)
    np.save(root / "timestamps.npy", np.arange(len(items), dtype=np.int64))
    pq.write_table(pa.table({"item_id": [f"i{i}" for i in range(1, n_items + 1)]}), root / "items.parquet")
    pq.write_table(pa.table({"user_id": [f"u{u}" for u in range(1, len(sequences) + 1)]}), root / "users.parquet")
    if cold_items is not None:
        np.save(root / "cold_items.npy", np.asarray(cold_items, dtype=np.int64))
    meta = {"format": "pixelrec-prepared", "version": 1, "name": root.name, "n_users": len(sequences),
            "n_items": n_items, "n_interactions": int(len(items)), "split": "leave-one-out", "image_store": None}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def patterned_sequences(n_users: int, n_items: int, length: int, seed: int = 0, noise: float = 0.1) -> list[list[int]]:
    """Users walk the catalogue in steps of +1 from a random start (sequential signal), with noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_users):
        start = rng.integers(1, n_items + 1)
        seq = (start - 1 + np.arange(length)) % n_items + 1
        flip = rng.random(length) < noise
        seq[flip] = rng.integers(1, n_items + 1, size=int(flip.sum()))
        out.append(seq.tolist())
    return out


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return write_prepared(tmp_path / "tiny", patterned_sequences(120, 40, 12))
