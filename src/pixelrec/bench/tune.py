"""Hyper-parameter search with Optuna: a grid (default) or TPE, optionally pruned by the median rule.

The study lives in STUDY/study.db (SQLite), so it survives interruption: rerunning the same command
continues it. Every trial is a normal run directory STUDY/trials/<number>. A trial that was
interrupted stays RUNNING in the study (never counted as complete) and is continued first, from its
last checkpoint, under the same number: no grid point is run twice and none is lost. One process
works on a study at a time (a lock file says so). The best configuration so far is written to
STUDY/best.yaml after every trial, ready for `pixelrec train --config STUDY/best.yaml`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from pixelrec.bench.matrix import directory_lock, one_line
from pixelrec.config import Config, assign, parse_value, resolve
from pixelrec.errors import UserError
from pixelrec.runs.directory import MetricsLog, config_of_run
from pixelrec.runs.results import read_results
from pixelrec.storage.atomic import atomic_write
from pixelrec.training.trainer import train
from pixelrec.units import percent

STUDY_NAME = "pixelrec"
# The PixelRec README's search grid (embedding sizes, batch sizes and decays as listed; its learning rates
# are written "[0.000001, 0.00005, ..., 0.001]", read here as the 1-5 steps between): 630 points, with
# embedding sizes meant for many GPUs. Inner sizes are multiples of the embedding size, so they scale with it.
PAPER_GRID: dict[str, list[Any]] = {
    "model.embedding_size": [128, 512, 1024, 2048, 4096, 8192],
    "train.lr": [1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3],
    "train.weight_decay": [0.0, 0.01, 0.1],
    "train.batch_size": [64, 128, 256, 512, 1024],
}
DEFAULT_TPE_TRIALS = 20
FAILURE_STREAK = 3  # this many trials failing in a row with one error stop the search: it is not the settings


def grid_value(text: str) -> Any:
    """A grid value: YAML rules, plus numbers such as 1e-4 that YAML 1.1 leaves as strings."""
    value = parse_value(text.strip())
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return value


def parse_grid(text: str) -> dict[str, list[Any]]:
    """'model.embedding_size=64,128;train.lr=1e-4,1e-3' -> {key: [values]}."""
    grid: dict[str, list[Any]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, values = part.partition("=")
        key = key.strip()
        if not sep or "." not in key or not values.strip():
            raise UserError(f"grid={part!r}: expected section.key=v1,v2,... (e.g. train.lr=1e-4,1e-3)")
        if key in grid:
            raise UserError(f"grid=: {key} is given twice")
        grid[key] = [grid_value(v) for v in values.split(",") if v.strip()]
    if not grid:
        raise UserError("grid= is empty: give section.key=v1,v2;...")
    return grid


@dataclass
class TuneSpec:
    """A study: what is trained, the search space and how it is searched."""

    data: str
    model: str
    items: str | None = None
    encoder: str | None = None
    files: list[str] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)
    grid: dict[str, list[Any]] = field(default_factory=lambda: dict(PAPER_GRID))
    sampler: str = "grid"  # grid | tpe
    trials: int | None = None  # finished trials wanted in the study (default: the grid, or 20 for TPE)
    prune: bool = False  # median pruning on the validation metric, reported after every evaluation
    seed: int = 0

    def identity(self) -> dict[str, Any]:
        """What a rerun must share with the study it continues."""
        out = asdict(self)
        for key in ("trials", "prune"):
            out.pop(key)
        out["data"] = str(Path(self.data).resolve())  # the same dataset, whichever directory tune runs from
        return json.loads(json.dumps(out))

    @property
    def target(self) -> int:
        size = math.prod(len(v) for v in self.grid.values())
        if self.sampler == "grid":
            return min(self.trials or size, size)
        return self.trials or DEFAULT_TPE_TRIALS


def trial_config(spec: TuneSpec, params: dict[str, Any]) -> Config:
    """The configuration of one trial: the spec's layers with the trial's values on top."""
    flags: dict[str, Any] = {"data": {"path": spec.data}, "items": {}}
    if spec.items:
        flags["items"]["kind"] = spec.items
    for key, value in params.items():
        assign(flags, key, value)
    return resolve(model=spec.model, files=spec.files, flags=flags, sets=spec.sets, encoder=spec.encoder)


def check_spec(spec: TuneSpec) -> str:
    """Refuse a search that cannot work before the study is touched; returns the objective's metric."""
    if spec.sampler not in ("grid", "tpe"):
        raise UserError(f"sampler={spec.sampler!r}: choose grid or tpe")
    if spec.trials is not None and spec.trials < 1:
        raise UserError(f"trials={spec.trials}: must be at least 1")
    overridden = {pair.split("=", 1)[0].strip() for pair in spec.sets} & set(spec.grid)
    if overridden:
        raise UserError(f"{', '.join(sorted(overridden))} is both searched (grid=) and fixed (set=); drop one")
    for key, values in spec.grid.items():
        if not values or any(v is not None and not isinstance(v, (bool, int, float, str)) for v in values):
            raise UserError(f"grid={key}: values must be numbers, booleans or words")
    first = {key: values[0] for key, values in spec.grid.items()}
    for key, values in spec.grid.items():  # a bad key or value is an error now, not in every trial
        for value in values:
            trial_config(spec, {**first, key: value})
    return trial_config(spec, first).eval.valid_metric


def _grid_sampler(grid: dict[str, list[Any]], seed: int):
    import optuna

    class Grid(optuna.samplers.GridSampler):
        """Optuna's grid, but stopping is left to the caller: tell() outside optimize() may not stop()."""

        def after_trial(self, study, trial, state, values) -> None:  # noqa: ANN001 - optuna's signature
            return None

    return Grid(grid, seed=seed)


def open_study(spec: TuneSpec, study_dir: Path):
    """Create or load STUDY/study.db; a rerun with other settings is refused."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if spec.sampler == "grid":
        sampler = _grid_sampler(spec.grid, spec.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=spec.seed)
    if spec.prune:  # never before a trial's second evaluation: the first epoch says little about the last
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    else:  # explicitly: pruner=None would be optuna's default, a MedianPruner
        pruner = optuna.pruners.NopPruner()
    storage = f"sqlite:///{(study_dir / 'study.db').resolve()}"
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, sampler=sampler, pruner=pruner,
                                direction="maximize", load_if_exists=True)
    saved, wanted = study.user_attrs.get("spec"), spec.identity()
    if saved is None:
        study.set_user_attr("spec", wanted)
    elif saved != wanted:
        changed = ", ".join(k for k in wanted if saved.get(k) != wanted[k])
        raise UserError(f"{study_dir}: this study was started with other settings ({changed}); use another study_dir=")
    return study


def finished_trials(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))


def run_study(spec: TuneSpec, study_dir: str | Path, log: Callable[[str], None] = print):
    """Run (or continue) the study until `spec.target` trials are finished; returns the optuna Study."""
    import optuna
    from optuna.trial import TrialState

    metric = check_spec(spec)
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    with directory_lock(study_dir, "pixelrec tune"):
        study = open_study(spec, study_dir)
        study.set_user_attr("metric", f"valid {metric}")
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            log(f"trial {frozen.number}: continuing after an interruption")
            run_trial(study, optuna.trial.Trial(study, frozen._trial_id), spec, study_dir, log,
                      reported=set(frozen.intermediate_values))
        failures: list[str] = []
        while finished_trials(study) < spec.target:
            error = run_trial(study, study.ask(), spec, study_dir, log)
            failures = failures + [error] if error else []
            if len(failures) >= FAILURE_STREAK and len(set(failures)) == 1:
                raise UserError(f"{FAILURE_STREAK} trials in a row failed with: {error}")
        write_best(study, study_dir)
    return study


def run_trial(study, trial, spec: TuneSpec, study_dir: Path, log: Callable[[str], None],
              reported: set[int] | None = None) -> str | None:
    """Train one trial into STUDY/trials/<number> and tell the study how it ended; returns the error
    of a failed trial. A KeyboardInterrupt leaves the trial RUNNING, to be continued by the next run."""
    import optuna
    from optuna.trial import TrialState

    params = {key: trial.suggest_categorical(key, values) for key, values in spec.grid.items()}
    run_dir = study_dir / "trials" / str(trial.number)
    trial.set_user_attr("run", str(run_dir))
    shown = ", ".join(f"{k}={v}" for k, v in params.items())
    try:
        config = trial_config(spec, params)
        metric = config.eval.valid_metric
        results = train_trial(trial, config, run_dir, reported or set())
    except optuna.TrialPruned as pruned:
        study.tell(trial, state=TrialState.PRUNED)
        log(f"trial {trial.number} ({shown}): {pruned}")
        return None
    except Exception as err:  # noqa: BLE001 - a failed trial is recorded and the search goes on
        trial.set_user_attr("error", one_line(err))
        if run_dir.is_dir():
            (run_dir / "error.log").write_text(traceback.format_exc())
        study.tell(trial, state=TrialState.FAIL)
        log(f"trial {trial.number} ({shown}): failed: {one_line(err)}")
        return one_line(err)
    value = float(results["valid"][metric])
    study.tell(trial, value)
    log(f"trial {trial.number} ({shown}): valid {metric} {percent(value)}")
    write_best(study, study_dir)
    return None


def train_trial(trial, config: Config, run_dir: Path, reported: set[int]) -> dict[str, Any]:
    """Train (or continue, or read back) a trial's run, reporting the validation metric per epoch."""
    import optuna

    finished = read_results(run_dir, required=False)
    if finished is not None:  # finished, but the study was not told before the interruption
        return finished
    resume = (run_dir / "last.pt").is_file()
    metric = config.eval.valid_metric

    def report(row: dict[str, Any]) -> None:
        if "valid" in row and row["epoch"] not in reported:
            trial.report(row["valid"][metric], row["epoch"])
            reported.add(row["epoch"])

    def on_epoch(row: dict[str, Any]) -> None:
        report(row)
        if "valid" in row and trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {row['epoch']} (valid {metric} below the median)")

    if resume:
        config = config_of_run(run_dir)
        for row in MetricsLog(run_dir / "metrics.jsonl").read():  # epochs done before the interruption
            report(row)
    return train(config, run_dir, resume=resume, on_epoch=on_epoch)


def best_trial(study):
    """The complete trial with the highest value, or None."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: t.value) if complete else None


def write_best(study, study_dir: Path) -> Path | None:
    """STUDY/best.yaml: the best trial's resolved configuration, with a comment saying where it came from."""
    best = best_trial(study)
    if best is None:
        return None
    source = Path(best.user_attrs["run"]) / "config.yaml"
    if not source.is_file():
        raise UserError(f"{source}: missing, so best.yaml cannot be written (was the trial's run directory removed?)")
    shown = ", ".join(f"{k}={v}" for k, v in best.params.items())
    header = (f"# Best of the study in {study_dir}: trial {best.number} ({shown}), objective {percent(best.value)}.\n"
              f"# Train it with: pixelrec train --config {study_dir / 'best.yaml'}\n")
    atomic_write(study_dir / "best.yaml", (header + source.read_text()).encode())
    return study_dir / "best.yaml"


def trials_table(study) -> str:
    """Markdown: one row per trial (number, state, objective, parameters)."""
    trials = study.get_trials(deepcopy=False)
    keys = list(dict.fromkeys(itertools.chain.from_iterable(t.params for t in trials)))
    lines = ["| trial | state | objective % | " + " | ".join(keys) + " |", "| ---: | --- | ---: |" + " --- |" * len(keys)]
    for t in trials:
        value = percent(t.value, sign=False) if t.value is not None else "-"
        lines.append(f"| {t.number} | {t.state.name.lower()} | {value} | "
                     + " | ".join(str(t.params.get(k, "-")) for k in keys) + " |")
    return "\n".join(lines)
