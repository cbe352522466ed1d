"""kill -9 at random points of `prepare`, `train`, `extract` and `embed`, then the same command again
(`train --resume` first): nothing is lost, nothing half-written is trusted, and the end result is
byte-for-byte (weights: bit-for-bit) the uninterrupted run's.

A "point" is the Nth call of a pixelrec function in the command's process, drawn at random (seeded; set
PIXELREC_FAULT_SEED to explore others) from the calls an uninterrupted run makes, so the kills land
inside the work wherever it spends its calls, not where a timer happens to fall."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from data_fixtures import one_line, run_cli, tree_digest
from pixelrec.errors import UserError
from pixelrec.storage.feature_files import load_features

ROOT = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("PIXELREC_FAULT_SEED", "0"))
STRETCHES = (0.0, 0.5, 0.85, 1.0)  # one kill in each

# Counts calls into pixelrec's own functions (main process only: a forked worker carries the hook) and
# kills the process with SIGKILL at the Nth; N = 0 runs to the end. The count goes to argv[2] ("-": no
# counting, no hook).
RUNNER = """
    import os, pathlib, signal, sys, threading
    import pixelrec
    kill_at, count_file, argv = int(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
    source, main_pid, calls = os.path.dirname(pixelrec.__file__), os.getpid(), 0

    def hook(frame, event, arg):  # a global trace function sees "call" events only; None: no line events
        global calls
        if frame.f_code.co_filename.startswith(source) and os.getpid() == main_pid:
            calls += 1
            if calls == kill_at:
                os.kill(main_pid, signal.SIGKILL)

    from pixelrec.cli import main
    counting = kill_at != 0 or count_file.name != "-"
    if counting:
        sys.settrace(hook)
        threading.settrace(hook)
    try:
        status = main(argv)
    finally:
        sys.settrace(None)
        if counting:
            count_file.write_text(str(calls))
    sys.exit(status)
"""


def run(argv: list[str], cwd: Path, kill_at: int = 0, count: bool = False) -> tuple[int, int, str]:
    """(exit status, pixelrec calls made (-1 when killed or not counted), stderr) of `pixelrec argv` in a
    fresh process."""
    counted = cwd.parent / f".calls-{os.getpid()}"
    counted.unlink(missing_ok=True)
    count_file = str(counted) if count or kill_at else "-"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(RUNNER), str(kill_at), count_file, *argv],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    calls = int(counted.read_text()) if counted.exists() else -1
    counted.unlink(missing_ok=True)
    return done.returncode, calls, done.stderr


def kill_points(total: int, salt: str) -> list[int]:
    """One call drawn from each stretch of the run: its first half, then up to 85%, then the end, where
    commands write their outputs (a model's start-up alone can take half of the calls)."""
    rng = random.Random(f"{SEED}-{salt}")
    edges = [max(1, int(total * f)) for f in STRETCHES]
    return [rng.randrange(lo, hi) for lo, hi in zip(edges[:-1], edges[1:])]


def killed(argv: list[str], cwd: Path, at: int) -> None:
    status, _, err = run(argv, cwd, kill_at=at)
    assert status == -signal.SIGKILL, f"kill at call {at} did not land (exit {status}): {err[-2000:]}"


def reference(argv: list[str], cwd: Path) -> int:
    status, calls, err = run(argv, cwd, count=True)
    assert status == 0, err[-3000:]
    return calls


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    from pixelrec.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("faults") / "raw"
    write_synthetic(root, users=60, items=40, mean_len=8, image_size=32, seed=3)
    return root


@pytest.fixture(scope="module")
def data(raw: Path) -> Path:
    from pixelrec.data.prepare import prepare

    prepare(raw, raw.parent / "data", image_size=32, workers=1, progress=False)
    return raw.parent / "data"


def test_prepare_killed_anywhere_then_rerun_gives_the_same_dataset(raw, tmp_path):
    argv = ["prepare", "--raw", str(raw), "--out", "ds", "--image-size", "32", "--workers", "1"]
    whole = tmp_path / "whole"
    whole.mkdir()
    calls = reference(argv, whole)
    want = tree_digest(whole / "ds")
    for at in kill_points(calls, "prepare"):
        place = tmp_path / f"at-{at}"
        place.mkdir()
        killed(argv, place, at)
        if (place / "ds").exists():  # only a whole dataset is ever under the name
            assert tree_digest(place / "ds") == want, at
        status, _, err = run(argv, place)
        assert status == 0, (at, err[-2000:])
        assert tree_digest(place / "ds") == want, at
        assert sorted(p.name for p in place.iterdir()) == ["ds"], at  # what the killed run left is gone


def trusted_or_absent_checkpoints(run_dir: Path) -> None:
    """Whatever a killed run left under a checkpoint's or the record's name is whole and finite."""
    from pixelrec.runs.results import read_results

    for name in ("best.pt", "last.pt"):
        if (run_dir / name).exists():
            weights = torch.load(run_dir / name, weights_only=True)["model"]
            assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point()), name
    read_results(run_dir, required=False)


def same_run(a: Path, b: Path) -> None:
    """The same metrics and bit-identical best weights."""
    ra, rb = (json.loads((r / "results.json").read_text()) for r in (a, b))
    assert (ra["valid"], ra["test"], ra["best_epoch"], ra["steps"]) == (rb["valid"], rb["test"], rb["best_epoch"], rb["steps"])
    wa, wb = (torch.load(r / "best.pt", weights_only=True)["model"] for r in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_train_killed_anywhere_then_resumed_equals_the_uninterrupted_run(data, tmp_path):
    argv = ["train", "--data", str(data), "--model", "sasrec", "--items", "id", "--epochs", "3", "--seed", "0",
            "--set", "model.embedding_size=16", "--set", "train.batch_size=16", "--out", "run"]
    whole = tmp_path / "whole"
    whole.mkdir()
    calls = reference(argv, whole)
    for at in kill_points(calls, "train"):
        place = tmp_path / f"at-{at}"
        place.mkdir()
        killed(argv, place, at)
        trusted_or_absent_checkpoints(place / "run")
        status, _, err = run(["train", "--resume", "run"], place)
        if status != 0:  # killed before its first checkpoint: one line saying to start it again, which works
            assert status == 2 and "run" in one_line(err), (at, err[-2000:])
            status, _, err = run(argv, place)
        assert status == 0, (at, err[-2000:])
        same_run(whole / "run", place / "run")


EXTRACT = ["--encoder", "test_vit", "--image-size", "32", "--batch-size", "4", "--workers", "0", "--dtype", "fp32",
           "--device", "cpu"]


def test_extract_killed_anywhere_then_rerun_gives_the_same_features(data, tmp_path):
    argv = ["extract", "--data", str(data), "--out", "feats.npy", *EXTRACT]
    whole = tmp_path / "whole"
    whole.mkdir()
    calls = reference(argv, whole)
    want = (whole / "feats.npy").read_bytes()
    n_items = json.loads((data / "meta.json").read_text())["n_items"]
    for at in kill_points(calls, "extract"):
        place = tmp_path / f"at-{at}"
        place.mkdir()
        killed(argv, place, at)
        if (place / "feats.npy").exists():  # a reader takes it only when it is whole
            try:
                load_features(place / "feats.npy", n_items, "dataset")
            except UserError as error:
                assert "incomplete" in str(error) or "sidecar" in str(error), error
            else:
                assert (place / "feats.npy").read_bytes() == want, at
        status, _, err = run(argv, place)
        assert status == 0, (at, err[-2000:])
        assert (place / "feats.npy").read_bytes() == want, at


@pytest.fixture(scope="module")
def pixels_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pixels") / "run"
    status, _, err = run(["train", "--data", str(data), "--model", "sasrec", "--items", "pixels", "--encoder",
                          "test_vit", "--epochs", "1", "--seed", "0", "--set", "model.embedding_size=16",
                          "--set", "train.batch_size=32", "--out", str(out)], out.parent)
    assert status == 0, err[-3000:]
    return out


def test_embed_killed_anywhere_then_rerun_gives_the_same_vectors(pixels_run, raw, tmp_path, capsys):
    covers = tmp_path / "covers"
    covers.mkdir()
    for i, source in enumerate(sorted((raw / "covers").iterdir())[:12]):
        shutil.copy(source, covers / f"new{i}{source.suffix}")
    argv = ["embed", "--run", str(pixels_run), "--covers", str(covers), "--out", "new.npy", "--batch-size", "2",
            "--workers", "0"]
    whole = tmp_path / "whole"
    whole.mkdir()
    calls = reference(argv, whole)
    want = (whole / "new.npy").read_bytes()
    user = (raw / "interactions.csv").read_text().splitlines()[1].split(",")[1]
    for at in kill_points(calls, "embed"):
        place = tmp_path / f"at-{at}"
        place.mkdir()
        killed(argv, place, at)
        if (place / "new.npy").exists():  # recommend takes it only when it is whole
            status, out, err = run_cli(capsys, "recommend", "--run", pixels_run, "--new-items", place / "new.npy",
                                       "--user", user)
            if status != 0:
                assert status == 2 and "new.npy" in one_line(err), err
            else:
                assert (place / "new.npy").read_bytes() == want, at
        status, _, err = run(argv, place)
        assert status == 0, (at, err[-2000:])
        assert (place / "new.npy").read_bytes() == want, at
