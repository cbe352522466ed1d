"""Full-ranking evaluation: every item is a candidate; padding and the user's history are masked.

The catalogue's scoring vectors are computed once per evaluation; users are scored in blocks by
one matrix product each, the block size chosen so a block of scores stays within a memory budget.
A target's rank counts the unmasked items scoring at least as high (ties count against the model),
so a constant scorer gets nothing for free; with `ties="index"` an equal score ranks ahead only for an
item of lower index, the order a stable top-k gives (PixelRec's code takes torch.topk, whose order among
ties is unspecified). By default the target itself is not masked when the user
saw it before (re-consumption stays predictable); with `mask_target` it is, as in PixelRec's code, so a
re-consumed target always counts as a miss.

Under several ranks the catalogue's encoding and the users are shared out; the integer ranks are
gathered, so every rank computes the same metrics a single process would, bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from pixelrec import distributed, progress
from pixelrec.data.prepared import PreparedData
from pixelrec.data.views import evaluation_batch
from pixelrec.distributed import SINGLE, Job
from pixelrec.evaluation.metrics import metrics_from_ranks
from pixelrec.recommender import Recommender


def masked_scores(model: Recommender, lookup, scoring: Tensor, batch, rows: np.ndarray, items: np.ndarray,
                  mask_target: bool = False) -> Tensor:
    """[B, n_items + 1] scores of every item for each user of `batch`; padding and history -inf,
    except each row's target (when the batch has targets and not `mask_target`), which keeps its score."""
    device = scoring.device
    batch = batch.to(device)
    scores = model.backbone.score_catalogue(batch, lookup, scoring)
    targets = batch.targets[:, None]
    kept = scores.gather(1, targets)
    scores[:, 0] = float("-inf")
    scores[torch.from_numpy(rows).to(device), torch.from_numpy(items).to(device)] = float("-inf")
    has_target = (targets > 0) & (not mask_target)
    scores.scatter_(1, targets, torch.where(has_target, kept, scores.gather(1, targets)))
    return scores


def tie_rank(scores: Tensor, target_scores: Tensor, targets: Tensor, ties: str = "against") -> Tensor:
    """[B] 0-based ranks of the targets: items scoring above, plus the tied items (`against`) or the tied
    items of lower index (`index`)."""
    if ties == "against":
        return (scores >= target_scores).sum(1, dtype=torch.int32).long() - 1  # counting in int32 is cheaper than int64
    columns = torch.arange(scores.shape[1], device=scores.device)
    ahead = (scores > target_scores) | ((scores == target_scores) & (columns < targets[:, None]))
    return ahead.sum(1, dtype=torch.int32).long()


@torch.no_grad()
def rank_targets(
    model: Recommender,
    data: PreparedData,
    split: str,
    max_len: int,
    users: np.ndarray | None = None,
    batch_size: int = 1024,
    score_budget_mb: int = 512,
    catalogue_batch: int = 4096,
    workers: int = 0,
    job: Job = SINGLE,
    mask_target: bool = False,
    ties: str = "against",
) -> Tensor:
    """0-based rank of each user's `split` target among all items (history masked), on the CPU;
    under several ranks (`job`) each scores its share of the users and all get every rank."""
    was_training = model.training
    model.eval()
    lookup, scoring = model.catalogue_vectors(catalogue_batch, workers, job)
    n_columns = scoring.shape[0]
    block = max(1, min(batch_size, score_budget_mb * 2**20 // (4 * n_columns)))
    users = np.arange(1, data.n_users + 1) if users is None else np.asarray(users, dtype=np.int64)
    users = users[job.share(len(users))]
    ranks = []
    bar = progress.progress(f"score {split} users", len(users), "user")
    for begin in range(0, len(users), block):
        batch, rows, items = evaluation_batch(data, split, users[begin : begin + block], max_len)
        scores = masked_scores(model, lookup, scoring, batch, rows, items, mask_target)
        target_scores = scores.gather(1, batch.targets[:, None].to(scores.device))
        rank = tie_rank(scores, target_scores, batch.targets.to(scores.device), ties)
        rank[torch.isnan(target_scores[:, 0])] = n_columns - 1  # a broken model ranks last
        ranks.append(rank.cpu())
        bar.update(len(rank))
    bar.close()
    model.train(was_training)
    mine = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)
    return distributed.gather_rows(mine).cpu() if job.world > 1 else mine


def evaluate(
    model: Recommender,
    data: PreparedData,
    split: str,
    max_len: int,
    ks: list[int],
    batch_size: int = 1024,
    score_budget_mb: int = 512,
    workers: int = 0,
    job: Job = SINGLE,
    mask_target: bool = False,
    ties: str = "against",
) -> dict[str, dict[str, float]]:
    """{split: metrics} for all users, plus {split_cold: metrics} for users whose target is a cold item."""
    ranks = rank_targets(model, data, split, max_len, None, batch_size, score_budget_mb, workers=workers, job=job,
                         mask_target=mask_target, ties=ties)
    out = {split: metrics_from_ranks(ranks, ks)}
    if len(data.cold_items):
        targets = np.asarray(data.item_seq)[data.target_positions(split)]
        cold = torch.from_numpy(np.isin(targets, data.cold_items))
        out[f"{split}_cold"] = metrics_from_ranks(ranks[cold], ks)
        out[f"{split}_cold"]["users"] = int(cold.sum())
    return out
