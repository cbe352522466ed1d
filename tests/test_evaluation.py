"""Metrics and full-ranking evaluation against hand-computed ranks."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import write_prepared
from helpers import tiny_config
from pixelrec.evaluation.evaluator import evaluate, rank_targets
from pixelrec.evaluation.metrics import metrics_from_ranks
from pixelrec.training.trainer import Trainer


def test_metrics_from_hand_computed_ranks():
    m = metrics_from_ranks(torch.tensor([0, 1, 4, 10]), [1, 5, 10])
    assert m["Recall@1"] == pytest.approx(0.25)
    assert m["Recall@5"] == pytest.approx(0.75)
    assert m["Recall@10"] == pytest.approx(0.75)  # rank 10 is the 11th item
    assert m["HR@5"] == m["Recall@5"]
    assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 4)
    assert m["MRR@5"] == pytest.approx((1 + 1 / 2 + 1 / 5) / 4)


def test_metrics_of_no_users_are_zero():
    assert metrics_from_ranks(torch.zeros(0, dtype=torch.long), [10])["NDCG@10"] == 0.0


@pytest.fixture
def pop_model(tmp_path):
    # train parts: u1 [1, 2], u2 [1], u3 [2, 1], u4 [1]: popularity item1 = 4, item2 = 2, others 0
    sequences = [[1, 2, 3, 4], [1, 5, 6], [2, 1, 5, 3], [1, 2, 1]]
    data = write_prepared(tmp_path / "data", sequences, n_items=6)
    return Trainer(tiny_config(data, "pop"), tmp_path / "run")


def test_ranks_mask_history_and_count_ties_against_the_model(pop_model):
    valid = rank_targets(pop_model.model, pop_model.data, "valid", 10).tolist()
    # u1: target 3 (score 0) vs unmasked 3,4,5,6 -> ties 4,5,6 -> rank 3
    # u2: target 5 vs unmasked 2 (higher), 3, 4, 6 (ties) -> rank 4
    # u3: target 5 vs unmasked 3, 4, 6 -> rank 3;  u4: target 2 vs unmasked 3..6 -> rank 0 (2 beats them)
    assert valid == [3, 4, 3, 0]
    test = rank_targets(pop_model.model, pop_model.data, "test", 10).tolist()
    # u1: history 1,2,3 masked, target 4 vs 5, 6 -> 2;  u2: history 1, 5, target 6 vs 2 (higher), 3, 4 -> 3
    # u3: history 2, 1, 5, target 3 vs 4, 6 -> 2;  u4: target 1 was seen before but is not masked -> rank 0
    assert test == [2, 3, 2, 0]


def test_k_larger_than_catalogue_counts_every_user(pop_model):
    metrics = evaluate(pop_model.model, pop_model.data, "valid", 10, [50])
    assert metrics["valid"]["Recall@50"] == 1.0
    assert metrics["valid"]["NDCG@50"] == pytest.approx(
        (2 / math.log2(5) + 1 / math.log2(6) + 1) / 4
    )


def test_user_blocks_do_not_change_ranks(pop_model):
    whole = rank_targets(pop_model.model, pop_model.data, "test", 10, batch_size=1024)
    blocked = rank_targets(pop_model.model, pop_model.data, "test", 10, batch_size=1)
    assert torch.equal(whole, blocked)


def test_cold_item_metrics_are_reported_separately(tmp_path):
    sequences = [[1, 2, 3, 6], [1, 5, 6], [2, 1, 5, 3], [1, 2, 1, 6]]
    data = write_prepared(tmp_path / "data", sequences, n_items=6, cold_items=[6])
    trainer = Trainer(tiny_config(data, "pop"), tmp_path / "run")
    out = evaluate(trainer.model, trainer.data, "test", 10, [10])
    assert out["test_cold"]["users"] == 3
    assert set(out) == {"test", "test_cold"}


def reference_metrics(rankings: list[list[int]], targets: list[int], ks: list[int]) -> dict[str, float]:
    """Recall, NDCG, MRR and HR at each K, written out from their definitions over ranked lists (one
    relevant item per user, positions counted from 1), independently of pixelrec's rank arithmetic:
    Recall@K = |top K ∩ relevant| / |relevant|; HR@K = 1 if top K holds a relevant item;
    NDCG@K = DCG@K / IDCG@K with DCG = sum over relevant items in the top K of 1 / log2(position + 1);
    MRR@K = 1 / position of the first relevant item in the top K (0 if none)."""
    out: dict[str, float] = {}
    for k in ks:
        recall = ndcg = mrr = hr = 0.0
        for ranking, target in zip(rankings, targets):
            relevant = {target}
            top = ranking[:k]
            found = [position for position, item in enumerate(top, start=1) if item in relevant]
            recall += len(relevant & set(top)) / len(relevant)
            hr += 1.0 if found else 0.0
            dcg = sum(1.0 / math.log2(position + 1) for position in found)
            idcg = sum(1.0 / math.log2(position + 1) for position in range(1, min(len(relevant), k) + 1))
            ndcg += dcg / idcg
            mrr += 1.0 / found[0] if found else 0.0
        for name, total in (("Recall", recall), ("NDCG", ndcg), ("MRR", mrr), ("HR", hr)):
            out[f"{name}@{k}"] = total / len(rankings)
    return out


def test_metrics_on_random_rankings_match_an_independent_implementation():
    generator = torch.Generator().manual_seed(0)
    n_items, ks = 300, [1, 5, 10, 20, 50, 300]
    rankings, targets = [], []
    for _ in range(2000):
        seen = set(torch.randint(1, n_items + 1, (8,), generator=generator).tolist())  # the user's history
        ranking = [i + 1 for i in torch.randperm(n_items, generator=generator).tolist() if i + 1 not in seen]
        candidates = [item for item in range(1, n_items + 1) if item not in seen]
        targets.append(candidates[int(torch.randint(len(candidates), (1,), generator=generator))])
        rankings.append(ranking)
    ranks = torch.tensor([ranking.index(target) for ranking, target in zip(rankings, targets)])
    ours, reference = metrics_from_ranks(ranks, ks), reference_metrics(rankings, targets, ks)
    assert ours.keys() == reference.keys()
    for name, value in reference.items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name
    assert 0 < ours["Recall@10"] < ours["Recall@50"] < 1 and ours["Recall@300"] == 1.0  # a random, not a trivial case
