"""The training loop: batches from a training view, AdamW with parameter groups, periodic
full-ranking validation, early stopping, atomic checkpoints and exact resume.

Under torchrun the same loop runs on every rank: the configured batch size is the global batch,
each rank trains on its share of every global batch through DistributedDataParallel, validation is
shared out, and only rank 0 writes the run directory."""

from __future__ import annotations

import math
import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from pixelrec import distributed, progress
from pixelrec.config import Config, dump
from pixelrec.data.batch import Batch
from pixelrec.data.prepared import PreparedData
from pixelrec.data.views import TrainingView, batch_rng
from pixelrec.distributed import Job
from pixelrec.errors import UserError, worker_errors
from pixelrec.evaluation.evaluator import evaluate
from pixelrec.factory import build_model
from pixelrec.recommender import Recommender
from pixelrec.runs import directory as rundir
from pixelrec.runs.directory import config_of_run
from pixelrec.runs.results import write_results
from pixelrec.storage.atomic import atomic_json, atomic_write
from pixelrec.threads import use_threads
from pixelrec.towers.caveats import transfer_caveat
from pixelrec.training import report, transfer
from pixelrec.training.memory import refuse_what_cannot_fit
from pixelrec.training.optimizer import RowAdamW, lr_factor, row_tables

#: Optimiser steps between looks at the losses: a look synchronises with the device (and feeds the
#: progress bar), so it is not done every step; a non-finite loss is still found at its exact step.
LOSS_CHECK_EVERY = 20


def parameter_groups(model: Recommender, config: Config) -> list[dict[str, Any]]:
    """Item encoder (by tower, see `ItemEncoder.encoder_groups`) vs the rest, each with its own lr and
    decay; no decay on norms and biases unless train.decay_all. Each group is named ("recommender",
    "encoder", ...)."""
    t = config.train
    encoder_lr = t.lr if t.encoder_lr is None else t.encoder_lr
    encoder_decay = t.weight_decay if t.encoder_weight_decay is None else t.encoder_weight_decay
    towers = [{"name": "recommender", "lr": t.lr, "weight_decay": t.weight_decay}]
    owner: dict[int, int] = {}
    for group in model.item_encoder.encoder_groups():
        towers.append({"name": group["name"], "lr": encoder_lr if group["lr"] is None else group["lr"],
                       "weight_decay": encoder_decay if group["weight_decay"] is None else group["weight_decay"]})
        owner |= {id(p): len(towers) - 1 for p in group["params"]}
    groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((owner.get(id(p), 0), p.dim() >= 2), []).append(p)
    out = []
    for (tower, decays), params in sorted(groups.items()):
        rates = towers[tower]
        out.append({
            "name": rates["name"], "params": params, "lr": rates["lr"],
            "weight_decay": rates["weight_decay"] if decays or t.decay_all else 0.0,
        })
    return out


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel over the job's ranks. Buffers (frozen feature tables, BN statistics)
    stay per rank: every rank builds the same tables itself, so none is ever broadcast."""
    with warnings.catch_warnings():
        # the suggested replacement still broadcasts buffers once at start-up: a feature table can be GBs
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None, broadcast_buffers=False)


@dataclass
class TrainState:
    epoch: int = 0  # completed epochs
    step: int = 0  # optimiser steps
    best_metric: float = -math.inf
    best_epoch: int = 0
    best_valid: dict[str, Any] = field(default_factory=dict)
    bad_evaluations: int = 0
    train_seconds: float = 0.0
    items_encoded: float = 0.0
    stopped: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class BatchDataset(torch.utils.data.Dataset):
    """Batch number -> this rank's share of that built batch, so DataLoader workers can build (and
    load images for) batches."""

    def __init__(self, view: TrainingView, model: Recommender, order: list[np.ndarray], seed: int, epoch: int,
                 job: Job = distributed.SINGLE) -> None:
        self.view, self.order, self.seed, self.epoch, self.job = view, order, seed, epoch, job
        self.encoder = model.item_encoder if model.item_encoder.needs_inputs else None

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, number: int) -> Batch:
        batch = self.view.batch(self.order[number], batch_rng(self.seed, self.epoch, number), self.job)
        if self.encoder is not None:
            batch.item_ids = batch.distinct_items()
            batch.item_inputs = self.encoder.load_inputs(batch.item_ids.numpy())
        return batch


class Trainer:
    def __init__(self, config: Config, out: Path, resume: bool = False,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None, overwrite: bool = False) -> None:
        self.config, self.out = config, Path(out)
        self.threads = use_threads(config.train.threads)
        self.on_epoch = on_epoch  # called with each epoch's metrics row once it is checkpointed (tuning, pruning)
        if config.data.path is None:
            raise UserError("no dataset: pass data=DIR (a directory written by `pixelrec prepare`)")
        self.data = PreparedData(config.data.path)
        self.job, self.device = distributed.join(config.train.device, config.train.dist_timeout_minutes)
        refuse_what_cannot_fit(config, self.data, self.device)  # before the run folder is claimed
        self._claim(resume, overwrite)
        torch.manual_seed(config.train.seed)
        t = config.train
        self.model = build_model(config, self.data).to(self.device)
        # what makes the numbers incomparable with the paper's: logged once the run's log is open, and
        # recorded in results.json (towers loaded from train.init_from are not randomly initialised)
        self.caveats = self.model.item_encoder.caveats(carried=bool(t.init_from and "items" in t.init_parts))
        self.transfer: dict[str, Any] | None = None  # where a new run's weights came from (train.init_from)
        if self.config.train.init_from is not None and not resume:
            self.transfer = self._init_from()
        if self.job.world > 1:
            torch.manual_seed(config.train.seed + 7919 * self.job.rank)  # same weights, own dropout masks
        self.view = TrainingView.of(self.data, self.model.backbone.view_spec(config.data), self.model.loss.sampling)
        self.optimizer = self._optimizer()
        # the config's rates (resume refuses to change them), scaled each step by train.lr_schedule
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups] if self.optimizer is not None else []
        self.net: nn.Module = self.model
        if self.job.active and self.optimizer is not None:
            self.net = data_parallel(self.model, self.device)
        self.state = TrainState()
        self.metrics = rundir.MetricsLog(self.out / "metrics.jsonl")
        if resume:
            self._resume()
        else:
            self._start()
        # after the weights are final: the prefix cache is keyed by the frozen weights it was built
        # from; rank 0 builds it, the others then find it complete on disk
        if self.job.main:
            self._prepare_items()
        distributed.barrier()
        if not self.job.main:
            self._prepare_items()
        self.report = report.RunReport(self)  # train.log with its start banner, progress, TensorBoard, metrics.csv
        if self.job.main:
            for kind, line in self._resume_notes:
                (progress.note if kind == "note" else progress.log.info)(line)
            for caveat in self.caveats:
                progress.log.warning(caveat["message"])
        if self.transfer is not None and self.job.main:
            progress.log.info(transfer.describe(self.transfer))

    def _optimizer(self) -> RowAdamW | None:
        """AdamW over the parameter groups (fused: one pass per tensor); with train.table_optimizer=lazy
        the catalogue-sized tables update only the rows a step touched. Under several GPUs the tables
        stay dense: NCCL's sparse all-reduce is a prototype."""
        groups = parameter_groups(self.model, self.config)
        if not groups:
            return None
        lazy = self.config.train.table_optimizer == "lazy" and not (self.job.world > 1 and self.device.type == "cuda")
        tables = row_tables(self.model, item_tables=not self.model.uses_catalogue) if lazy else []
        return RowAdamW(groups, tables, lr=self.config.train.lr, fused=True)

    def _prepare_items(self) -> None:
        t = self.config.train
        self.model.item_encoder.prepare(self.device, t, workers=t.num_workers, progress=t.progress and self.job.main)

    # --- run directory ------------------------------------------------------------------
    def _claim(self, resume: bool, overwrite: bool) -> None:
        """Rank 0 takes the run directory's lock for the whole run (released by `close`, or when the
        process ends, however it ends), removes temporary files that killed writers left, and checks
        that this run may write there; every rank then raises the same one line, or goes on."""
        self._release: Callable[[], None] | None = None
        self._changes: list[tuple[str, Any, Any]] = []
        self._evaluated = "last.pt"  # the checkpoint whose weights results.json reports
        self._resume_notes: list[tuple[str, str]] = []  # ("info" | "note", line), said once the run's log is open
        self.config = rundir.with_absolute_paths(self.config)
        if resume and overwrite:
            raise UserError(f"{self.out}: overwrite=True starts a run anew, resume=True continues it; choose one")
        failure: UserError | None = None
        if self.job.main:
            try:
                # released by `close`, or when this object is dropped or the interpreter exits
                self._release = weakref.finalize(self, rundir.Claim(self.out).release)
                rundir.remove_temp_files(self.out)
                if resume:
                    self._changes = self._resume_check()
                elif overwrite:
                    source = self.config.train.init_from
                    if source is not None and Path(source).resolve() == self.out.resolve():
                        raise UserError(f"{self.out}: is the run train.init_from starts from; overwrite=True would "
                                        "delete it first: write the new run to another out=")
                    rundir.clear(self.out)
                elif (reason := rundir.start_refusal(self.out, self.config)) is not None:
                    raise UserError(reason)
            except UserError as err:
                self.close()
                failure = err
        problem = distributed.gather_objects(str(failure) if failure else None)[0]
        if failure is not None:
            raise failure
        if problem is not None:
            raise UserError(problem)

    def _resume_check(self) -> list[tuple[str, Any, Any]]:
        """What --resume changes (refusing what it may not), and the dataset is the run's own."""
        if not (self.out / "config.yaml").is_file():
            raise UserError(f"{self.out}: not a run directory (no config.yaml); nothing to resume")
        if not (self.out / "last.pt").is_file():
            raise UserError(f"{self.out}: nothing to resume (no last.pt: the run stopped before its first epoch "
                            f"ended); start it again with out={self.out}")
        changes = rundir.resume_changes(self.out, config_of_run(self.out), self.config)
        rundir.check_dataset(self.out, self.data, rundir.read_dataset_record(self.out))
        return changes

    def close(self) -> None:
        """Release the run directory for other writers (`finish` and `train` call this)."""
        release = getattr(self, "_release", None)
        if release is not None:
            release()  # runs once

    def _start(self) -> None:
        if not self.job.main:
            return
        try:
            atomic_write(self.out / "config.yaml", dump(self.config).encode())
            atomic_json(self.out / "environment.json", rundir.environment(self.device))
            atomic_json(self.out / "dataset.json", rundir.dataset_record(self.data))
            self.metrics.truncate_after(0)
        except BaseException:
            self.close()
            raise

    def _init_from(self) -> dict[str, Any]:
        """Load another run's weights into a new run, before the optimiser and the prefix cache see the
        model; never on --resume, where the run's own checkpoint wins."""
        try:
            return transfer.initialise(self.model, self.config, self.data.n_items, self.data.n_users)
        except BaseException:
            self.close()
            raise

    def _resume(self) -> None:
        last = self.out / "last.pt"
        try:
            payload = rundir.load_checkpoint(last)
            rundir.load_weights(self.model, payload["model"], last)
            if self.optimizer is not None and payload.get("optimizer"):
                try:
                    self.optimizer.load_state_dict(payload["optimizer"])
                except (ValueError, KeyError, RuntimeError) as err:
                    raise UserError(f"{last}: its optimizer state does not fit the run's model "
                                    f"({str(err).splitlines()[0]}); the checkpoint is from another run") from None
            self.transfer = payload.get("init_from")  # recorded at the start, not applied again
            try:
                self.state = TrainState(**payload["state"])
            except TypeError as err:
                raise UserError(f"{last}: training state not understood ({err}); "
                                "use another copy or train again") from None
            t, s = self.config.train, self.state
            if (s.stopped == "early stopping" and s.bad_evaluations < t.patience) or \
                    (s.stopped == "max_steps" and (t.max_steps is None or s.step < t.max_steps)):
                s.stopped = ""  # a patience or max_steps raised on --resume lets the run go on
        except BaseException:
            self.close()
            raise
        streams = payload.get("rng_per_rank") or [(payload["torch_rng"], payload.get("cuda_rng"))]
        if len(streams) != self.job.world and self.job.main:
            self._resume_notes.append(("note", f"{self.out} was trained on {len(streams)} rank(s), resumed on "
                                       f"{self.job.world}: dropout streams restart, so the result will not equal an "
                                       "uninterrupted run"))
        if len(streams) == self.job.world:
            cpu_rng, cuda_rng = streams[self.job.rank]
            torch.set_rng_state(cpu_rng)
            if self.device.type == "cuda" and cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, self.device)
        if self.job.main:
            self.metrics.truncate_after(self.state.epoch)
            if self._changes:
                atomic_write(self.out / "config.yaml", dump(self.config).encode())
                if any(key == "data.path" for key, _, _ in self._changes):
                    atomic_json(self.out / "dataset.json", rundir.dataset_record(self.data))
                self._resume_notes.append(("info", f"resumed with {rundir.describe_changes(self._changes)}"))
        distributed.barrier()

    def _checkpoint(self, name: str) -> None:
        """Every rank calls this (their random streams are gathered); rank 0 writes. Only last.pt
        carries the optimizer state (exact resume); best.pt is the model, a third of the size."""
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        streams = distributed.gather_objects((torch.get_rng_state(), cuda_rng))
        if not self.job.main:
            return
        optimizer = self.optimizer.state_dict() if self.optimizer is not None and name == "last.pt" else {}
        rundir.save_checkpoint(self.out / name, {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": optimizer,
            "state": self.state.to_dict(),
            "torch_rng": streams[0][0],
            "cuda_rng": streams[0][1],
            "rng_per_rank": streams,
            "init_from": self.transfer,
        })

    # --- loop ---------------------------------------------------------------------------
    def batches(self, epoch: int) -> Iterator[Batch]:
        t = self.config.train
        # under several ranks a final global batch with fewer examples than ranks is dropped
        order = [ids for _, ids in self.view.epoch_batches(t.batch_size, t.seed, epoch) if len(ids) >= self.job.world]
        dataset = BatchDataset(self.view, self.model, order, t.seed, epoch, self.job)
        # pinned batches reach the GPU without stalling the host: a copy from pageable memory first
        # waits for every step still queued on the device
        pin = self.device.type == "cuda"
        if t.num_workers == 0:
            yield from (dataset[i].pin_memory() if pin else dataset[i] for i in range(len(dataset)))
            return
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, shuffle=False, num_workers=t.num_workers,
            pin_memory=pin, persistent_workers=False, prefetch_factor=4,
        )
        with worker_errors():  # a damaged store entry read in a worker: its one line, not torch's traceback
            yield from loader

    def _autocast(self):
        enabled = self.config.train.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        t = self.config.train
        self.model.train()
        n_batches = self.steps_per_epoch
        pending: list[torch.Tensor] = []  # the losses not yet looked at, on the device
        total, count, encoded, positions = 0.0, 0, 0.0, 0.0
        started = time.perf_counter()
        self.report.interval_start(started)
        bar = self.report.progress.epoch(epoch, t.epochs, n_batches, self.state.step, t.max_steps)
        for batch in self.batches(epoch):
            positions += float((batch.context > 0).sum() + (batch.targets > 0).sum())  # still on the CPU
            batch = batch.to(self.device)
            with self._autocast():
                out = self.net(batch)
            loss = out["loss"] * batch.scale_for(self.model.loss.reduction)
            loss.backward()  # under DDP: gradients averaged over ranks
            if t.clip_grad:
                nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad)
            self._schedule()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)  # gradients never outlive their step (nor sit through validation)
            self.state.step += 1
            pending.append(loss.detach())
            count += 1
            encoded += float(out["items_encoded"])
            bar.update()
            if t.log_every and count % t.log_every == 0:
                total += self._checked_losses(pending, epoch)
                self.report.interval(self, epoch, count, n_batches, total, encoded)
            if count % LOSS_CHECK_EVERY == 0:
                total += self._checked_losses(pending, epoch)
                bar.set_postfix(loss=f"{total / count:.4f}", ex_s=f"{count * t.batch_size / (time.perf_counter() - started):.0f}")
            if t.max_steps is not None and self.state.step >= t.max_steps:
                self.state.stopped = "max_steps"
                break
        total += self._checked_losses(pending, epoch)  # before the epoch's checkpoint can be written
        seconds = time.perf_counter() - started
        if self.job.world > 1:  # the global batches' mean loss and everything encoded on any rank
            total = distributed.all_sum(total) / self.job.world
            encoded, positions = distributed.all_sum(encoded), distributed.all_sum(positions)
        self.state.items_encoded += encoded
        return {"loss": total / max(count, 1), "steps": count, "seconds": seconds,
                "items_encoded_per_step": encoded / max(count, 1),
                "encoded_per_position": encoded / max(positions, 1.0)}

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.view) // self.config.train.batch_size)

    @property
    def planned_steps(self) -> int:
        """The optimiser steps the run is planned for: every epoch, or max_steps if fewer."""
        t = self.config.train
        return min(t.epochs * self.steps_per_epoch, t.max_steps or t.epochs * self.steps_per_epoch)

    def _schedule(self) -> None:
        """Set each group's learning rate for the coming step from the step count alone (so a resumed
        run continues the curve exactly); a constant schedule without warm-up keeps the configured rates."""
        t = self.config.train
        factor = lr_factor(self.state.step, self.planned_steps, t.lr_schedule, t.warmup_steps)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def _checked_losses(self, pending: list[torch.Tensor], epoch: int) -> float:
        """Sum of the losses in `pending` (emptied), read in one synchronisation with the device. A
        non-finite one, on any rank, stops the run naming its step: the steps after it have poisoned
        the weights, but the check comes before any checkpoint of this epoch is written."""
        if not pending:
            return 0.0
        losses = torch.stack(pending).float().cpu()
        first_step = self.state.step - len(pending) + 1
        pending.clear()
        bad = (~torch.isfinite(losses)).nonzero().flatten().tolist()
        first = (first_step + bad[0], losses[bad[0]].item()) if bad else None
        if self.job.world > 1:  # every rank stops at the same step
            found = [f for f in distributed.gather_objects(first) if f is not None]
            first = min(found) if found else None
        if first is not None:
            last = self.out / "last.pt"
            kept = f"The last good checkpoint is {last}" if last.is_file() else "No checkpoint was written yet"
            raise UserError(
                f"loss became {first[1]} at epoch {epoch + 1}, step {first[0]}; stopped. "
                f"{kept}; try a lower train.lr or train.clip_grad"
            )
        return float(losses.double().sum())

    def validate(self) -> dict[str, Any]:
        return self.evaluate("valid")

    def evaluate(self, split: str) -> dict[str, Any]:
        c = self.config
        return evaluate(self.model, self.data, split, c.data.max_len, c.eval.ks, c.eval.batch_size,
                        c.eval.score_budget_mb, workers=c.train.num_workers, job=self.job,
                        mask_target=c.eval.mask_target, ties=c.eval.ties)

    def fit(self) -> dict[str, Any]:
        """Train until epochs, early stopping or max_steps; then write results.json from the best model."""
        try:
            with progress.progress_scope(self.config.train.progress and self.job.main):
                results = self._fit()
            self.report.finished(self, results)
            return results
        except BaseException as err:
            self.report.failed(self, err)
            raise
        finally:
            self.report.close()

    def _fit(self) -> dict[str, Any]:
        c, t = self.config, self.config.train
        if not self.model.backbone.trainable:
            self.state.stopped = self.state.stopped or "nothing to train"
        while not self.state.stopped and self.state.epoch < t.epochs:
            epoch = self.state.epoch
            row: dict[str, Any] = {"epoch": epoch + 1, **self.train_epoch(epoch)}
            self.state.epoch += 1
            self.state.train_seconds += row["seconds"]
            last = self.state.epoch >= t.epochs or self.state.stopped
            if self.state.epoch % t.eval_every == 0 or last:
                valid = self.validate()
                row["valid"] = valid["valid"]
                metric = valid["valid"][c.eval.valid_metric]
                if metric > self.state.best_metric or (t.ties_improve and metric == self.state.best_metric):
                    self.state.best_metric, self.state.best_epoch = metric, self.state.epoch
                    self.state.best_valid = valid
                    self.state.bad_evaluations = 0
                    self._checkpoint("best.pt")
                else:
                    self.state.bad_evaluations += 1
                    if self.state.bad_evaluations >= t.patience:
                        self.state.stopped = "early stopping"
            row["step"] = self.state.step
            if self.job.main:
                self.metrics.append(row)
            self._checkpoint("last.pt")
            self.report.epoch(self, row)
            if self.on_epoch is not None:
                self.on_epoch(row)
        if not self.state.stopped:
            self.state.stopped = "epochs"
        self.report.stopped(self)
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Evaluate the best checkpoint (the last weights when no validation ever improved) on the test
        split, write results.json, and release the run directory. The best checkpoint's validation
        metrics are those stored with it when it was chosen; only without one is validation run."""
        distributed.barrier()  # rank 0 has written the last best.pt before any rank looks for it
        best = self.out / "best.pt"
        valid: dict[str, Any] = {}
        if best.exists():
            payload = rundir.load_checkpoint(best, self.device)
            rundir.load_weights(self.model, payload["model"], best)
            self._evaluated = "best.pt"
            valid = (payload.get("state") or {}).get("best_valid") or {}
        started = time.perf_counter()
        passes = 1 if valid else 2
        valid = valid or self.validate()
        test = self.evaluate("test")
        eval_seconds = (time.perf_counter() - started) / passes  # one split's evaluation
        if self.state.epoch == 0:  # nothing trained (a rule-based model): still a loadable run
            self._checkpoint("last.pt")
        results = results_record(self, valid | test, eval_seconds)
        if self.job.main:
            write_results(self.out, results)
        distributed.barrier()  # results.json is there when any rank returns
        self.close()
        return results


def results_record(trainer: Trainer, metrics: dict[str, Any], eval_seconds: float) -> dict[str, Any]:
    c, s, model = trainer.config, trainer.state, trainer.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) if model.backbone.trainable else 0
    record: dict[str, Any] = {
        "model": c.model_name,
        "profile": c.profile,
        "items": c.items.kind,
        "encoder": c.items.encoder,
        "loss": c.loss.name,
        "dataset": trainer.data.name,
        "best_epoch": s.best_epoch,
        "epochs_run": s.epoch,
        "steps": s.step,
        "stopped": s.stopped,
        "checkpoint": getattr(trainer, "_evaluated", "last.pt"),
        **metrics,
        "train_seconds_per_epoch": s.train_seconds / s.epoch if s.epoch else 0.0,
        "train_seconds_per_step": s.train_seconds / s.step if s.step else 0.0,
        "eval_seconds": eval_seconds,
        "trainable_parameters": trainable,
    }
    images = model.item_encoder.images_per_item  # per item encoded: pixel and multimodal runs report images
    if images:
        record["images_per_step"] = images * s.items_encoded / s.step if s.step else 0.0
    record["caveats"] = list(getattr(trainer, "caveats", []))
    if getattr(trainer, "transfer", None):
        record["init_from"] = trainer.transfer
        record["caveats"].append(transfer_caveat(str(trainer.transfer["run"]), str(trainer.transfer["checkpoint"])))
    return record


def train(config: Config, out: str | Path, resume: bool = False,
          on_epoch: Callable[[dict[str, Any]], None] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Train `config` into run directory `out` (or continue it with resume=True); returns results.
    `on_epoch(row)` sees each epoch's metrics row after its checkpoint; an exception it raises
    (e.g. optuna.TrialPruned) stops training and leaves a resumable run directory. A non-empty `out`
    is refused unless `overwrite` (which replaces the run files there)."""
    trainer = Trainer(config, Path(out), resume=resume, on_epoch=on_epoch, overwrite=overwrite)
    try:
        return trainer.fit()
    finally:
        trainer.close()  # however training ended, the run directory is free for the next writer


