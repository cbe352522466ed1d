"""The benchmark matrix: backbone x item kind x image encoder, one run directory per cell.

Each cell goes through the library (`config.resolve`, then `trainer.train`) into OUT/runs/<cell>.
The run directories are the truth about progress, so the matrix is resumable: a cell with
results.json is finished and skipped, a cell with last.pt is continued exactly (with the
configuration it started with), anything else starts afresh. A combination the configuration
refuses is recorded as skipped with that reason; a cell that fails is recorded as failed with a
one-line error and the rest go on. OUT/status.json (written atomically after every change) holds
each cell's status; OUT/results.csv and OUT/results.md are rewritten whenever the matrix stops.

Variants (`--variant NAME:section.key=value;...`) are one more axis: every cell runs once per variant,
with the variant's settings over the shared ones, e.g. random init / image-model weights / started
from another run (`train.init_from`) side by side. A variant that changes nothing for a cell (weights
for an ID cell) gives the same configuration as another cell and is skipped as such.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from pixelrec.bench.settings import run_settings
from pixelrec.bench.summary import write_summary
from pixelrec.bench.tables import encoder_label, start_label
from pixelrec.config import Config, component, dotted_keys, overrides_to_dict, resolve, taken_keys, tower_sections
from pixelrec.errors import UserError
from pixelrec.items import ITEM_ENCODERS
from pixelrec.packaged import is_profile, read_yaml
from pixelrec.runs.directory import config_of_run
from pixelrec.runs.results import read_results, results_path
from pixelrec.storage.atomic import atomic_json
from pixelrec.towers.names import timm_name
from pixelrec.training.trainer import train
from pixelrec.training.transfer import check_source, source_checkpoint
from pixelrec.units import percent


def has_image_encoder(kind: str) -> bool:
    """Items made by an image encoder named by items.encoder: an image tower trained with them, or
    the one the feature file came from (so a cell is made per --encoders)."""
    declared = ITEM_ENCODERS.find(kind)
    return declared is not None and (declared.image_tower is not None or declared.reads_features)


#: The image encoder of pixels and multimodal cells when neither --encoders nor the configuration name
#: one: CLIP-ViT-B/32, the encoder of the paper's main PixelNet results (Table 3's ViT rows).
DEFAULT_ENCODER = "clip-vit-b32"


def has_image_tower(kind: str) -> bool:
    """Items encoded by an image tower whose weights load from a file (--weights)."""
    declared = ITEM_ENCODERS.find(kind)
    return declared is not None and declared.image_tower is not None


@dataclass(frozen=True)
class Cell:
    """One combination of the matrix; `encoder` only for item kinds built from images."""

    model: str
    items: str
    encoder: str | None = None
    variant: str | None = None

    @property
    def name(self) -> str:
        return "-".join([self.model, self.items] + [x for x in (self.encoder, self.variant) if x])


@dataclass(frozen=True)
class Variant:
    """A named set of `section.key=value` settings that every cell also runs with."""

    name: str
    sets: tuple[str, ...] = ()


def parse_variant(text: str) -> Variant:
    """'NAME' or 'NAME:section.key=value;section.key=value' (one line naming the problem otherwise)."""
    name, _, settings = text.partition(":")
    name = name.strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
        raise UserError(f"variants={text!r}: the name before ':' must be letters, digits, '_', '.', '+' or '-' "
                        "(it names the cells' run directories), e.g. 'pre:train.init_from=runs/a'")
    sets = tuple(part.strip() for part in settings.split(";") if part.strip())
    overrides_to_dict(list(sets))  # each is section.key=value
    return Variant(name, sets)


@dataclass
class BenchSpec:
    """What to run: the dataset, the cells, and the configuration layers every cell shares."""

    data: str
    cells: list[Cell]
    files: list[str] = field(default_factory=list)  # YAML files / presets, layered over each cell's defaults
    sets: list[str] = field(default_factory=list)  # section.key=value overrides
    features: str | None = None  # feature file for features cells; "{encoder}" is replaced by the cell's
    weights: str | None = None  # encoder weights file for pixels cells; "{encoder}" is replaced by the cell's
    variants: list[Variant] = field(default_factory=list)  # each cell runs once per variant (none: once)
    text_model: str | None = None  # text model (a Hugging Face model directory) of text and multimodal cells

    def variant_sets(self, name: str | None) -> list[str]:
        """The settings of the variant called `name` (none for no variant)."""
        return [s for v in self.variants if v.name == name for s in v.sets]


def cells_of(models: list[str], items: list[str], encoders: list[str], variants: list[str] | None = None) -> list[Cell]:
    """Every model x item kind, times every encoder where the item kind is built from images, times
    every variant (by name)."""
    out = []
    for model in models:
        for kind in items:
            chosen = encoders if has_image_encoder(kind) and encoders else [None]
            out.extend(Cell(model, kind, encoder, variant) for encoder in chosen for variant in variants or [None])
    return list(dict.fromkeys(out))


def cell_config(spec: BenchSpec, cell: Cell) -> Config:
    """The resolved configuration of a cell (raises UserError for a combination that cannot work)."""
    items: dict[str, Any] = {"kind": cell.items}
    declared = ITEM_ENCODERS.find(cell.items)
    if spec.features and declared is not None and declared.reads_features:
        items["features"] = spec.features.replace("{encoder}", cell.encoder or "")
    if spec.text_model and declared is not None and "text" in tower_sections(declared):
        items["text"] = {"encoder_weights": spec.text_model}
    sets = spec.sets + spec.variant_sets(cell.variant)  # the variant's settings win
    config = resolve(model=cell.model, files=spec.files, flags={"data": {"path": spec.data}, "items": items},
                     sets=sets, strict=False, encoder=cell.encoder)
    if has_image_tower(cell.items) and config.items.image.encoder is None:
        cell = Cell(cell.model, cell.items, DEFAULT_ENCODER, cell.variant)
        config = resolve(model=cell.model, files=spec.files, flags={"data": {"path": spec.data}, "items": items},
                         sets=sets, strict=False, encoder=cell.encoder)
    if spec.weights and has_image_tower(cell.items) and not carries_items(config):  # encoder: maybe from a preset
        items["image"] = {"encoder_weights": spec.weights.replace("{encoder}", config.items.image.encoder or "")}
        config = resolve(model=cell.model, files=spec.files, flags={"data": {"path": spec.data}, "items": items},
                         sets=sets, strict=False, encoder=cell.encoder)
    return config


def check_shared_keys(spec: BenchSpec, configs: list[Config]) -> None:
    """An `items` or `loss` key of the shared `--config` files or `--set` applies to the cells whose
    item encoder or loss takes it; one that no cell takes is a mistake in the command, not a no-op."""
    shared = [read_yaml(f) for f in spec.files if not is_profile(f)] + [overrides_to_dict(spec.sets)]
    shared += [overrides_to_dict(list(variant.sets)) for variant in spec.variants]
    for section, selector in (("items", "kind"), ("loss", "name")):
        keys = {key for layer in shared for key in dotted_keys(layer.get(section) or {})}
        taken = {selector}.union(*(taken_keys(section, component(section, getattr(getattr(c, section), selector)))
                                   for c in configs))
        for key in sorted(keys - taken):
            raise UserError(f"{section}.{key} applies to no cell of the matrix (no cell's {section}.{selector} takes it)")


def missing_input(spec: BenchSpec, cell: Cell, config: Config) -> str | None:
    """What a cell lacks to start (an image encoder timm knows, a feature file, a text model), in the
    bench's own words, or None:
    found for every cell before the first one runs, so a matrix never fails half-way for it."""
    declared = ITEM_ENCODERS.get(cell.items)
    image = config.items.image
    if declared.image_tower is not None and image.encoder and not image.encoder_weights:
        try:
            timm_name(image.encoder)  # a tower file (encoder_weights) may name an encoder of its own
        except UserError as err:
            return f"encoders=: {err}"
    if declared.reads_features:
        features = config.items.features
        if not features:
            return (f"{cell.items} cells need a feature file: give features=PATTERN, e.g. features=feats/{{encoder}}.npy "
                    "(written by `pixelrec extract`)")
        if not Path(features).is_file():
            how = f" --encoder {cell.encoder}" if cell.encoder else ""
            return f"{features} not found: write it with `pixelrec extract{how} --out {features}`"
    if "text" in tower_sections(declared):
        text = config.items.text
        if not text.encoder_weights and not text.encoder:
            return f"{cell.items} cells need a text model: give text_model=DIR (a Hugging Face model directory)"
        if text.encoder_weights and not Path(text.encoder_weights).exists():
            return f"{text.encoder_weights} not found: the text model of text_model=DIR is a Hugging Face model directory"
    return None


def init_refusal(cell: Cell, config: Config) -> str | None:
    """Why a cell cannot start from its train.init_from run (another item kind or encoder, only ID
    tables to carry), or None; a source that is not a finished run stops the bench, naming the cell."""
    try:
        source_checkpoint(Path(config.train.init_from))
    except UserError as err:
        raise UserError(f"cell {cell.name}: {err}") from None
    try:
        check_source(config)
    except UserError as err:
        return str(err)
    return None


def carries_items(config: Config) -> bool:
    """True when the cell's item encoder starts from another run (train.init_from, init_parts items):
    that run's tower replaces any image-model weights, so the cell takes none from `weights`."""
    return config.train.init_from is not None and "items" in config.train.init_parts


def check_weights(planned: list["Planned"], pattern: str) -> None:
    """Before any cell runs: every pixels cell's weights file exists, and one file is not given to
    several encoders; the error names the cell and the path. Cells started from a run take none."""
    pixels = [entry for entry in planned if entry.config is not None and has_image_tower(entry.cell.items)
              and not carries_items(entry.config)]
    encoders = sorted({str(entry.cell.encoder) for entry in pixels})
    if "{encoder}" not in pattern and len(encoders) > 1:
        raise UserError(f"weights={pattern}: one file for {len(encoders)} encoders ({', '.join(encoders)}); "
                        "put {encoder} in the pattern")
    for entry in pixels:
        weights = entry.config.items.image.encoder_weights
        if weights and not Path(weights).is_file():
            raise UserError(f"weights=: cell {entry.name}: {weights} not found")


def one_line(err: BaseException) -> str:
    """A one-line description of an error: a UserError's own message, else its type and first line."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    line = text if isinstance(err, UserError) else f"{type(err).__name__}: {text}".rstrip(": ")
    return line[:300]


@contextlib.contextmanager
def directory_lock(directory: Path, what: str) -> Iterator[None]:
    """One process at a time in `directory` (bench or study): then a run marked running by nobody
    else was interrupted and is safe to continue."""
    handle = (directory / ".lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"{directory}: another `{what}` is working in this directory") from None
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


class Status:
    """OUT/status.json: per-cell status (done, failed, skipped, interrupted, running), reason, seconds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cells: dict[str, dict[str, Any]] = {}
        if path.is_file():
            try:
                self.cells = json.loads(path.read_text()).get("cells", {})
            except json.JSONDecodeError:
                self.cells = {}  # only a record: the run directories are the truth, so start it again

    def set(self, name: str, **values: Any) -> None:
        self.cells[name] = {**self.cells.get(name, {}), **values}
        atomic_json(self.path, {"updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "cells": self.cells})


@dataclass
class Planned:
    """A cell with its encoder resolved (e.g. from a preset), its configuration, or why it is skipped
    (a combination that cannot work) or `failed` before it ran (an input it lacks: `missing_input`)."""

    cell: Cell
    config: Config | None
    reason: str = ""
    failed: bool = False

    @property
    def runs(self) -> bool:
        return self.config is not None and not self.failed

    @property
    def name(self) -> str:
        return self.cell.name


def plan(spec: BenchSpec) -> list[Planned]:
    """Resolve every cell; a refused combination becomes a skipped cell with the refusal as reason.
    If every cell is refused for the same reason, the reason is the user's error, not the matrix's."""
    if not spec.cells:
        raise UserError("the matrix is empty: give models= and items=")
    planned = []
    first: dict[str, str] = {}  # a resolved configuration -> the first cell that has it
    for cell in spec.cells:
        try:
            config = cell_config(spec, cell)
        except UserError as err:
            planned.append(Planned(cell, None, str(err)))
            continue
        encoder = cell.encoder or (config.items.encoder if has_image_encoder(cell.items) else None)
        cell = Cell(cell.model, cell.items, encoder, cell.variant)
        same = first.setdefault(json.dumps(config.to_dict(), sort_keys=True, default=str), cell.name)
        if same != cell.name:  # a variant that changes nothing here (weights for an ID cell)
            planned.append(Planned(cell, None, f"same configuration as {same}"))
            continue
        if config.train.init_from is not None:
            refusal = init_refusal(cell, config)
            if refusal:
                planned.append(Planned(cell, None, refusal))
                continue
        missing = missing_input(spec, cell, config)
        planned.append(Planned(cell, config, missing or "", failed=bool(missing)))
    reasons = {p.reason for p in planned}
    if all(p.config is None for p in planned) and len(reasons) == 1:
        raise UserError(reasons.pop())
    if not any(p.runs for p in planned):  # nothing can run: say so before anything is written
        failed = [p for p in planned if p.failed] or planned
        raise UserError(f"no cell of the matrix can run: {failed[0].name}: {failed[0].reason}"
                        + (f" (and {len(planned) - 1} more cells that cannot run)" if len(planned) > 1 else ""))
    check_shared_keys(spec, [p.config for p in planned if p.config is not None])
    if spec.weights:
        check_weights(planned, spec.weights)
    return planned


def run_matrix(spec: BenchSpec, out: str | Path, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run (or continue) every cell into OUT/runs; returns one row per cell (see `cell_row`)."""
    out = Path(out)
    planned = plan(spec)
    out.mkdir(parents=True, exist_ok=True)
    with directory_lock(out, "pixelrec bench"):
        status = Status(out / "status.json")
        try:
            for number, entry in enumerate(planned, start=1):
                prefix = f"[{number}/{len(planned)}] {entry.name}"
                if not entry.runs:
                    state = "failed" if entry.failed else "skipped"
                    status.set(entry.name, status=state, reason=entry.reason, error=entry.reason if entry.failed else None,
                               **_fields(entry.cell))
                    log(f"{prefix}: {state} ({entry.reason})")
                    continue
                log(f"{prefix}: {run_cell(entry, out / 'runs' / entry.name, status, log)}")
        finally:
            rows = [cell_row(entry, out, status) for entry in planned]
            write_summary(out, rows)
    return rows


def run_cell(entry: Planned, run_dir: Path, status: Status, log: Callable[[str], None]) -> str:
    """Train one cell unless finished; record the outcome in `status`; returns a one-line summary."""
    name, fields = entry.name, {**_fields(entry.cell), "run": str(run_dir)}
    if results_path(run_dir).is_file():
        status.set(name, status="done", error=None, **fields)
        return "finished earlier"
    config, resume = entry.config, (run_dir / "last.pt").is_file()
    if resume:
        saved = config_of_run(run_dir)
        if saved.to_dict() != config.to_dict():
            log(f"{name}: continuing with the configuration it started with ({run_dir / 'config.yaml'})")
        config = saved
    status.set(name, status="running", resumed=resume, **fields)
    started = time.perf_counter()
    seconds = status.cells[name].get("seconds", 0.0)
    try:
        results = train(config, run_dir, resume=resume)
    except KeyboardInterrupt:
        status.set(name, status="interrupted", seconds=seconds + time.perf_counter() - started)
        raise
    except Exception as err:  # noqa: BLE001 - a failed cell is recorded and the matrix goes on
        error = one_line(err)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.log").write_text(traceback.format_exc())
        status.set(name, status="failed", error=error, seconds=seconds + time.perf_counter() - started)
        return f"failed: {error}"
    elapsed = seconds + time.perf_counter() - started
    status.set(name, status="done", error=None, seconds=elapsed)
    recall = (results.get("test") or {}).get("Recall@10")
    shown = f", test Recall@10 {percent(recall)}" if recall is not None else ""
    return f"done in {elapsed:.1f}s{shown}"


def _fields(cell: Cell) -> dict[str, Any]:
    return {"model": cell.model, "items": cell.items, "encoder": cell.encoder, "variant": cell.variant}


def cell_row(entry: Planned, out: Path, status: Status) -> dict[str, Any]:
    """One row of the results: the cell, its status and, when finished, its results.json."""
    record = status.cells.get(entry.name, {})
    run_dir = out / "runs" / entry.name
    results = read_results(run_dir, required=False) if entry.runs else None
    if results:
        results["start"] = start_label(results, run_dir)  # tells apart rows that differ only in their start
        results["encoder"] = encoder_label(results, run_dir)  # text and multimodal rows name their text model
        results["settings"] = run_settings(run_dir)  # variants that change a setting are rows of their own
        state = "done"
    elif not entry.runs:
        state = "failed" if entry.failed else "skipped"
    else:  # "running" in a record that no process is running any more: that run was interrupted
        state = {"running": "interrupted"}.get(record.get("status"), record.get("status", "pending"))
    seconds = record.get("seconds")
    if results and seconds is None:  # finished before status.json was kept: training plus evaluation time
        seconds = (results.get("train_seconds_per_epoch", 0.0) * results.get("epochs_run", 0)
                   + 2 * results.get("eval_seconds", 0.0))
    return {**_fields(entry.cell), "status": state, "reason": entry.reason or record.get("error") or "",
            "seconds": seconds, "results": results, "run": str(run_dir) if entry.runs else ""}
