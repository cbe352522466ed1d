"""Run directories: resolved config, environment, dataset identity, per-epoch metrics, checkpoints
and results; one writer at a time, and nothing of another run overwritten.

Every file that must survive an interruption is written to a temporary name and renamed into
place, so a reader sees either the old file or the new one, never half of one. Files get the
process umask's permissions. The dataset is recorded by absolute path and fingerprint, so a run can
be used from any working directory and pointed at its dataset after the dataset moved.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pixelrec.config import TOWERS, Config, build_config, read_saved
from pixelrec.data.prepared import PreparedData
from pixelrec.errors import UserError
from pixelrec.storage import locks
from pixelrec.storage.atomic import atomic_write, atomic_write_with, write_error
from pixelrec.storage.feature_files import dataset_order_sha256
from pixelrec.storage.files import disk_full, free_bytes, read_json_object
from pixelrec.version import __version__

CHECKPOINT_FORMAT = "pixelrec-checkpoint"
CHECKPOINT_VERSION = 1
LOCK_NAME = ".lock"
#: What a run writes; `train(overwrite=True)` removes these and nothing else.
RUN_FILES = ("config.yaml", "environment.json", "dataset.json", "metrics.jsonl", "metrics.csv", "results.json",
             "best.pt", "last.pt", "train.log", "error.log")
RUN_PATTERNS = ("events.out.tfevents.*",)
CHECKPOINTS = ("best.pt", "last.pt")
#: Settings that may change on --resume: when and where the run goes on, not what it computes. The
#: dataset's path may change too when the dataset there is the same one (its fingerprint).
RESUME_FREE = frozenset({
    "data.path", "train.epochs", "train.max_steps", "train.patience", "train.eval_every", "train.ties_improve",
    "train.num_workers", "train.device", "train.progress", "train.log_every", "train.dist_timeout_minutes", "train.threads",
    "train.amp", "train.grad_checkpointing", "train.channels_last", "train.compile",
    "eval.batch_size", "eval.score_budget_mb", "items.image.cache", "items.text.cache", "items.cache_dir",
})
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<tail>[0-9a-f]{16}\.tmp|[a-z0-9_]{8})$")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a torn checkpoint."""
    body = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}

    def write(handle: Any) -> None:
        try:
            torch.save(body, handle)
        except RuntimeError as err:  # torch words a failed write (a full disk among them) as a RuntimeError
            full = disk_full(err) or (free_bytes(Path(path).parent) or 0) < (1 << 20)
            raise OSError(errno.ENOSPC if full else errno.EIO, str(err).splitlines()[0]) from None

    atomic_write_with(Path(path), write)


def is_temp_name(name: str) -> bool:
    """A temporary file of our atomic writes (`.NAME.<16 hex>.tmp`, or an older `.RUNFILE.<8 chars>`)."""
    match = _TEMP.match(name)
    return bool(match) and (match["tail"].endswith(".tmp") or match["name"] in RUN_FILES)


def remove_temp_files(folder: Path) -> list[str]:
    """Delete the temporary files that killed writers left in `folder` (only names our writes use)."""
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if is_temp_name(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


# --- checkpoints ----------------------------------------------------------------------------
def load_checkpoint(path: Path, map_location: str | torch.device = "cpu",
                    required: tuple[str, ...] = ("model", "state")) -> dict[str, Any]:
    """Load a checkpoint with weights_only=True (nothing executable comes from disk); a missing,
    truncated, foreign or incomplete file is one line."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        size = path.stat().st_size
        raise UserError(f"{path}: unreadable checkpoint ({size:,} bytes, {type(err).__name__}): truncated, damaged "
                        "or not a torch file; use another copy or train again") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a pixelrec checkpoint (no {CHECKPOINT_FORMAT!r} marker); "
                        "it was not written by `pixelrec train`")
    missing = [key for key in required if not isinstance(payload.get(key), dict)]
    if missing:
        raise UserError(f"{path}: incomplete pixelrec checkpoint (no {', '.join(missing)}); "
                        "use another copy or train again")
    if isinstance(payload.get("model"), dict):
        bad = next((name for name, value in payload["model"].items() if isinstance(value, torch.Tensor)
                    and value.is_floating_point() and not bool(torch.isfinite(value).all())), None)
        if bad is not None:
            raise UserError(f"{path}: weight {bad} holds NaN or infinite values: a model that diverged gives no "
                            "real metrics, rankings or vectors; use an earlier checkpoint or train again")
    return payload


def load_weights(module: torch.nn.Module, state: dict[str, Any], path: Path) -> None:
    """load_state_dict, with a mismatch (another model, size or dataset) as one line naming the first culprits."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} here {list(own[k].shape)}" for k in own
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    for label, names in (("shape of", shapes), ("missing", missing), ("unexpected", unexpected)):
        if names:
            more = f" and {len(names) - 2} more" if len(names) > 2 else ""
            problems.append(f"{label} {', '.join(names[:2])}{more}")
    if problems:
        raise UserError(f"{path}: weights do not fit the run's model ({'; '.join(problems)}): the checkpoint is from "
                        "another model, configuration or dataset")
    try:
        module.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError) as err:
        raise UserError(f"{path}: weights do not fit the run's model ({str(err).splitlines()[0]})") from None


def checkpoint_epoch(payload: dict[str, Any]) -> int:
    return int(payload.get("state", {}).get("epoch", 0))


# --- the dataset a run was trained on -------------------------------------------------------
def dataset_fingerprint(data: PreparedData) -> str:
    """sha256 of the dataset's counts and item order: cheap, and different whenever a checkpoint's
    item indices would mean other items."""
    meta = data.meta
    identity = {"n_users": data.n_users, "n_items": data.n_items, "n_interactions": meta.get("n_interactions"),
                "item_order_sha256": dataset_order_sha256(data.item_tokens)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def dataset_record(data: PreparedData) -> dict[str, Any]:
    """dataset.json: where the run's dataset was (absolute) and what it was."""
    record = {"path": os.path.abspath(data.root), "name": data.name, "fingerprint": dataset_fingerprint(data),
              "n_users": data.n_users, "n_items": data.n_items, "n_interactions": data.meta.get("n_interactions")}
    covers = images_sha256(data)
    return record if covers is None else {**record, "images_sha256": covers}


def images_sha256(data: PreparedData) -> str | None:
    """The hash of the dataset's stored covers, as `prepare` recorded it (None: no store, or an older one)."""
    store = data.meta.get("image_store")
    return store.get("sha256") if isinstance(store, dict) else None


def read_dataset_record(run: Path) -> dict[str, Any] | None:
    """The run's dataset.json, or None for a run written before runs recorded it."""
    path = run / "dataset.json"
    record = read_json_object(path, "the run's dataset cannot be checked")
    if record is not None and not isinstance(record.get("fingerprint"), str):
        raise UserError(f"{path}: not a pixelrec dataset record (no fingerprint)")
    return record


def check_dataset(run: Path, data: PreparedData, record: dict[str, Any] | None) -> None:
    """Refuse a dataset other than the one the run was trained on (one line naming both)."""
    if record is None:
        return
    found = dataset_fingerprint(data)
    if found != record["fingerprint"]:
        raise UserError(
            f"{data.root} is not the dataset {run} was trained on: fingerprint {found[:12]} ({data.n_items:,} items, "
            f"{data.n_users:,} users) vs {record['fingerprint'][:12]} ({record.get('n_items', '?'):,} items, "
            f"{record.get('n_users', '?'):,} users) at {record.get('path')}; pass data= with that dataset")
    covers, recorded = images_sha256(data), record.get("images_sha256")
    if covers is not None and recorded is not None and covers != recorded:
        raise UserError(f"{data.root} holds other covers than the dataset {run} was trained on (image store "
                        f"{covers[:12]} vs {recorded[:12]}): the same items and interactions, prepared from other "
                        "images; pass data=DIR with the dataset the run was trained on")


def with_absolute_paths(config: Config) -> Config:
    """A copy of `config` whose file paths are absolute, so the run can be used from any directory."""
    config = copy.deepcopy(config)
    if config.data.path is not None:
        config.data.path = os.path.abspath(config.data.path)
    items = config.items
    for owner, key in ((items, "features"), (items.image, "encoder_weights"), (items.text, "encoder_weights")):
        value = getattr(owner, key, None)
        if value is not None and Path(value).exists():
            setattr(owner, key, os.path.abspath(value))
    if items.cache_dir is not None:
        items.cache_dir = os.path.abspath(items.cache_dir)
    if config.train.init_from is not None:
        config.train.init_from = os.path.abspath(config.train.init_from)
    return config


def relocated(config: Config, data_root: str | Path) -> Config:
    """`config` with its dataset at `data_root`; files that lived inside the old dataset folder
    (feature files, the prefix cache) are looked for at the same place inside the new one."""
    config = copy.deepcopy(config)
    old, new = config.data.path, os.path.abspath(data_root)
    config.data.path = new
    if old is None:
        return config
    old = os.path.abspath(old)
    for key in ("features", "cache_dir"):
        value = getattr(config.items, key)
        if value is not None and os.path.isabs(value) and Path(value).is_relative_to(old):
            setattr(config.items, key, os.path.join(new, os.path.relpath(value, old)))
    return config


# --- who writes where -----------------------------------------------------------------------
class Claim:
    """A run directory held by this process: its lock, and whether the claim created the directory.
    Giving it up (`release`, or the holder's end) removes a directory it created that stayed empty,
    so a run that failed before writing anything leaves nothing behind."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise write_error(out, err) from None
        if not os.access(out, os.W_OK):
            raise UserError(f"{out}: cannot write (permission denied); choose a folder you can write to")
        try:
            self.lock: locks.Lock | None = locks.acquire(out / LOCK_NAME, f"run directory {out}")
        except UserError:
            self._remove_if_empty()
            raise

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        self._remove_if_empty()

    def _remove_if_empty(self) -> None:
        if self.created:
            try:
                self.out.rmdir()  # only an empty folder goes
            except OSError:
                pass


def _is_run_file(name: str) -> bool:
    return name in RUN_FILES or any(Path(name).match(pattern) for pattern in RUN_PATTERNS)


def contents(out: Path) -> list[str]:
    """Names in `out` other than its lock and writers' temporary files."""
    if not out.is_dir():
        return []
    return sorted(e.name for e in out.iterdir() if e.name != LOCK_NAME and not is_temp_name(e.name))


def start_refusal(out: Path, config: Config) -> str | None:
    """Why a new run may not start in `out` (one line), or None: `out` is empty, or holds only the files
    of a start that never reached a checkpoint (nothing there to lose: no checkpoint, no results, and
    a config.yaml, if any, of this same configuration; e.g. a bench cell that failed)."""
    names = contents(out)
    if not names:
        return None
    what = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    if "last.pt" in names:
        return (f"{out}: already holds a run ({_progress(out)}); use resume=True with out={out} to continue it, "
                "another out=, or overwrite=True to replace it")
    if "results.json" in names:
        return (f"{out}: already holds a finished run (results.json; {what}); use another out=, or overwrite=True "
                "to replace it")
    # best.pt without last.pt: killed between the first two checkpoint writes, nothing to resume from
    if all(_is_run_file(n) for n in names) and "last.pt" not in names \
            and ("config.yaml" not in names or _same_config(out, config)):
        return None
    return (f"{out}: not empty ({what}) and not a run of this configuration to restart; use another out=, or "
            "overwrite=True to replace the run files there")


def _progress(out: Path) -> str:
    try:
        payload = torch.load(out / "last.pt", map_location="cpu", weights_only=True, mmap=True)  # reads no weights
        return f"last.pt after epoch {int(payload['state']['epoch'])}"
    except Exception:  # noqa: BLE001 - a damaged last.pt still marks a run
        return "last.pt"


def _same_config(out: Path, config: Config) -> bool:
    try:
        saved = config_of_run(out)
    except UserError:
        return False
    return with_absolute_paths(saved).to_dict() == with_absolute_paths(config).to_dict()


def clear(out: Path) -> list[str]:
    """Remove what a run writes from `out` (`overwrite=True`); other files stay."""
    removed = [n for n in contents(out) if _is_run_file(n) and (out / n).is_file()]
    for name in removed:
        (out / name).unlink()
    return removed


def flat_keys(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`section.key` -> value, and `items.tower.key` -> value in a tower's section."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and (prefix == "" or prefix == "items." and key in TOWERS):
            out |= flat_keys(value, f"{name}.")
        else:
            out[name] = value
    return out


def resume_changes(out: Path, saved: Config, config: Config) -> list[tuple[str, Any, Any]]:
    """The settings that differ from the run's config.yaml, as (key, was, now); a change that would
    make the checkpoint mean something else (model, items, loss, data preparation, optimiser) is one
    line saying which."""
    before = flat_keys(with_absolute_paths(saved).to_dict())
    after = flat_keys(with_absolute_paths(config).to_dict())
    changed = [(k, before.get(k), after.get(k)) for k in sorted(set(before) | set(after))
               if before.get(k) != after.get(k)]
    free = RESUME_FREE
    if config.train.lr_schedule != "constant":  # the schedule's length is part of every step's rate
        free = RESUME_FREE - {"train.epochs", "train.max_steps"}
    fixed = [f"{k} ({was} -> {now})" for k, was, now in changed if k not in free]
    if fixed:
        raise UserError(f"{out}: cannot change on resume=True: {', '.join(fixed[:3])}"
                        + (f" and {len(fixed) - 3} more" if len(fixed) > 3 else "")
                        + "; the checkpoint continues the run as it was trained: start a new run in another out= "
                        "(what may change: epochs and max_steps, except under a train.lr_schedule, "
                        "patience, eval_every, device, workers, evaluation batch)")
    return changed


def describe_changes(changes: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{k}: {was} -> {now}" for k, was, now in changes)


# --- records ----------------------------------------------------------------------------------
def default_run_dir(model: str, items: str, root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{model}-{items}-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = Path(root) / f"{model}-{items}-{stamp}-{suffix}"
    return path


def environment(device: torch.device) -> dict[str, Any]:
    """What produced a run: versions, device, code revision."""
    info: dict[str, Any] = {
        "pixelrec": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "argv": sys.argv,
        "cwd": os.getcwd(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        root = Path(__file__).resolve().parents[3]
        info["git_commit"] = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


class MetricsLog:
    """metrics.jsonl: one JSON line per epoch; on resume, lines past the checkpoint are dropped."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        rows = []
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise UserError(f"{self.path}: not a text file of metrics; restore it from a copy or remove it") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict):
                raise UserError(f"{self.path}: line {number} is not a metrics row (JSON object); remove that line "
                                "or the file to go on (the checkpoint holds the training state)")
            rows.append(row)
        return rows

    def truncate_after(self, epoch: int) -> None:
        kept = [row for row in self.read() if row.get("epoch", 0) <= epoch]
        atomic_write(self.path, "".join(json.dumps(row) + "\n" for row in kept).encode())

    def append(self, row: dict[str, Any]) -> None:
        try:
            with self.path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as err:
            raise write_error(self.path, err) from None


def config_of_run(run: str | Path) -> Config:
    """The resolved configuration saved in a run directory (one saved by an earlier version too)."""
    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run}: not a run directory (no config.yaml)")
    return build_config(read_saved(path), source=str(path))
