"""Training views: hand-made windows and prefixes, no leakage of valid/test items, negatives."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import patterned_sequences, write_prepared
from pixelrec.data.prepared import PreparedData
from pixelrec.data.views import TrainingView, batch_rng, evaluation_batch
from pixelrec.errors import UserError


@pytest.fixture
def hand_data(tmp_path):
    # user 1: 9 items -> train 1..7, valid 8, test 9; user 2: 3 items -> train [10]
    return PreparedData(write_prepared(tmp_path / "d", [list(range(1, 10)), [10, 11, 12]], n_items=12))


def all_batches(view: TrainingView, seed: int = 0):
    return view.batch(np.arange(len(view)), batch_rng(seed, 0, 0))


def test_split_positions(hand_data):
    assert hand_data.train_end.tolist() == [0, 7, 10]
    assert hand_data.item_seq[hand_data.target_positions("valid")].tolist() == [8, 11]
    assert hand_data.item_seq[hand_data.target_positions("test")].tolist() == [9, 12]


def test_windows_are_aligned_to_the_end_and_shifted(hand_data):
    view = TrainingView(hand_data, "sequence", max_len=3, sequences="windows")
    batch = all_batches(view)
    # user 1 train [1..7], windows of 4 from the end: [4,5,6,7] and [1,2,3]; user 2 has one item: none
    assert batch.context.tolist() == [[4, 5, 6], [0, 1, 2]]
    assert batch.targets.tolist() == [[5, 6, 7], [0, 2, 3]]


def test_overlapping_windows_predict_each_target_once_with_more_context(hand_data):
    view = TrainingView(hand_data, "sequence", max_len=3, sequences="windows", window_stride=2)
    batch = all_batches(view)
    # user 1 train [1..7]: windows of 4 ending every 2 items; a window keeps its last 2 targets, the earliest all
    assert batch.context.tolist() == [[4, 5, 6], [2, 3, 4], [0, 1, 2]]
    assert batch.targets.tolist() == [[0, 6, 7], [0, 4, 5], [0, 2, 3]]


def test_window_stride_extremes(hand_data):
    def rows(**options):
        batch = all_batches(TrainingView(hand_data, "sequence", max_len=3, **options))
        return batch.context.tolist(), batch.targets.tolist()

    assert rows(sequences="windows", window_stride=4) == rows(sequences="windows")  # max_len + 1: the default
    assert rows(sequences="windows", window_stride=3) == ([[4, 5, 6], [1, 2, 3]], [[5, 6, 7], [2, 3, 4]])
    context, targets = rows(sequences="windows", window_stride=1)
    sliding_context, sliding_targets = rows(sequences="sliding")
    assert sorted(zip(map(tuple, context), map(tuple, targets))) == sorted(
        zip(map(tuple, sliding_context), map(tuple, sliding_targets)))


@pytest.mark.parametrize("stride", [1, 2, 3, 5])
def test_overlapping_windows_cover_every_target_once(tmp_path, stride):
    data = PreparedData(write_prepared(tmp_path / "d", patterned_sequences(40, 30, 17, seed=3)))
    batch = all_batches(TrainingView(data, "sequence", max_len=5, sequences="windows", window_stride=stride))
    users = np.repeat(batch.users.numpy(), 5)
    targets = batch.targets.numpy().reshape(-1)
    got = sorted(zip(users[targets > 0].tolist(), targets[targets > 0].tolist()))
    want = sorted((u, int(data.item_seq[i])) for u in range(1, data.n_users + 1)
                  for i in range(data.train_start[u] + 1, data.train_end[u]))
    assert got == want


@pytest.mark.parametrize("options, message", [
    ({"window_stride": 5}, r"between 1 and data.max_len \+ 1 = 4"),
    ({"window_stride": 2, "window_remainder": "drop"}, "data.window_remainder=keep"),
])
def test_window_stride_errors_name_the_key(hand_data, options, message):
    with pytest.raises(UserError, match=message):
        TrainingView(hand_data, "sequence", max_len=3, sequences="windows", **options)


def test_sliding_sequence_has_one_target_per_example(hand_data):
    view = TrainingView(hand_data, "sequence", max_len=3, sequences="sliding")
    batch = all_batches(view)
    assert len(view) == 6  # targets 2..7 of user 1
    assert batch.targets[:, :-1].eq(0).all()
    assert sorted(batch.targets[:, -1].tolist()) == [2, 3, 4, 5, 6, 7]
    assert batch.context[-1].tolist() == [4, 5, 6] and batch.targets[-1, -1] == 7


def test_pair_and_prefix_views(hand_data):
    pair = all_batches(TrainingView(hand_data, "pair", max_len=2))
    assert pair.targets.tolist() == [1, 2, 3, 4, 5, 6, 7, 10]
    assert pair.context[0].tolist() == [0, 0] and pair.context[3].tolist() == [2, 3]
    prefixes = all_batches(TrainingView(hand_data, "prefixes", max_len=2))
    assert prefixes.targets.tolist() == [2, 3, 4, 5, 6, 7]


def test_masked_view_hides_real_items_only(hand_data):
    view = TrainingView(hand_data, "masked", max_len=4, mask_ratio=0.5)
    batch = all_batches(view)
    assert batch.mask.any(dim=1).all()
    assert (batch.context[batch.mask] > 0).all()
    assert (batch.targets[batch.mask] == batch.context[batch.mask]).all()
    assert (batch.targets[~batch.mask] == 0).all()


@pytest.mark.parametrize("view_name", ["pair", "prefixes", "sequence", "masked"])
@pytest.mark.parametrize("sequences", ["windows", "sliding"])
def test_valid_and_test_items_never_reach_training(tmp_path, view_name, sequences):
    base = patterned_sequences(50, 30, 9, seed=3)
    # each user's last two items are unique to that user, so any leak is visible by item index
    sequences_ = [s[:-2] + [31 + 2 * u, 32 + 2 * u] for u, s in enumerate(base)]
    data = PreparedData(write_prepared(tmp_path / "d", sequences_, n_items=31 + 2 * 50))
    view = TrainingView(data, view_name, max_len=5, sequences=sequences, negatives=1)
    batch = all_batches(view)
    seen = set(batch.context.flatten().tolist()) | set(batch.targets.flatten().tolist())
    assert not seen & set(range(31, 31 + 2 * 50 + 1))


def test_negatives_avoid_the_users_own_items(tmp_path):
    # 3 items only: a user who saw items 1 and 2 in training can only get negative 3
    data = PreparedData(write_prepared(tmp_path / "d", [[1, 2, 1, 2, 3, 3]] * 5, n_items=3))
    view = TrainingView(data, "pair", max_len=3, negatives=1)
    for seed in range(5):
        batch = view.batch(np.arange(len(view)), batch_rng(seed, 0, 0))
        assert batch.negatives.eq(3).all()


def test_in_batch_mask_hides_other_positives_not_the_target(hand_data):
    view = TrainingView(hand_data, "pair", max_len=2, in_batch=True)
    batch = all_batches(view)
    assert batch.candidates.tolist() == [1, 2, 3, 4, 5, 6, 7, 10]
    # row 0 is user 1 -> target 1: items 2..7 are user 1's other positives, 10 belongs to user 2
    assert batch.candidate_mask[0].tolist() == [False, True, True, True, True, True, True, False]
    assert batch.candidate_mask[-1].tolist() == [False] * 8


def test_evaluation_batch_history(hand_data):
    batch, rows, items = evaluation_batch(hand_data, "test", np.array([1, 2]), max_len=3)
    assert batch.context.tolist() == [[6, 7, 8], [0, 10, 11]]
    assert batch.targets.tolist() == [9, 12]
    assert sorted(zip(rows.tolist(), items.tolist())) == [(0, i) for i in range(1, 9)] + [(1, 10), (1, 11)]
