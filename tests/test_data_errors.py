"""Bad input through the CLI: exit status 2, one stderr line naming the file/row/item, no output folder."""

from __future__ import annotations

import os
import re

import pytest

from data_fixtures import HAND_ROWS, hand_raw, run_cli, write_interactions


def expect_error(capsys, tmp_path, raw, *extra, pattern: str) -> str:
    out = tmp_path / "out"
    status, _, err = run_cli(capsys, "prepare", "--raw", raw, "--out", out, "--image-size", "16",
                             "--workers", "1", *extra)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no half-built folder
    return lines[0]


def test_misnamed_columns(capsys, tmp_path):
    raw = write_interactions(tmp_path / "raw" / "interactions.csv", HAND_ROWS, header="item,user_id,time")
    expect_error(capsys, tmp_path, raw.parent,
                 pattern=r"interactions\.csv: expected columns item_id,user_id,timestamp; missing item_id,timestamp")


def test_non_integer_timestamp_names_the_row(capsys, tmp_path):
    rows = HAND_ROWS[:2] + [("i3", "u1", "yesterday")] + HAND_ROWS[3:]
    raw = write_interactions(tmp_path / "raw" / "interactions.csv", rows)
    expect_error(capsys, tmp_path, raw, pattern=r"interactions\.csv: data row 3: timestamp 'yesterday' is not")


def test_negative_timestamp_names_the_row(capsys, tmp_path):
    rows = HAND_ROWS[:1] + [("i2", "u2", -5)] + HAND_ROWS[2:]
    raw = write_interactions(tmp_path / "raw" / "interactions.csv", rows)
    expect_error(capsys, tmp_path, raw.parent, pattern=r"interactions\.csv: data row 2: negative timestamp -5")


def test_missing_timestamp_and_short_row(capsys, tmp_path):
    raw = write_interactions(tmp_path / "raw" / "interactions.csv", HAND_ROWS[:3] + [("i9", "u9", "")])
    expect_error(capsys, tmp_path, raw, pattern=r"interactions\.csv: data row 4: missing timestamp")
    raw.write_text(raw.read_text().replace("i9,u9,\n", "i9,u9\n"))
    expect_error(capsys, tmp_path, raw, pattern=r"interactions\.csv: line 5: expected 3 fields, found 2")


def test_empty_file(capsys, tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "interactions.csv").write_text("")
    expect_error(capsys, tmp_path, tmp_path / "raw", pattern=r"interactions\.csv: empty file")
    (tmp_path / "raw" / "interactions.csv").write_text("item_id,user_id,timestamp\n")
    expect_error(capsys, tmp_path, tmp_path / "raw", pattern=r"interactions\.csv: no interactions")


def test_binary_garbage(capsys, tmp_path):
    (tmp_path / "raw").mkdir()
    garbage = tmp_path / "raw" / "interactions.csv"
    garbage.write_bytes(bytes(range(256)) * 64)
    expect_error(capsys, tmp_path, garbage, pattern=r"interactions\.csv: not a CSV text file")
    garbage.write_bytes(b"item_id,user_id,timestamp\ni1,u1,5\n\xff\xfe\x80,u1,6\n")  # text header, binary body
    expect_error(capsys, tmp_path, garbage, pattern=r"interactions\.csv: .*(UTF-8|data row 2)")


def test_missing_covers_are_named(capsys, tmp_path):
    raw = hand_raw(tmp_path / "raw")
    (raw / "covers" / "i2.jpg").unlink()
    (raw / "covers" / "i4.jpg").unlink()
    expect_error(capsys, tmp_path, raw,
                 pattern=r"covers: 2 of 4 items have no cover file .*: i2, i4; use --missing-images")


def test_corrupt_and_truncated_covers_are_named(capsys, tmp_path):
    raw = hand_raw(tmp_path / "raw")
    (raw / "covers" / "i3.jpg").write_bytes(b"this is not a jpeg")
    whole = (raw / "covers" / "i1.jpg").read_bytes()
    (raw / "covers" / "i1.jpg").write_bytes(whole[: len(whole) // 2])
    expect_error(capsys, tmp_path, raw, pattern=r"covers: 2 cover files are corrupt or truncated: i1, i3")


def test_missing_and_unreadable_paths(capsys, tmp_path, monkeypatch):
    expect_error(capsys, tmp_path, tmp_path / "nowhere", pattern=r"nowhere: no such file or directory")
    raw = hand_raw(tmp_path / "raw")
    if os.geteuid() == 0:  # root reads everything: pretend the permission bits are honoured
        monkeypatch.setattr("pixelrec.data.raw.os.access", lambda path, mode: False)
    else:
        (raw / "Tiny.csv").chmod(0)
    expect_error(capsys, tmp_path, raw / "Tiny.csv", pattern=r"Tiny\.csv: permission denied")


def test_no_users_left(capsys, tmp_path):
    rows = [("i1", "u1", 1), ("i2", "u1", 2), ("i1", "u2", 3)]
    raw = write_interactions(tmp_path / "raw" / "interactions.csv", rows)
    expect_error(capsys, tmp_path, raw, pattern=r"interactions\.csv: no users left after filtering \(short users: 2")


def test_bad_option_values(capsys, tmp_path):
    raw = hand_raw(tmp_path / "raw")
    with pytest.raises(SystemExit) as exit_:
        run_cli(capsys, "prepare", "--raw", raw, "--out", tmp_path / "out", "--cold-items", "1.5")
    assert exit_.value.code == 2 and "--cold-items" in capsys.readouterr().err
