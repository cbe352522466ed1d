"""A run's settings as the tables see them: every resolved key of its config.yaml that can change a
result (budget, hyper-parameters, seed, protocol), without paths and without the keys that only say
where or how fast it ran. Two runs are one cell only when these agree; where runs of one cell
otherwise (model, item kind, encoder, dataset, profile, start) differ here, tables show the keys
that differ."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable, Hashable

from pixelrec.config import read_saved
from pixelrec.errors import UserError
from pixelrec.runs.directory import flat_keys

#: Keys that never change what a run measures: where its files are (the dataset, a feature file and
#: weight files are named by the encoder and start labels instead), how it was run (devices, workers,
#: threads, caches, memory savers), and how it was shown.
NOT_SETTINGS = frozenset({
    "profile", "data.path", "items.features", "items.image.encoder_weights", "items.text.encoder_weights",
    "items.cache_dir", "items.image.cache", "items.text.cache", "train.init_from",
    "train.num_workers", "train.threads", "train.device", "train.progress", "train.dist_timeout_minutes",
    "train.grad_checkpointing", "train.channels_last", "train.compile", "train.log_every",
    "eval.batch_size", "eval.score_budget_mb",
})


@functools.lru_cache(maxsize=4096)
def _saved(path: str, modified: int) -> dict[str, Any]:
    try:
        return read_saved(path)
    except (UserError, OSError, AttributeError):  # damaged, foreign or not a mapping: no settings
        return {}


def saved_config(run_dir: str | Path) -> dict[str, Any]:
    """A run directory's config.yaml in today's layout ({} when missing or unreadable), read once per
    version of the file however many labels and settings of the run a table computes."""
    path = Path(run_dir) / "config.yaml"
    try:
        modified = path.stat().st_mtime_ns
    except OSError:
        return {}
    return _saved(str(path.resolve()), modified)


def run_settings(run_dir: str | Path) -> dict[str, str]:
    """The settings of a run directory's config.yaml that can change its result, `key` -> value
    written as JSON ({} when there is no readable config.yaml)."""
    return {key: json.dumps(value, sort_keys=True, default=str)
            for key, value in sorted(flat_keys(saved_config(run_dir)).items()) if key not in NOT_SETTINGS}


def settings_key(record: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """A run record's settings (see `run_settings`), hashable."""
    return tuple(sorted((record.get("settings") or {}).items()))


def differing(records: list[dict[str, Any]], base: Callable[[dict[str, Any]], Hashable]) -> list[str]:
    """The settings that differ between runs of one `base` cell (model, items, encoder, ...), in key
    order: the columns a table needs so that those runs can be told apart. Keys that some run of
    the cell does not record are not compared."""
    groups: dict[Hashable, list[dict[str, str]]] = {}
    for record in records:
        groups.setdefault(base(record), []).append(record.get("settings") or {})
    keys: set[str] = set()
    for group in groups.values():
        # only keys every run records: a run saved before a key existed, or one without config.yaml,
        # says nothing about it, which is not a difference
        shared = set.intersection(*(set(s) for s in group))
        keys |= {k for k in shared if len({s[k] for s in group}) > 1}
    return sorted(keys)


def shown(value: str | None) -> str:
    """A setting's value for a table: '-' where a run has no such key."""
    if value is None:
        return "-"
    loaded = json.loads(value)
    return value if isinstance(loaded, (list, dict)) else str(loaded)


def label(record: dict[str, Any], keys: list[str]) -> str:
    """'train.epochs=6, train.seed=1': a run's values of `keys`."""
    settings = record.get("settings") or {}
    return ", ".join(f"{key}={shown(settings.get(key))}" for key in keys)
