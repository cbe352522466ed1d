"""Several ranks: the global batch shared out, DDP for every backbone, two gloo ranks under torchrun
training, evaluating and resuming like one process, cross-rank in-batch negatives, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from conftest import patterned_sequences, write_prepared
from helpers import tiny_config, trainable_backbones
from pixelrec import distributed
from pixelrec.cli import main
from pixelrec.data.prepared import PreparedData
from pixelrec.data.views import TrainingView, batch_rng
from pixelrec.distributed import Job
from pixelrec.training.trainer import Trainer
from test_vinet import with_images

TINY = ["--model", "sasrec", "--device", "cpu", "--set", "train.progress=false", "--set", "model.embedding_size=32",
        "--set", "train.batch_size=32"]


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node N -m pixelrec ARGS` on gloo, one thread per rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "pixelrec", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)


def epoch_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def close(a: dict, b: dict, tol: float = 1e-6) -> bool:
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= tol for k in a)


# --- the global batch, shared out -----------------------------------------------------------
@pytest.mark.parametrize("view,negatives,in_batch", [("sequence", 1, False), ("masked", 0, True), ("pair", 1, True)])
def test_rank_shares_reassemble_the_one_process_batch(tiny_data, view, negatives, in_batch):
    data = PreparedData(tiny_data)
    built = TrainingView(data, view, 6, negatives=negatives, in_batch=in_batch)
    examples = np.arange(37)
    whole = built.batch(examples, batch_rng(0, 0, 3))
    shares = [built.batch(examples, batch_rng(0, 0, 3), Job(r, 3)) for r in range(3)]
    for name in ("users", "context", "targets", "negatives", "mask"):
        if getattr(whole, name) is not None:
            assert torch.equal(torch.cat([getattr(s, name) for s in shares]), getattr(whole, name)), name
    assert [len(s) for s in shares] == [12, 12, 13]
    # the scales make the mean of per-rank mean losses the global batch's mean
    counts = [int((s.targets > 0).sum()) for s in shares]
    for share, count in zip(shares, counts):
        assert share.loss_scale == pytest.approx(count / sum(counts) * 3)
    if in_batch:
        shared = built.batch(examples, batch_rng(0, 0, 3), Job(1, 3), shared_candidates=True)
        assert torch.equal(shared.candidates, whole.candidates)
        assert len(shares[1].candidates) < len(whole.candidates)  # its own rows' targets only
        assert shared.candidate_mask.shape == (counts[1], len(whole.candidates))


def test_every_backbone_trains_under_data_parallel(tiny_data, tmp_path):
    """DDP refuses a model with a trainable parameter that gets no gradient; a one-rank group shows it."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        for model in trainable_backbones():
            trainer = Trainer(tiny_config(tiny_data, model, train={"epochs": 1, "max_steps": 3}), tmp_path / model)
            assert isinstance(trainer.net, torch.nn.parallel.DistributedDataParallel), model
            result = trainer.fit()
            assert result["steps"] == 3 and np.isfinite(result["test"]["NDCG@10"]), model
    finally:
        dist.destroy_process_group()
    assert distributed.current() == distributed.SINGLE


# --- two gloo ranks under torchrun ----------------------------------------------------------
def test_two_ranks_train_and_evaluate_like_one_process(tiny_data, tmp_path):
    args = ["train", "--data", str(tiny_data), *TINY, "--epochs", "2", "--set", "model.dropout=0"]
    two = torchrun([*args, "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    one_rows, two_rows = epoch_rows(tmp_path / "one"), epoch_rows(tmp_path / "two")
    assert [r["epoch"] for r in two_rows] == [1, 2]  # one writer: no line twice
    for a, b in zip(one_rows, two_rows):
        assert a["steps"] == b["steps"] and b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert close(a["valid"], b["valid"])
    assert close(results(tmp_path / "one")["test"], results(tmp_path / "two")["test"])
    def files(run):  # TensorBoard event file names carry a time and a host name
        return sorted(p.name for p in (tmp_path / run).iterdir() if not p.name.startswith("events.out.tfevents"))

    assert files("two") == files("one")
    assert two.stdout.count('"run"') == 1  # only rank 0 reports

    # evaluation shared out over two ranks gives exactly the single process's metrics
    shared = torchrun(["evaluate", str(tmp_path / "two"), "--split", "test"])
    assert shared.returncode == 0, shared.stderr[-3000:]
    evaluated = json.loads(shared.stdout)
    assert evaluated.pop("checkpoint") == {"file": "best.pt", "epoch": results(tmp_path / "two")["best_epoch"],
                                           "run_finished": True}
    assert evaluated == {"test": pytest.approx(results(tmp_path / "two")["test"], rel=1e-3)}  # printed to 4 digits


def test_cross_rank_negatives_match_one_process(tiny_data, tmp_path):
    args = ["train", "--data", str(tiny_data), *TINY, "--epochs", "2", "--loss", "softmax", "--set", "model.dropout=0",
            "--set", "loss.across_ranks=true"]
    two = torchrun([*args, "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    for a, b in zip(epoch_rows(tmp_path / "one"), epoch_rows(tmp_path / "two")):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)  # same candidates, gradients through the gather
        assert close(a["valid"], b["valid"])


def test_resume_under_two_ranks_equals_uninterrupted(tiny_data, tmp_path):
    """Dropout on: each rank's random stream is checkpointed and restored."""
    args = ["train", "--data", str(tiny_data), *TINY]
    whole = torchrun([*args, "--epochs", "2", "--out", str(tmp_path / "whole")])
    cut = torchrun([*args, "--epochs", "1", "--out", str(tmp_path / "cut")])
    assert whole.returncode == 0 and cut.returncode == 0, whole.stderr[-2000:] + cut.stderr[-2000:]
    resumed = torchrun(["train", "--resume", str(tmp_path / "cut"), "--epochs", "2"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert strip(epoch_rows(tmp_path / "cut")) == strip(epoch_rows(tmp_path / "whole"))
    assert results(tmp_path / "cut")["test"] == results(tmp_path / "whole")["test"]


def test_a_failing_job_ends_with_one_line_per_rank(tiny_data, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "last.pt").write_bytes(b"")
    failed = torchrun(["train", "--data", str(tiny_data), *TINY, "--out", str(tmp_path / "taken")])
    assert failed.returncode != 0
    for rank in (0, 1):
        assert f"pixelrec: error: [rank {rank} of 2] {tmp_path / 'taken'}: already holds a run" in failed.stderr


def test_pixels_with_a_prefix_cache_under_two_ranks(tmp_path):
    """Rank 0 builds the frozen-prefix cache once; both ranks train the top block from it with
    negatives shared across ranks, like one process; the catalogue is encoded half by each rank."""
    data = with_images(write_prepared(tmp_path / "data", patterned_sequences(30, 20, 6)), 20)
    args = ["train", "--data", str(data), *TINY, "--epochs", "2", "--items", "pixels", "--encoder", "test_vit",
            "--loss", "softmax", "--set", "loss.across_ranks=true", "--set", "model.dropout=0",
            "--set", "items.image.image_size=32", "--set", "items.image.tune_last=1", "--set", "train.batch_size=16",
            "--set", "items.image.cache=prefix", "--set", f"items.cache_dir={tmp_path / 'cache'}"]
    two = torchrun([*args, "--out", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    for a, b in zip(epoch_rows(tmp_path / "one"), epoch_rows(tmp_path / "two")):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert close(a["valid"], b["valid"], tol=1e-3)


def test_a_killed_rank_ends_the_job_and_the_run_resumes(tiny_data, tmp_path):
    """SIGKILL one rank mid-training: the job ends within seconds (no rank left waiting in a
    collective) and the run directory resumes from its last checkpoint."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    job = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                            "-m", "pixelrec", "train", "--data", str(tiny_data), *TINY, "--epochs", "500",
                            "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / "last.pt").exists()
        os.kill(worker_of(job.pid, rank=1), signal.SIGKILL)
        killed = time.monotonic()
        assert job.wait(timeout=60) != 0
        assert time.monotonic() - killed < 30
    finally:
        job.kill()
    done = len(epoch_rows(out))
    resumed = torchrun(["train", "--resume", str(out), "--epochs", str(done + 1)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["epoch"] for r in epoch_rows(out)] == list(range(1, done + 2))
    assert results(out)["epochs_run"] == done + 1


def worker_of(launcher: int, rank: int) -> int:
    """The pid of the torchrun worker with this RANK, among the launcher's children."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environment = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if parent == launcher and f"RANK={rank}".encode() in environment:
            return int(entry.name)
    raise AssertionError(f"no worker with RANK={rank} under pid {launcher}")
