"""prepare: remapping, sorting, de-duplication, filters, the leave-one-out split, cold items, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_fixtures import HAND_SEQUENCES, data_synth_raw, hand_raw, tree_digest, write_interactions  # noqa: F401
from pixelrec.data.prepare import duplicate_mask, prepare, sort_by_user_time, stable_order
from pixelrec.data.prepared import PreparedData
from pixelrec.data.stats import dataset_stats
from pixelrec.errors import UserError


def sequences(data: PreparedData) -> list[list[int]]:
    seq = np.asarray(data.item_seq)
    return [seq[data.user_ptr[u]:data.user_ptr[u + 1]].tolist() for u in range(1, data.n_users + 1)]


def test_hand_made_example_split(tmp_path):
    meta = prepare(hand_raw(tmp_path / "raw"), tmp_path / "out", image_size=16, workers=1, progress=False)
    data = PreparedData(tmp_path / "out")
    assert sequences(data) == HAND_SEQUENCES
    assert data.user_ptr.tolist() == [0, 0, 3, 7] and data.user_ptr.dtype == np.int64
    assert data.item_seq.dtype == np.int32 and data.timestamps.dtype == np.int64
    assert data.timestamps.tolist() == [5, 10, 20, 5, 7, 7, 9]
    assert data.user_tokens.tolist() == ["", "u1", "u2"] and data.item_tokens.tolist() == ["", "i1", "i2", "i3", "i4"]
    assert meta["dropped"] == {"duplicate_interactions": 1, "short_users": 1, "short_user_interactions": 2,
                               "short_user_items": 0}
    # leave-one-out: u1 trains on [3], valid 1, test 2; u2 trains on [2, 1], valid 4, test 3
    seq = np.asarray(data.item_seq)
    assert seq[data.target_positions("valid")].tolist() == [1, 4]
    assert seq[data.target_positions("test")].tolist() == [2, 3]
    assert [seq[s:e].tolist() for s, e in zip(data.train_start[1:], data.train_end[1:])] == [[3], [2, 1]]
    assert data.train_popularity.tolist() == [0, 1, 1, 1, 0]  # training parts [3] and [2, 1]
    table = data.item_table()
    assert table.column("title").to_pylist()[0] == "title 0, with comma"
    assert meta["image_store"]["size"] == 16 and meta["image_store"]["placeholders"] == []


def test_stats_hand_computed(tmp_path):
    prepare(hand_raw(tmp_path / "raw"), tmp_path / "out", images=False, progress=False)
    stats = dataset_stats(tmp_path / "out")
    assert (stats["users"], stats["items"], stats["interactions"]) == (2, 4, 7)
    assert stats["avg_per_user"] == 3.5 and stats["avg_per_item"] == 1.75
    assert stats["sparsity_percent"] == pytest.approx(12.5)  # 1 - 7 / (2 * 4)
    assert stats["sequence_length"] == {"min": 3, "p25": 3.25, "p50": 3.5, "p75": 3.75, "p90": 3.9,
                                        "p99": pytest.approx(3.99), "max": 4}


def test_sorting_is_stable_and_duplicates_keep_the_first():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 5, 400).astype(np.int32)
    ts = rng.integers(0, 6, 400).astype(np.int64)
    items = rng.integers(0, 4, 400).astype(np.int32)
    order = sort_by_user_time(users, ts)
    assert order.tolist() == np.lexsort((np.arange(400), ts, users)).tolist()
    assert stable_order(np.array([3, 1, 3, 0, 1])).tolist() == [3, 1, 4, 0, 2]
    dup = duplicate_mask(users[order], items[order], ts[order])
    keys = users[order].astype(np.int64) * 100 + ts[order] * 10 + items[order]
    first = np.zeros(400, dtype=bool)
    first[np.unique(keys, return_index=True)[1]] = True
    assert dup.tolist() == (~first).tolist()


def test_sample_users_and_kcore(tmp_path, data_synth_raw):
    meta = prepare(data_synth_raw, tmp_path / "s", sample_users=20, seed=4, images=False, progress=False)
    assert meta["n_users"] == 20 and meta["dropped"]["unsampled_users"] == 40
    again = prepare(data_synth_raw, tmp_path / "s2", sample_users=20, seed=4, images=False, progress=False)
    assert tree_digest(tmp_path / "s") == tree_digest(tmp_path / "s2")
    meta = prepare(data_synth_raw, tmp_path / "k", kcore=6, images=False, progress=False)
    data = PreparedData(tmp_path / "k")
    assert data.lengths[1:].min() >= 6
    assert np.bincount(data.item_seq, minlength=data.n_items + 1)[1:].min() >= 6
    assert meta["dropped"]["kcore_users"] + meta["dropped"]["kcore_items"] > 0
    assert again["n_users"] == 20


def test_cold_items_never_in_training(tmp_path, data_synth_raw):
    meta = prepare(data_synth_raw, tmp_path / "c", cold_items=0.3, seed=1, images=False, progress=False)
    data = PreparedData(tmp_path / "c")
    cold = data.cold_items
    assert cold.dtype == np.int64 and len(cold) == meta["cold_items"]["count"] > 0
    seq = np.asarray(data.item_seq)
    in_train = np.concatenate([seq[s:e] for s, e in zip(data.train_start[1:], data.train_end[1:])])
    assert not np.isin(in_train, cold).any()
    assert np.isin(seq, cold).any()  # they remain as valid/test targets
    assert data.train_popularity[cold].sum() == 0
    assert data.train_popularity.tolist() == np.bincount(in_train, minlength=data.n_items + 1).tolist()
    assert (data.train_end[1:] - data.train_start[1:]).min() >= 1  # users with nothing to train on are gone
    assert meta["dropped"]["cold_training_interactions"] > 0


def test_prepare_is_byte_identical_including_lmdb(tmp_path, data_synth_raw):
    prepare(data_synth_raw, tmp_path / "a", image_size=24, workers=2, cold_items=0.1, progress=False)
    prepare(data_synth_raw, tmp_path / "b", image_size=24, workers=1, cold_items=0.1, progress=False)
    a, b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert "images.lmdb/data.mdb" in a and "cold_items.npy" in a
    assert a == b
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert str(tmp_path) not in json.dumps(meta)


def test_replaces_a_prepared_output_only_when_finished(tmp_path):
    raw = hand_raw(tmp_path / "raw")
    out = tmp_path / "out"
    prepare(raw, out, images=False, progress=False)
    before = tree_digest(out)
    (raw / "covers" / "i2.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(UserError, match="i2"):
        prepare(raw, out, image_size=16, workers=1, progress=False)
    assert tree_digest(out) == before  # the failed run left the previous output alone
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    prepare(raw, out, image_size=16, workers=1, missing_images="placeholder", progress=False)
    assert json.loads((out / "meta.json").read_text())["image_store"]["placeholders"] == ["i2"]


def test_refuses_to_overwrite_a_folder_that_is_not_a_dataset(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("...")
    with pytest.raises(UserError, match="not a prepared dataset"):
        prepare(hand_raw(tmp_path / "raw"), out, images=False, progress=False)
    assert (out / "thesis.tex").exists()


def test_ties_in_time_keep_file_order(tmp_path):
    rows = [("i9", "u1", 5), ("i8", "u1", 5), ("i7", "u1", 5), ("i8", "u1", 1)]
    prepare(write_interactions(tmp_path / "raw" / "interactions.csv", rows), tmp_path / "out", progress=False)
    data = PreparedData(tmp_path / "out")
    assert [data.item_tokens[i] for i in data.item_seq] == ["i8", "i9", "i8", "i7"]


def test_recbole_inter_prepares_like_the_csv(tmp_path):
    from data_fixtures import HAND_ROWS

    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += [f"{user}\t{item}\t1.0\t{ts}.0" for item, user, ts in HAND_ROWS]
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "tiny.inter").write_text("\n".join(lines) + "\n")
    meta = prepare(tmp_path / "raw", tmp_path / "out", progress=False)
    assert meta["source"] == {"kind": "recbole-inter",
                              "files": {"interactions": "tiny.inter", "item_info": None, "covers": None}}
    assert sequences(PreparedData(tmp_path / "out")) == HAND_SEQUENCES and meta["image_store"] is None
