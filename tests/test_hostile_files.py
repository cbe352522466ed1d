"""Files and folders that others can write are data, never instructions: a planted link is never
followed, whatever pixelrec then does."""

from __future__ import annotations

import os

from data_fixtures import hand_raw, one_line, run_cli
from pixelrec.storage import locks


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path, capsys):
    raw = hand_raw(tmp_path / "raw")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.symlink(victim, tmp_path / ".ds.lock")  # where `prepare --out ds` takes its lock
    status, _, err = run_cli(capsys, "prepare", "--raw", raw, "--out", tmp_path / "ds", "--workers", "1")
    line = one_line(err)
    assert status == 2 and ".ds.lock: not a plain file" in line, line
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "ds").exists()


def test_a_lock_through_a_dangling_link_creates_nothing(tmp_path):
    target = tmp_path / "elsewhere" / "made-by-the-lock"
    target.parent.mkdir()
    os.symlink(target, tmp_path / "x.lock")
    try:
        locks.acquire(tmp_path / "x.lock", "thing x")
        raise AssertionError("a dangling link was locked")
    except locks.NotAPlainFile as err:
        assert "x.lock: not a plain file" in str(err)
    assert not target.exists()


def test_a_fifo_where_a_lock_goes_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "y.lock")
    try:
        locks.acquire(tmp_path / "y.lock", "thing y")
        raise AssertionError("a FIFO was taken for a lock file")
    except locks.NotAPlainFile:
        pass
    assert locks.holder(tmp_path / "y.lock") is None


def test_a_plain_lock_names_its_holder(tmp_path):
    lock = locks.acquire(tmp_path / "z.lock", "thing z")
    try:
        assert locks.holder(tmp_path / "z.lock") == os.getpid()
    finally:
        lock.release()
    assert not (tmp_path / "z.lock").exists()
