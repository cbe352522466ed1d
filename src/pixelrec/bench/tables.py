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
    header = ["model", "items", "encoder", f"Recall@10 %", f"NDCG@10 %", "cold Recall@10 %", "cold NDCG@10 %",
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
