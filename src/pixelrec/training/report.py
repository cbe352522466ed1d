"""What a training run reports, and where.

* `train.log` in the run directory, through the standard `logging` module (logger "pixelrec"): a
  start banner, one line per epoch, why training stopped, the final metrics. The handler is added
  for the run and removed after it, and a resumed run appends to the same file.
* The console: the same lines on stdout (where epoch lines have always gone; warnings, such as the
  run's caveats, on stderr) and ONE progress bar on stderr for the whole run (epoch i/N, steps of
  all epochs, an overall ETA), with short-lived bars for long evaluation steps (encoding the
  catalogue, scoring users). Where stderr is not a terminal (a
  file, a pipe, a batch system) a plain progress line every `PLAIN_INTERVAL` seconds replaces the bars,
  so log files get no carriage returns. `train.progress: false` leaves only the lines.
* TensorBoard event files in the run directory when `tensorboard` is installed: per epoch the loss,
  the validation metrics, images per step, the learning rate of each parameter group; at the end the
  configuration as hparams with the final metrics.
* `metrics.csv` beside `metrics.jsonl`: the same rows with nested keys flattened (`valid.NDCG@10`).

Under torchrun only rank 0 reports; the other ranks' reports are silent.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from pixelrec.progress import FILE_ONLY, Console, PlainProgress, Silent, attach, detach, log, progress_log, reporter
from pixelrec.storage.atomic import atomic_write
from pixelrec.units import percent
from pixelrec.version import __version__

if TYPE_CHECKING:
    from pixelrec.training.trainer import Trainer


LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class RunProgress:
    """One bar for the whole run: epoch i/N, the steps of every epoch, an overall ETA."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Silent | PlainProgress | tqdm | None = None

    def epoch(self, epoch: int, epochs: int, steps_in_epoch: int, step: int,
              max_steps: int | None = None) -> Silent | PlainProgress | tqdm:
        """The bar, set for 0-based `epoch` of `epochs` after `step` steps (it is created on first use)."""
        if not self.enabled:
            return Silent()
        total = step + steps_in_epoch * (epochs - epoch)
        total = total if max_steps is None else min(total, max_steps)
        desc = f"epoch {epoch + 1}/{epochs}"
        if self.bar is None:
            self.bar = reporter(desc, total, "step", initial=step)
        else:
            self.bar.total = total
            self.bar.set_description(desc, refresh=False)
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# --- log file and console ----------------------------------------------------------------
def _not_progress(record: logging.LogRecord) -> bool:
    return not record.name.startswith(progress_log.name)


class RunLog:
    """The run's handlers on the "pixelrec" logger, train.log and the console (rank 0 only);
    `close` removes them."""

    def __init__(self, out: Path, main: bool) -> None:
        self.handlers: list[logging.Handler] = []
        if not main:
            return
        out.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(out / "train.log", encoding="utf-8")  # appends: a resumed run continues its log
        file.setFormatter(logging.Formatter(LOG_FORMAT, "%Y-%m-%d %H:%M:%S"))
        file.addFilter(_not_progress)
        file.setLevel(logging.INFO)
        self.handlers = [attach(file), attach(Console("stdout"))]  # the run's lines on stdout, as they always were

    def close(self) -> None:
        for handler in self.handlers:
            detach(handler)
        self.handlers = []


# --- tracking ------------------------------------------------------------------------------
def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level, keys joined by dots: {"valid": {"NDCG@10": x}} -> {"valid.NDCG@10": x}."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """`rows` (metrics.jsonl) as a flat table, one row per epoch, columns in first-seen order;
    rewritten whole and atomically, so it always matches metrics.jsonl (also after a resume)."""
    flat = [flatten(row) for row in rows]
    columns = list(dict.fromkeys(key for row in flat for key in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in flat)
    atomic_write(path, text.getvalue().encode())


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Tracker:
    """TensorBoard event files in the run directory; nothing (and one log line) without tensorboard."""

    def __init__(self, out: Path, completed_epochs: int = 0) -> None:
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("tensorboard is not installed: no event files (pip install 'pixelrec[tensorboard]' for them)")
            return
        # a resumed run drops what earlier files hold past its checkpoint's epoch
        self.writer = SummaryWriter(log_dir=str(out), purge_step=completed_epochs + 1 if completed_epochs else None)

    def epoch(self, row: dict[str, Any], learning_rates: dict[str, float], images_per_item: int) -> None:
        """Scalars of one metrics row, at step = its epoch; images per step where items are images."""
        if self.writer is None:
            return
        step = int(row["epoch"])
        scalars = {"train/loss": row["loss"], "train/seconds": row["seconds"]}
        if row.get("seconds"):
            scalars["train/steps_per_second"] = row["steps"] / row["seconds"]
        if images_per_item and _number(row.get("items_encoded_per_step")):
            scalars["train/images_per_step"] = images_per_item * row["items_encoded_per_step"]
        scalars |= {f"lr/{name}": lr for name, lr in learning_rates.items()}
        for split, metrics in row.items():
            if isinstance(metrics, dict):
                scalars |= {f"{split}/{name}": value for name, value in metrics.items() if name != "users"}
        for tag, value in scalars.items():
            if _number(value):
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def hparams(self, config: dict[str, Any], results: dict[str, Any]) -> None:
        """The configuration as hparams, with the final valid and test metrics, in this run's own file."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        params = {key: value if isinstance(value, (bool, int, float, str)) else str(value)
                  for key, value in flatten(config).items() if value is not None}
        metrics = {f"final/{split}/{name}": value for split, values in results.items() if isinstance(values, dict)
                   for name, value in values.items() if name != "users" and _number(value)}
        for summary in hparams(params, metrics):
            self.writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def learning_rates(trainer: Trainer) -> dict[str, float]:
    """The learning rate of each parameter group, named by what it trains (item encoder or recommender)."""
    if trainer.optimizer is None:
        return {}
    encoder = {id(p) for p in trainer.model.item_encoder.encoder_parameters()}  # groups saved without a name
    return {group.get("name") or ("encoder" if id(group["params"][0]) in encoder else "recommender"): float(group["lr"])
            for group in trainer.optimizer.param_groups if group["params"]}


# --- the run's report ----------------------------------------------------------------------
def banner(trainer: Trainer) -> list[str]:
    """Where and what the run trains, in a few lines."""
    import torch

    c, t, data, model, job = trainer.config, trainer.config.train, trainer.data, trainer.model, trainer.job
    s = trainer.state
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) if model.backbone.trainable else 0
    examples = len(trainer.view)
    items = c.items.kind + (f" ({c.items.encoder})" if c.items.encoder else "")  # an ID run has no encoder
    ranks = f", {job.world} ranks" if job.world > 1 else ""
    threads = torch.get_num_threads()
    start = f"resumed after epoch {s.epoch} (step {s.step:,})" if s.epoch else "new run"
    return [
        f"run {trainer.out.resolve()} ({start})",
        f"pixelrec {__version__}, torch {torch.__version__}, device {trainer.device}, "
        f"{threads} thread{'s' if threads != 1 else ''}{ranks}",
        f"dataset {data.name} ({data.root.resolve()}): {data.n_users:,} users, {data.n_items:,} items, "
        f"{len(data.item_seq):,} interactions",
        f"model {c.model_name}, items {items}, loss {c.loss.name}, profile {c.profile}; "
        f"{trainable:,} trainable parameters",
        f"per epoch {examples:,} examples in {trainer.steps_per_epoch:,} steps of {t.batch_size}; "
        f"up to {t.epochs} epochs" + (f" or {t.max_steps:,} steps" if t.max_steps else "")
        + f", validation every {t.eval_every} on {c.eval.valid_metric} (patience {t.patience})",
        *([schedule_line(trainer)] if t.lr_schedule != "constant" or t.warmup_steps else []),
    ]


def schedule_line(trainer: Trainer) -> str:
    """The learning-rate curve of a run that has one (train.lr_schedule, train.warmup_steps)."""
    t = trainer.config.train
    planned = trainer.planned_steps
    warmup = f" after a linear warm-up of {t.warmup_steps:,} steps" if t.warmup_steps else ""
    curve = f"cosine to 0 at step {planned:,}" if t.lr_schedule == "cosine" else "constant"
    return f"learning rate {t.lr:g}: {curve}{warmup}"


def epoch_line(row: dict[str, Any], metric: str, epochs: int, best: bool) -> str:
    text = f"epoch {row['epoch']}/{epochs}: loss {row['loss']:.4f} ({row['seconds']:.1f}s, {row['steps']} steps)"
    if "valid" in row:
        text += f"  valid {metric} {percent(row['valid'][metric])}" + (" (best)" if best else "")
    return text


class RunReport:
    """Everything a training run reports: log lines, progress bar, TensorBoard, metrics.csv. Silent
    on ranks other than 0; `close` (or the trainer's collection) removes its handlers."""

    def __init__(self, trainer: Trainer) -> None:
        out, main = trainer.out, trainer.job.main
        self.out, self.main = out, main
        self.log = RunLog(out, main)
        self.progress = RunProgress(trainer.config.train.progress and main)
        self.images = trainer.model.item_encoder.images_per_item  # images per item encoded (0: none)
        self.tracker: Tracker | None = None
        self._finalizer = weakref.finalize(trainer, self.close)  # a Trainer that is never fit still lets go
        if main:
            for line in banner(trainer):
                log.info(line)
            self.tracker = Tracker(out, trainer.state.epoch)
            rows = trainer.metrics.read()
            if rows:  # a resumed run: the table matches metrics.jsonl, truncated at the checkpoint
                write_metrics_csv(out / "metrics.csv", rows)

    def epoch(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """One epoch's line, metrics.csv and TensorBoard scalars (after metrics.jsonl has the row)."""
        if not self.main:
            return
        c = trainer.config
        best = "valid" in row and trainer.state.best_epoch == row["epoch"]
        log.info(epoch_line(row, c.eval.valid_metric, c.train.epochs, best))
        write_metrics_csv(self.out / "metrics.csv", trainer.metrics.read())
        if self.tracker is not None:
            self.tracker.epoch(row, learning_rates(trainer), self.images)

    def interval_start(self, now: float) -> None:
        """An epoch begins: the first interval of `interval` lines starts now."""
        self._interval = (now, 0, 0.0, 0.0)  # started, steps, loss sum, items encoded, at the last line

    def interval(self, trainer: Trainer, epoch: int, steps: int, n_batches: int, loss_sum: float,
                 encoded: float) -> None:
        """train.log_every's line, for the steps since the last one: mean loss, learning rates, examples
        per second and, where items are images, images per second (sums and counts so far this epoch)."""
        import time

        now = time.perf_counter()
        started, steps_before, loss_before, encoded_before = self._interval
        self._interval = (now, steps, loss_sum, encoded)
        if not self.main or steps == steps_before:
            return
        c, seconds, done = trainer.config, max(now - started, 1e-9), steps - steps_before
        rates = ", ".join(f"{name} {lr:.2e}" for name, lr in learning_rates(trainer).items())
        text = (f"epoch {epoch + 1}/{c.train.epochs} step {steps}/{n_batches}: loss {(loss_sum - loss_before) / done:.4f}, "
                f"lr {rates or '-'}, {done * c.train.batch_size / seconds:,.0f} examples/s")
        if self.images:
            text += f", {self.images * (encoded - encoded_before) / seconds:,.0f} images/s"
        log.info(text)

    def stopped(self, trainer: Trainer) -> None:
        """Why training stopped, when it was not the last epoch; the run's bar ends here."""
        self.progress.close()
        if not self.main:
            return
        s, t, metric = trainer.state, trainer.config.train, trainer.config.eval.valid_metric
        best = (f"best epoch {s.best_epoch} ({metric} {percent(s.best_metric)})" if s.best_epoch
                else "no best epoch")
        if s.stopped == "early stopping":
            log.info(f"early stopping at epoch {s.epoch}/{t.epochs}: valid {metric} did not improve for "
                     f"{s.bad_evaluations} evaluations (train.patience {t.patience}); {best}")
        elif s.stopped == "max_steps":
            log.info(f"stopped at epoch {s.epoch}/{t.epochs}: train.max_steps {t.max_steps:,} reached; {best}")
        elif s.stopped == "nothing to train":
            log.info(f"{trainer.config.model_name} has nothing to train: evaluating it as it is")

    def finished(self, trainer: Trainer, results: dict[str, Any]) -> None:
        if not self.main:
            return
        metric = trainer.config.eval.valid_metric
        scores = ", ".join(f"{split} {metric} {percent(results[split][metric])}" for split in ("valid", "test")
                           if metric in results.get(split, {}))
        log.info(f"done: {results.get('epochs_run', 0)} epochs, best epoch {results.get('best_epoch', 0)}; "
                 f"{scores}; results in {self.out / 'results.json'}")
        if self.tracker is not None:
            self.tracker.hparams(trainer.config.to_dict(), results)

    def failed(self, trainer: Trainer, err: BaseException) -> None:
        """A line in train.log for a run that ends by an exception (the console already shows the
        error): what stopped it and where it can resume."""
        self.progress.close()
        if not self.main:
            return
        last = self.out / "last.pt"
        where = f"{last} is the checkpoint to resume from" if last.is_file() else "no checkpoint to resume from"
        what = "interrupted" if isinstance(err, KeyboardInterrupt) else f"stopped by {type(err).__name__}: {err}"
        log.error(f"{what} after {trainer.state.epoch} epochs and {trainer.state.step:,} steps; {where}",
                  extra={FILE_ONLY: True})

    def close(self) -> None:
        self.progress.close()
        if self.tracker is not None:
            self.tracker.close()
        self.log.close()
