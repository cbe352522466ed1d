"""The training loop: batches from a training view, AdamW with parameter groups, periodic
full-ranking validation, early stopping, atomic checkpoints and exact resume.

Under torchrun the same loop runs on every rank: the configured batch size is the global batch,
each rank trains on its share of every global batch through DistributedDataParallel, validation is
shared out, and only rank 0 writes the run directory."""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pixelrec import distributed
from pixelrec.config import Config, build_config, dump
from pixelrec.data.batch import Batch
from pixelrec.data.prepared import PreparedData
from pixelrec.data.views import TrainingView, batch_rng
from pixelrec.distributed import Job
from pixelrec.errors import UserError
from pixelrec.evaluate.evaluator import evaluate
from pixelrec.recommender import DatasetFacts, Recommender, build_recommender
from pixelrec.train import rundir


def build_model(config: Config, data: PreparedData) -> Recommender:
    items_args = {k: v for k, v in vars(config.items).items() if k != "kind"}
    loss_args = {k: v for k, v in vars(config.loss).items() if k != "name"}
    model = build_recommender(
        config.model_name, config.model_args, config.items.kind, items_args,
        config.loss.name, loss_args, DatasetFacts(data, config.data.max_len),
    )
    model.item_encoder.amp = config.train.amp
    return model


def parameter_groups(model: Recommender, config: Config) -> list[dict[str, Any]]:
    """Item encoder vs the rest, each with its own lr and decay; no decay on norms and biases unless
    train.decay_all."""
    t = config.train
    encoder_lr = t.lr if t.encoder_lr is None else t.encoder_lr
    encoder_decay = t.weight_decay if t.encoder_weight_decay is None else t.encoder_weight_decay
    encoder_ids = {id(p) for p in model.item_encoder.encoder_parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in encoder_ids, p.dim() >= 2), []).append(p)
    out = []
    for (is_encoder, decays), params in sorted(groups.items()):
        out.append({
            "params": params,
            "lr": encoder_lr if is_encoder else t.lr,
            "weight_decay": (encoder_decay if is_encoder else t.weight_decay) if decays or t.decay_all else 0.0,
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
        self.shared_candidates = model.loss.shares_candidates

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, number: int) -> Batch:
        batch = self.view.batch(self.order[number], batch_rng(self.seed, self.epoch, number), self.job,
                                self.shared_candidates)
        if self.encoder is not None:
            batch.item_ids = batch.distinct_items()
            batch.item_inputs = self.encoder.load_inputs(batch.item_ids.numpy())
        return batch


class Trainer:
    def __init__(self, config: Config, out: Path, resume: bool = False,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.config, self.out = config, Path(out)
        self.on_epoch = on_epoch  # called with each epoch's metrics row once it is checkpointed (tuning, pruning)
        if config.data.path is None:
            raise UserError("no dataset: pass --data DIR (a directory written by `pixelrec prepare`)")
        self.data = PreparedData(config.data.path)
        self.job, self.device = distributed.join(config.train.device, config.train.dist_timeout_minutes)
        torch.manual_seed(config.train.seed)
        self.model = build_model(config, self.data).to(self.device)
        if self.job.world > 1:
            torch.manual_seed(config.train.seed + 7919 * self.job.rank)  # same weights, own dropout masks
        backbone, loss = self.model.backbone, self.model.loss
        d = config.data
        self.view = TrainingView(
            self.data, backbone.view, d.max_len, d.sequences,
            negatives=loss.negatives, in_batch=loss.in_batch, mask_ratio=backbone.mask_ratio,
            window_remainder=d.window_remainder, prefixes=d.prefixes, negatives_avoid=d.negatives_avoid,
            pair_context=d.pair_context if backbone.set_context else "earlier",
            window_batches=backbone.window_batches, force_mask=backbone.force_mask,
            masked_width=d.max_len + int(backbone.extra_slot),
        )
        groups = parameter_groups(self.model, config)
        # the fused kernel updates each tensor in one pass (foreach makes several): it matters for a
        # full-size ID table, whose dense update is most of a CPU step
        self.optimizer = torch.optim.AdamW(groups, lr=config.train.lr, fused=True) if groups else None
        self.net: nn.Module = self.model
        if self.job.active and groups:
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

    def _prepare_items(self) -> None:
        t = self.config.train
        self.model.item_encoder.prepare(self.device, t, workers=t.num_workers, progress=t.progress and self.job.main)

    # --- run directory ------------------------------------------------------------------
    def _start(self) -> None:
        if (self.out / "last.pt").exists():
            raise UserError(f"{self.out}: already holds a run; use --resume {self.out} or another --out")
        distributed.barrier()  # every rank has looked before rank 0 writes anything
        if not self.job.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        rundir.atomic_write(self.out / "config.yaml", dump(self.config).encode())
        rundir.atomic_json(self.out / "environment.json", rundir.environment(self.device))
        self.metrics.truncate_after(0)

    def _resume(self) -> None:
        payload = rundir.load_checkpoint(self.out / "last.pt")
        self.model.load_state_dict(payload["model"])
        if self.optimizer is not None and payload.get("optimizer"):
            self.optimizer.load_state_dict(payload["optimizer"])
        self.state = TrainState(**payload["state"])
        streams = payload.get("rng_per_rank") or [(payload["torch_rng"], payload.get("cuda_rng"))]
        if len(streams) != self.job.world and self.job.main:
            print(f"note: {self.out} was trained on {len(streams)} rank(s), resumed on {self.job.world}: "
                  "dropout streams restart, so the result will not equal an uninterrupted run", flush=True)
        if len(streams) == self.job.world:
            cpu_rng, cuda_rng = streams[self.job.rank]
            torch.set_rng_state(cpu_rng)
            if self.device.type == "cuda" and cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, self.device)
        if self.job.main:
            self.metrics.truncate_after(self.state.epoch)
        distributed.barrier()

    def _checkpoint(self, name: str) -> None:
        """Every rank calls this (their random streams are gathered); rank 0 writes."""
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        streams = distributed.gather_objects((torch.get_rng_state(), cuda_rng))
        if not self.job.main:
            return
        rundir.save_checkpoint(self.out / name, {
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else {},
            "state": self.state.to_dict(),
            "torch_rng": streams[0][0],
            "cuda_rng": streams[0][1],
            "rng_per_rank": streams,
        })

    # --- loop ---------------------------------------------------------------------------
    def batches(self, epoch: int) -> Iterator[Batch]:
        t = self.config.train
        # under several ranks a final global batch with fewer examples than ranks is dropped
        order = [ids for _, ids in self.view.epoch_batches(t.batch_size, t.seed, epoch) if len(ids) >= self.job.world]
        dataset = BatchDataset(self.view, self.model, order, t.seed, epoch, self.job)
        if t.num_workers == 0:
            yield from (dataset[i] for i in range(len(dataset)))
            return
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, shuffle=False, num_workers=t.num_workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False, prefetch_factor=4,
        )
        yield from loader

    def _autocast(self):
        enabled = self.config.train.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        t = self.config.train
        self.model.train()
        n_batches = -(-len(self.view) // t.batch_size)
        total = torch.zeros((), device=self.device)  # summed on the device: no synchronisation per step
        count, encoded, positions = 0, 0.0, 0.0
        started = time.perf_counter()
        bar = tqdm(self.batches(epoch), total=n_batches, desc=f"epoch {epoch + 1}", leave=False,
                   disable=not (t.progress and self.job.main), unit="batch", dynamic_ncols=True)
        for batch in bar:
            positions += float((batch.context > 0).sum() + (batch.targets > 0).sum())  # still on the CPU
            batch = batch.to(self.device)
            with self._autocast():
                out = self.net(batch)
            # a share without targets (PixelRec's one-item windows, a cloze draw that hid nothing) has no loss: zero gradients
            loss = out["loss"] * batch.loss_scale if batch.loss_scale else out["loss"].nan_to_num() * 0.0
            if not torch.isfinite(loss):
                raise UserError(
                    f"loss became {loss.item()} at epoch {epoch + 1}, step {self.state.step + 1}; stopped. "
                    f"The last good checkpoint is {self.out / 'last.pt'}; try a lower train.lr or train.clip_grad"
                )
            loss.backward()  # under DDP: gradients averaged over ranks
            if t.clip_grad:
                nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)  # gradients never outlive their step (nor sit through validation)
            self.state.step += 1
            total += loss.detach()
            count += 1
            encoded += float(out["items_encoded"])
            if count % 20 == 0:
                bar.set_postfix(loss=f"{float(total) / count:.4f}", ex_s=f"{count * t.batch_size / (time.perf_counter() - started):.0f}")
            if t.max_steps is not None and self.state.step >= t.max_steps:
                self.state.stopped = "max_steps"
                break
        seconds = time.perf_counter() - started
        total = float(total)
        if self.job.world > 1:  # the global batches' mean loss and everything encoded on any rank
            total = distributed.all_sum(total) / self.job.world
            encoded, positions = distributed.all_sum(encoded), distributed.all_sum(positions)
        self.state.items_encoded += encoded
        return {"loss": total / max(count, 1), "steps": count, "seconds": seconds,
                "items_encoded_per_step": encoded / max(count, 1),
                "encoded_per_position": encoded / max(positions, 1.0)}

    def validate(self) -> dict[str, Any]:
        return self.evaluate("valid")

    def evaluate(self, split: str) -> dict[str, Any]:
        c = self.config
        return evaluate(self.model, self.data, split, c.data.max_len, c.eval.ks, c.eval.batch_size,
                        c.eval.score_budget_mb, workers=c.train.num_workers, job=self.job,
                        mask_target=c.eval.mask_target)

    def fit(self) -> dict[str, Any]:
        """Train until epochs, early stopping or max_steps; then write results.json from the best model."""
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
            if self.job.main:
                print(_epoch_line(row, c.eval.valid_metric), flush=True)
            if self.on_epoch is not None:
                self.on_epoch(row)
        if not self.state.stopped:
            self.state.stopped = "epochs"
        return self.finish()

    def finish(self) -> dict[str, Any]:
        if (self.out / "best.pt").exists():
            self.model.load_state_dict(rundir.load_checkpoint(self.out / "best.pt", self.device)["model"])
        started = time.perf_counter()
        valid = self.validate()
        test = self.evaluate("test")
        eval_seconds = (time.perf_counter() - started) / 2
        if self.state.epoch == 0:  # nothing trained (a rule-based model): still a loadable run
            self._checkpoint("last.pt")
        results = results_record(self, valid | test, eval_seconds)
        if self.job.main:
            rundir.atomic_json(self.out / "results.json", results)
        distributed.barrier()  # results.json is there when any rank returns
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
        **metrics,
        "train_seconds_per_epoch": s.train_seconds / s.epoch if s.epoch else 0.0,
        "train_seconds_per_step": s.train_seconds / s.step if s.step else 0.0,
        "eval_seconds": eval_seconds,
        "trainable_parameters": trainable,
    }
    if c.items.kind == "pixels":
        record["images_per_step"] = s.items_encoded / s.step if s.step else 0.0
    return record


def _epoch_line(row: dict[str, Any], metric: str) -> str:
    text = f"epoch {row['epoch']}: loss {row['loss']:.4f} ({row['seconds']:.1f}s, {row['steps']} steps)"
    if "valid" in row:
        text += f"  valid {metric} {row['valid'][metric]:.4f}"
    return text


def train(config: Config, out: str | Path, resume: bool = False,
          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train `config` into run directory `out` (or continue it with resume=True); returns results.
    `on_epoch(row)` sees each epoch's metrics row after its checkpoint; an exception it raises
    (e.g. optuna.TrialPruned) stops training and leaves a resumable run directory."""
    return Trainer(config, Path(out), resume=resume, on_epoch=on_epoch).fit()


def config_of_run(run: str | Path) -> Config:
    """The resolved configuration saved in a run directory."""
    from pixelrec.config import read_yaml

    return build_config(read_yaml(Path(run) / "config.yaml"), source=str(Path(run) / "config.yaml"))
