"""What a run reports: train.log (banner, epochs, why it stopped), console output without carriage
returns off a terminal, TensorBoard events, metrics.csv; and the CPU threads a run takes."""

from __future__ import annotations

import csv
import json
import logging
import os
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import tiny_config
from pixelrec import cli, progress, threads
from pixelrec.evaluation.evaluator import rank_targets
from pixelrec.items.base import ItemEncoder
from pixelrec.training.trainer import Trainer, train
from test_pixels import colour_store, pixel_config  # noqa: F401 - the pixel tests' stand-in image store


def _log_lines(out) -> list[str]:
    """train.log's messages, without their time stamps and levels."""
    return [line.split(" ", 3)[3] for line in (out / "train.log").read_text().splitlines()]


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_log_file_holds_the_banner_each_epoch_and_why_training_stopped(tiny_data, tmp_path, monkeypatch, capsys):
    original = Trainer.validate

    def declining(self):  # every evaluation after the first is worse: patience runs out
        out = original(self)
        out["valid"] = {k: v / self.state.epoch for k, v in out["valid"].items()}
        return out

    monkeypatch.setattr(Trainer, "validate", declining)
    monkeypatch.setattr(progress, "PLAIN_INTERVAL", 0.0)  # would print progress at every step, were progress on
    out = tmp_path / "run"
    results = train(tiny_config(tiny_data, "sasrec", train={"epochs": 10, "patience": 2}), out)
    assert results["stopped"] == "early stopping" and results["best_epoch"] == 1

    lines = _log_lines(out)
    assert lines[0] == f"run {out.resolve()} (new run)"
    assert f", device cpu, {torch.get_num_threads()} thread" in lines[1]
    assert lines[2].startswith(f"dataset tiny ({tiny_data.resolve()}): 120 users, 40 items, 1,440 interactions")
    assert lines[3].startswith("model sasrec, items id, loss bpr, profile default; ")
    assert f"{results['trainable_parameters']:,} trainable parameters" in lines[3]
    assert lines[4].startswith("per epoch ") and "steps of 32; up to 10 epochs" in lines[4]
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/10", "epoch 2/10", "epoch 3/10"]
    assert epochs[0].endswith("(best)") and not epochs[1].endswith("(best)")
    assert f"loss {_rows(out)[2]['loss']:.4f}" in epochs[2]
    stop = [line for line in lines if line.startswith("early stopping")]
    assert stop == [f"early stopping at epoch 3/10: valid NDCG@10 did not improve for 2 evaluations "
                    f"(train.patience 2); best epoch 1 (NDCG@10 {100 * _rows(out)[0]['valid']['NDCG@10']:.3f}%)"]
    assert lines[-1].startswith("done: 3 epochs, best epoch 1;")

    printed = capsys.readouterr()
    assert printed.out.splitlines() == lines  # the same lines on the console, and no progress (train.progress false)
    assert printed.err == ""
    assert logging.getLogger("pixelrec").handlers == []  # the run's handlers are gone with the run


def test_progress_off_a_terminal_is_plain_lines(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(progress, "PLAIN_INTERVAL", 0.0)
    out = tmp_path / "run"
    train(tiny_config(tiny_data, "sasrec", train={"epochs": 2, "progress": True}), out)
    printed = capsys.readouterr()
    assert "\r" not in printed.out + printed.err
    lines = [line for line in printed.out.splitlines() if " steps (" in line]
    assert lines and lines[0].startswith("epoch 1/2: 1/")
    assert any(line.startswith("epoch 2/2: ") and "ETA" in line for line in lines)
    assert any(line.startswith("score valid users: ") for line in printed.out.splitlines())
    assert not any(" steps (" in line for line in _log_lines(out))  # train.log keeps the run's story only


def test_tensorboard_events_hold_each_epoch_and_the_final_metrics(tiny_data, tmp_path):
    out = tmp_path / "run"
    results = train(tiny_config(tiny_data, "sasrec", train={"epochs": 3}), out)
    events = EventAccumulator(str(out))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "valid/NDCG@10", "valid/Recall@10", "lr/recommender"} <= tags
    assert "train/images_per_step" not in tags  # item IDs: no images
    rows = _rows(out)
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert [e.value for e in events.Scalars("valid/NDCG@10")] == pytest.approx(
        [r["valid"]["NDCG@10"] for r in rows], rel=1e-6)
    assert events.Scalars("lr/recommender")[0].value == pytest.approx(3e-3)
    assert events.Scalars("final/test/NDCG@10")[0].value == pytest.approx(results["test"]["NDCG@10"], rel=1e-6)


@pytest.mark.usefixtures("colour_store")
def test_pixel_runs_record_images_per_step(tiny_data, tmp_path):
    out = tmp_path / "run"
    results = train(pixel_config(tiny_data, epochs=3, max_steps=6), out)
    events = EventAccumulator(str(out))
    events.Reload()
    images = events.Scalars("train/images_per_step")
    assert [e.step for e in images] == [1, 2]
    assert [e.value for e in images] == pytest.approx([r["items_encoded_per_step"] for r in _rows(out)], rel=1e-6)
    assert any(line.startswith("stopped at epoch 2/3: train.max_steps 6 reached;") for line in _log_lines(out))
    assert results["images_per_step"] > 0


def test_without_tensorboard_there_are_no_events_and_one_line_says_so(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    out = tmp_path / "run"
    train(tiny_config(tiny_data, "sasrec", train={"epochs": 1}), out)
    assert not list(out.glob("events.out.tfevents.*"))
    assert sum("tensorboard is not installed" in line for line in _log_lines(out)) == 1


def test_metrics_csv_is_flat_and_follows_a_resume(tiny_data, tmp_path):
    config = tiny_config(tiny_data, "sasrec", train={"epochs": 4, "patience": 10})
    out = tmp_path / "run"

    def interrupt(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(config, out, on_epoch=interrupt).fit()
    last = out / "last.pt"
    assert _log_lines(out)[-1] == f"interrupted after 2 epochs and 8 steps; {last} is the checkpoint to resume from"
    train(config, out, resume=True)

    with (out / "metrics.csv").open() as handle:
        table = list(csv.DictReader(handle))
    rows = _rows(out)
    assert [int(r["epoch"]) for r in table] == [1, 2, 3, 4] == [r["epoch"] for r in rows]
    assert {"loss", "step", "valid.NDCG@10", "valid.Recall@20"} <= set(table[0])
    assert [float(r["valid.NDCG@10"]) for r in table] == [r["valid"]["NDCG@10"] for r in rows]
    starts = [line for line in _log_lines(out) if line.startswith("run ")]
    assert starts == [f"run {out.resolve()} (new run)", f"run {out.resolve()} (resumed after epoch 2 (step 8))"]
    events = EventAccumulator(str(out))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]


def test_catalogue_and_scoring_report_progress_only_when_asked(tiny_data, tmp_path, monkeypatch, caplog):
    class Zeros(ItemEncoder):
        def __init__(self) -> None:
            super().__init__(n_items=50, embedding_size=4)
            self.weight = torch.nn.Parameter(torch.zeros(4))

        def forward(self, item_ids, inputs=None):
            return self.weight.expand(len(item_ids), 4)

    monkeypatch.setattr(progress, "PLAIN_INTERVAL", 0.0)
    caplog.set_level(logging.INFO, logger="pixelrec")
    encoder = Zeros()
    encoder.catalogue(batch_size=20)
    assert caplog.messages == []
    with progress.progress_scope(True):
        encoder.catalogue(batch_size=20)
    assert [m.split(",")[0] for m in caplog.messages] == ["encode items: 20/50 items (40%)",
                                                          "encode items: 40/50 items (80%)",
                                                          "encode items: 50/50 items (100%)"]
    caplog.clear()
    trainer = Trainer(tiny_config(tiny_data, "sasrec"), tmp_path / "run")
    with progress.progress_scope(True):
        rank_targets(trainer.model, trainer.data, "valid", 10, batch_size=50)
    scored = [m for m in caplog.messages if m.startswith("score valid users")]
    assert [m.split(",")[0] for m in scored] == ["score valid users: 50/120 users (42%)",
                                                 "score valid users: 100/120 users (83%)",
                                                 "score valid users: 120/120 users (100%)"]


# --- threads ------------------------------------------------------------------------------
@pytest.fixture
def torch_threads():
    """Restore torch's thread count after a test that changes it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_thread_choice_follows_the_affinity_mask(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5})
    assert threads.usable_cpus() == 3 and threads.choose_threads() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {7})
    assert threads.choose_threads() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four ranks on this machine share its CPUs
    assert threads.choose_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own setting wins over the mask
    assert threads.choose_threads() == 3
    assert threads.choose_threads(5) == 5


def test_a_run_takes_no_more_threads_than_its_cpus_and_train_threads_wins(tiny_data, tmp_path, monkeypatch,
                                                                        torch_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    torch.set_num_threads(2)
    trainer = Trainer(tiny_config(tiny_data, "sasrec"), tmp_path / "auto")
    assert trainer.threads == 1 == torch.get_num_threads()
    assert json.loads((tmp_path / "auto" / "environment.json").read_text())["threads"] == 1
    trainer = Trainer(tiny_config(tiny_data, "sasrec", train={"threads": 2}), tmp_path / "set")
    assert trainer.threads == 2 == torch.get_num_threads()


def test_the_command_line_limits_idle_spinning_unless_told_otherwise(monkeypatch, capsys):
    monkeypatch.delenv(threads.WAIT_POLICY, raising=False)
    monkeypatch.delenv(threads.SPIN_COUNT, raising=False)
    assert cli.main([]) == 2
    assert os.environ[threads.SPIN_COUNT] == threads.IDLE_SPIN
    monkeypatch.setenv(threads.SPIN_COUNT, "50")
    cli.main([])
    assert os.environ[threads.SPIN_COUNT] == "50"
    monkeypatch.delenv(threads.SPIN_COUNT)
    monkeypatch.setenv(threads.WAIT_POLICY, "ACTIVE")  # a policy the user chose keeps its own spin count
    cli.main([])
    assert threads.SPIN_COUNT not in os.environ


def test_the_command_line_starts_before_torch_loads_openmp():
    """The spin limit only works when set before torch loads OpenMP: the CLI's start must not import torch."""
    import subprocess

    code = "import sys, pixelrec.cli; print('torch' in sys.modules, pixelrec.threads.limit_idle_spin())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True"]


def test_log_every_prints_a_line_per_interval_with_loss_learning_rate_and_speed(tiny_data, tmp_path, colour_store):
    import re

    out = tmp_path / "run"
    train(pixel_config(tiny_data, log_every=2, progress=False), out)
    lines = [line for line in _log_lines(out) if " step " in line]
    steps = _rows(out)[0]["steps"]
    assert steps >= 4 and len(lines) == steps // 2
    pattern = (r"epoch 1/1 step (\d+)/(\d+): loss (\d+\.\d{4}), lr recommender 3\.00e-03, encoder 3\.00e-03, "
               r"[\d,]+ examples/s, [\d,]+ images/s")
    parsed = [re.fullmatch(pattern, line) for line in lines]
    assert all(parsed), lines
    assert [int(m[1]) for m in parsed] == list(range(2, steps + 1, 2)) and {int(m[2]) for m in parsed} == {steps}
    if steps % 2 == 0:  # equal intervals: their mean is the epoch's mean loss
        interval_mean = sum(float(m[3]) for m in parsed) / len(parsed)
        assert interval_mean == pytest.approx(_rows(out)[0]["loss"], abs=2e-4)
    quiet = tmp_path / "quiet"
    train(pixel_config(tiny_data, progress=False), quiet)  # log_every 0: epoch lines only
    assert not [line for line in _log_lines(quiet) if " step " in line]
