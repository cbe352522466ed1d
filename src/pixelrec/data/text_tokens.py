"""Item texts (title, tag, description) tokenised once per dataset, stored as a memory-mapped array.

`ItemTexts` reads the chosen text columns of a prepared dataset's item table and joins them per item
with the tokenizer's separator token. `ItemTexts.tokens` tokenises every item once and writes an int32
`.npy` (row r = item index r + 1, `max_tokens` wide, -1 after an item's last token) beside a JSON
sidecar that records what made it: the tokenizer (a hash of its full definition), the fields, the
token budget and the texts themselves. The file name carries a hash of that identity, so another
tokenizer, field list or budget gives another file and the same ones reuse it. Files are written to a
temporary name and renamed: a reader sees a complete array or none.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from pixelrec.data.prepared import TEXT_TOKENS_DIR
from pixelrec.errors import UserError
from pixelrec.storage.atomic import atomic_json
from pixelrec.storage.feature_files import dataset_order_sha256
from pixelrec.storage.files import open_npy

FORMAT = "pixelrec-text-tokens"
VERSION = 1
PAD = -1  # stored after an item's last token; the encoder turns it into its own padding id
CHUNK = 16384  # texts tokenised at a time: bounded memory on large catalogues


def tokenizer_sha256(tokenizer: Any) -> str:
    """Hash of a tokenizer's whole definition (vocabulary, normaliser, special tokens, truncation side)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # without the truncation and padding state that each call sets
        state = json.loads(backend.to_str())
        definition = json.dumps({k: v for k, v in state.items() if k not in ("truncation", "padding")}, sort_keys=True)
    else:  # a pure-Python tokenizer: its class, vocabulary and special tokens
        definition = json.dumps([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items()),
                                 sorted(map(str, tokenizer.all_special_tokens))])
    extra = json.dumps([type(tokenizer).__name__, tokenizer.truncation_side, getattr(tokenizer, "sep_token", None),
                        getattr(tokenizer, "model_max_length", None)])
    return hashlib.sha256((definition + extra).encode()).hexdigest()


class TokenArray:
    """A complete token file, memory-mapped lazily in each process (DataLoader workers map it themselves)."""

    def __init__(self, path: Path, sidecar: dict[str, Any], trim: bool = True) -> None:
        self.path, self.sidecar, self.trim = Path(path), sidecar, trim
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            # checked before mapping: a truncated file would otherwise end a run with SIGBUS
            self._array = open_npy(self.path, f"delete it and {self.path.with_suffix('.json').name}; the next run "
                                              "tokenises the texts again")
        return self._array

    @property
    def max_tokens(self) -> int:
        return int(self.sidecar["max_tokens"])

    def read(self, item_ids: np.ndarray) -> Tensor:
        """int64 token ids of items (indices >= 1), -1 after each item's last token: [B, longest of
        the batch] (or [B, max_tokens] when not `trim`)."""
        rows = np.asarray(self.array[np.asarray(item_ids, dtype=np.int64) - 1])
        if self.trim and len(rows):
            rows = rows[:, : max(int((rows != PAD).sum(1).max()), 1)]
        return torch.from_numpy(rows.astype(np.int64))

    def full_width(self) -> "TokenArray":
        """The same file read at its full width (rows of a per-item cache must all have one shape)."""
        return TokenArray(self.path, self.sidecar, trim=False)


def _clean(column: Any) -> Any:
    import pyarrow.compute as pc

    return pc.fill_null(pc.utf8_trim_whitespace(pc.cast(column, "string")), "")


def joined_texts(table: Any, fields: Sequence[str], separator: str) -> list[str]:
    """Each row's text: its non-empty `fields` of an Arrow table, trimmed, joined by `separator` (the
    catalogue's texts and new items' texts are made by this one rule)."""
    columns = [_clean(table.column(name)).to_pylist() for name in fields]
    return [separator.join(v for v in values if v) for values in zip(*columns, strict=True)]


class ItemTexts:
    """The text columns of a prepared dataset's items (its `items.parquet` under `root`)."""

    def __init__(self, root: Path, n_items: int, item_order_sha256: str) -> None:
        self.root, self.n_items, self.item_order_sha256 = Path(root), n_items, item_order_sha256

    @classmethod
    def from_prepared(cls, data: Any) -> "ItemTexts":
        return cls(data.root, data.n_items, dataset_order_sha256(data.item_tokens))

    def texts(self, fields: Sequence[str], separator: str) -> list[str]:
        """One text per item (row r = item r + 1): its non-empty `fields`, joined by `separator`. A
        missing column, or one empty for every item, is an error naming it."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        path = self.root / "items.parquet"
        if not fields:
            raise UserError("items.text.fields: empty; name at least one text column (e.g. [title, tag])")
        available = pq.read_schema(path).names
        missing = [f for f in fields if f not in available]
        if missing:
            text = [n for n in available if n in ("title", "tag", "description")] or available
            raise UserError(f"{path}: no text column {missing[0]!r} for items.text.fields (it has: {', '.join(text)}); "
                            "prepare the dataset from an item_info.csv with that column")
        table = pq.read_table(path, columns=list(dict.fromkeys(fields)))
        for name in fields:
            if not pc.any(pc.not_equal(_clean(table.column(name)), "")).as_py():
                raise UserError(f"{path}: text column {name!r} is empty for every item; choose other items.text.fields")
        return joined_texts(table, fields, separator)

    def tokens(self, tokenizer: Any, fields: Sequence[str], max_tokens: int,
               directory: str | Path | None = None) -> TokenArray:
        """The dataset's items tokenised by `tokenizer`, in `directory` (default: text_tokens/ in the
        dataset): reused when a file with the same identity exists, else written once (atomically)."""
        separator = f" {tokenizer.sep_token} " if getattr(tokenizer, "sep_token", None) else "\n"
        texts = self.texts(fields, separator)
        if len(texts) != self.n_items:
            raise UserError(f"{self.root / 'items.parquet'}: {len(texts)} rows for {self.n_items} items; "
                            "prepare it again")
        identity = {
            "format": FORMAT, "version": VERSION, "tokenizer_sha256": tokenizer_sha256(tokenizer),
            "fields": list(fields), "separator": separator, "max_tokens": max_tokens, "n_items": self.n_items,
            "item_order_sha256": self.item_order_sha256,
            "texts_sha256": hashlib.sha256("\0".join(texts).encode("utf-8")).hexdigest(),
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        out = Path(directory or self.root / TEXT_TOKENS_DIR) / f"tokens-{digest}.npy"
        sidecar = _read_sidecar(out)
        if sidecar == identity and out.is_file():
            return TokenArray(out, sidecar)
        _write_atomically(out, tokenise(tokenizer, texts, max_tokens))

        atomic_json(out.with_suffix(".json"), identity)  # last: a file without it is never taken as complete
        return TokenArray(out, identity)


def tokenise(tokenizer: Any, texts: list[str], max_tokens: int) -> np.ndarray:
    """int32 [len(texts), max_tokens]: each text's ids with the tokenizer's special tokens, cut to
    `max_tokens`, then -1 (the tokenizer's own padding is not used: it may have none)."""
    out = np.full((len(texts), max_tokens), PAD, dtype=np.int32)
    for start in range(0, len(texts), CHUNK):
        ids = tokenizer(texts[start : start + CHUNK], truncation=True, max_length=max_tokens,
                        return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
        out[start : start + len(ids)][np.arange(max_tokens) < lengths[:, None]] = flat
    return out


def _read_sidecar(npy: Path) -> dict[str, Any] | None:
    try:
        sidecar = json.loads(npy.with_suffix(".json").read_text())
    except (OSError, json.JSONDecodeError):
        return None  # none yet, or torn: tokenise again
    return sidecar if isinstance(sidecar, dict) else None


def _write_atomically(out: Path, array: np.ndarray) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
        try:
            with open(tmp, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as err:
        raise UserError(f"{out.parent}: cannot write the item tokens here ({type(err).__name__}: {err.strerror}); "
                        "set items.cache_dir to a writable directory") from None
