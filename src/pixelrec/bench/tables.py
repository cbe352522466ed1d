"""Tables from run directories: each run's results.json becomes one row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pixelrec.errors import UserError


def load_results(runs: list[str | Path]) -> list[dict[str, Any]]:
    """results.json of each run directory (or results.json path), in the order given."""
    out = []
    for run in runs:
        path = Path(run)
        path = path / "results.json" if path.is_dir() else path
        if not path.is_file():
            raise UserError(f"{path}: no results.json (is the run finished?)")
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not valid JSON (line {err.lineno})") from None
        record["run"] = str(path.parent)
        out.append(record)
    return out


def _percent(metrics: dict[str, Any] | None, name: str) -> str:
    if not metrics or name not in metrics:
        return "-"
    return f"{100 * metrics[name]:.3f}"


def summary_table(results: list[dict[str, Any]], split: str = "test") -> str:
    """Markdown: one row per run with test metrics (percent, as the paper), cold-item metrics,
    trainable parameters and seconds per epoch."""
    header = ["model", "items", "encoder", "Recall@10 %", "NDCG@10 %", "cold Recall@10 %", "cold NDCG@10 %",
              "trainable params", "s/epoch"]
    rows = [header, ["---"] * len(header)]
    for r in results:
        cold = r.get(f"{split}_cold")
        rows.append([
            r.get("model", "?"), r.get("items", "?"), r.get("encoder") or "-",
            _percent(r.get(split), "Recall@10"), _percent(r.get(split), "NDCG@10"),
            _percent(cold, "Recall@10"), _percent(cold, "NDCG@10"),
            f"{r.get('trainable_parameters', 0):,}", f"{r.get('train_seconds_per_epoch', 0.0):.2f}",
        ])
    return "\n".join("| " + " | ".join(str(c) for c in row) + " |" for row in rows)


# The paper's table layout: backbones as columns (non-sequential, then sequential), item encoders as
# row groups (ID first, then the image encoders in the paper's order), two metrics per group.
NON_SEQUENTIAL = ("mf", "fm", "dssm", "lightgcn", "vbpr", "acf", "curatornet", "visrank")
SEQUENTIAL = ("gru4rec", "nextitnet", "srgnn", "sasrec", "bert4rec", "lightsans")
DISPLAY = {"mf": "MF", "fm": "FM", "dssm": "DSSM", "lightgcn": "LightGCN", "vbpr": "VBPR", "acf": "ACF",
           "curatornet": "CuratorNet", "visrank": "VisRank", "gru4rec": "GRU4Rec", "nextitnet": "NextItNet",
           "srgnn": "SRGNN", "sasrec": "SASRec", "bert4rec": "BERT4Rec", "lightsans": "LightSANs", "pop": "Pop"}
PAPER_ENCODERS = ("clip-vit-b32", "swin-t", "swin-b", "beit-b", "resnet50", "clip-rn50", "clip-rn50x4",
                  "clip-rn50x16", "clip-rn50x64")
KIND_ORDER = ("id", "pixels", "features", "id+features")
TABLE_METRICS = ("Recall@10", "NDCG@10")


def backbone_order(models: list[str]) -> list[str]:
    """Backbones in the paper's column order; others (e.g. pop) after them, as first seen."""
    known = [m for m in NON_SEQUENTIAL + SEQUENTIAL if m in models]
    return known + [m for m in dict.fromkeys(models) if m not in known]


def item_row_key(record: dict[str, Any]) -> tuple[str, str | None]:
    """(items kind, encoder) of a result; the encoder matters only where the items are images."""
    kind = record.get("items", "?")
    return kind, (record.get("encoder") if kind != "id" else None)


def item_row_label(key: tuple[str, str | None]) -> str:
    """Row label: ID, the encoder's name for pixels (PixelNet), 'features: <encoder>' for ViNet."""
    kind, encoder = key
    if kind == "id":
        return "ID"
    if kind == "pixels":
        return encoder or "pixels"
    return f"{kind}: {encoder}" if encoder else kind


def _row_order(keys: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    seen = list(dict.fromkeys(keys))

    def rank(key: tuple[str, str | None]) -> tuple[int, int, int]:
        kind, encoder = key
        kind_rank = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
        enc_rank = PAPER_ENCODERS.index(encoder) if encoder in PAPER_ENCODERS else len(PAPER_ENCODERS)
        return kind_rank, enc_rank, seen.index(key)

    return sorted(seen, key=rank)


def paper_table(results: list[dict[str, Any]], split: str = "test",
                metrics: tuple[str, ...] = TABLE_METRICS) -> str:
    """Markdown in the paper's layout: rows = item encoder x metric, columns = backbones, values in
    percent with three decimals, '-' where a combination has no result (missing, skipped, failed).
    When two results share a cell, the later one wins (pass results in the order to prefer)."""
    cells: dict[tuple[tuple[str, str | None], str], dict[str, Any]] = {}
    for record in results:
        cells[(item_row_key(record), record.get("model", "?"))] = record.get(split) or {}
    models = backbone_order([model for _, model in cells])
    header = ["Item encoder", "Metric"] + [DISPLAY.get(m, m) for m in models]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---", "---"] + ["---:"] * len(models)) + " |"]
    for key in _row_order([key for key, _ in cells]):
        for number, metric in enumerate(metrics):
            label = item_row_label(key) if number == 0 else ""
            values = [_percent(cells.get((key, m)), metric) for m in models]
            lines.append("| " + " | ".join([label, metric] + values) + " |")
    return "\n".join(lines)
