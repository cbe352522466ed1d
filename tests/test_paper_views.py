"""PixelRec's own training examples (the `paper` profile's data options and BERT4Rec's original form),
checked against examples written out by hand from the original code's construction."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import write_prepared
from helpers import tiny_config
from pixelrec.config import Config, build_config
from pixelrec.data.batch import Batch
from pixelrec.data.prepared import PreparedData
from pixelrec.data.views import TrainingView, batch_rng
from pixelrec.distributed import Job
from pixelrec.items.base import ItemLookup
from pixelrec.models import BACKBONES
from pixelrec.training.trainer import Trainer

MAX_LEN = 10  # windows of 11, as the original's MAX_ITEM_LIST_LENGTH 10
# training histories of 11, 12, 13, 24, 1 and 2 items; each user's last two items (201..) are valid and test
TRAIN = [list(range(1, 12)), list(range(21, 33)), list(range(41, 54)), list(range(61, 85)), [91], [94, 95]]
# the original's `_build_seq` windows: the leading L mod 11 items of a history longer than 11 dropped
# (21; 41, 42; 61, 62), a shorter history is one window (even of one item)
WINDOWS = [list(range(1, 12)), list(range(22, 33)), list(range(43, 54)), list(range(63, 74)), list(range(74, 85)),
           [91], [94, 95]]
PAPER = {"window_remainder": "drop", "prefixes": "window", "pair_context": "window", "negatives_avoid": "window"}


@pytest.fixture
def histories(tmp_path):
    sequences = [items + [201 + 2 * u, 202 + 2 * u] for u, items in enumerate(TRAIN)]
    return write_prepared(tmp_path / "d", sequences, n_items=212)


def paper_config(path, model: str, model_args: dict | None = None, **sections: dict) -> Config:
    """tiny_config with the paper profile's data options and extra model keys."""
    raw = tiny_config(path, model, **sections).to_dict()
    raw["data"].update(PAPER)
    raw["model"].update(model_args or {})
    return build_config(raw, source="test")


def pad(items: list[int], width: int) -> list[int]:
    return [0] * (width - len(items)) + items


def every_example(view: TrainingView, seed: int = 0) -> Batch:
    return view.batch(np.arange(len(view)), batch_rng(seed, 0, 0))


def rows(*tensors: torch.Tensor) -> list[tuple]:
    return sorted(zip(*(t.tolist() for t in tensors)))


def test_sequence_windows_drop_the_leading_remainder(histories):
    view = TrainingView(PreparedData(histories), "sequence", MAX_LEN, window_remainder="drop")
    batch = every_example(view)
    windows = [pad(w, MAX_LEN + 1) for w in WINDOWS]
    assert rows(batch.context, batch.targets) == sorted(
        (w[:-1], [t if c else 0 for c, t in zip(w[:-1], w[1:])]) for w in windows)
    # the one-item window [91] is there (the original's batches count it) but has no target
    assert batch.context[batch.targets.sum(1) == 0].tolist() == [[0] * MAX_LEN]
    assert len(view) == 7


def test_sequence_windows_keep_the_remainder_by_default(histories):
    batch = every_example(TrainingView(PreparedData(histories), "sequence", MAX_LEN))
    kept = WINDOWS[:-2] + [[41, 42], [61, 62], [94, 95]]  # a one-item remainder (21; [91]) has no target
    assert sorted(batch.context.tolist()) == sorted(pad(w, MAX_LEN + 1)[:-1] for w in kept)


def test_prefixes_inside_windows(histories):
    view = TrainingView(PreparedData(histories), "prefixes", MAX_LEN, prefixes="window")
    batch = every_example(view)
    # each window's items after its first, each after the window's items before it
    expected = [(pad(list(range(1, t)), 10), t) for t in range(2, 12)]
    expected += [(pad(list(range(22, t)), 10), t) for t in range(23, 33)]
    expected += [(pad(list(range(43, t)), 10), t) for t in range(44, 54)]
    expected += [(pad(list(range(63, t)), 10), t) for t in range(64, 74)]
    expected += [(pad(list(range(74, t)), 10), t) for t in range(75, 85)]
    expected += [(pad([94], 10), 95)]
    assert rows(batch.context, batch.targets) == sorted(expected)
    assert not {1, 22, 43, 63, 74, 94, 91, 21, 41, 42, 61, 62} & set(batch.targets.tolist())


def test_prefixes_default_uses_the_whole_history(histories):
    batch = every_example(TrainingView(PreparedData(histories), "prefixes", MAX_LEN))
    assert sorted(batch.targets.tolist()) == sorted(i for h in TRAIN for i in h[1:])
    assert batch.context[batch.targets == 74].tolist() == [list(range(64, 74))]  # across the window border


def test_pair_context_is_the_rest_of_the_window(histories):
    view = TrainingView(PreparedData(histories), "pair", MAX_LEN, pair_context="window")
    assert len(view) == 7  # a batch counts windows
    batch = every_example(view)
    assert len(batch) == 58  # 11 + 11 + 11 + 11 + 11 + 1 + 2 rows
    expected = [(pad([i for i in w if i != t], 10), t) for w in WINDOWS for t in w]
    assert rows(batch.context, batch.targets) == sorted(expected)
    by_target = dict(zip(batch.targets.tolist(), batch.context.tolist()))
    assert by_target[68] == pad([63, 64, 65, 66, 67, 69, 70, 71, 72, 73], 10)  # earlier and later items
    assert by_target[91] == [0] * 10  # a one-item window: predicted from nothing, as the original
    assert by_target[94] == pad([95], 10) and by_target[95] == pad([94], 10)
    assert batch.users[batch.targets == 80].tolist() == [4]
    # windows 5 and 3 (built user by user, the most recent window first: [91] and [74..84]) expand to their rows
    some = view.batch(np.array([5, 3]), batch_rng(0, 0, 0))
    assert len(some) == 12 and set(some.targets.tolist()) == set(range(74, 85)) | {91}


def test_pair_rows_batches_count_rows(histories):
    view = TrainingView(PreparedData(histories), "pair", MAX_LEN, pair_context="window", window_batches=False)
    assert len(view) == 58
    whole = every_example(TrainingView(PreparedData(histories), "pair", MAX_LEN, pair_context="window"))
    batch = every_example(view)
    assert rows(batch.users, batch.context, batch.targets) == rows(whole.users, whole.context, whole.targets)
    assert len(view.batch(np.array([0, 57]), batch_rng(0, 0, 0))) == 2


@pytest.mark.parametrize("model,count", [("fm", 7), ("dssm", 7), ("acf", 58), ("mf", 63)])
def test_trainer_gives_pair_context_to_set_context_backbones(histories, tmp_path, model, count):
    config = paper_config(histories, model)
    assert len(Trainer(config, tmp_path / "run").view) == count  # mf: every training interaction


def test_masked_windows_of_max_len_plus_one_and_positions_that_can_be_masked(histories):
    data = PreparedData(histories)
    view = TrainingView(data, "masked", MAX_LEN, mask_ratio=1.0, window_remainder="drop", force_mask=False,
                        masked_width=MAX_LEN + 1)
    batch = every_example(view)
    assert sorted(batch.context.tolist()) == sorted(pad(w, 11) for w in WINDOWS)
    assert torch.equal(batch.mask, batch.context > 0)  # every real position can be hidden, padding never
    draws = TrainingView(data, "masked", MAX_LEN, mask_ratio=0.6, window_remainder="drop", force_mask=False,
                         masked_width=MAX_LEN + 1)
    masks = [every_example(draws, seed) for seed in range(60)]
    hidden = torch.stack([b.mask for b in masks])
    real = torch.stack([b.context > 0 for b in masks])
    assert not (hidden & ~real).any()
    assert abs(hidden.sum() / real.sum() - 0.6) < 0.03  # each item hidden with probability 0.6
    # no forcing: a window may have no hidden item, and then no target (the one-item window of 91 often)
    empty = ~hidden.any(-1)
    assert empty.any() and all((b.targets[~b.mask.any(-1)] == 0).all() for b in masks)


def test_masked_view_default_forces_a_target(histories):
    view = TrainingView(PreparedData(histories), "masked", MAX_LEN, mask_ratio=0.01)
    for seed in range(5):
        assert every_example(view, seed).mask.any(-1).all()


# --- negatives -------------------------------------------------------------------------------
@pytest.fixture
def one_user(tmp_path):
    # training 1..12: the window is 2..12 (item 1 dropped); valid 13, test 14; items 15..30 unseen
    return PreparedData(write_prepared(tmp_path / "one", [list(range(1, 15))], n_items=30))


def negatives_and_rows(view: TrainingView, seeds: int = 30):
    for seed in range(seeds):
        batch = every_example(view, seed)
        yield batch, batch.negatives[batch.targets > 0]


@pytest.mark.parametrize("view_name,options", [
    ("sequence", {"window_remainder": "drop"}),
    ("masked", {"window_remainder": "drop", "masked_width": MAX_LEN + 1, "mask_ratio": 0.6, "force_mask": False}),
    ("pair", {"pair_context": "window"}),
])
def test_window_negatives_avoid_only_the_window(one_user, view_name, options):
    view = TrainingView(one_user, view_name, MAX_LEN, negatives=1, negatives_avoid="window", **options)
    drawn = torch.cat([negatives for _, negatives in negatives_and_rows(view)])
    assert not set(drawn.tolist()) & set(range(2, 13))
    assert 1 in drawn.tolist()  # a training item outside the window is a possible negative


def test_prefix_negatives_avoid_only_the_prefix(one_user):
    view = TrainingView(one_user, "prefixes", MAX_LEN, negatives=1, prefixes="window", negatives_avoid="window")
    later = 0
    for batch, _ in negatives_and_rows(view):
        for context, target, negative in zip(batch.context.tolist(), batch.targets.tolist(), batch.negatives.tolist()):
            assert negative not in context + [target]
            later += negative > target and negative <= 12  # later in the window: allowed, as the original's
    assert later > 0


@pytest.mark.parametrize("view_name,options", [("pair", {}), ("pair", {"pair_context": "window"}),
                                               ("sequence", {"window_remainder": "drop"})])
def test_history_negatives_avoid_every_training_item(one_user, view_name, options):
    view = TrainingView(one_user, view_name, MAX_LEN, negatives=1, negatives_avoid="history", **options)
    drawn = torch.cat([negatives for _, negatives in negatives_and_rows(view)])
    assert not set(drawn.tolist()) & set(range(1, 13))


def test_pair_negatives_without_windows_keep_the_history(one_user):
    # MF's pairs (and any pair example without a window) avoid the history even under negatives_avoid=window
    view = TrainingView(one_user, "pair", MAX_LEN, negatives=1, negatives_avoid="window")
    drawn = torch.cat([negatives for _, negatives in negatives_and_rows(view)])
    assert not set(drawn.tolist()) & set(range(1, 13))


# --- several ranks ---------------------------------------------------------------------------
def test_rank_shares_of_window_batches_are_rows(histories):
    view = TrainingView(PreparedData(histories), "pair", MAX_LEN, negatives=1, pair_context="window",
                        negatives_avoid="window")
    windows = np.arange(7)
    whole = view.batch(windows, batch_rng(0, 0, 1))
    shares = [view.batch(windows, batch_rng(0, 0, 1), Job(r, 3)) for r in range(3)]
    assert [len(s) for s in shares] == [19, 19, 20]
    for name in ("users", "context", "targets", "negatives"):
        assert torch.equal(torch.cat([getattr(s, name) for s in shares]), getattr(whole, name)), name
    assert sum(s.loss_scale for s in shares) == pytest.approx(3.0)


def test_a_share_without_targets_has_loss_scale_zero(histories):
    view = TrainingView(PreparedData(histories), "sequence", MAX_LEN, window_remainder="drop")
    one_item = int(np.flatnonzero(view.example_users == 5)[0])  # the window [91]
    assert view.batch(np.array([one_item]), batch_rng(0, 0, 0)).loss_scale == 0.0


# --- BERT4Rec in its original form -----------------------------------------------------------
ORIGINAL = {"head": False, "extra_slot": True, "force_mask": False, "inner_factor": 1, "mask_ratio": 0.6}


def test_bert4rec_original_form_recommends_from_max_len_items_and_the_mask():
    torch.manual_seed(0)
    model = BACKBONES.create("bert4rec", max_len=4, embedding_size=8, dropout=0.0, **ORIGINAL).eval()
    assert model.body.position.num_embeddings == 5 and isinstance(model.head, torch.nn.Identity)
    assert model.body.blocks[0].ffn[0].out_features == 8  # inner_factor 1
    table = torch.randn(13, 8)
    table[0] = 0
    items = ItemLookup.catalogue(table)
    context = torch.tensor([[3, 4, 5, 6], [0, 0, 7, 8]])
    with torch.no_grad():
        users = model.user_vectors(Batch(users=torch.arange(2), context=context, targets=torch.zeros(2)), items)
        appended = torch.cat([context, torch.tensor([[1], [1]])], 1)  # any item behind the mask
        mask = torch.zeros_like(appended, dtype=torch.bool)
        mask[:, -1] = True
        cloze = Batch(users=torch.arange(2), context=appended, targets=appended * mask, mask=mask)
        torch.testing.assert_close(users, model(cloze, items)[:, -1])
        other = context.clone()
        other[0, 0] = 9  # the oldest of the max_len items counts (the default drops its slot)
        changed = model.user_vectors(Batch(users=torch.arange(2), context=other, targets=torch.zeros(2)), items)
    assert not torch.allclose(users[0], changed[0])


def test_bert4rec_original_form_trains_and_evaluates(tiny_data, tmp_path):
    config = paper_config(tiny_data, "bert4rec", ORIGINAL, train={"epochs": 12, "eval_every": 12, "batch_size": 16})
    result = Trainer(config, tmp_path / "run").fit()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(losses)) and np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
    assert np.isfinite(result["test"]["NDCG@10"]) and result["test"]["Recall@10"] >= 0


def test_batches_without_targets_train_without_error(histories, tmp_path):
    # one window per step and little masking: most steps hide nothing, so have no loss and no gradient
    config = paper_config(histories, "bert4rec", {**ORIGINAL, "mask_ratio": 0.05}, train={"epochs": 1, "batch_size": 1})
    trainer = Trainer(config, tmp_path / "run")
    assert sum(batch.loss_scale == 0 for batch in trainer.batches(0)) >= 2  # the draws fit() will see
    result = trainer.fit()
    assert result["steps"] == 7 and np.isfinite(result["valid"]["NDCG@10"])
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
