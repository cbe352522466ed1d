"""The run directory: one writer at a time, no silent overwrite, results that say what they are,
one-line diagnoses of damaged or foreign checkpoints, portable runs, umask, leftovers of kill -9."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import patterned_sequences, write_prepared
from data_fixtures import one_line, run_cli
from pixelrec.runs import directory as rundir
from pixelrec.storage import locks
from pixelrec.training.trainer import Trainer

TINY = ["--model", "sasrec", "--device", "cpu", "--set", "train.progress=false", "--set", "model.embedding_size=16",
        "--set", "train.batch_size=32", "--set", "eval.batch_size=256"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

# a `pixelrec` process whose epochs wait for a gate file, so a test can act while it holds its run
GATED = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    from pixelrec.cli import main
    from pixelrec.training.trainer import Trainer

    torch.set_num_threads(1)
    gate, original = Path(sys.argv[1]), Trainer.train_epoch

    def gated(self, epoch):
        gate.with_suffix(".waiting").touch()  # started, and holding its run directory
        while not gate.exists():
            time.sleep(0.05)
        return original(self, epoch)

    Trainer.train_epoch = gated
    sys.exit(main(sys.argv[2:]))
""")

# a `pixelrec` process killed by SIGKILL in the middle of writing its second last.pt
KILLED = textwrap.dedent("""
    import os, signal, sys
    import torch
    from pixelrec.cli import main
    from pixelrec.runs import directory as rundir

    torch.set_num_threads(1)
    replace, seen = os.replace, []

    def dying(src, dst):
        if str(dst).endswith("last.pt"):
            seen.append(dst)
            if len(seen) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        return replace(src, dst)

    rundir.os.replace = dying
    sys.exit(main(sys.argv[1:]))
""")






def train_run(capsys, data: Path, out: Path, *extra) -> dict:
    code, _, err = run_cli(capsys, "train", "--data", data, *TINY, "--epochs", "2", "--out", out, *extra)
    assert code == 0, err
    return json.loads((out / "results.json").read_text())


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def wait_for(condition, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def interrupted_at(monkeypatch, epoch: int) -> None:
    """Make the next training in this process stop (as ^C does) when epoch `epoch` (0-based) starts."""
    original = Trainer.train_epoch

    def stop(self, number):
        if number == epoch:
            raise KeyboardInterrupt
        return original(self, number)

    monkeypatch.setattr(Trainer, "train_epoch", stop)


# --- the lock helper ------------------------------------------------------------------------
def test_a_lock_names_its_holder_and_dies_with_it(tmp_path):
    path = tmp_path / "thing.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pixelrec.storage import locks; held = locks.acquire(sys.argv[1], 'x'); "
         "print('held', flush=True); sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert locks.holder(path) == holder.pid
        with pytest.raises(locks.Busy) as busy:
            locks.acquire(path, "feature file f.npy")
        assert busy.value.pid == holder.pid
        assert str(busy.value).startswith(f"feature file f.npy is being written by process {holder.pid} (lock {path})")
        os.kill(holder.pid, signal.SIGKILL)  # a killed holder releases the lock: no cleaning needed
        holder.wait(timeout=30)
    finally:
        holder.kill()
    with locks.hold(path, "feature file f.npy") as held:
        assert held.held and locks.holder(path) == os.getpid()
    assert not path.exists()  # released: the file is gone


# --- one writer per run directory -----------------------------------------------------------
def test_a_second_writer_is_refused_with_the_holders_pid_and_damages_nothing(tiny_data, tmp_path, capsys):
    out, gate = tmp_path / "run", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", GATED, str(gate), "train", "--data", str(tiny_data), *TINY,
                              "--epochs", "2", "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        wait_for(gate.with_suffix(".waiting").exists)
        before = snapshot(out)
        attempts = [
            ["train", "--data", tiny_data, *TINY, "--epochs", "2", "--out", out],  # the same command again
            ["train", "--data", tiny_data, *TINY, "--model", "gru4rec", "--out", out, "--overwrite"],
            ["train", "--resume", out, "--epochs", "3"],
        ]
        for argv in attempts:
            code, _, err = run_cli(capsys, *argv)
            assert code == 2
            assert f"run directory {out} is being written by process {first.pid}" in one_line(err)
        assert snapshot(out) == before
        gate.touch()
        stdout, stderr = first.communicate(timeout=240)
    finally:
        first.kill()
    assert first.returncode == 0, stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert "name: sasrec" in (out / "config.yaml").read_text()
    assert json.loads((out / "results.json").read_text())["epochs_run"] == 2
    assert not (out / rundir.LOCK_NAME).exists()


# --- no silent overwrite ----------------------------------------------------------------------
def test_a_finished_run_without_checkpoints_is_not_overwritten(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    train_run(capsys, tiny_data, out)
    for name in ("best.pt", "last.pt"):  # deleted to save disk
        (out / name).unlink()
    kept = snapshot(out)
    code, _, err = run_cli(capsys, "train", "--data", tiny_data, *TINY, "--epochs", "1", "--out", out)
    assert code == 2
    line = one_line(err)
    assert f"{out}: already holds a finished run (results.json" in line and "--overwrite" in line
    assert snapshot(out) == kept

    again = train_run(capsys, tiny_data, out, "--epochs", "1", "--overwrite")
    assert again["epochs_run"] == 1 and (out / "best.pt").is_file()


def test_a_users_own_files_are_not_replaced_without_overwrite(tiny_data, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("train:\n  lr: 0.5  # my own notes\n")
    (out / "notes.txt").write_text("keep me\n")
    code, _, err = run_cli(capsys, "train", "--data", tiny_data, *TINY, "--out", out)
    assert code == 2
    line = one_line(err)
    assert f"{out}: not empty (config.yaml, notes.txt)" in line and "another --out" in line and "--overwrite" in line
    assert (out / "config.yaml").read_text() == "train:\n  lr: 0.5  # my own notes\n"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "notes.txt"]  # no lock file left either

    train_run(capsys, tiny_data, out, "--overwrite")
    assert "my own notes" not in (out / "config.yaml").read_text()
    assert (out / "notes.txt").read_text() == "keep me\n"  # only run files are replaced


def test_a_run_stopped_before_its_first_checkpoint_restarts_only_with_its_own_configuration(
        tiny_data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    interrupted_at(monkeypatch, 0)
    assert run_cli(capsys, "train", "--data", tiny_data, *TINY, "--epochs", "2", "--out", out)[0] == 130
    monkeypatch.undo()
    assert (out / "config.yaml").is_file() and not (out / "last.pt").exists()
    code, _, err = run_cli(capsys, "train", "--data", tiny_data, *TINY, "--epochs", "3", "--out", out)
    assert code == 2 and "not a run of this configuration to restart" in one_line(err)
    assert train_run(capsys, tiny_data, out)["epochs_run"] == 2  # the same command: nothing to lose, starts again

    failed_cell = tmp_path / "cell"  # what `bench` leaves of a cell that failed before its run started
    failed_cell.mkdir()
    (failed_cell / "error.log").write_text("Traceback ...\n")
    assert train_run(capsys, tiny_data, failed_cell)["epochs_run"] == 2


def test_a_run_that_fails_before_writing_leaves_no_directory(tiny_data, tmp_path):
    out = tmp_path / "runs" / "pixels"
    failed = subprocess.run([sys.executable, "-m", "pixelrec", "train", "--data", str(tiny_data), *TINY,
                             "--items", "pixels", "--encoder", "test_vit", "--out", str(out)],
                            capture_output=True, text=True, env=ENV, timeout=240)
    assert failed.returncode == 2 and "prepared without images" in one_line(failed.stderr)
    assert not out.exists()  # created for its lock, removed again: the model could not be built


def test_an_interrupted_run_points_at_resume(tiny_data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    interrupted_at(monkeypatch, 1)
    assert run_cli(capsys, "train", "--data", tiny_data, *TINY, "--epochs", "2", "--out", out)[0] == 130
    monkeypatch.undo()
    code, _, err = run_cli(capsys, "train", "--data", tiny_data, *TINY, "--epochs", "2", "--out", out)
    assert code == 2
    assert f"{out}: already holds a run (last.pt after epoch 1); use --resume {out}" in one_line(err)


def test_an_unwritable_output_is_one_line(tiny_data, tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a folder\n")
    code, _, err = run_cli(capsys, "train", "--data", tiny_data, *TINY, "--out", tmp_path / "file" / "run")
    assert code == 2 and "cannot write" in one_line(err)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = run_cli(capsys, "train", "--data", tiny_data, *TINY, "--out", locked / "run")
        assert code == 2 and "cannot write" in one_line(err)


# --- results that say what they are ---------------------------------------------------------
def test_evaluate_names_the_checkpoint_it_used(tiny_data, tmp_path, capsys, monkeypatch):
    done = tmp_path / "done"
    results = train_run(capsys, tiny_data, done)
    assert results["checkpoint"] == "best.pt"
    code, out, err = run_cli(capsys, "evaluate", done, "--split", "test")
    assert code == 0
    evaluated = json.loads(out)
    assert evaluated["checkpoint"] == {"file": "best.pt", "epoch": results["best_epoch"], "run_finished": True}
    assert evaluated["test"] == pytest.approx(results["test"], rel=1e-3)  # printed to 4 digits
    assert f"evaluated {done / 'best.pt'} (epoch {results['best_epoch']}, finished run)" in err

    # stopped after epoch 1 of 4, before its first validation (every 2 epochs): there is no best.pt
    cut = tmp_path / "cut"
    interrupted_at(monkeypatch, 1)
    assert run_cli(capsys, "train", "--data", tiny_data, *TINY, "--epochs", "4", "--set", "train.eval_every=2",
               "--out", cut)[0] == 130
    monkeypatch.undo()
    assert not (cut / "best.pt").exists()
    code, out, err = run_cli(capsys, "evaluate", cut, "--split", "test")
    assert code == 0
    used = json.loads(out)["checkpoint"]
    assert used["file"] == "last.pt" and used["epoch"] == 1 and used["run_finished"] is False
    assert "no best.pt" in used["note"]
    assert f"evaluated {cut / 'last.pt'} (epoch 1, unfinished run); no best.pt" in err


def test_best_checkpoint_has_no_optimizer_state(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    train_run(capsys, tiny_data, out)
    best = torch.load(out / "best.pt", weights_only=True)
    last = torch.load(out / "last.pt", weights_only=True)
    assert best["optimizer"] == {} and last["optimizer"]["state"]
    assert (out / "best.pt").stat().st_size < 0.6 * (out / "last.pt").stat().st_size


def test_resume_records_what_changed_and_refuses_what_cannot(tiny_data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    interrupted_at(monkeypatch, 1)
    assert run_cli(capsys, "train", "--data", tiny_data, *TINY, "--epochs", "3", "--out", out)[0] == 130
    monkeypatch.undo()
    saved = (out / "config.yaml").read_text()
    refused = {
        ("--model", "gru4rec"): "model.name (sasrec -> gru4rec)",
        ("--set", "model.n_layers=3"): "model.n_layers (2 -> 3)",
        ("--set", "train.lr=0.5"): "train.lr (",
        ("--set", "data.max_len=5"): "data.max_len (10 -> 5)",
    }
    for flags, culprit in refused.items():
        code, _, err = run_cli(capsys, "train", "--resume", out, *flags)
        assert code == 2, flags
        line = one_line(err)
        assert "cannot change on --resume" in line and culprit in line, line
    assert (out / "config.yaml").read_text() == saved

    code, printed, err = run_cli(capsys, "train", "--resume", out, "--epochs", "2")
    assert code == 0, err
    assert "resumed with train.epochs: 3 -> 2" in printed
    assert "epochs: 2" in (out / "config.yaml").read_text()
    assert json.loads((out / "results.json").read_text())["epochs_run"] == 2


# --- damaged and foreign checkpoints --------------------------------------------------------
@pytest.fixture
def finished(tiny_data, tmp_path, capsys) -> Path:
    out = tmp_path / "run"
    train_run(capsys, tiny_data, out)
    return out


def damage(path: Path, how: str, tmp_path: Path, tiny_data: Path, capsys) -> str:
    """Damage checkpoint `path` one way; returns what the one-line diagnosis must say."""
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return "unreadable checkpoint"
    if how == "foreign":
        torch.save({"model": {"weight": torch.zeros(2)}}, path)
        return "not a pixelrec checkpoint"
    if how == "garbage":
        path.write_bytes(os.urandom(4096))
        return "unreadable checkpoint"
    other = tmp_path / "other"  # another run's checkpoint: same model, another size
    assert run_cli(capsys, "train", "--data", tiny_data, *TINY, "--epochs", "1", "--set", "model.embedding_size=8",
               "--out", other)[0] == 0
    shutil.copy(other / path.name, path)
    return "weights do not fit the run's model (shape of"


@pytest.mark.parametrize("how", ["truncated", "foreign", "garbage", "other-shapes"])
@pytest.mark.parametrize("command", ["evaluate", "recommend", "export", "resume"])
def test_a_damaged_or_foreign_checkpoint_is_one_line(finished, tiny_data, tmp_path, capsys, how, command):
    name = "last.pt" if command == "resume" else "best.pt"
    expected = damage(finished / name, how, tmp_path, tiny_data, capsys)
    argv = {"evaluate": ["evaluate", finished],
            "recommend": ["recommend", finished, "--user", "u1"],
            "export": ["export", finished, "--out", tmp_path / "vectors"],
            "resume": ["train", "--resume", finished, "--epochs", "3"]}[command]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    line = one_line(err)
    assert f"{finished / name}: " in line and expected in line, line
    assert not (finished / rundir.LOCK_NAME).exists()


# --- portable runs ----------------------------------------------------------------------------
def test_a_moved_run_and_dataset_work_from_anywhere_with_data(tmp_path, capsys, monkeypatch):
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    write_prepared(home / "data", patterned_sequences(60, 20, 8))
    monkeypatch.chdir(home)
    results = train_run(capsys, Path("data"), Path("runs/a"))  # relative paths, as users type them
    assert json.loads((home / "runs/a/dataset.json").read_text())["path"] == str(home / "data")

    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # another working directory: the recorded absolute path is found
    code, out, _ = run_cli(capsys, "evaluate", home / "runs/a", "--split", "test")
    assert code == 0 and json.loads(out)["test"] == pytest.approx(results["test"], rel=1e-3)

    shutil.move(home / "data", elsewhere / "data-moved")
    shutil.move(home / "runs/a", elsewhere / "run")
    code, _, err = run_cli(capsys, "evaluate", "run")
    assert code == 2 and f"its dataset {home / 'data'} is not there any more; pass --data" in one_line(err)
    code, out, err = run_cli(capsys, "evaluate", "run", "--data", "data-moved", "--split", "test")
    assert code == 0, err
    assert json.loads(out)["test"] == pytest.approx(results["test"], rel=1e-3)
    code, out, err = run_cli(capsys, "recommend", "run", "--data", "data-moved", "--user", "u3", "-k", "3")
    assert code == 0, err
    assert len(out.strip().splitlines()) == 4  # header and 3 items
    code, _, err = run_cli(capsys, "export", "run", "--data", "data-moved", "--out", "vectors")
    assert code == 0, err
    assert json.loads((elsewhere / "vectors/export.json").read_text())["checkpoint"] == "best.pt"
    code, printed, err = run_cli(capsys, "train", "--resume", "run", "--data", "data-moved", "--epochs", "3")
    assert code == 0, err
    assert f"data.path: {home / 'data'} -> {elsewhere / 'data-moved'}" in printed
    assert json.loads((elsewhere / "run/dataset.json").read_text())["path"] == str(elsewhere / "data-moved")


@pytest.mark.parametrize("change", ["reordered", "fewer-items"])
def test_a_dataset_with_other_items_is_refused(tiny_data, tmp_path, capsys, change):
    run = tmp_path / "run"
    train_run(capsys, tiny_data, run)
    other = write_prepared(tmp_path / "other", patterned_sequences(120, 40 if change == "reordered" else 39, 12))
    if change == "reordered":  # same counts, other item order
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table({"item_id": [f"i{i}" for i in range(40, 0, -1)]}), other / "items.parquet")
    recorded = json.loads((run / "dataset.json").read_text())["fingerprint"][:12]
    for argv in (["evaluate", run, "--data", other], ["recommend", run, "--data", other, "--user", "u1"],
                 ["export", run, "--data", other, "--out", tmp_path / "v"],
                 ["train", "--resume", run, "--data", other, "--epochs", "3"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, argv
        line = one_line(err)
        assert f"{other} is not the dataset {run} was trained on" in line and recorded in line, line
        assert str(tiny_data) in line


# --- permissions and leftovers ------------------------------------------------------------
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_follow_the_umask(tiny_data, tmp_path, capsys, umask, mode):
    previous = os.umask(umask)
    try:
        run = tmp_path / "run"
        train_run(capsys, tiny_data, run)
        assert run_cli(capsys, "export", run, "--out", tmp_path / "vectors")[0] == 0
    finally:
        os.umask(previous)
    written = [*run.iterdir(), *(tmp_path / "vectors").iterdir()]
    assert {p.name for p in written} >= {"config.yaml", "results.json", "best.pt", "last.pt", "metrics.jsonl",
                                          "dataset.json", "environment.json", "items.npy", "export.json"}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {p.name: oct(mode) for p in written}


def test_files_left_by_kill_9_are_removed_when_the_run_resumes(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", KILLED, "train", "--data", str(tiny_data), *TINY,
                             "--epochs", "3", "--out", str(out)], capture_output=True, text=True, env=ENV, timeout=240)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    left = [p.name for p in out.iterdir() if p.name.startswith(".last.pt.") and p.name.endswith(".tmp")]
    assert len(left) == 1 and (out / rundir.LOCK_NAME).exists()  # the dead writer's temporary file and lock file
    (out / ".results.json.k2x9q_7a").write_bytes(b"{")  # an older writer's temporary name
    (out / ".my-notes.tmp").write_text("not ours\n")

    code, _, err = run_cli(capsys, "train", "--resume", out)  # the dead process's lock does not block
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".my-notes.tmp"]
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
