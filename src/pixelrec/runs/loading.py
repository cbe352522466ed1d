"""Load a saved run: its configuration, its dataset and a model with one checkpoint's weights.

A run records its dataset by absolute path and fingerprint (dataset.json): it loads from any working
directory, `data_path` points it at its dataset after the dataset moved, and a dataset with other
items is refused. Which checkpoint was used, and at which epoch, is always said."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixelrec import distributed, progress
from pixelrec.config import Config
from pixelrec.data.prepared import PreparedData
from pixelrec.errors import UserError
from pixelrec.factory import build_model
from pixelrec.recommender import Recommender
from pixelrec.runs import directory as rundir
from pixelrec.runs.directory import config_of_run


@dataclass
class LoadedRun:
    """A run directory's configuration, dataset and model (in eval mode), and which weights it holds."""

    run: Path
    config: Config
    data: PreparedData
    model: Recommender
    checkpoint: Path  # the file the weights came from
    epoch: int  # epochs trained when that checkpoint was written
    finished: bool  # the run wrote results.json
    fallback: str = ""  # why another checkpoint than the one asked for was used

    def describe(self) -> dict[str, Any]:
        """The checkpoint, as commands report it next to their output."""
        out: dict[str, Any] = {"file": self.checkpoint.name, "epoch": self.epoch, "run_finished": self.finished}
        if self.fallback:
            out["note"] = self.fallback
        return out

    def say_fallback(self) -> None:
        """A checkpoint other than the one asked for, said once as a note (rank 0 of a job only)."""
        if self.fallback and distributed.current().main:
            progress.note(f"{self.run}: {self.fallback}")

    def line(self) -> str:
        state = "finished run" if self.finished else "unfinished run"
        text = f"weights: {self.checkpoint} (epoch {self.epoch}, {state})"
        return f"{text}; {self.fallback}" if self.fallback else text


def dataset_of(run: Path, config: Config, data_path: str | Path | None) -> tuple[Config, PreparedData]:
    """The run's dataset (at `data_path` when given), checked against the fingerprint the run recorded;
    the configuration returned points at it."""
    record = rundir.read_dataset_record(run)
    if data_path is None:
        recorded = config.data.path or (record or {}).get("path")
        if recorded is None or not (Path(recorded) / "meta.json").is_file():
            raise UserError(f"{run}: its dataset {recorded} is not there any more; pass data=DIR where it is now")
        data_path = recorded
    data = PreparedData(data_path)
    rundir.check_dataset(run, data, record)
    return rundir.relocated(config, data_path), data


def choose_checkpoint(run: Path, checkpoint: str) -> tuple[Path, str]:
    """The checkpoint file for `best` or `last`, and why another one was used (empty when none was)."""
    if checkpoint not in ("best", "last"):
        raise UserError(f"checkpoint {checkpoint!r}: choose best or last")
    path = run / f"{checkpoint}.pt"
    if path.is_file():
        return path, ""
    if checkpoint == "best" and (run / "last.pt").is_file():
        return run / "last.pt", "no best.pt (no validation improved before the run stopped): last.pt used instead"
    raise UserError(f"{run}: no {path.name}" + ("" if checkpoint == "best" else " to use")
                    + " (the run stopped before its first epoch ended); train it again")


def open_run(run: str | Path, checkpoint: str = "best", data_path: str | Path | None = None,
             shared: bool = False) -> LoadedRun:
    """Load a run directory's model with the weights of `checkpoint` (`best`, or `last`).
    With `shared`, a process started by torchrun joins the job (and takes its local rank's GPU);
    without, such a process is refused: the work would only be repeated on every rank."""
    run = Path(run)
    if not shared and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("only `pixelrec train` and `pixelrec evaluate` share work between ranks; run this without torchrun")
    if not run.is_dir():
        raise UserError(f"{run}: no such run directory")
    config, data = dataset_of(run, config_of_run(run), data_path)
    path, fallback = choose_checkpoint(run, checkpoint)
    _, device = distributed.join(config.train.device, config.train.dist_timeout_minutes)
    payload = rundir.load_checkpoint(path, device)  # before the model: a damaged file costs no model build
    model = build_model(config, data).to(device)
    rundir.load_weights(model, payload["model"], path)
    return LoadedRun(run, config, data, model.eval(), path, rundir.checkpoint_epoch(payload),
                     (run / "results.json").is_file(), fallback)


def load_run(run: Path, checkpoint: str = "best", data_path: str | None = None, shared: bool = False):
    """(config, prepared data, model with the checkpoint's weights, in eval mode) of a run directory;
    a checkpoint other than the one asked for is said as a note (the `pixelrec` logger)."""
    loaded = open_run(run, checkpoint, data_path, shared)
    loaded.say_fallback()
    return loaded.config, loaded.data, loaded.model
