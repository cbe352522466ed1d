"""The paper's dataset statistics table (users, items, interactions, averages, sparsity) plus length percentiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pixelrec.data.prepared import PreparedData

PERCENTILES = (25, 50, 75, 90, 99)


def dataset_stats(data: PreparedData | str | Path) -> dict:
    """Counts, averages per user and item, sparsity in percent (1 - inter / (users x items)), length percentiles."""
    if not isinstance(data, PreparedData):
        data = PreparedData(data)
    lengths = np.asarray(data.lengths[1:], dtype=np.int64)
    n_users, n_items, n_inter = data.n_users, data.n_items, int(data.user_ptr[-1])
    cells = n_users * n_items
    quantiles = np.percentile(lengths, PERCENTILES) if n_users else np.zeros(len(PERCENTILES))
    return {
        "name": data.name,
        "users": n_users,
        "items": n_items,
        "interactions": n_inter,
        "avg_per_user": n_inter / n_users if n_users else 0.0,
        "avg_per_item": n_inter / n_items if n_items else 0.0,
        "sparsity_percent": 100.0 * (1.0 - n_inter / cells) if cells else 100.0,
        "sequence_length": {
            "min": int(lengths.min()) if n_users else 0,
            **{f"p{p}": float(q) for p, q in zip(PERCENTILES, quantiles)},
            "max": int(lengths.max()) if n_users else 0,
        },
        "cold_items": int(len(data.cold_items)),
    }


def format_stats(stats: dict) -> str:
    """The statistics as a small aligned text table, in the paper's column order."""
    rows = [
        ("Dataset", stats["name"]),
        ("#Users", f"{stats['users']:,}"),
        ("#Items", f"{stats['items']:,}"),
        ("#Interactions", f"{stats['interactions']:,}"),
        ("Avg. per user", f"{stats['avg_per_user']:.2f}"),
        ("Avg. per item", f"{stats['avg_per_item']:.2f}"),
        ("Sparsity", f"{stats['sparsity_percent']:.2f}%"),
    ]
    lengths = stats["sequence_length"]
    rows.append(("Sequence length", "  ".join(f"{k} {v:g}" for k, v in lengths.items())))
    if stats.get("cold_items"):
        rows.append(("Cold items", f"{stats['cold_items']:,}"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)
