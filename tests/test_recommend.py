"""`pixelrec recommend`: top-k never contains the user's history; unknown users are clear errors."""

from __future__ import annotations

import csv
import io

import pytest

from helpers import tiny_config
from pixelrec.cli import main
from pixelrec.data.prepared import PreparedData
from pixelrec.training.trainer import train


@pytest.fixture
def trained(tiny_data, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny_data, "sasrec", train={"epochs": 1}), out)
    return out


def test_recommendations_exclude_the_whole_history(trained, tiny_data, capsys):
    data = PreparedData(tiny_data)
    users = ["u1", "u7", "u42"]
    assert main(["recommend", "--run", str(trained), *sum((["--user", u] for u in users), []), "-k", "15"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 15 * len(users)
    for user in users:
        index = int(user[1:])
        history = {data.item_tokens[i] for i in data.item_seq[data.user_ptr[index] : data.user_ptr[index + 1]]}
        recommended = [r["item_id"] for r in rows if r["user_id"] == user]
        assert len(set(recommended)) == 15 and not set(recommended) & history
        scores = [float(r["score"]) for r in rows if r["user_id"] == user]
        assert scores == sorted(scores, reverse=True)


def test_unknown_user_is_a_clear_error(trained, capsys):
    assert main(["recommend", "--run", str(trained), "--user", "u1", "--user", "nobody"]) == 2
    err = capsys.readouterr().err
    assert "unknown user nobody" in err and len(err.strip().splitlines()) == 1


def test_batch_mode_writes_csv(trained, tmp_path):
    (tmp_path / "users.txt").write_text("u3\nu4\n")
    out = tmp_path / "recs.csv"
    assert main(["recommend", "--run", str(trained), "--users-file", str(tmp_path / "users.txt"), "-k", "3",
                 "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["user_id"] for r in rows] == ["u3"] * 3 + ["u4"] * 3
