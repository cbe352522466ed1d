"""The matrix's summary files: OUT/results.csv (one row per cell) and OUT/results.md (paper layout)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from pixelrec.bench.tables import MARK, caveats_note, paper_table, run_caveats
from pixelrec.storage.atomic import atomic_write

FAMILIES = ("Recall", "NDCG", "MRR", "HR")


def metric_order(name: str) -> tuple[int, int, str]:
    """Recall@5, Recall@10, ..., NDCG@5, ...: by family as the paper reports them, then by k."""
    family, _, k = name.partition("@")
    return (FAMILIES.index(family) if family in FAMILIES else len(FAMILIES), int(k) if k.isdigit() else 0, name)


def csv_text(rows: list[dict[str, Any]]) -> str:
    """CSV of the cells: identity, status, valid_/test_ metrics (fractions, as results.json), seconds,
    trainable parameters, run directory, the skip or failure reason and the kinds of the run's caveats."""
    names: dict[str, set[str]] = {"valid": set(), "test": set()}
    for row in rows:
        for split in names:
            names[split] |= {k for k, v in ((row["results"] or {}).get(split) or {}).items() if isinstance(v, float)}
    metric_columns = [f"{split}_{m}" for split in ("valid", "test") for m in sorted(names[split], key=metric_order)]
    header = ["model", "items", "encoder", "variant", "status", *metric_columns,
              "seconds", "trainable_parameters", "run", "reason", "caveats"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        results = row["results"] or {}
        line = {k: "" if row.get(k) is None else row[k] for k in ("model", "items", "encoder", "variant", "status", "run", "reason")}
        for column in metric_columns:
            split, metric = column.split("_", 1)
            value = (results.get(split) or {}).get(metric)
            line[column] = f"{value:.6g}" if value is not None else ""
        line["seconds"] = f"{row['seconds']:.1f}" if row["seconds"] is not None else ""
        line["trainable_parameters"] = results.get("trainable_parameters", "")
        line["caveats"] = ";".join(str(c.get("kind")) for c in run_caveats(results))
        writer.writerow(line)
    return buffer.getvalue()


def markdown_text(rows: list[dict[str, Any]], split: str = "test") -> str:
    """The paper's table of the finished cells (and the caveats of those marked), then every cell's
    status (skip and failure reasons)."""
    finished = [row["results"] for row in rows if row["results"]]
    note = caveats_note(finished)
    lines = [f"# Benchmark ({split} split, metrics in %)", "", paper_table(finished, split), "",
             *([note, ""] if note else []), "## Cells", "",
             "| cell | status | seconds | trainable params | note |", "| --- | --- | ---: | ---: | --- |"]
    for row in rows:
        name = "-".join(x for x in (row["model"], row["items"], row["encoder"], row.get("variant")) if x)
        name += f" {MARK}" if row["results"] and run_caveats(row["results"]) else ""  # its caveats are in the note
        seconds = f"{row['seconds']:.1f}" if row["seconds"] is not None else "-"
        params = f"{row['results']['trainable_parameters']:,}" if row["results"] else "-"
        note = row["reason"].replace("|", "\\|")
        lines.append(f"| {name} | {row['status']} | {seconds} | {params} | {note} |")
    return "\n".join(lines) + "\n"


def write_summary(out: Path, rows: list[dict[str, Any]]) -> None:
    """Write OUT/results.csv and OUT/results.md atomically."""
    atomic_write(out / "results.csv", csv_text(rows).encode())
    atomic_write(out / "results.md", markdown_text(rows).encode())
