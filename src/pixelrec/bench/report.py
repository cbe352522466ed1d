"""A report over run directories, benchmark directories and tune studies: tables and PNG figures."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixelrec.bench import plots
from pixelrec.bench.settings import saved_config
from pixelrec.bench.tables import (
    backbone_order,
    caveats_note,
    duplicates_note,
    load_results,
    newest,
    paper_table,
    summary_table,
    superseded,
)
from pixelrec.bench.tune import STUDY_NAME, trials_table
from pixelrec.errors import UserError
from pixelrec.runs.directory import MetricsLog
from pixelrec.storage.atomic import atomic_write


@dataclass
class ReportInputs:
    """Finished runs (results.json records, each with its "run" directory) and study directories;
    `notes`: one line per run left out of the tables (unfinished, or dropped by `latest`)."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    studies: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def is_unfinished(path: Path) -> bool:
    """A run directory that has started (config.yaml) and has no results.json yet."""
    return path.is_dir() and (path / "config.yaml").is_file() and not (path / "results.json").exists()


def unfinished_line(run: Path) -> str:
    """'unfinished: RUN (epoch 3 of 50)': how far an interrupted or running run got."""

    try:
        rows = MetricsLog(run / "metrics.jsonl").read()
    except UserError:
        rows = []
    done = max((int(r["epoch"]) for r in rows if isinstance(r.get("epoch"), int)), default=0)
    train = saved_config(run).get("train")
    epochs = train.get("epochs") if isinstance(train, dict) else None
    return f"unfinished: {run} (epoch {done}" + (f" of {epochs})" if isinstance(epochs, int) else ")")


def bench_runs(bench: Path, finished: bool = True) -> list[Path]:
    """The finished run directories of a `pixelrec bench` directory, in the matrix's order (not
    `finished`: those that started and have no results.json)."""
    order: list[str] = []
    if (bench / "status.json").is_file():
        order = list(json.loads((bench / "status.json").read_text()).get("cells", {}))
    if finished:
        found = sorted(p.parent.name for p in (bench / "runs").glob("*/results.json"))
    else:
        found = sorted(p.name for p in (bench / "runs").iterdir() if is_unfinished(p))
    names = [n for n in order if n in found] + [n for n in found if n not in order]
    return [bench / "runs" / name for name in names]


def collect(paths: list[str | Path], latest: bool = False) -> ReportInputs:
    """Sort the given paths into runs (a run directory or results.json), benchmark directories
    (OUT of `pixelrec bench`: their finished runs) and studies (a directory with study.db). A run
    that has not finished is one line in `notes` ("unfinished: RUN (epoch 3 of 50)"). Several runs
    of one cell are all kept, unless `latest`: then only the newest of each, and a line in `notes`
    for each run left out."""
    inputs = ReportInputs()
    unfinished: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir() and (path / "study.db").is_file():
            inputs.studies.append(path)
        elif path.is_dir() and not (path / "results.json").exists() and (path / "runs").is_dir():
            inputs.runs.extend(load_results(bench_runs(path)))
            unfinished.extend(bench_runs(path, finished=False))
        elif is_unfinished(path):
            unfinished.append(path)
        else:
            inputs.runs.extend(load_results([path]))
    inputs.notes = [unfinished_line(run) for run in dict.fromkeys(unfinished)]
    if not inputs.runs and not inputs.studies:
        raise UserError("nothing to report: no finished run among the given directories"
                        + (f" ({len(unfinished)} unfinished: {', '.join(map(str, unfinished[:3]))})" if unfinished else ""))
    once = {str(Path(r["results_file"]).resolve()): r for r in reversed(inputs.runs)}  # a run named twice is one run
    inputs.runs = [r for r in inputs.runs if once[str(Path(r["results_file"]).resolve())] is r]
    if latest:
        inputs.notes += superseded(inputs.runs)
        inputs.runs = newest(inputs.runs)
    return inputs


def tables_text(inputs: ReportInputs, split: str = "test") -> str:
    """The per-run summary table and the paper-layout table of the runs, then notes naming the
    runs with caveats, the cells that have several runs and the runs left out (unfinished, dropped)."""
    left_out = "\n".join(inputs.notes)
    if not inputs.runs:
        return f"{left_out}\n" if left_out else ""
    notes = [note for note in (caveats_note(inputs.runs), duplicates_note(inputs.runs), left_out) if note]
    return (f"## Runs ({split})\n\n{summary_table(inputs.runs, split)}\n\n"
            f"## Paper layout ({split}, %)\n\n{paper_table(inputs.runs, split)}\n"
            + "".join(f"\n{note}\n" for note in notes))


def check_out(out: str | Path) -> Path:
    """The report's folder: refused (one line) when it exists as something else than a folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; the report is a folder (report.md and PNG figures), "
                        "give a new or existing folder")
    return out


def write_report(inputs: ReportInputs, out: str | Path, split: str = "test") -> list[Path]:
    """OUT/report.md and the PNGs: encoders-<model>.png (Figure 4), curves.png, study-<name>.png."""
    out = check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    text = tables_text(inputs, split)
    shown = newest(inputs.runs)  # a figure has one point per cell
    if len(shown) < len(inputs.runs):
        text += "\nThe encoder figures show the newest run of each cell; each point names its run.\n"
    groups: dict[tuple[str | None, str], list[dict[str, Any]]] = {}  # one figure per dataset and profile
    for record in shown:
        groups.setdefault((record.get("dataset"), record.get("profile") or "default"), []).append(record)
    for (dataset, profile), runs in groups.items():
        parts = [re.sub(r"[^\w.-]+", "_", part) for part in (dataset, profile) if part] if len(groups) > 1 else []
        suffix = "".join(f"-{part}" for part in parts)
        for model in backbone_order([r.get("model", "?") for r in runs]):
            figure = plots.encoder_figure(runs, model, split)
            if figure is not None:
                written.append(plots.save(figure, out / f"encoders-{model}{suffix}.png"))
    curves = [(label, MetricsLog(Path(r["run"]) / "metrics.jsonl").read(), r.get("loss"))
              for label, r in zip(run_labels(inputs.runs), inputs.runs)]
    curves = [curve for curve in curves if curve[1]]
    if curves:
        figure = plots.learning_curves([c[:2] for c in curves], losses=[c[2] for c in curves])
        written.append(plots.save(figure, out / "curves.png"))
    for number, study_dir in enumerate(inputs.studies):
        study = load_study(study_dir)
        name = study_dir.resolve().name + (f"-{number}" if number and _clash(inputs.studies, study_dir) else "")
        metric = study.user_attrs.get("metric", "objective")
        figure = plots.study_figure(study, f"Study {study_dir.name}: {metric} per trial", metric)
        written.append(plots.save(figure, out / f"study-{name}.png"))
        text += f"\n## Study {study_dir}\n\n{trials_text(study)}\n"
    text += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in written) + "\n"
    atomic_write(out / "report.md", text.encode())
    return [out / "report.md", *written]


def run_labels(runs: list[dict[str, Any]]) -> list[str]:
    """Each run's directory name, with as many of its folders above as tell apart runs that share a
    name (two bench folders' `runs/sasrec-id`: `b1/runs/sasrec-id`, `b2/runs/sasrec-id`)."""
    paths = [Path(r["run"]).resolve() for r in runs]
    depth = 1
    while depth < max((len(p.parts) for p in paths), default=1):
        labels = [str(Path(*p.parts[-depth:])) for p in paths]
        if all(labels.count(label) == 1 or paths.count(p) > 1 for label, p in zip(labels, paths)):
            break
        depth += 1
    names = [p.name for p in paths]
    return [str(Path(*p.parts[-depth:])) if names.count(p.name) > 1 else p.name for p in paths]


def _clash(studies: list[Path], study_dir: Path) -> bool:
    return sum(s.resolve().name == study_dir.resolve().name for s in studies) > 1


def load_study(study_dir: Path):
    """The Optuna study of a `pixelrec tune` directory."""
    import optuna


    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{(study_dir / 'study.db').resolve()}")
    except KeyError:
        raise UserError(f"{study_dir / 'study.db'}: no pixelrec study in this database") from None


def trials_text(study) -> str:
    return trials_table(study)
