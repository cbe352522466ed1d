"""Trainer behaviour: run directory, exact resume, NaN handling, the train/evaluate commands."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import tiny_config
from pixelrec.cli import main
from pixelrec.errors import UserError
from pixelrec.training import trainer as trainer_module
from pixelrec.training.optimizer import lr_factor
from pixelrec.training.trainer import Trainer, train


def test_run_directory_is_complete(tiny_data, tmp_path):
    out = tmp_path / "run"
    results = train(tiny_config(tiny_data, "sasrec", train={"epochs": 2}), out)
    for name in ("config.yaml", "environment.json", "metrics.jsonl", "best.pt", "last.pt", "results.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["epochs_run"] == 2 and saved["model"] == "sasrec" and saved["items"] == "id"
    assert set(saved["test"]) >= {"Recall@10", "NDCG@10", "MRR@10", "HR@10", "Recall@5", "NDCG@20"}
    assert saved["trainable_parameters"] > 0 and saved["train_seconds_per_step"] > 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("schedule", [{}, {"lr_schedule": "cosine", "warmup_steps": 3}], ids=["constant", "cosine"])
def test_resume_after_interruption_equals_uninterrupted(tiny_data, tmp_path, monkeypatch, schedule):
    config = tiny_config(tiny_data, "sasrec", train={"epochs": 4, "patience": 10, **schedule})
    whole = train(config, tmp_path / "whole")

    original = Trainer.train_epoch

    def interrupted(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "cut")
    monkeypatch.setattr(Trainer, "train_epoch", original)
    resumed = train(config, tmp_path / "cut", resume=True)

    def rows(run):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    assert rows("cut") == rows("whole")
    assert resumed["test"] == whole["test"] and resumed["best_epoch"] == whole["best_epoch"]


def test_lr_factor_by_hand():
    assert [lr_factor(s, 10, "constant") for s in (0, 5, 20)] == [1.0, 1.0, 1.0]
    assert [lr_factor(s, 10, "constant", warmup=4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(0, 10, "cosine") == 1.0 and lr_factor(5, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(2, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
    assert lr_factor(10, 10, "cosine") == pytest.approx(0.0, abs=1e-12) and lr_factor(12, 10, "cosine") == lr_factor(10, 10, "cosine")
    # a warm-up of 2 steps, then the cosine over the remaining 8: step 4 is a quarter of the way along
    assert lr_factor(1, 10, "cosine", warmup=2) == 1.0 and lr_factor(0, 10, "cosine", warmup=2) == 0.5
    assert lr_factor(4, 10, "cosine", warmup=2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 8)))


def test_a_cosine_run_ends_at_the_rate_of_its_last_planned_step(tiny_data, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny_data, "sasrec", train={"epochs": 2, "lr_schedule": "cosine", "lr": 4e-3}), out)
    assert "learning rate 0.004: cosine to 0 at step 8" in (out / "train.log").read_text()
    last = torch.load(out / "last.pt", weights_only=True)
    steps, rates = last["state"]["step"], [group["lr"] for group in last["optimizer"]["param_groups"]]
    assert steps == 8 and json.loads((out / "results.json").read_text())["epochs_run"] == 2  # 4 steps an epoch
    # the last of 8 planned steps: 0.5 * (1 + cos(7/8 pi)) of the base rate, in every group
    assert rates == [pytest.approx(4e-3 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))] * len(rates)


def test_a_cosine_run_refuses_a_new_length_on_resume(tiny_data, tmp_path):
    config = tiny_config(tiny_data, "sasrec", train={"epochs": 1, "lr_schedule": "cosine"})
    train(config, tmp_path / "run")
    longer = tiny_config(tiny_data, "sasrec", train={"epochs": 2, "lr_schedule": "cosine"})
    with pytest.raises(UserError, match=r"cannot change on resume=True: train\.epochs \(1 -> 2\)"):
        train(longer, tmp_path / "run", resume=True)
    constant = tiny_config(tiny_data, "sasrec", train={"epochs": 1})
    train(constant, tmp_path / "constant")
    assert train(tiny_config(tiny_data, "sasrec", train={"epochs": 2}), tmp_path / "constant", resume=True)["epochs_run"] == 2


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = {"n": 0}
    original = trainer_module.Recommender.forward

    def poisoned(self, batch):
        calls["n"] += 1
        result = original(self, batch)
        if calls["n"] > 5:  # second step of the second epoch (4 steps per epoch)
            result["loss"] = result["loss"] * float("nan")
        return result

    monkeypatch.setattr(trainer_module.Recommender, "forward", poisoned)
    with pytest.raises(UserError, match="loss became nan at epoch 2"):
        train(tiny_config(tiny_data, "sasrec", train={"epochs": 3}), out)
    checkpoint = torch.load(out / "last.pt", weights_only=True)
    assert checkpoint["state"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


def test_max_steps_stops_early_and_still_writes_results(tiny_data, tmp_path):
    results = train(tiny_config(tiny_data, "sasrec", train={"epochs": 5, "max_steps": 3}), tmp_path / "run")
    assert results["steps"] == 3 and results["stopped"] == "max_steps"


def test_existing_run_is_not_overwritten(tiny_data, tmp_path):
    config = tiny_config(tiny_data, "sasrec", train={"epochs": 1})
    train(config, tmp_path / "run")
    with pytest.raises(UserError, match="already holds a run"):
        train(config, tmp_path / "run")


def test_train_and_evaluate_commands(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data", str(tiny_data), "--model", "sasrec", "--epochs", "1", "--out", str(out),
                 "--set", "model.embedding_size=16", "--set", "model.inner_factor=2", "--set", "train.progress=false"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Recall@10" in printed
    assert main(["evaluate", "--run", str(out), "--split", "test"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "results.json").read_text())["test"]
    assert evaluated["test"] == pytest.approx(saved, rel=1e-3)  # printed with 4 significant digits


@pytest.mark.parametrize("argv,message", [
    (["--set", "train.lrr=1"], "unknown key train.lrr; did you mean 'lr'?"),
    (["--set", "train.epochs=many"], "train.epochs: expected int, got 'many'"),
    (["--set", "model.n_layerz=2"], "unknown key model.n_layerz for sasrec; did you mean 'n_layers'?"),
    (["--set", "loss.name=hinge"], "loss.name: 'hinge' is not one of"),
    (["--set", "trian.lr=1"], "unknown section 'trian'; did you mean 'train'?"),
    (["--set", "lr=1"], "expected section.key=value"),
    (["--model", "sasrek"], "unknown model 'sasrek'; did you mean 'sasrec'?"),
])
def test_configuration_errors_are_one_clear_line(tiny_data, tmp_path, capsys, argv, message):
    code = main(["train", "--data", str(tiny_data), "--model", "sasrec", "--out", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--model", "pop", "--out", str(tmp_path / "r")]) == 2
    assert "not a prepared dataset" in capsys.readouterr().err
