"""Top-k metrics of a single held-out target from its 0-based rank among the ranked items.

With one target per user, Recall@K and HR@K coincide; both are reported under their usual names (the
names `config.METRICS` lists, which eval.valid_metric chooses from).
"""

from __future__ import annotations

import torch
from torch import Tensor


def metric_sums(ranks: Tensor, ks: list[int]) -> dict[str, float]:
    """Sum of each metric over users (reduce sums and counts, never averages of averages)."""
    ranks = ranks.double()
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"Recall@{k}"] = float(hit.sum())
        out[f"NDCG@{k}"] = float(torch.where(hit, 1.0 / torch.log2(ranks + 2.0), 0.0).sum())
        out[f"MRR@{k}"] = float(torch.where(hit, 1.0 / (ranks + 1.0), 0.0).sum())
        out[f"HR@{k}"] = float(hit.sum())
    return out


def metrics_from_ranks(ranks: Tensor, ks: list[int]) -> dict[str, float]:
    """Mean of each metric over users, as fractions (not percent); empty input gives zeros."""
    count = max(int(ranks.numel()), 1)
    return {name: value / count for name, value in metric_sums(ranks, ks).items()}
