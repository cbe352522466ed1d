"""Resumable per-item row files: a `.npy` of one row per item beside a JSON sidecar that records
what made it and how many rows are done. Image and text features, prefix caches and new items'
vectors are all filled by `write_item_rows`/`fill_item_rows`: an interrupted fill continues where it
stopped and ends with the same bytes."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from pixelrec.errors import UserError, worker_errors
from pixelrec.progress import bar, log
from pixelrec.storage.feature_files import (
    DTYPES,
    check_identity,
    first_non_finite,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from pixelrec.storage.files import allocate, disk_full, free_bytes, npy_info, size_text


class _ItemRows(torch.utils.data.Dataset):
    """Chunk k -> (first row, inputs of items first+1 .. first+batch) from a row source: anything whose
    `read(item_ids)` gives a batch tensor (the image store's uint8 images, a token array's ids)."""

    def __init__(self, store: Any, start: int, n_items: int, batch_size: int) -> None:
        self.store, self.start, self.n_items, self.batch_size = store, start, n_items, batch_size

    def __len__(self) -> int:
        return -(-(self.n_items - self.start) // self.batch_size)

    def __getitem__(self, k: int) -> tuple[int, Tensor]:
        first = self.start + k * self.batch_size
        rows = np.arange(first, min(first + self.batch_size, self.n_items))
        return first, self.store.read(rows + 1)


def npy_path(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix != ".npy":
        raise UserError(f"out={out}: the feature file must end in .npy (its sidecar is the .json beside it)")
    return out


def check_output(out: Path, dtype: str, batch_size: int, workers: int) -> None:
    """One line for a bad `dtype`, `batch_size` or `workers`; the feature file's folder made."""
    if dtype not in DTYPES:
        raise UserError(f"dtype={dtype}: choose one of {', '.join(DTYPES)}")
    if batch_size < 1 or workers < 0:
        raise UserError(f"batch_size= must be >= 1 and workers= >= 0 (got {batch_size}, {workers})")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{out.parent}: cannot create the folder for out= ({err.strerror or err})") from None


def write_item_rows(out: Path, wanted: dict[str, Any], overwrite: bool, source: Any, n_items: int,
                    compute: Callable[[Any], Tensor], not_finite: Callable[[int], str], *, desc: str, batch_size: int,
                    workers: int, device: torch.device, progress: bool, fp16: bool = False, unit: str = "img",
                    what: str = "the feature file") -> dict[str, Any]:
    """Open the per-item file `out` for the identity `wanted` (new, or resumed where a matching run
    stopped) and fill its missing rows with `compute(inputs)` over the batches `source` reads; returns
    its sidecar with `rows_written` (0: it was complete). Feature extraction (images, texts) and new
    items' vectors are written by this one routine."""
    with write_errors(out, what):
        sidecar, array = _open(out, wanted, overwrite)
        if array is None:
            return {**sidecar, "rows_written": 0}
        start, row_dtype = int(sidecar["rows_done"]), array.dtype
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=fp16):
            fill_item_rows(out, array, sidecar, source, start, n_items, batch_size, workers, device,
                           lambda inputs: compute(inputs).float().cpu().numpy().astype(row_dtype), desc, progress,
                           not_finite, unit=unit)
        del array
    return {**sidecar, "rows_written": n_items - start}


@contextlib.contextmanager
def write_errors(out: Path, what: str) -> Iterator[None]:
    """Failed writes of `out` as one line: a full disk with what is free, anything else with its reason.
    The sidecar records only rows flushed before the failure, so the same command continues later."""
    try:
        yield
    except OSError as err:
        if disk_full(err):
            raise UserError(f"{out.parent}: disk full while writing {what} {out.name} "
                            f"({size_text(free_bytes(out.parent))} free); free some space and run the same "
                            "command again to continue") from None
        raise UserError(f"{err.filename or out}: cannot write {what} ({err.strerror or err}); "
                        "choose another out=") from None


def create_rows(out: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.memmap:
    """A new memory-mapped .npy of `shape`, its blocks reserved first: no room is an error naming the size
    needed, with no file left behind, never a SIGBUS while the rows are written."""
    need = int(np.prod(shape)) * dtype.itemsize
    try:
        array = np.lib.format.open_memmap(out, mode="w+", dtype=dtype, shape=shape)
        allocate(out, array.offset + array.nbytes)
    except OSError as err:
        out.unlink(missing_ok=True)
        if disk_full(err):
            raise UserError(f"{out.parent}: not enough disk for {out.name}: it needs {size_text(need)}, "
                            f"{size_text(free_bytes(out.parent))} free; free some space or write elsewhere") from None
        raise
    return array


def fill_item_rows(out: Path, array: np.ndarray, sidecar: dict[str, Any], image_store: Any, start: int, n_items: int,
                   batch_size: int, workers: int, device: torch.device, compute: Any, desc: str, progress: bool,
                   not_finite: Any, unit: str = "img") -> None:
    """Fill rows start.. of a per-item array with `compute(inputs on device) -> numpy rows`, the inputs
    read from `image_store` (or any row source, see `_ItemRows`: a token array for text) by `workers`;
    each chunk is flushed before the sidecar records it done, so an interrupted run continues where it
    stopped and ends with the same bytes. `not_finite(row)` words the error."""
    chunks = _ItemRows(image_store, start, n_items, batch_size)
    loader = (chunks[k] for k in range(len(chunks))) if workers == 0 else torch.utils.data.DataLoader(
        chunks, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda")
    with bar(desc, progress, total=n_items, initial=start, unit=unit) as shown, worker_errors():
        for first, inputs in loader:
            rows = compute(inputs.to(device, non_blocking=True))
            bad = first_non_finite(rows.reshape(len(rows), -1))
            if bad is not None:
                raise UserError(not_finite(first + bad))
            array[first : first + len(rows)] = rows
            array.flush()  # rows reach the file before the sidecar says they are done
            done = first + len(rows)
            sidecar.update(rows_done=done, batch_size=batch_size, complete=done == n_items)
            write_sidecar(out, sidecar)
            shown.update(len(rows))


def _open(out: Path, wanted: dict[str, Any], overwrite: bool) -> tuple[dict[str, Any], np.memmap | None]:
    """(sidecar, writable array) to continue from; the array is None when the file is already complete
    and intact. A complete sidecar whose .npy was deleted starts the extraction again."""
    cure = "use overwrite=True to start over"
    if overwrite:
        sidecar_path(out).unlink(missing_ok=True)
        out.unlink(missing_ok=True)
    sidecar = read_sidecar(out, cure)
    if sidecar is None:
        if out.exists():
            raise UserError(f"{out}: exists without a sidecar {sidecar_path(out).name}; use overwrite=True to replace it")
    else:
        check_identity({"components": 1, **sidecar} if "components" in wanted else sidecar, wanted, out)
        if sidecar.get("rows_done") and not out.exists():
            log.warning(f"{out}: missing, though {sidecar_path(out).name} records {sidecar['rows_done']} rows done; "
                        "extracting again")
            sidecar = None
    if sidecar is None:
        sidecar = {**wanted, "rows_done": 0, "complete": False}
        write_sidecar(out, sidecar)  # first, so a file without a sidecar is never ours
    shape, dtype = feature_shape(wanted), np.dtype(wanted["dtype"])
    if sidecar["rows_done"] == 0:
        try:
            return sidecar, create_rows(out, shape, dtype)
        except BaseException:
            sidecar_path(out).unlink(missing_ok=True)  # nothing written: leave nothing behind
            raise
    info = npy_info(out, cure)
    if info.shape != shape or info.dtype != dtype:
        raise UserError(f"{out}: holds {info.dtype} {info.shape}, its sidecar says {dtype} {shape}; {cure}")
    if sidecar["complete"]:
        return sidecar, None
    array = np.load(out, mmap_mode="r+", allow_pickle=False)
    allocate(out, info.offset + info.nbytes)  # rows not yet written may still be holes of a sparse file
    return sidecar, array


def feature_shape(sidecar: dict[str, Any]) -> tuple[int, ...]:
    """[n_items, dim], or [n_items, components, dim] for spatial features (pooling `none`)."""
    if sidecar.get("pooling") == "none":
        return sidecar["n_items"], sidecar["components"], sidecar["dim"]
    return sidecar["n_items"], sidecar["dim"]
