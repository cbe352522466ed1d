"""Tables from run directories: each run's results.json becomes one row.

A run is one *cell*: its model, item kind, image encoder, dataset, profile, where its weights started,
and every other setting that can change its result (`bench.settings`: budget, hyper-parameters,
seed). Runs that differ in a setting are separate rows, with the settings that differ shown; two runs
of one cell are both shown, never merged; `newest` keeps the most recently finished run of each cell
on request and `superseded` says which it left out.
A run with caveats (a paper encoder with random weights, upscaled images: towers.caveats) is marked
with `MARK` wherever it is shown, and `caveats_note` names each caveat under the tables.
Labels, column and row order and what names a row's encoder come from what each backbone and item
encoder declares (`label`, `family`, `table_order`, `image_tower`, ...), never from their names.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from pixelrec.bench import settings as run_settings
from pixelrec.config import tower_sections
from pixelrec.items import ITEM_ENCODERS, ItemEncoder
from pixelrec.models import BACKBONES
from pixelrec.models.base import FAMILIES
from pixelrec.runs.results import read_results, results_path
from pixelrec.towers.caveats import RANDOM_WEIGHTS
from pixelrec.towers.names import SHORT_NAMES
from pixelrec.units import percent


def load_results(runs: list[str | Path]) -> list[dict[str, Any]]:
    """results.json of each run directory (or results.json path), in the order given; each record
    gains "run" (its directory), "results_file" and an "encoder" label fit for tables (see `encoder_label`)."""
    out = []
    for run in runs:
        path = results_path(run)
        record = read_results(path)
        record["run"] = str(path.parent)
        record["results_file"] = str(path)
        record["encoder"] = encoder_label(record, path.parent)
        record["start"] = start_label(record, path.parent)
        record["settings"] = run_settings.run_settings(path.parent)
        out.append(record)
    return out


def encoder_label(record: dict[str, Any], run_dir: Path | None = None) -> str | None:
    """The encoder a result belongs to: none for ID items (whatever the record says); for feature
    items the recorded name, else the one in the feature file's sidecar (`pixelrec extract`), else the
    feature file's name, so runs on different features never share a row; for text items the text
    model (items.text.encoder, else its directory's name), for multimodal items 'image + text model'."""
    kind = ITEM_ENCODERS.find(record.get("items"))
    if kind is not None and kind.encoder_tower is None:  # no tower names an encoder (ID items)
        return None
    encoder = record.get("encoder")
    if run_dir is not None and kind is not None and "text" in tower_sections(kind):
        return _text_label(run_dir, kind, encoder)
    if encoder or kind is None or not kind.reads_features or run_dir is None:
        return encoder
    return _features_label(run_dir)


def _items_section(run_dir: Path) -> dict[str, Any]:
    """The `items` section of a run's config.yaml, in today's layout ({} when unreadable)."""
    items = run_settings.saved_config(run_dir).get("items")
    return items if isinstance(items, dict) else {}


def _tower(items: dict[str, Any], name: str) -> dict[str, Any]:
    """A tower's section of an `items` section ({} when it has none)."""
    tower = items.get(name)
    return tower if isinstance(tower, dict) else {}


def _text_label(run_dir: Path, kind: type[ItemEncoder], image: str | None) -> str | None:
    """The text model's name (as set, else its directory's name); with an image tower too
    (multimodal): 'image + text model'."""
    text_tower = _tower(_items_section(run_dir), "text")
    named, folder = text_tower.get("encoder"), text_tower.get("encoder_weights")
    text = named if isinstance(named, str) and named else (
        model_folder_label(folder) if isinstance(folder, str) and folder else None)
    if kind.image_tower is None:
        return text or image
    return " + ".join(x for x in (image, text) if x) or None


#: Folder names that say nothing about the model inside (a package's `model/`, a hub snapshot's hash).
_GENERIC = re.compile(r"^(models?|weights|checkpoints?|snapshots|hf|huggingface|[0-9a-f]{40})$", re.IGNORECASE)


def model_folder_label(folder: str) -> str:
    """A model directory's name for tables: the nearest folder name that is not generic ('model',
    'snapshots', a commit hash), a hub cache's `models--org--name` as `name`."""
    parts = [part for part in Path(folder).parts if part not in ("/", "")]
    for part in reversed(parts):
        if part.startswith("models--"):
            return part.rsplit("--", 1)[-1]
        if not _GENERIC.match(part):
            return part
    return parts[-1] if parts else folder


def _features_label(run_dir: Path) -> str | None:
    features = _items_section(run_dir).get("features")
    if not isinstance(features, str) or not features:
        return None
    try:
        sidecar = json.loads(Path(features).with_suffix(".json").read_text())
        named = sidecar.get("encoder") if isinstance(sidecar, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        named = None
    return named if isinstance(named, str) and named else Path(features).name


def start_label(record: dict[str, Any], run_dir: Path | None = None) -> str | None:
    """Where a run's weights started: 'from <run>' (train.init_from); else, for image items, 'weights
    <file>', 'pretrained' or 'random init' (read from the run's config.yaml); None for other items."""
    source = record.get("init_from")
    if isinstance(source, dict) and isinstance(source.get("run"), str):
        return f"from {Path(source['run']).name}"
    kind = ITEM_ENCODERS.find(record.get("items"))
    if kind is None or kind.image_tower is None or run_dir is None:
        return None
    image = _tower(_items_section(run_dir), "image")
    weights = image.get("encoder_weights")
    if isinstance(weights, str) and weights:
        return f"weights {Path(weights).name}"
    return "pretrained" if image.get("pretrained") is True else "random init"


def base_cell(record: dict[str, Any]) -> tuple[str, str, str | None, str | None, str, str | None]:
    """(model, items, encoder, dataset, profile, start): what a table row names."""
    start = record["start"] if "start" in record else start_label(record)
    return (record.get("model", "?"), record.get("items", "?"), encoder_label(record), record.get("dataset"),
            record.get("profile") or "default", start)


def cell_of(record: dict[str, Any]) -> tuple:
    """`base_cell` and every setting that can change a result: runs of one cell measure the same thing."""
    return (*base_cell(record), run_settings.settings_key(record))


def duplicates(results: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Groups of two or more runs of one cell, in the order first seen."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in results:
        groups.setdefault(cell_of(record), []).append(record)
    return [group for group in groups.values() if len(group) > 1]


def _finished(record: dict[str, Any]) -> int:
    try:
        return os.stat(record["results_file"]).st_mtime_ns
    except (KeyError, OSError):
        return -1


def _newest_of_cells(results: list[dict[str, Any]]) -> dict[tuple, int]:
    """Cell -> the number of its run whose results.json was written last (the later given on a tie)."""
    chosen: dict[tuple, tuple[int, int]] = {}
    for number, record in enumerate(results):
        key, rank = cell_of(record), (_finished(record), number)
        if key not in chosen or rank >= chosen[key]:
            chosen[key] = rank
    return {key: number for key, (_, number) in chosen.items()}


def newest(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One run per cell: the one whose results.json was written last (the later given on a tie);
    the kept runs stay in the order given."""
    keep = set(_newest_of_cells(results).values())
    return [record for number, record in enumerate(results) if number in keep]


def superseded(results: list[dict[str, Any]]) -> list[str]:
    """One line per run that `newest` leaves out, naming the newer run of the same cell it keeps."""
    kept = _newest_of_cells(results)
    lines = []
    for record in results:
        chosen = results[kept[cell_of(record)]]
        if chosen is not record:
            lines.append(f"dropped {record.get('run', '?')}: an older run of {cell_name(record)} "
                         f"(same settings as {chosen.get('run', '?')}, which finished later)")
    return lines


def cell_name(record: dict[str, Any]) -> str:
    """'sasrec pixels clip-rn50 (dataset x, profile paper)', for notes and messages."""
    model, items, encoder, dataset, profile, start = base_cell(record)
    extra = ([f"dataset {dataset}"] if dataset else []) + [f"profile {profile}"] + ([start] if start else [])
    return " ".join(x for x in (model, items, encoder) if x) + f" ({', '.join(extra)})"


def duplicates_note(results: list[dict[str, Any]]) -> str:
    """Lines naming each cell that has several runs (empty when none): all are shown, in the order given."""
    groups = duplicates(results)
    if not groups:
        return ""
    lines = [f"- {cell_name(group[0])}: {len(group)} runs: " + ", ".join(r.get("run", "?") for r in group)
             for group in groups]
    return ("Several runs of one cell, all shown (paper layout: values in the order of the runs; "
            "`pixelrec report --latest` keeps the newest):\n\n" + "\n".join(lines))


def mixed(results: list[dict[str, Any]], key: str) -> bool:
    """True when the runs differ in `key` (dataset or profile), so tables must say which is which."""
    default = "default" if key == "profile" else None
    return len({r.get(key) or default for r in results}) > 1


#: Beside the label of a run (or of a table row holding one) that has caveats.
MARK = "†"


def run_caveats(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The caveats results.json records; for a run from before they were recorded, a paper encoder
    that started from random weights (its `start` label)."""
    if "caveats" in record:
        return list(record["caveats"] or [])
    encoder = record.get("encoder")
    kind = ITEM_ENCODERS.find(record.get("items"))
    towered = kind is not None and kind.image_tower is not None and not kind.reads_features
    if towered and encoder in PAPER_ENCODERS and record.get("start") == "random init":
        return [{"kind": "random_weights", "encoder": encoder,
                 "message": f"image encoder {encoder} is randomly initialised: its numbers are not comparable "
                            "with the paper's"}]
    return []


def caveats_note(results: list[dict[str, Any]]) -> str:
    """Lines naming each caveat of each marked run (empty when none has any)."""
    lines = [f"- {cell_name(r)}" + (f", {r['run']}" if r.get("run") else "") + f": {caveat['message']}"
             for r in results for caveat in run_caveats(r)]
    if not lines:
        return ""
    return f"{MARK} Read before comparing with the paper's numbers:\n\n" + "\n".join(lines)


def _percent(metrics: dict[str, Any] | None, name: str) -> str:
    if not metrics or name not in metrics:
        return "-"
    return percent(metrics[name], sign=False)


def _encoder_cell(record: dict[str, Any]) -> str:
    """The encoder column: its label, '(random init)' for a paper encoder with random weights, and the
    mark of a run with caveats."""
    caveats = run_caveats(record)
    random = any(c.get("kind") == RANDOM_WEIGHTS for c in caveats)
    return (encoder_label(record) or "-") + (" (random init)" if random else "") + (f" {MARK}" if caveats else "")


def summary_table(results: list[dict[str, Any]], split: str = "test") -> str:
    """Markdown: one row per run with test metrics (percent, as the paper), cold-item metrics,
    trainable parameters, seconds per epoch and the run directory; dataset and profile columns when
    the runs mix several; a column per setting that differs between runs of one cell (`bench.settings`);
    the encoder of a run with caveats marked (`MARK`)."""
    datasets, profiles = mixed(results, "dataset"), mixed(results, "profile")
    differ = run_settings.differing(results, base_cell)
    header = ["model", "items", "encoder", *(["dataset"] if datasets else []), *(["profile"] if profiles else []),
              *differ, "Recall@10 %", "NDCG@10 %", "cold Recall@10 %", "cold NDCG@10 %", "trainable params", "s/epoch", "run"]
    rows = [header, ["---"] * len(header)]
    for r in results:
        cold = r.get(f"{split}_cold")
        rows.append([
            r.get("model", "?"), r.get("items", "?"), _encoder_cell(r),
            *([r.get("dataset") or "-"] if datasets else []), *([r.get("profile") or "default"] if profiles else []),
            *(run_settings.shown((r.get("settings") or {}).get(key)) for key in differ),
            _percent(r.get(split), "Recall@10"), _percent(r.get(split), "NDCG@10"),
            _percent(cold, "Recall@10"), _percent(cold, "NDCG@10"),
            f"{int(r.get('trainable_parameters', 0)):,}", f"{r.get('train_seconds_per_epoch', 0.0):.2f}",
            str(r.get("run", "-")).replace("|", "\\|"),
        ])
    return "\n".join("| " + " | ".join(str(c) for c in row) + " |" for row in rows)


# The paper's table layout: backbones as columns (non-sequential, then sequential, each family in the
# order its backbones declare), item encoders as row groups (ID first, then the image encoders in the
# paper's order), two metrics per group.
PAPER_ENCODERS = tuple(SHORT_NAMES)
TABLE_METRICS = ("Recall@10", "NDCG@10")


def display_name(model: str) -> str:
    """How tables and figures name a backbone: its declared label ('SASRec'), else the name as given."""
    backbone = BACKBONES.find(model)
    return backbone.label if backbone is not None and backbone.label else model


def _column(model: str) -> tuple[int, float] | None:
    """(family, position) of a backbone among the paper's columns; None for one outside them (pop)."""
    backbone = BACKBONES.find(model)
    if backbone is None or backbone.family not in FAMILIES or backbone.table_order == math.inf:
        return None
    return FAMILIES.index(backbone.family), backbone.table_order


def backbone_order(models: list[str]) -> list[str]:
    """Backbones in the paper's column order; others (e.g. pop) after them, as first seen."""
    seen = list(dict.fromkeys(models))
    columns = {m: _column(m) for m in seen}
    known = sorted((m for m in seen if columns[m] is not None), key=lambda m: columns[m])
    return known + [m for m in seen if m not in known]


#: item kind, encoder, dataset, profile, start, and the settings that tell its runs apart (see `row_settings`).
RowKey = tuple[str, str | None, str | None, str, str | None, str]


def item_row_key(record: dict[str, Any], settings: str = "") -> RowKey:
    """(items kind, encoder, dataset, profile, start, settings) of a result; the encoder only where
    items are images."""
    _, kind, encoder, dataset, profile, start = base_cell(record)
    return kind, encoder, dataset, profile, start, settings


def row_settings(results: list[dict[str, Any]]) -> list[str]:
    """Per run, the settings that put it on a row of its own in the paper's layout ('' for most):
    the keys that differ between runs of its cell, and the keys outside the model section that differ
    between runs of any cell of its row (so a 6-epoch MF and a 6-epoch SASRec share one row)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for record in results:
        groups.setdefault(base_cell(record), []).append(record)
    own = {cell: set(run_settings.differing(group, base_cell)) for cell, group in groups.items()}
    per_row: dict[RowKey, set[str]] = {}
    for cell, keys in own.items():
        row = item_row_key(groups[cell][0])
        per_row.setdefault(row, set()).update(k for k in keys if not k.startswith("model."))
    return [run_settings.label(record, sorted(own[base_cell(record)] | per_row[item_row_key(record)]))
            for record in results]


def item_row_label(key: RowKey, datasets: bool = False, profiles: bool = False, starts: bool = False) -> str:
    """Row label: ID, the encoder's name for pixels (PixelNet), 'features: <encoder>' for ViNet,
    'text: <model>', 'multimodal: <encoder> + <model>'; in brackets the dataset and profile when the
    table mixes several, where the weights started (`starts`) when rows differ in that or the weights
    are random, and the settings that tell the row's runs from another row's."""
    kind, encoder, dataset, profile, start, settings = key
    declared = ITEM_ENCODERS.find(kind)
    label = declared.label if declared is not None and declared.label else kind
    if encoder:  # ID rows never have one (see `encoder_label`)
        label = (declared.row_label if declared is not None else "{label}: {encoder}").format(label=label, encoder=encoder)
    extra = ([dataset or "?"] if datasets else []) + ([f"profile {profile}"] if profiles else [])
    extra += ([start] if starts and start else []) + ([settings] if settings else [])
    return f"{label} ({', '.join(extra)})" if extra else label


def _row_order(keys: list[RowKey]) -> list[RowKey]:
    seen = list(dict.fromkeys(keys))

    def rank(key: RowKey) -> tuple[float, int, int]:
        kind, encoder = key[0], key[1]
        declared = ITEM_ENCODERS.find(kind)
        kind_rank = declared.table_order if declared is not None else math.inf
        enc_rank = PAPER_ENCODERS.index(encoder) if encoder in PAPER_ENCODERS else len(PAPER_ENCODERS)
        return kind_rank, enc_rank, seen.index(key)

    return sorted(seen, key=rank)


def paper_table(results: list[dict[str, Any]], split: str = "test",
                metrics: tuple[str, ...] = TABLE_METRICS) -> str:
    """Markdown in the paper's layout: rows = item encoder x metric, columns = backbones, values in
    percent with three decimals, '-' where a combination has no result (missing, skipped, failed).
    Rows are told apart by dataset and profile where the results mix several, by where the weights
    started (random init, weights file, `from <run>`) where that differs or the weights are random,
    and by the settings that differ (`row_settings`). A cell with several
    runs shows each run's value, in the order given, separated by ' / ' (see `newest` for one). A row
    holding a run with caveats is marked (`MARK`; `caveats_note` says which)."""
    cells: dict[tuple[RowKey, str], list[dict[str, Any]]] = {}
    marked: set[RowKey] = set()  # rows holding a run with caveats
    random: set[RowKey] = set()  # rows holding a paper encoder with random weights: they say so
    for record, settings in zip(results, row_settings(results)):
        key = item_row_key(record, settings)
        cells.setdefault((key, record.get("model", "?")), []).append(record.get(split) or {})
        caveats = run_caveats(record)
        if caveats:
            marked.add(key)
        if any(c.get("kind") == RANDOM_WEIGHTS for c in caveats):
            random.add(key)
    datasets, profiles = mixed(results, "dataset"), mixed(results, "profile")
    models = backbone_order([model for _, model in cells])
    header = ["Item encoder", "Metric"] + [display_name(m) for m in models]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---", "---"] + ["---:"] * len(models)) + " |"]
    keys = _row_order([key for key, _ in cells])
    for key in keys:
        # rows that differ only in their start, or a random paper encoder
        starts = sum(other[:4] + other[5:] == key[:4] + key[5:] for other in keys) > 1 or key in random
        for number, metric in enumerate(metrics):
            label = item_row_label(key, datasets, profiles, starts) if number == 0 else ""
            label += f" {MARK}" if label and key in marked else ""
            values = [" / ".join(_percent(m, metric) for m in cells.get((key, model), [{}])) for model in models]
            lines.append("| " + " | ".join([label, metric] + values) + " |")
    return "\n".join(lines)
