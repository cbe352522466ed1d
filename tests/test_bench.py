"""Benchmark tooling: the resumable matrix, its paper-layout table, the Optuna study (grid resume,
TPE pruning), report figures and the vector export against `recommend`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import patterned_sequences, write_prepared
from data_fixtures import one_line
from pixelrec.bench import matrix, plots, tune
from pixelrec.bench.matrix import BenchSpec, cells_of, run_matrix
from pixelrec.bench.report import load_study
from pixelrec.bench.tables import load_results, paper_table
from pixelrec.cli import main
from pixelrec.config import dump, resolve
from pixelrec.data.prepared import PreparedData
from pixelrec.errors import UserError
from pixelrec.training.trainer import Trainer, train

TINY = ["model.embedding_size=16", "train.epochs=2", "train.batch_size=32", "train.lr=0.003",
        "train.progress=false", "eval.batch_size=256"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("bench") / "data", patterned_sequences(60, 20, 8))


def counting(monkeypatch, module) -> list[tuple[str, bool]]:
    """Record (run directory name, resume) of every trainer invocation made through `module.train`."""
    calls: list[tuple[str, bool]] = []

    def counted(config, out, resume=False, **kwargs):
        calls.append((Path(out).name, resume))
        return train(config, out, resume=resume, **kwargs)

    monkeypatch.setattr(module, "train", counted)
    return calls


def interrupt_at(monkeypatch, model: str, epoch: int, error: type[BaseException] = KeyboardInterrupt) -> None:
    """Make `model`'s training raise `error` when epoch `epoch` (0-based) starts."""
    original = Trainer.train_epoch

    def patched(self, number):
        if self.config.model_name == model and number == epoch:
            raise error("boom\nsecond line")
        return original(self, number)

    monkeypatch.setattr(Trainer, "train_epoch", patched)


# --- the matrix ------------------------------------------------------------------------------
def test_interrupted_matrix_continues_and_skips_finished_cells(data, tmp_path, monkeypatch):
    spec = BenchSpec(str(data), cells_of(["mf", "sasrec", "fm", "visrank"], ["id"], []), sets=TINY)
    out = tmp_path / "bench"
    calls = counting(monkeypatch, matrix)
    with monkeypatch.context() as patch:
        interrupt_at(patch, "sasrec", 1)  # after sasrec's first epoch is checkpointed
        with pytest.raises(KeyboardInterrupt):
            run_matrix(spec, out, log=lambda line: None)
    status = json.loads((out / "status.json").read_text())["cells"]
    assert status["mf-id"]["status"] == "done" and status["sasrec-id"]["status"] == "interrupted"
    assert (out / "runs/sasrec-id/last.pt").is_file() and not (out / "runs/sasrec-id/results.json").exists()
    statuses = [r["status"] for r in csv.DictReader((out / "results.csv").open())]
    assert statuses == ["done", "interrupted", "pending", "skipped"]
    from pixelrec.bench.report import collect

    inputs = collect([out])  # a report of the bench so far: the finished cell, and a line for the other
    assert [Path(r["run"]).name for r in inputs.runs] == ["mf-id"]
    assert inputs.notes == [f"unfinished: {out / 'runs/sasrec-id'} (epoch 1 of 2)"]

    calls.clear()
    rows = run_matrix(spec, out, log=lambda line: None)
    assert calls == [("sasrec-id", True), ("fm-id", False)]  # mf finished: not trained again
    assert [r["status"] for r in rows] == ["done", "done", "done", "skipped"]
    assert len((out / "runs/sasrec-id/metrics.jsonl").read_text().splitlines()) == 2
    assert "needs items.kind features, not id" in rows[3]["reason"]
    table = (out / "results.md").read_text()
    assert "| Item encoder | Metric | MF | FM | SASRec |" in table and "| visrank-id | skipped |" in table

    calls.clear()
    run_matrix(spec, out, log=lambda line: None)
    assert calls == []


def test_failed_cell_is_recorded_and_the_rest_go_on(data, tmp_path, monkeypatch, capsys):
    interrupt_at(monkeypatch, "mf", 0, RuntimeError)
    out = tmp_path / "bench"
    code = main(["bench", "--data", str(data), "--models", "mf,fm", "--items", "id", "--out", str(out),
                 "--set", "train.epochs=1", *sum((["--set", s] for s in TINY[:1] + TINY[2:]), [])])
    assert code == 1
    status = json.loads((out / "status.json").read_text())["cells"]
    assert status["mf-id"]["status"] == "failed" and status["mf-id"]["error"] == "RuntimeError: boom"
    assert status["fm-id"]["status"] == "done" and (out / "runs/mf-id/error.log").is_file()
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["model"], r["status"]) for r in rows] == [("mf", "failed"), ("fm", "done")]
    assert float(rows[1]["test_Recall@10"]) > 0 and int(rows[1]["trainable_parameters"]) > 0
    assert "2 cells: 1 done, 1 failed" in capsys.readouterr().out


def test_a_setting_that_no_cell_accepts_is_a_user_error(data, tmp_path):
    with pytest.raises(UserError, match="unknown key train.lrr"):
        run_matrix(BenchSpec(str(data), cells_of(["mf", "fm"], ["id"], []), sets=["train.lrr=1"]), tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_grid_parsing_and_one_process_per_directory(data, tmp_path):
    assert tune.parse_grid("model.embedding_size=64,128; train.lr=1e-4,1e-3;items.image.tune_last=all") == {
        "model.embedding_size": [64, 128], "train.lr": [1e-4, 1e-3], "items.image.tune_last": ["all"]}
    with pytest.raises(UserError, match="expected section.key=v1,v2"):
        tune.parse_grid("lr=1e-4")
    with pytest.raises(UserError, match="both searched"):
        tune.check_spec(tune.TuneSpec(str(data), "mf", sets=["train.lr=0.1"], grid={"train.lr": [0.1]}))
    with matrix.directory_lock(tmp_path, "pixelrec bench"):
        with pytest.raises(UserError, match="another `pixelrec bench` is working"):
            run_matrix(BenchSpec(str(data), cells_of(["mf"], ["id"], []), sets=TINY), tmp_path)


# --- tables ----------------------------------------------------------------------------------
def fake_run(root: Path, name: str, model: str, items: str, encoder: str | None, recall: float,
             params: int = 1000, epochs: int = 0) -> Path:
    """A hand-made finished run directory (without caveats): results.json and, with epochs, metrics.jsonl."""
    run = root / name
    run.mkdir(parents=True)
    metrics = {"Recall@10": recall, "NDCG@10": recall / 2}
    (run / "results.json").write_text(json.dumps({"model": model, "items": items, "encoder": encoder,
                                                  "valid": metrics, "test": metrics, "trainable_parameters": params,
                                                  "caveats": []}))
    rows = [{"epoch": e, "loss": 1 / e, "valid": {"NDCG@10": recall * e / epochs}} for e in range(1, epochs + 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_paper_table_layout(tmp_path):
    runs = [fake_run(tmp_path, "a", "sasrec", "id", None, 0.025), fake_run(tmp_path, "b", "pop", "id", None, 0.005),
            fake_run(tmp_path, "c", "sasrec", "pixels", "clip-rn50", 0.02584),
            fake_run(tmp_path, "d", "mf", "id", None, 0.01013),
            fake_run(tmp_path, "e", "sasrec", "pixels", "clip-vit-b32", 0.03),
            fake_run(tmp_path, "f", "lightgcn", "id", None, 0.0123456)]
    assert paper_table(load_results(runs)) == "\n".join([
        "| Item encoder | Metric | MF | LightGCN | SASRec | Pop |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        "| ID | Recall@10 | 1.013 | 1.235 | 2.500 | 0.500 |",
        "|  | NDCG@10 | 0.506 | 0.617 | 1.250 | 0.250 |",
        "| clip-vit-b32 | Recall@10 | - | - | 3.000 | - |",
        "|  | NDCG@10 | - | - | 1.500 | - |",
        "| clip-rn50 | Recall@10 | - | - | 2.584 | - |",
        "|  | NDCG@10 | - | - | 1.292 | - |",
    ])


# --- tune ------------------------------------------------------------------------------------
def tune_spec(data: Path, **kwargs) -> tune.TuneSpec:
    sets = [s for s in TINY if not s.startswith(("model.embedding_size", "train.lr"))]
    grid = tune.parse_grid("model.embedding_size=8,16;train.lr=1e-3,3e-3")
    return tune.TuneSpec(data=str(data), model="mf", sets=sets, grid=grid, **kwargs)


def test_tune_grid_completes_and_continues_after_interruption(data, tmp_path, monkeypatch):
    from optuna.trial import TrialState

    study_dir, quiet = tmp_path / "study", (lambda line: None)
    calls = counting(monkeypatch, tune)
    original, started = Trainer.train_epoch, []

    def cut(self, epoch):
        started.append(epoch)
        if len(started) == 6:  # the third trial's second epoch
            raise KeyboardInterrupt
        return original(self, epoch)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "train_epoch", cut)
        with pytest.raises(KeyboardInterrupt):
            tune.run_study(tune_spec(data), study_dir, quiet)
    study = load_study(study_dir)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.RUNNING]
    assert (study_dir / "trials/2/last.pt").is_file() and (study_dir / "best.yaml").is_file()

    calls.clear()
    study = tune.run_study(tune_spec(data), study_dir, quiet)
    assert calls == [("2", True), ("3", False)]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    points = {(t.params["model.embedding_size"], t.params["train.lr"]) for t in study.trials}
    assert points == {(8, 1e-3), (8, 3e-3), (16, 1e-3), (16, 3e-3)}
    assert set(study.trials[2].intermediate_values) == {1, 2}

    best = max(study.trials, key=lambda t: t.value)
    config = resolve(files=[str(study_dir / "best.yaml")])
    assert config.model_name == "mf" and config.model["embedding_size"] == best.params["model.embedding_size"]
    assert config.train.lr == best.params["train.lr"]

    calls.clear()
    assert len(tune.run_study(tune_spec(data), study_dir, quiet).trials) == 4 and calls == []
    with pytest.raises(UserError, match="started with other settings"):
        tune.run_study(tune_spec(data, sampler="tpe"), study_dir, quiet)


def test_tpe_reports_each_epoch_and_prunes_below_the_median(data, tmp_path, monkeypatch):
    """The trainer is replaced by a fake that reports fixed per-epoch values: trials 0-2 set the median,
    trial 3 falls below it at its second evaluation (the pruner's warm-up) and is pruned there."""
    from optuna.trial import TrialState

    levels = [0.5, 0.6, 0.7, 0.1]
    seen = []

    def fake_train(config, out, resume=False, on_epoch=None):
        level = levels[int(Path(out).name)]
        Path(out).mkdir(parents=True)
        (Path(out) / "config.yaml").write_text(dump(config))
        for epoch in (1, 2, 3):
            seen.append((Path(out).name, epoch))
            on_epoch({"epoch": epoch, "loss": 1.0, "valid": {"NDCG@10": level * epoch / 3}})
        return {"valid": {"NDCG@10": level}}

    monkeypatch.setattr(tune, "train", fake_train)
    study = tune.run_study(tune_spec(data, sampler="tpe", trials=4, prune=True), tmp_path / "s", lambda line: None)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED]
    assert study.trials[0].intermediate_values == pytest.approx({1: 0.5 / 3, 2: 1 / 3, 3: 0.5})
    assert ("3", 2) in seen and ("3", 3) not in seen
    unpruned = tune.run_study(tune_spec(data, sampler="tpe", trials=4), tmp_path / "u", lambda line: None)
    assert [t.state for t in unpruned.trials] == [TrialState.COMPLETE] * 4


# --- report figures --------------------------------------------------------------------------
def test_report_figures_have_their_series(tmp_path, capsys):
    import optuna

    root = tmp_path / "runs"
    runs = [fake_run(root, "sasrec-id", "sasrec", "id", None, 0.025, 50_000, epochs=4)]
    for encoder, params, recall in [("clip-rn50", 9_000_000, 0.024), ("clip-vit-b32", 14_000_000, 0.026),
                                    ("swin-t", 28_000_000, 0.027)]:
        runs.append(fake_run(root, f"sasrec-pixels-{encoder}", "sasrec", "pixels", encoder, recall, params, epochs=3))
    results = load_results(runs)

    figure = plots.encoder_figure(results, "sasrec")
    bars_axis, line_axis = figure.axes
    assert len(bars_axis.patches) == 3 and len(line_axis.lines) == 2  # Recall@10 line + dashed ID line
    assert line_axis.lines[1].get_linestyle() == "--" and list(line_axis.lines[1].get_ydata()) == [2.5, 2.5]
    assert [t.get_text() for t in bars_axis.get_xticklabels()] == [  # each point names its run
        f"{e}\nsasrec-pixels-{e}" for e in ("clip-rn50", "clip-vit-b32", "swin-t")]
    assert line_axis.lines[1].get_label() == "IDNet test Recall@10 (2.500, sasrec-id)"
    assert plots.encoder_figure(results[:2], "sasrec") is None  # one encoder is not a comparison

    rows = [(Path(r["run"]).name, [json.loads(line) for line in (Path(r["run"]) / "metrics.jsonl").read_text().splitlines()])
            for r in results]
    curves = plots.learning_curves(rows)
    assert [len(axis.lines) for axis in curves.axes] == [4, 4]
    curves = plots.learning_curves(rows, losses=["bpr", "softmax", "softmax", "bpr"])  # a panel per loss
    assert [(axis.get_title(), len(axis.lines)) for axis in curves.axes] == [
        ("training loss (bpr)", 2), ("training loss (softmax)", 2), ("validation NDCG@10", 4)]

    study_dir = tmp_path / "study"
    study_dir.mkdir()
    study = optuna.create_study(study_name=tune.STUDY_NAME, storage=f"sqlite:///{study_dir / 'study.db'}",
                                direction="maximize")
    for value in (0.1, 0.3, 0.2):
        trial = study.ask()
        trial.report(value, 1)
        study.tell(trial, value)
    trial = study.ask()
    trial.report(0.05, 1)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    objective = plots.study_figure(study, "study")
    assert len(objective.axes[0].lines) == 3  # complete, pruned, best so far
    assert list(objective.axes[0].lines[2].get_ydata()) == pytest.approx([10.0, 30.0, 30.0, 30.0])  # carried to trial 3

    out = tmp_path / "report"
    assert main(["report", *map(str, runs), str(study_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| clip-vit-b32 | Recall@10 | 2.600 |" in printed and "| 3 | pruned |" in printed
    for name in ("encoders-sasrec.png", "curves.png", "study-study.png", "report.md"):
        assert (out / name).is_file(), name
    assert Image.open(out / "encoders-sasrec.png").size == (825, 495)  # 7.5 x 4.5 in at 110 dpi


# --- export ----------------------------------------------------------------------------------
def test_export_reproduces_recommend(data, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", "sasrec", "--out", str(run), "--epochs", "1",
                 *sum((["--set", s] for s in TINY if not s.startswith("train.epochs")), [])]) == 0
    out = tmp_path / "vectors"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    items, users = np.load(out / "items.npy"), np.load(out / "users.npy")
    item_tokens = (out / "items.txt").read_text().split()
    user_tokens = (out / "users.txt").read_text().split()
    assert items.shape == (20, 16) and users.shape == (60, 16) and len(item_tokens) == 20 and len(user_tokens) == 60
    assert json.loads((out / "export.json").read_text())["score"] == "dot"

    chosen = ["u1", "u2", "u17", "u60"]
    assert main(["recommend", "--run", str(run), *sum((["--user", u] for u in chosen), []), "-k", "5",
                 "--out", str(tmp_path / "recs.csv")]) == 0
    recommended = list(csv.DictReader((tmp_path / "recs.csv").open()))
    prepared = PreparedData(data)
    for token in chosen:
        u = user_tokens.index(token)
        scores = users[u] @ items.T
        seen = prepared.item_seq[prepared.user_ptr[u + 1] : prepared.user_ptr[u + 2]]
        scores[np.asarray(seen) - 1] = -np.inf
        top = [item_tokens[i] for i in np.argsort(-scores, kind="stable")[:5]]
        assert top == [r["item_id"] for r in recommended if r["user_id"] == token]
        expected = [float(r["score"]) for r in recommended if r["user_id"] == token]
        assert np.sort(scores)[::-1][:5] == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_export_refuses_a_backbone_that_does_not_score_by_dot_product(data, tmp_path):
    from pixelrec.jobs.extract import import_features

    tokens = PreparedData(data).item_tokens[1:]
    (tmp_path / "order.txt").write_text("".join(f"{t}\n" for t in tokens))
    np.save(tmp_path / "source.npy", np.random.default_rng(0).normal(size=(len(tokens), 8)).astype(np.float32))
    import_features(data, tmp_path / "source.npy", tmp_path / "order.txt", tmp_path / "features.npy")
    common = ["--data", str(data), "--model", "visrank", "--items", "features",
              "--set", f"items.features={tmp_path / 'features.npy'}", "--set", "items.project=false",
              "--set", "train.progress=false"]
    assert main(["train", *common, "--out", str(tmp_path / "maximum")]) == 0
    with pytest.raises(UserError, match="does not score items by a dot product"):
        from pixelrec.jobs.export import export_vectors

        export_vectors(tmp_path / "maximum", tmp_path / "nope")
    assert not (tmp_path / "nope" / "export.json").exists()
    assert main(["train", *common, "--set", "model.aggregation=average", "--out", str(tmp_path / "average")]) == 0
    assert main(["export", "--run", str(tmp_path / "average"), "--out", str(tmp_path / "vectors")]) == 0
    assert np.load(tmp_path / "vectors/items.npy").shape == (20, 8)


def test_weights_pattern_gives_each_pixels_cell_its_encoders_file(data, tmp_path):
    for encoder in ("test_vit", "test_resnet"):
        (tmp_path / f"{encoder}.pt").write_bytes(b"")
    spec = BenchSpec(str(data), cells_of(["sasrec"], ["id", "pixels"], ["test_vit", "test_resnet"]), sets=TINY,
                     weights=str(tmp_path / "{encoder}.pt"))
    chosen = {p.name: p.config.items.image and p.config.items.image.encoder_weights for p in matrix.plan(spec)}
    assert chosen == {"sasrec-id": None, "sasrec-pixels-test_vit": str(tmp_path / "test_vit.pt"),
                      "sasrec-pixels-test_resnet": str(tmp_path / "test_resnet.pt")}


def test_a_missing_weights_file_stops_the_bench_before_any_cell_runs(data, tmp_path, monkeypatch, capsys):
    (tmp_path / "test_vit.pt").write_bytes(b"")
    calls = counting(monkeypatch, matrix)
    out = tmp_path / "bench"
    assert main(["bench", "--data", str(data), "--models", "sasrec", "--items", "pixels", "--encoders", "test_resnet",
                 "--weights", str(tmp_path / "{encoder}.pt"), "--out", str(out)]) != 0
    assert f"cell sasrec-pixels-test_resnet: {tmp_path / 'test_resnet.pt'} not found" in capsys.readouterr().err
    spec = BenchSpec(str(data), cells_of(["mf", "sasrec"], ["id", "pixels"], ["test_vit", "test_resnet"]), sets=TINY,
                     weights=str(tmp_path / "{encoder}.pt"))
    with pytest.raises(UserError, match=f"cell mf-pixels-test_resnet: {tmp_path / 'test_resnet.pt'} not found"):
        run_matrix(spec, out, log=lambda line: None)
    assert calls == [] and not out.exists()
    spec.weights = str(tmp_path / "test_vit.pt")  # one file for two encoders
    with pytest.raises(UserError, match=r"one file for 2 encoders \(test_resnet, test_vit\); put \{encoder\}"):
        run_matrix(spec, out, log=lambda line: None)


def test_shared_item_keys_apply_to_the_cells_that_take_them_and_a_useless_one_stops_the_bench():
    from pixelrec.bench.matrix import BenchSpec, cells_of, plan

    cells = cells_of(["sasrec"], ["id", "pixels"], ["test_vit"])
    planned = {p.name: p.config for p in plan(BenchSpec(data="unused", cells=cells, sets=["items.image.tune_last=all"]))}
    assert planned["sasrec-pixels-test_vit"].items.image.tune_last == "all" and planned["sasrec-id"].items.image is None
    with pytest.raises(UserError, match="loss.logq applies to no cell of the matrix"):
        plan(BenchSpec(data="unused", cells=cells_of(["sasrec"], ["id"], []), sets=["loss.logq=true"]))


def test_the_readme_bench_line_plans_every_cell_and_inputs_are_checked_before_any_cell_runs(data, tmp_path,
                                                                                          monkeypatch, capsys):
    from pixelrec.bench.matrix import DEFAULT_ENCODER, plan

    planned = plan(BenchSpec(str(data), cells_of(["mf", "sasrec"], ["id", "pixels"], []), sets=TINY))  # no --encoders
    assert [(p.name, p.config is not None) for p in planned] == [
        ("mf-id", True), (f"mf-pixels-{DEFAULT_ENCODER}", True), ("sasrec-id", True),
        (f"sasrec-pixels-{DEFAULT_ENCODER}", True)]
    assert planned[1].config.items.image.encoder == DEFAULT_ENCODER

    calls = counting(monkeypatch, matrix)
    out = tmp_path / "bench"
    tiny = sum((["--set", s] for s in TINY), [])
    assert main(["bench", "--data", str(data), "--models", "mf", "--items", "features,text", "--out", str(out), *tiny]) == 2
    err = one_line(capsys.readouterr().err)  # every cell lacks an input: one line in bench's own flags, nothing run
    assert err == ("pixelrec: error: no cell of the matrix can run: mf-features: features cells need a feature file: "
                   "give --features PATTERN, e.g. --features feats/{encoder}.npy (written by `pixelrec extract`) "
                   "(and 1 more cells that cannot run)")
    assert calls == [] and not out.exists()

    assert main(["bench", "--data", str(data), "--models", "mf", "--items", "id,features", "--features",
                 str(tmp_path / "{encoder}.npy"), "--encoders", "test_vit", "--out", str(out), *tiny]) == 1
    captured = capsys.readouterr()
    assert calls == [("mf-id", False)]  # the features cell failed before it ran, the ID cell ran
    assert f"[2/2] mf-features-test_vit: failed ({tmp_path / 'test_vit.npy'} not found: write it with `pixelrec " \
           f"extract --encoder test_vit --out {tmp_path / 'test_vit.npy'}`)" in captured.out
    assert "| ID | Recall@10 |" in captured.out and "1 failed" in captured.out
    assert main(["bench", "--data", str(data), "--models", "mf", "--items", "pixels", "--encoders", "test_vitt",
                 "--out", str(tmp_path / "typo"), *tiny]) == 2
    assert one_line(capsys.readouterr().err).startswith(
        "pixelrec: error: no cell of the matrix can run: mf-pixels-test_vitt: --encoders: unknown image encoder "
        "'test_vitt'; did you mean 'test_vit'?")
    assert main(["bench", "--data", str(data), "--models", "mf", "--items", "id,features", "--out", str(out), *tiny]) == 1
    assert "[2/2] mf-features: failed (features cells need a feature file: give --features PATTERN, e.g. --features " \
           "feats/{encoder}.npy" in capsys.readouterr().out  # a cell's line names bench's flags, as its errors do


def test_a_bench_whose_every_cell_fails_prints_no_table(data, tmp_path, monkeypatch, capsys):
    interrupt_at(monkeypatch, "mf", 0, RuntimeError)
    out = tmp_path / "bench"
    code = main(["bench", "--data", str(data), "--models", "mf", "--items", "id", "--out", str(out),
                 *sum((["--set", s] for s in TINY), [])])
    captured = capsys.readouterr()
    assert code == 2 and "| Item encoder |" not in captured.out
    assert one_line(captured.err) == (f"pixelrec: error: no cell finished: mf-id failed: RuntimeError: boom (every "
                                      f"cell's status: {out / 'results.md'})")
