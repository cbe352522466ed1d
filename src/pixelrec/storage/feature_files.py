"""Feature files: a `.npy` array (row r = item index r + 1) beside a JSON sidecar that says what made it.

The sidecar records the identity of an extraction (encoder, weights, input size, pooling,
pre-processing, dtype, dim, components, the dataset's item order) and its progress (`rows_done`,
`complete`). A pooled file (`components` 1, or absent in older sidecars) is [n_items, dim]; a spatial
one (`extract --pooling none`) is [n_items, components, dim]: every position of the encoder's last
map, or its patch tokens. Readers accept only complete files whose item order is the dataset's, and
check every value.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from pixelrec.errors import UserError
from pixelrec.storage.atomic import atomic_json
from pixelrec.storage.files import open_npy, read_json_object

FORMAT = "pixelrec-features"
VERSION = 1
#: Sidecar keys that are not part of an extraction's identity (progress and notes).
PROGRESS_KEYS = frozenset({"rows_done", "complete", "batch_size", "caveats"})
DTYPES = {"fp16": "float16", "fp32": "float32"}
CHECK_ROWS = 65536  # rows checked (and copied) at a time: bounded memory for large catalogues


def sidecar_path(npy: str | Path) -> Path:
    """FILE.json beside FILE.npy."""
    return Path(npy).with_suffix(".json")


def item_order_sha256(tokens: Iterable[str]) -> str:
    """sha256 of the item tokens of indices 1..n, one per line (each line ends with a newline)."""
    digest = hashlib.sha256()
    for token in tokens:
        digest.update(f"{token}\n".encode("utf-8"))
    return digest.hexdigest()


def dataset_order_sha256(item_tokens: np.ndarray) -> str:
    """The order hash of a prepared dataset (its `item_tokens`, index 0 being padding)."""
    return item_order_sha256(str(t) for t in item_tokens[1:])


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sidecar(npy: str | Path) -> dict[str, Any] | None:
    """The sidecar of `npy`, or None when there is none."""
    path = sidecar_path(npy)
    sidecar = read_json_object(path, "use --overwrite to start over")
    if sidecar is not None and sidecar.get("format") != FORMAT:
        raise UserError(f"{path}: not a {FORMAT} sidecar")
    return sidecar


def write_sidecar(npy: str | Path, sidecar: dict[str, Any]) -> None:
    """Write the sidecar atomically (a reader sees the old one or the new one, never half)."""
    atomic_json(sidecar_path(npy), sidecar)


def check_identity(existing: dict[str, Any], wanted: dict[str, Any], npy: str | Path) -> None:
    """One-line error naming the first identity key on which an existing sidecar and a request differ."""
    for key in sorted((set(existing) | set(wanted)) - PROGRESS_KEYS):
        if existing.get(key) != wanted.get(key):
            raise UserError(
                f"{sidecar_path(npy)}: was written with {key} {_short(existing.get(key))}, this request has "
                f"{key} {_short(wanted.get(key))}; use overwrite=True to start over, or another out="
            )


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def first_non_finite(block: np.ndarray) -> int | None:
    """Row of `block` holding the first NaN or infinity, or None."""
    bad = ~np.isfinite(block).reshape(len(block), -1).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else None


def components_of(sidecar: dict[str, Any]) -> int:
    """Vectors per item of a feature file: 1 for pooled features (also when an older sidecar omits it)."""
    return int(sidecar.get("components") or 1)


def load_features(path: str | Path, n_items: int, item_order: str, spatial: bool = False) -> torch.Tensor:
    """[n_items + 1, dim] features of a dataset's items (row 0 = zeros for padding), float16 if stored
    so, else float32; with `spatial`, a spatial file gives [n_items + 1, components, dim] (a reader that
    cannot use one leaves it False and gets a one-line refusal). The file must be complete, of the
    dataset's item order, float and finite."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: feature file not found; write one with `pixelrec extract`")
    sidecar = read_sidecar(path)
    if sidecar is None:
        raise UserError(f"{path}: no sidecar {sidecar_path(path).name}; write features with `pixelrec extract` "
                        "(or bring your own with `pixelrec extract --import`)")
    if not sidecar.get("complete"):
        raise UserError(f"{path}: incomplete extraction ({sidecar.get('rows_done', 0)} of {sidecar.get('n_items')} "
                        "rows); run the same `pixelrec extract` command again to finish it")
    array = read_feature_array(path, spatial=True)
    if array.ndim == 3 and not spatial:
        raise UserError(f"{path}: spatial features ({array.shape[1]} components per item, from `extract --pooling "
                        "none`), which only model acf uses; extract pooled features for this one")
    if array.ndim == 3 and components_of(sidecar) != array.shape[1]:
        raise UserError(f"{path}: {array.shape[1]} components per item, its sidecar says {components_of(sidecar)}; "
                        "extract it again with --overwrite")
    if array.shape[0] != n_items:
        raise UserError(f"{path}: {array.shape[0]} rows, but the dataset has {n_items} items")
    if sidecar.get("item_order_sha256") != item_order:
        raise UserError(f"{path}: item order differs from the dataset's (the file was written for dataset "
                        f"{sidecar.get('dataset')!r}); extract or import the features again for this dataset")
    dtype = torch.float16 if array.dtype == np.float16 else torch.float32  # float64 gains nothing here
    out = torch.zeros(n_items + 1, *array.shape[1:], dtype=dtype)
    step = max(1, CHECK_ROWS // (array.shape[1] if array.ndim == 3 else 1))
    for begin in range(0, n_items, step):
        block = np.asarray(array[begin : begin + step])
        bad = first_non_finite(block.reshape(len(block), -1))
        if bad is not None:
            row = begin + bad
            raise UserError(f"{path}: row {row} (item index {row + 1}) is not finite (NaN or infinity)")
        out[begin + 1 : begin + 1 + len(block)] = torch.from_numpy(np.array(block)).to(dtype)  # a copy: the map is read-only
    return out


def read_feature_array(path: Path, cure: str = "write it again with `pixelrec extract --overwrite`",
                       spatial: bool = False) -> np.ndarray:
    """A memory-mapped 2-D float array (or, with `spatial`, 3-D [items, components, dim]) from a .npy
    file whose header and size were checked first (a truncated file never reaches the memory map);
    anything else is a one-line error ending in `cure`."""
    array = open_npy(path, cure)
    if array.ndim != 2 and not (spatial and array.ndim == 3):
        raise UserError(f"{path}: expected a 2-D array [items, dim], got shape {tuple(array.shape)}")
    if array.dtype.kind != "f":
        raise UserError(f"{path}: dtype {array.dtype} is not a float type")
    return array
