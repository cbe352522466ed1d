"""results.json, the record of a finished run that scripts read: its one writer and its one reader.

The record names the model, item kind, encoder, loss, dataset and profile, the best epoch, the
metrics of each split as fractions, and what the run cost (seconds per epoch and step, trainable
parameters, images per step where items are encoded from pixels), and its caveats: what makes its
numbers incomparable with the paper's (towers.caveats). The reader checks its shape, so a
damaged or foreign file is one line, never a traceback in a table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pixelrec.errors import UserError
from pixelrec.storage.atomic import atomic_json

SPLITS = ("valid", "test", "valid_cold", "test_cold")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_record(record: Any, path: Path) -> None:
    """A one-line UserError unless `record` has the shape `pixelrec train` writes: model and items
    names, metrics as {name: number} per split, numbers where tables expect numbers."""
    def bad(what: str) -> UserError:
        return UserError(f"{path}: malformed results.json: {what}")

    if not isinstance(record, dict):
        raise bad(f"expected an object, found {type(record).__name__}")
    for key in ("model", "items"):
        if not isinstance(record.get(key), str):
            raise bad(f"{key!r} must be a name, found {record.get(key)!r}"[:200])
    for key in ("encoder", "dataset", "profile"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise bad(f"{key!r} must be a name or null, found {type(record[key]).__name__}")
    for split in SPLITS:
        metrics = record.get(split)
        if metrics is None:
            continue
        if not isinstance(metrics, dict):
            raise bad(f"{split!r} must map metric names to numbers, found {type(metrics).__name__}")
        wrong = [name for name, value in metrics.items() if not _number(value)]
        if wrong:
            raise bad(f"{split}.{wrong[0]} must be a number, found {type(metrics[wrong[0]]).__name__}")
    caveats = record.get("caveats")
    if caveats is not None and not (isinstance(caveats, list) and all(
            isinstance(c, dict) and isinstance(c.get("message"), str) for c in caveats)):
        raise bad("'caveats' must be a list of records, each with a 'message'")
    for key in ("trainable_parameters", "train_seconds_per_epoch"):
        if key in record and not _number(record[key]):
            raise bad(f"{key!r} must be a number, found {type(record[key]).__name__}")


FILE = "results.json"


def results_path(run: str | Path) -> Path:
    """The results.json of a run directory (a path to the file itself is taken as it is)."""
    path = Path(run)
    return path / FILE if path.is_dir() or not path.name.endswith(".json") else path


def write_results(run: str | Path, record: dict[str, Any]) -> None:
    """Write a run's results.json atomically (rank 0 only: the caller decides)."""
    atomic_json(Path(run) / FILE, record)


def read_results(run: str | Path, *, required: bool = True) -> dict[str, Any] | None:
    """A run's results.json, checked (see `check_record`); None when there is none and not `required`."""
    path = results_path(run)
    if not path.is_file():
        if not required:
            return None
        raise UserError(f"{path}: no results.json (is the run finished?)")
    try:
        record = json.loads(path.read_bytes())
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror or err})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        where = f" (line {err.lineno})" if isinstance(err, json.JSONDecodeError) else ""
        raise UserError(f"{path}: malformed results.json: not valid JSON{where}") from None
    check_record(record, path)
    return record
