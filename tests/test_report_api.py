"""`report` (duplicates, labels, damaged inputs), the Python API and its documented example, and the
command line's polish: --version, help, rounded results, `recommend` beyond the catalogue, the
contact sheet, and system errors as one line."""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import re
from pathlib import Path

import pytest
from PIL import Image

import pixelrec
from conftest import patterned_sequences, write_prepared
from data_fixtures import one_line, run_cli
from helpers import tiny_config
from pixelrec.cli import main
from pixelrec.commands import results_json
from pixelrec.data.prepared import PreparedData
from pixelrec.errors import UserError
from pixelrec.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]






def fake_run(root: Path, name: str, model: str, items: str, encoder: str | None, recall: float, *,
             dataset: str = "tiny", profile: str | None = "default", features: str | None = None,
             finished: float | None = None) -> Path:
    """A finished run directory by hand: results.json (written at time `finished`, without caveats) and config.yaml."""
    run = root / name
    run.mkdir(parents=True)
    metrics = {"Recall@10": recall, "NDCG@10": recall / 2}
    record = {"model": model, "items": items, "encoder": encoder, "dataset": dataset, "valid": metrics,
              "test": metrics, "trainable_parameters": 1000, "train_seconds_per_epoch": 1.0, "caveats": []}
    if profile is not None:
        record["profile"] = profile
    (run / "results.json").write_text(json.dumps(record))
    (run / "config.yaml").write_text(json.dumps({"items": {"kind": items, "features": features}}))
    if finished is not None:
        os.utime(run / "results.json", (finished, finished))
    return run


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the Markdown table under `## heading`."""
    block = text.split(f"## {heading}", 1)[1].split("\n\n")[1]
    return [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()[2:]]


# --- report ------------------------------------------------------------------------------------
def test_report_shows_every_run_of_a_cell_and_latest_keeps_the_newest(tmp_path, capsys):
    newer = fake_run(tmp_path, "again", "sasrec", "id", None, 0.030, finished=2_000_000_000)
    older = fake_run(tmp_path, "first", "sasrec", "id", None, 0.020, finished=1_000_000_000)
    other = fake_run(tmp_path, "mf", "mf", "id", None, 0.010)

    status, out, _ = run_cli(capsys, "report", newer, older, other)
    assert status == 0
    runs = table_rows(out, "Runs (test)")
    assert [row[-1] for row in runs] == [str(newer), str(older), str(other)]  # the path column
    paper = table_rows(out, "Paper layout (test, %)")
    assert paper[0] == ["ID", "Recall@10", "1.000", "3.000 / 2.000"]  # MF, SASRec: both runs, in order
    note = [line for line in out.splitlines() if line.startswith("- sasrec id")]
    assert note == [f"- sasrec id (dataset tiny, profile default): 2 runs: {newer}, {older}"]

    status, out, _ = run_cli(capsys, "report", newer, older, other, "--latest")
    assert status == 0
    assert [row[-1] for row in table_rows(out, "Runs (test)")] == [str(newer), str(other)]
    assert table_rows(out, "Paper layout (test, %)")[0] == ["ID", "Recall@10", "1.000", "3.000"]
    assert "2 runs" not in out
    assert [line for line in out.splitlines() if str(older) in line] == [  # what --latest dropped, and why
        f"dropped {older}: an older run of sasrec id (dataset tiny, profile default) (same settings as {newer}, "
        "which finished later)"]

    _, out, _ = run_cli(capsys, "report", older, older / "results.json")  # one run named twice
    assert [row[-1] for row in table_rows(out, "Runs (test)")] == [str(older)] and "runs:" not in out

    os.utime(older / "results.json", (3_000_000_000, 3_000_000_000))  # now the other one is newer
    _, out, _ = run_cli(capsys, "report", newer, older, other, "--latest")
    assert [row[-1] for row in table_rows(out, "Runs (test)")] == [str(older), str(other)]


def with_settings(run: Path, **train: object) -> Path:
    """Give a fake run's config.yaml these train.* settings (and a path that must not matter)."""
    config = json.loads((run / "config.yaml").read_text())
    config["train"] = {**train, "num_workers": 3}
    config["data"] = {"path": str(run / "data-somewhere")}
    (run / "config.yaml").write_text(json.dumps(config))
    return run


def test_a_cell_is_its_whole_configuration_and_unfinished_runs_are_one_line(tmp_path, capsys):
    short = with_settings(fake_run(tmp_path, "short", "sasrec", "id", None, 0.020, finished=2_000_000_000), epochs=2)
    long = with_settings(fake_run(tmp_path, "long", "sasrec", "id", None, 0.030, finished=1_000_000_000), epochs=50)
    mf = with_settings(fake_run(tmp_path, "mf", "mf", "id", None, 0.010), epochs=50)
    running = tmp_path / "running"
    running.mkdir()
    (running / "config.yaml").write_text("train:\n  epochs: 50\n")
    (running / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "loss": 1.0}) + "\n" for e in (1, 2, 3)))

    status, out, _ = run_cli(capsys, "report", short, long, mf, running)
    assert status == 0
    runs = table_rows(out, "Runs (test)")
    header = out.split("## Runs (test)")[1].split("\n\n")[1].splitlines()[0]
    assert "| train.epochs |" in header and "num_workers" not in header and "data.path" not in header
    assert [(row[0], row[3], row[-1]) for row in runs] == [("sasrec", "2", str(short)), ("sasrec", "50", str(long)),
                                                          ("mf", "50", str(mf))]
    paper = table_rows(out, "Paper layout (test, %)")  # two budgets, two rows; MF's 50 epochs beside SASRec's
    assert [row[:4] for row in paper if row[1] == "Recall@10"] == [
        ["ID (train.epochs=2)", "Recall@10", "-", "2.000"], ["ID (train.epochs=50)", "Recall@10", "1.000", "3.000"]]
    assert "runs:" not in out  # no cell has two runs
    assert f"unfinished: {running} (epoch 3 of 50)" in out.splitlines()

    status, out, _ = run_cli(capsys, "report", short, long, "--latest")  # different cells: nothing dropped
    assert status == 0 and len(table_rows(out, "Runs (test)")) == 2 and "dropped" not in out

    status, _, err = run_cli(capsys, "report", running)
    assert status == 2 and one_line(err) == f"pixelrec: error: nothing to report: no finished run among the given " \
                                            f"directories (1 unfinished: {running})"


def test_settings_differ_only_where_every_run_of_a_cell_records_them():
    from pixelrec.bench.settings import differing

    def run(model: str, **settings: str) -> dict:
        return {"model": model, "settings": settings}

    runs = [run("mf", **{"train.epochs": "6", "train.lr": "0.001"}), run("mf", **{"train.epochs": "36"}),
            run("sasrec", **{"train.lr": "0.01"}), run("sasrec", **{"train.lr": "0.001", "model.n_layers": "2"})]
    assert differing(runs, lambda r: r["model"]) == ["train.epochs", "train.lr"]
    assert differing(runs[:2], lambda r: r["model"]) == ["train.epochs"]  # mf's lr: recorded by one run only


def test_run_labels_tell_apart_two_bench_folders():
    from pixelrec.bench.report import run_labels

    runs = [{"run": "/x/b1/runs/sasrec-id"}, {"run": "/x/b2/runs/sasrec-id"}, {"run": "/x/b2/runs/mf-id"}]
    assert run_labels(runs) == ["b1/runs/sasrec-id", "b2/runs/sasrec-id", "mf-id"]


def test_encoder_labels_of_id_features_and_pixels_cells(tmp_path, capsys):
    feats = tmp_path / "feats"
    feats.mkdir()
    (feats / "extracted.json").write_text(json.dumps({"format": "x", "encoder": "clip-rn50"}))
    (feats / "imported.json").write_text(json.dumps({"format": "x", "encoder": None}))
    runs = [
        fake_run(tmp_path, "id", "sasrec", "id", "clip-vit-b32", 0.02),  # an ID run that recorded an encoder
        fake_run(tmp_path, "named", "sasrec", "features", "swin-t", 0.02),
        fake_run(tmp_path, "sidecar", "sasrec", "features", None, 0.02, features=str(feats / "extracted.npy")),
        fake_run(tmp_path, "imported", "vbpr", "id+features", None, 0.02, features=str(feats / "imported.npy")),
        fake_run(tmp_path, "pixels", "sasrec", "pixels", "clip-vit-b32", 0.02),
    ]
    status, out, _ = run_cli(capsys, "report", *runs)
    assert status == 0
    assert [row[:3] for row in table_rows(out, "Runs (test)")] == [
        ["sasrec", "id", "-"], ["sasrec", "features", "swin-t"], ["sasrec", "features", "clip-rn50"],
        ["vbpr", "id+features", "imported.npy"], ["sasrec", "pixels", "clip-vit-b32"]]
    labels = [row[0] for row in table_rows(out, "Paper layout (test, %)") if row[0]]
    assert labels == ["ID", "clip-vit-b32", "features: swin-t", "features: clip-rn50", "id+features: imported.npy"]
    assert "profile" not in out.split("## Paper layout")[0]  # one profile: no column for it


def test_mixed_profiles_are_told_apart(tmp_path, capsys):
    runs = [fake_run(tmp_path, "ours", "sasrec", "id", None, 0.03),
            fake_run(tmp_path, "paper", "sasrec", "id", None, 0.02, profile="paper"),
            fake_run(tmp_path, "old", "mf", "id", None, 0.01, profile=None)]  # before results.json had a profile
    status, out, _ = run_cli(capsys, "report", *runs)
    assert status == 0
    header = out.split("## Runs (test)")[1].split("\n\n")[1].splitlines()[0]
    assert "| profile |" in header
    assert [row[3] for row in table_rows(out, "Runs (test)")] == ["default", "paper", "default"]
    paper = table_rows(out, "Paper layout (test, %)")
    assert [row[0] for row in paper if row[0]] == ["ID (profile default)", "ID (profile paper)"]
    assert paper[0][2:] == ["1.000", "3.000"] and paper[2][2:] == ["-", "2.000"]
    assert "runs:" not in out  # different profiles are different cells, not duplicates


@pytest.mark.parametrize("content, says", [
    (b'{"model": "sasrec", "items": "id", "test": {"Recall@10": 0.1}', "not valid JSON (line 1)"),
    (b'[1, 2, 3]', "expected an object, found list"),
    (b'{"model": "sasrec", "items": "id", "test": "high"}', "'test' must map metric names to numbers"),
    (b'{"model": "sasrec", "items": "id", "test": {"Recall@10": "0.1"}}', "test.Recall@10 must be a number"),
    (b'{"items": "id"}', "'model' must be a name"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
])
def test_a_malformed_results_json_is_one_line(tmp_path, capsys, content, says):
    good = fake_run(tmp_path, "good", "mf", "id", None, 0.01)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_bytes(content)
    status, out, err = run_cli(capsys, "report", good, bad)
    assert status == 2 and out == ""
    line = one_line(err)
    assert line.startswith(f"pixelrec: error: {bad / 'results.json'}: malformed results.json") and says in line


def test_report_out_onto_a_file_is_one_line_and_writes_nothing(tmp_path, capsys):
    run = fake_run(tmp_path, "run", "mf", "id", None, 0.01)
    target = tmp_path / "report.md"
    target.write_text("mine")
    status, out, err = run_cli(capsys, "report", run, "--out", target)
    assert status == 2 and out == ""
    assert f"{target}: exists and is not a folder" in one_line(err)
    assert target.read_text() == "mine"
    status, _, _ = run_cli(capsys, "report", run, "--out", tmp_path / "fresh")
    assert status == 0 and (tmp_path / "fresh" / "report.md").is_file()


# --- command line ------------------------------------------------------------------------------
def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"pixelrec {pixelrec.__version__}"


def help_of(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(re.sub(r"-\n\s+", "-", capsys.readouterr().out).split())  # undo argparse's wrapping


def test_every_option_of_every_command_has_help_and_says_its_default():
    import argparse

    from pixelrec.cli import COMMANDS, HelpFormatter, build_parser

    for name in COMMANDS:
        parser = build_parser(only=name)
        command = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        for action in command._actions:
            if action.dest == "help":
                continue
            where = f"pixelrec {name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{where}: no help"
            unset = action.default in (None, False, [], argparse.SUPPRESS) or action.nargs == 0
            shown = HelpFormatter("pixelrec")._get_help_string(action) or ""
            if action.option_strings and not unset:  # a value used when the option is left out is said
                assert "default" in shown.lower(), f"{where}: its default {action.default!r} is not shown"


def test_help_lists_presets_profiles_and_defaults(capsys):
    top = help_of(capsys)
    assert "presets cpu-small, ml100k-sasrec, pixels-tiny; profiles default, paper" in top
    train_help = help_of(capsys, "train")
    assert "packaged: presets cpu-small, ml100k-sasrec, pixels-tiny; profiles default, paper" in train_help
    assert "take the configuration's value" in train_help
    recommend_help = help_of(capsys, "recommend")
    assert "-k K items per user" in recommend_help and "(default: 10)" in recommend_help
    assert "(default: best)" in recommend_help and "(default: None)" not in recommend_help
    prepare_help = help_of(capsys, "prepare")
    assert "(default: 0)" in prepare_help  # --kcore 0 is a default worth showing, not "unset"
    assert "(default 224, as the paper) (default" not in prepare_help  # said once


def test_one_unit_policy_fractions_with_five_decimals_in_json_percent_with_three_for_people():
    from pixelrec.bench.tables import paper_table
    from pixelrec.training.report import epoch_line

    printed = json.loads(results_json({"run": "r", "test": {"Recall@10": 0.4035334, "NDCG@10": 0.5,
                                                            "users": 12, "MRR@10": float("nan")},
                                       "train_seconds_per_step": 0.000123456}))
    assert printed["test"]["Recall@10"] == 0.40353 and printed["test"]["NDCG@10"] == 0.5
    assert printed["train_seconds_per_step"] == 0.0001235  # not a metric: four significant digits
    line = epoch_line({"epoch": 2, "loss": 0.5, "seconds": 1.0, "steps": 3, "valid": {"NDCG@10": 0.4035334}},
                      "NDCG@10", 5, True)
    assert line.endswith("valid NDCG@10 40.353% (best)")  # the same digits as the JSON and the table
    assert "| 40.353 |" in paper_table([{"model": "mf", "items": "id", "test": {"Recall@10": 0.4035334}}])
    assert printed["test"]["users"] == 12 and math.isnan(printed["test"]["MRR@10"]) and printed["run"] == "r"


@pytest.mark.parametrize("code, filename, says", [
    (errno.ENOSPC, "/full/disk/last.pt", "/full/disk/last.pt: no space left on the device; free some space"),
    (errno.EACCES, "/locked/results.json", "/locked/results.json: permission denied; check the permissions"),
    (errno.EROFS, "/ro/report.md", "/ro/report.md: read-only file system; write somewhere else"),
    (errno.ENOSPC, None, "no space left on the device (writing OUTDIR); free some space"),
])
def test_system_errors_are_one_line_naming_the_path(tmp_path, capsys, monkeypatch, code, filename, says):
    from pixelrec.commands import report

    def failing(args):
        raise OSError(code, os.strerror(code), filename)

    monkeypatch.setattr(report, "run", failing)
    status, out, err = run_cli(capsys, "report", "somewhere", "--out", "OUTDIR")
    assert status == 1 and out == ""
    assert one_line(err).startswith(f"pixelrec: error: {says}")


def test_other_system_errors_keep_their_traceback(capsys, monkeypatch):
    from pixelrec.commands import report

    def failing(args):
        raise OSError(errno.ECONNRESET, "Connection reset by peer")

    monkeypatch.setattr(report, "run", failing)
    with pytest.raises(ConnectionResetError):
        main(["report", "somewhere"])


# --- recommend ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    """A trained SASRec over 12 items: every user has had most of them."""
    root = tmp_path_factory.mktemp("small")
    data = write_prepared(root / "data", patterned_sequences(30, 12, 8))
    train(tiny_config(data, "sasrec", train={"epochs": 1}), root / "run")
    return root / "run"


def history(data: PreparedData, user: str) -> set[str]:
    """Tokens of every item `user` (a token) has had."""
    from pixelrec.evaluation.ranking import user_indices

    index = int(user_indices(data, [user])[0])
    return {data.item_tokens[i] for i in data.item_seq[data.user_ptr[index] : data.user_ptr[index + 1]]}


def test_k_beyond_the_catalogue_returns_only_unseen_items(small_run, capsys):
    data = pixelrec.load_run(small_run).data
    users = ["u1", "u2", "u3"]
    status, out, err = run_cli(capsys, "recommend", small_run, *sum((["--user", u] for u in users), []), "-k", 1000)
    assert status == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    for user in users:
        seen = history(data, user)
        got = [r["item_id"] for r in rows if r["user_id"] == user]
        unseen = set(data.item_tokens[1:]) - seen
        assert set(got) == unseen and len(got) == len(unseen) and "" not in got
        assert all(math.isfinite(float(r["score"])) for r in rows if r["user_id"] == user)
    assert one_line(err).startswith("note: k=1000 is more than the catalogue (12 items) leaves unseen for 3 of the 3")

    found = pixelrec.recommend(str(small_run), users="u1", k=1000)
    assert set(found.items[0]) == set(data.item_tokens[1:]) - history(data, "u1")
    assert 0 not in found.indices[0] and found.note.startswith("k=1000 is more than the")
    assert pixelrec.recommend(small_run, users=["u1"], k=2).note is None


def test_recommend_out_onto_a_folder_is_one_line(small_run, tmp_path, capsys):
    status, out, err = run_cli(capsys, "recommend", small_run, "--user", "u1", "--out", tmp_path)
    assert status == 2 and out == ""
    assert f"--out {tmp_path}: is a folder; give the path of a file" in one_line(err)
    status, out, _ = run_cli(capsys, "recommend", small_run, "--user", "u1", "-k", 2, "--out", tmp_path / "recs.csv")
    assert status == 0 and out.strip() == f"wrote {tmp_path / 'recs.csv'}: 2 recommendations for 1 user"
    assert [r["rank"] for r in csv.DictReader((tmp_path / "recs.csv").open())] == ["1", "2"]


@pytest.fixture(scope="module")
def covered_run(tmp_path_factory) -> Path:
    """A trained run on a synthetic dataset with covers and titles."""
    from pixelrec.data.prepare import prepare
    from pixelrec.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("covered")
    write_synthetic(root / "raw", users=40, items=20, image_size=16, seed=1)
    prepare(root / "raw", root / "data", image_size=16, workers=1)
    train(tiny_config(root / "data", "sasrec", train={"epochs": 1}), root / "run")
    return root / "run"


def test_contact_sheet_titles_its_rows_and_draws_every_user(covered_run, tmp_path, capsys):
    from pixelrec.jobs.contact_sheet import GAP, MARGIN, TILE, contact_sheet
    from pixelrec.jobs.recommend import item_titles

    run = pixelrec.load_run(covered_run)
    users = [str(t) for t in run.data.user_tokens[1:4]]
    sheet_path = tmp_path / "sheet.png"
    status, out, err = run_cli(capsys, "recommend", covered_run, *sum((["--user", u] for u in users), []),
                               "-k", 4, "--image", sheet_path)
    assert status == 0 and len(list(csv.DictReader(io.StringIO(out)))) == 12
    assert one_line(err) == f"wrote {sheet_path}: recent and recommended covers of 3 users"
    widest = max(4, *(min(5, int(run.data.user_ptr[u + 1] - run.data.user_ptr[u])) for u in (1, 2, 3)))
    assert Image.open(sheet_path).size[0] == MARGIN + widest * (TILE + GAP)  # five recent covers, four recommended

    found = pixelrec.recommend(run, users=users, k=4)
    titles = item_titles(run.data)
    indices = [1, 2, 3]  # the users above
    drawn = contact_sheet(run.data, indices, found.indices, titles, tmp_path / "direct.png")
    texts = [text for text, _ in drawn.texts]
    assert drawn.users == users and [t for t in texts if t.startswith("user ")] == [f"user {u}" for u in users]
    assert texts.count("recent") == 3 and texts.count("recommended") == 3
    long_titles = [titles[i] for row in found.indices for i in row]
    assert max(map(len, long_titles)) > 14
    labels = [" ".join(t.split("\n")[1:]) for t in texts if "\n" in t]
    for title in long_titles:
        assert title in labels  # whole, however it was wrapped

    one = contact_sheet(run.data, indices, found.indices, titles, tmp_path / "one.png", max_users=1)
    assert one.users == users[:1] and one.size[1] < drawn.size[1] / 2


def test_contact_sheet_says_when_it_draws_only_the_first_users(covered_run, tmp_path, capsys, monkeypatch):
    from pixelrec.jobs import contact_sheet

    monkeypatch.setattr(contact_sheet, "MAX_USERS", 2)
    users = [str(t) for t in pixelrec.load_run(covered_run).data.user_tokens[1:4]]
    status, _, err = run_cli(capsys, "recommend", covered_run, *sum((["--user", u] for u in users), []),
                             "--image", tmp_path / "sheet.png")
    assert status == 0 and one_line(err).endswith("covers of the first 2 of 3 users")


# --- Python API ------------------------------------------------------------------------------------
def test_the_documented_example_runs(tmp_path, monkeypatch, capsys):
    text = (ROOT / "docs" / "python.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/python.md has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/python.md", "exec"), namespace)  # noqa: S102 - our own documentation
    run, top = namespace["run"], namespace["top"]
    assert isinstance(run, pixelrec.Run) and run.path == Path("runs/sasrec-id")
    assert 0.0 <= run.test["Recall@10"] <= 1.0 and run.config.model_name == "sasrec"
    assert namespace["pixels"].config.items.kind == "pixels"
    assert namespace["metrics"].test["NDCG@10"] == pytest.approx(run.test["NDCG@10"])
    for user, items in zip(top.users, top.items):
        assert len(items) == 5 and not set(items) & history(run.data, user)
    assert "sasrec x id" in capsys.readouterr().out


def test_api_takes_paths_and_strings_and_returns_objects(small_run, tmp_path):
    data = Path(pixelrec.load_run(small_run).config.data.path)
    run = pixelrec.train(data=str(data), model="mf", items="id", config=[], out=tmp_path / "mf",
                         set={"model.embedding_size": 8, "train": {"epochs": 1, "progress": False}})
    assert isinstance(run, pixelrec.Run) and run.path == tmp_path / "mf" and run.config.train.epochs == 1
    assert run.config.model["embedding_size"] == 8 and set(run.test) >= {"Recall@10", "NDCG@10"}
    assert run.model.training is False and run.results["model"] == "mf"
    measured = pixelrec.evaluate(str(run.path), split="valid")
    assert isinstance(measured, pixelrec.Metrics) and measured.test is None
    assert measured.valid["NDCG@10"] == pytest.approx(run.valid["NDCG@10"])
    assert pixelrec.load_run(run.path, checkpoint="last").checkpoint == "last"
    assert pixelrec.training.trainer.train is train  # the package is still there beside the function


def test_api_errors_speak_of_arguments(small_run, tmp_path):
    data = pixelrec.load_run(small_run).config.data.path
    with pytest.raises(UserError, match=r"^data= is required"):
        pixelrec.train(model="sasrec")
    with pytest.raises(UserError, match=r"^set: 'epochs' is not 'section.key'"):
        pixelrec.train(data=data, model="sasrec", set={"epochs": 3})
    with pytest.raises(UserError, match="resume=True needs out="):
        pixelrec.train(resume=True)
    with pytest.raises(UserError) as err:  # a message the library wrote for the command line
        pixelrec.train(data=data, model="sasrec", out=small_run, set={"train.progress": False})
    assert "--" not in str(err.value) and "out=" in str(err.value)
    with pytest.raises(UserError, match="split='train': choose 'valid', 'test' or 'both'"):
        pixelrec.evaluate(small_run, split="train")
    with pytest.raises(UserError, match="k must be at least 1"):
        pixelrec.recommend(small_run, users="u1", k=0)
