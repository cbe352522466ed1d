"""Synthetic data: exact raw layout, determinism, and a signal that pixels and sequences can learn."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow.csv as pv

from data_fixtures import run_cli, tree_digest
from pixelrec.data.raw import INTERACTION_COLUMNS, ITEM_INFO_COLUMNS
from pixelrec.data.synth import write_synthetic


def test_layout_and_determinism(tmp_path):
    counts = write_synthetic(tmp_path / "a", users=80, items=30, mean_len=9, image_size=24, seed=5)
    write_synthetic(tmp_path / "b", users=80, items=30, mean_len=9, image_size=24, seed=5)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    write_synthetic(tmp_path / "c", users=80, items=30, mean_len=9, image_size=24, seed=6)
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")
    lines = (tmp_path / "a" / "interactions.csv").read_text().splitlines()
    assert lines[0] == ",".join(INTERACTION_COLUMNS) and len(lines) == counts["interactions"] + 1
    table = pv.read_csv(tmp_path / "a" / "interactions.csv")
    assert all(t.startswith("u") for t in table.column("user_id").to_pylist())
    per_user = np.unique(table.column("user_id").to_numpy(zero_copy_only=False), return_counts=True)[1]
    assert len(per_user) == 80 and per_user.min() >= 5
    with open(tmp_path / "a" / "item_info.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == ITEM_INFO_COLUMNS and len(rows) == 31
    assert any("," in field for field in rows[1])  # quoting is exercised
    covers = sorted(p.stem for p in (tmp_path / "a" / "covers").glob("*.jpg"))
    assert covers == sorted(row[0] for row in rows[1:])


def test_sequences_stay_near_a_visual_cluster(tmp_path):
    """Consecutive items share their cover's attributes far more often than chance (a learnable signal)."""
    write_synthetic(tmp_path / "s", users=300, items=200, mean_len=12, image_size=16, seed=0)
    with open(tmp_path / "s" / "item_info.csv", newline="") as f:
        title = {row["item_id"]: row["title"].split(" #")[0] for row in csv.DictReader(f)}
    table = pv.read_csv(tmp_path / "s" / "interactions.csv")
    users = table.column("user_id").to_numpy(zero_copy_only=False)
    items = table.column("item_id").to_numpy(zero_copy_only=False)
    order = np.lexsort((table.column("timestamp").to_numpy(), users))
    clusters = np.array([title[i] for i in items[order]])
    same_user = users[order][1:] == users[order][:-1]
    same = (clusters[1:] == clusters[:-1])[same_user].mean()
    chance = sum((np.array(list(title.values())) == c).mean() ** 2 for c in set(title.values()))
    assert same > 0.4 and same > 5 * chance


def test_synth_prepare_stats_end_to_end(capsys, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    status, stdout, _ = run_cli(capsys, "synth", "--out", raw, "--users", "50", "--items", "30", "--image-size", "32")
    assert status == 0 and "50 users" in stdout
    status, stdout, err = run_cli(capsys, "prepare", "--raw", raw, "--out", out, "--image-size", "32",
                                  "--workers", "2")
    assert status == 0 and err == "" and "image store: 30 covers at 32x32" in stdout
    status, stdout, _ = run_cli(capsys, "stats", out, "--json")
    stats = json.loads(stdout)
    assert status == 0 and stats["users"] == 50 and stats["items"] == 30
    assert stats["sequence_length"]["min"] >= 5
    status, stdout, _ = run_cli(capsys, "stats", out)
    assert status == 0 and "#Interactions" in stdout and "Sparsity" in stdout
    status, stdout, _ = run_cli(capsys, "prepare", "--raw", raw, "--out", tmp_path / "ids", "--no-images")
    assert status == 0 and "no image store (--no-images)" in stdout
