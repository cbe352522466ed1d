"""One-GPU check: PixelNet's training step against its image encoder alone, evaluation speed, ID
SASRec speed, peak GPU memory, and a torchrun job (NCCL) that must evaluate like one process.

On a synthetic dataset prepared for real (`synth` covers, `prepare` with an LMDB image store at
224 px), random weights, batch 64 sequences, SASRec with the packaged PixelNet settings (our
defaults, not --config paper):

  * pipeline, per encoder (clip-vit-b32 tuning its last 2 blocks, resnet50 its last stage): steps/s
    of the trainer's full step (DataLoader workers decoding covers, copy to the device, bf16
    autocast, SASRec, in-batch softmax, AdamW) after warm-up, against the encoder alone on as many
    distinct images per step, already on the device (frozen layers record no graph, since neither
    their weights nor their input need a gradient; trainable layers forward and backward).
    efficiency = full / alone, target >= 0.7;
  * prefix_cache: the same with items.image.cache=prefix, against the trainable top alone on cached
    activations already on the device; target >= 0.8;
  * catalogue: encoding every item for evaluation (`catalogue_vectors`, images loaded by workers)
    against the encoder's forward alone on images on the device; target >= 0.8;
  * ranking: full-ranking evaluation (`rank_targets`) of a random ID SASRec (d=512) over ~100K items;
  * id_sasrec: training steps/s of ID SASRec (BPR, lazy item-table rows) at d=64 and d=512 over the
    same catalogue, and the seconds a Pixel200K-size epoch (6,138 steps) takes at that rate;
  * torchrun: `torchrun --nproc-per-node 1` trains pixel SASRec two epochs inside a process group
    (NCCL on a GPU, gloo on the CPU) that the worker starts itself (a job of one rank would otherwise
    not start one), and the same in a plain process; their metrics must be equal.

Each part reports its own error as one line and the others still run; a part that would start after
--budget-s is skipped. Peak GPU memory is reset before each measurement (null on the CPU). The JSON is
printed and written to --out; the exit status is 1 when any part failed. --tiny runs the same parts
on the CPU in seconds (timm's test_vit / test_resnet at 32 px, a few steps, small catalogues).

    .venv/bin/python benchmarks/gpu_check.py [--tiny] [--out FILE] [--budget-s 450] [--workers N]
        [--encoders clip-vit-b32:2,resnet50:3] [--set section.key=value ...]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
TARGETS = {"pipeline": 0.7, "prefix_cache": 0.8, "catalogue": 0.8}
EQUAL_TOLERANCE = 1e-6  # metrics of the torchrun job and the plain process
# steps of 64 in an ID SASRec epoch at Pixel200K's size (392,797 training windows of the synthetic log
# with its real numbers of users, items and interactions: benchmarks/results/scale_table.json)
PIXEL200K_STEPS = 6_138


@dataclass(frozen=True)
class Plan:
    """Sizes of one check: the GPU's, or --tiny's CPU one."""

    encoders: dict[str, int]  # image encoder -> items.image.tune_last
    image_size: int  # covers as stored and as encoded
    users: int  # pixel dataset
    items: int
    rank_users: int  # ID dataset for ranking and ID SASRec (interactions only)
    rank_items: int
    rank_rows: int
    embedding_size: int | None  # pixel SASRec; None: the packaged PixelNet size (512)
    warmup: int  # trainer steps before the timed ones
    steps: int  # timed trainer steps
    alone_warmup: int
    alone_steps: int
    id_sizes: tuple[int, ...] = (64, 512)
    ranking_size: int = 512
    batch_size: int = 64
    torchrun_encoder: str = "resnet50"
    torchrun_users: int | None = None  # the torchrun part's users, sampled from the pixel dataset (None: all)


# 150 timed steps: three times what 12 DataLoader workers hold prefetched, so a loader slower than the
# GPU shows in the rate; 10,000 covers: a catalogue whose encoding outlasts starting the workers
FULL = Plan(encoders={"clip-vit-b32": 2, "resnet50": 3}, image_size=224, users=8000, items=10_000,
            rank_users=50_000, rank_items=101_000, rank_rows=1_200_000, embedding_size=None,
            warmup=10, steps=150, alone_warmup=3, alone_steps=20, torchrun_users=2000)
TINY = Plan(encoders={"test_vit": 2, "test_resnet": 1}, image_size=32, users=320, items=120,
            rank_users=400, rank_items=3000, rank_rows=8000, embedding_size=32,
            warmup=2, steps=3, alone_warmup=1, alone_steps=3, torchrun_encoder="test_resnet")


# --- measuring ------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        release_memory(device)
        torch.cuda.reset_peak_memory_stats(device)


def read_peak(device: torch.device) -> float | None:
    """GiB of GPU memory allocated at most since the last `reset_peak` (None on the CPU)."""
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


@contextlib.contextmanager
def peak_memory(device: torch.device, into: dict[str, Any]) -> Iterator[None]:
    """Record the peak GPU memory allocated inside the block as into["peak_gpu_memory_gib"]."""
    reset_peak(device)
    try:
        yield
    finally:
        into["peak_gpu_memory_gib"] = read_peak(device)


def autocast(device: torch.device, enabled: bool = True) -> torch.autocast:
    """bf16 autocast on a GPU, as the trainer's; nothing on the CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


class StepClock:
    """Seconds from the end of optimiser step `warmup` to the end of step `warmup + steps`, the
    device synchronised at those two steps only (the trainer's own steps run untouched between)."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device, warmup: int, steps: int) -> None:
        self.device, self.marks, self.count = device, {warmup: 0.0, warmup + steps: 0.0}, 0
        self.handle = optimizer.register_step_post_hook(self._tick)

    def _tick(self, *_: Any) -> None:
        self.count += 1
        if self.count in self.marks:
            sync(self.device)
            self.marks[self.count] = time.perf_counter()

    @property
    def seconds(self) -> float:
        first, last = sorted(self.marks)
        return self.marks[last] - self.marks[first]


def trainer_steps(trainer: Any, warmup: int, steps: int) -> dict[str, Any]:
    """Steps/s of `trainer.train_epoch` (data loading included) over `steps` steps after `warmup`;
    the run's train.max_steps must be warmup + steps."""
    clock = StepClock(trainer.optimizer, trainer.device, warmup, steps)
    rows, epoch = [], 0
    try:
        while clock.count < warmup + steps:
            rows.append(trainer.train_epoch(epoch))
            epoch += 1
            if rows[-1]["steps"] == 0:
                raise RuntimeError("the training view has no batches")
    finally:
        clock.handle.remove()
    done = sum(r["steps"] for r in rows)
    images = sum(r["items_encoded_per_step"] * r["steps"] for r in rows) / done
    loss = rows[-1]["loss"]
    if not math.isfinite(loss):
        raise RuntimeError(f"training loss is {loss}")
    out = {"steps": steps, "warmup_steps": warmup, "epochs": epoch, "seconds": clock.seconds,
           "steps_per_second": steps / clock.seconds, "loss": loss}
    if images:
        out |= {"images_per_step": images, "images_per_second": images * steps / clock.seconds}
    return out


def encoder_alone(encoder: Any, n_items: int, device: torch.device, warmup: int, steps: int) -> dict[str, Any]:
    """Steps/s of the item encoder's forward and backward on the inputs of items 1..n_items, loaded
    once and kept on the device: uint8 covers, or cached prefix activations (the trainable top)."""
    ids = np.arange(1, n_items + 1)
    inputs = encoder.load_inputs(ids).to(device)
    item_ids = torch.from_numpy(ids).to(device)
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    encoder.train()

    def step() -> None:
        for p in trainable:
            p.grad = None
        with autocast(device, encoder.amp):
            vectors = encoder(item_ids, inputs)
        vectors.float().square().mean().backward()

    for _ in range(warmup):
        step()
    sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = time.perf_counter() - started
    for p in trainable:
        p.grad = None
    return {"steps": steps, "images_per_step": n_items, "seconds": seconds, "steps_per_second": steps / seconds,
            "images_per_second": n_items * steps / seconds}


@torch.no_grad()
def catalogue_speed(model: Any, device: torch.device, workers: int, repeats: int) -> dict[str, Any]:
    """Items/s of the catalogue encoding an evaluation does (`catalogue_vectors`); the last of `repeats` is timed."""
    model.eval()
    n_items = model.item_encoder.n_items
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        model.catalogue_vectors(4096, workers)
        sync(device)
        seconds = time.perf_counter() - started
    return {"items": n_items, "seconds": seconds, "items_per_second": n_items / seconds}


@torch.no_grad()
def forward_alone(encoder: Any, device: torch.device) -> dict[str, Any]:
    """Items/s of the encoder's forward over as many items as the catalogue, in the chunks the catalogue
    uses, on one chunk of covers kept on the device."""
    encoder.eval()
    n_items = encoder.n_items
    chunk = min(encoder.catalogue_chunk, n_items)
    ids = np.arange(1, chunk + 1)
    inputs, item_ids = encoder.load_inputs(ids).to(device), torch.from_numpy(ids).to(device)
    sizes = [chunk] * (n_items // chunk) + ([n_items % chunk] if n_items % chunk else [])
    with autocast(device, encoder.amp):
        encoder(item_ids, inputs)  # warm-up
        sync(device)
        started = time.perf_counter()
        for size in sizes:
            encoder(item_ids[:size], inputs[:size])
        sync(device)
    seconds = time.perf_counter() - started
    return {"items": n_items, "chunk": chunk, "seconds": seconds, "items_per_second": n_items / seconds}


def ratio(part: dict[str, Any], numerator: str, denominator: str, key: str, name: str) -> dict[str, Any]:
    """part with its efficiency (numerator[key] / denominator[key]), target and verdict, where both ran."""
    top, bottom = part.get(numerator, {}), part.get(denominator, {})
    if key in top and key in bottom:
        part["efficiency"] = top[key] / bottom[key]
        part["target"] = TARGETS[name]
        part["meets_target"] = part["efficiency"] >= TARGETS[name]
    return part


def attempt(function: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """function(), or {"error": one line} when it raises."""
    try:
        return function()
    except Exception as err:  # noqa: BLE001 - a failed part is reported; the others still run
        text = " ".join(str(err).split()) or "(no message)"
        return {"error": f"{type(err).__name__}: {text}"[:500]}


# --- the check ------------------------------------------------------------------------------
class Check:
    """The parts of one check over shared temporary datasets; each returns its JSON section."""

    def __init__(self, plan: Plan, root: Path, device: torch.device, workers: int, threads: int,
                 extra: list[str]) -> None:
        self.plan, self.root, self.device = plan, root, device
        self.workers, self.threads, self.extra = workers, threads, extra
        self.pixel_data: Path | None = None
        self.torchrun_data: Path | None = None
        self.id_data: Path | None = None
        self.runs = 0

    def config(self, data: Path | None, items: dict[str, Any], model: dict[str, Any] | None = None,
               train: dict[str, Any] | None = None, extra: bool = True, loss: dict[str, Any] | None = None) -> Any:
        from pixelrec.config import resolve

        if data is None:
            raise RuntimeError("its dataset was not built (see the dataset part)")
        flags = {"data": {"path": str(data)}, "items": items, "model": model or {}, "loss": loss or {},
                 "train": {"batch_size": self.plan.batch_size, "num_workers": self.workers, "device": str(self.device),
                           "threads": self.threads, "progress": False, "seed": 0, **(train or {})}}
        return resolve(model="sasrec", flags=flags, sets=self.extra if extra else [])

    def pixel_items(self, encoder: str, cache: bool = False) -> dict[str, Any]:
        image = {"encoder": encoder, "image_size": self.plan.image_size}
        if encoder in self.plan.encoders:  # else the encoder's packaged setting
            image["tune_last"] = self.plan.encoders[encoder]
        if cache:
            image["cache"] = "prefix"
        return {"kind": "pixels", "image": image} | ({"cache_dir": str(self.root / "prefix_cache")} if cache else {})

    def pixel_model(self) -> dict[str, Any]:
        size = self.plan.embedding_size
        return {"embedding_size": size, "n_heads": 2} if size else {}

    @contextlib.contextmanager
    def trainer(self, config: Any, into: dict[str, Any]) -> Iterator[Any]:
        """A Trainer in a fresh run directory (its construction timed), closed and freed after."""
        from pixelrec.training.trainer import Trainer

        self.runs += 1
        started = time.perf_counter()
        trainer = Trainer(config, self.root / "runs" / f"run-{self.runs}")
        sync(self.device)
        into["setup_seconds"] = time.perf_counter() - started
        try:
            yield trainer
        finally:
            trainer.report.close()
            trainer.close()
            del trainer
            release_memory(self.device)

    def alone(self, trainer: Any, full: dict[str, Any]) -> dict[str, Any]:
        """The trainer's item encoder alone on as many distinct items per step as its full step encoded."""
        out: dict[str, Any] = {}
        n = max(1, round(full.get("images_per_step", 1)))
        with peak_memory(self.device, out):
            out |= encoder_alone(trainer.model.item_encoder, n, self.device, self.plan.alone_warmup,
                                 self.plan.alone_steps)
        return out

    # --- parts ----------------------------------------------------------------------------
    def dataset(self) -> dict[str, Any]:
        """`synth` covers and `prepare` into an LMDB image store; an interactions-only ~100K-item set."""
        sys.path.insert(0, str(HERE))
        from pixelrec.data.prepare import prepare
        from pixelrec.data.synth import write_synthetic
        from prepare_scale import write_log_csv

        p = self.plan
        started = time.perf_counter()
        write_synthetic(self.root / "raw", users=p.users, items=p.items, mean_len=12.0, image_size=p.image_size, seed=0)
        meta = prepare(self.root / "raw", self.root / "pixels", image_size=p.image_size, progress=False)
        pixel_seconds = time.perf_counter() - started
        self.pixel_data = self.torchrun_data = self.root / "pixels"
        if p.torchrun_users:
            prepare(self.root / "raw", self.root / "torchrun", image_size=p.image_size, sample_users=p.torchrun_users,
                    progress=False)
            self.torchrun_data = self.root / "torchrun"
        shutil.rmtree(self.root / "raw")
        store = meta.get("image_store") or {}
        started = time.perf_counter()
        write_log_csv(self.root / "log.csv", p.rank_users, p.rank_items, p.rank_rows)
        ids = prepare(self.root / "log.csv", self.root / "ids", images=False, progress=False)
        (self.root / "log.csv").unlink()
        self.id_data = self.root / "ids"
        return {
            "pixels": {"users": meta["n_users"], "items": meta["n_items"], "interactions": meta["n_interactions"],
                       "image_size": p.image_size, "image_format": store.get("format"),
                       "image_store_mb": round(_tree_bytes(self.pixel_data) / 2**20, 1), "seconds": pixel_seconds},
            "ids": {"users": ids["n_users"], "items": ids["n_items"], "interactions": ids["n_interactions"],
                    "seconds": time.perf_counter() - started},
        }

    def pipeline(self, encoder: str) -> dict[str, Any]:
        """Full step vs encoder alone, then the catalogue vs forward alone, on one trainer."""
        part, catalogue = {"tune_last": self.plan.encoders[encoder]}, {}
        with self.full_step(encoder, part, "encoder_alone", cache=False) as trainer:

            def evaluation() -> dict[str, Any]:
                out: dict[str, Any] = {}
                with peak_memory(self.device, out):
                    out |= catalogue_speed(trainer.model, self.device, self.workers, repeats=2)
                return out

            def forward() -> dict[str, Any]:
                out: dict[str, Any] = {}
                with peak_memory(self.device, out):
                    out |= forward_alone(trainer.model.item_encoder, self.device)
                return out

            catalogue = {"evaluation": attempt(evaluation), "forward_alone": attempt(forward)}
        return {"pipeline": ratio(part, "full_step", "encoder_alone", "steps_per_second", "pipeline"),
                "catalogue": ratio(catalogue, "evaluation", "forward_alone", "items_per_second", "catalogue")}

    def prefix_cache(self, encoder: str) -> dict[str, Any]:
        """Full step with items.image.cache=prefix (setup includes building the cache) vs the trainable top alone."""
        part = {"tune_last": self.plan.encoders[encoder]}
        with self.full_step(encoder, part, "top_alone", cache=True):
            pass
        return ratio(part, "full_step", "top_alone", "steps_per_second", "prefix_cache")

    @contextlib.contextmanager
    def full_step(self, encoder: str, part: dict[str, Any], alone: str, cache: bool) -> Iterator[Any]:
        """Time the trainer's full step into part["full_step"] and the encoder alone on the same trainer
        into part[alone]; the trainer stays open inside the block for more measurements."""
        p = self.plan
        config = self.config(self.pixel_data, self.pixel_items(encoder, cache=cache), self.pixel_model(),
                             {"max_steps": p.warmup + p.steps})
        full: dict[str, Any] = {}
        reset_peak(self.device)
        with self.trainer(config, full) as trainer:
            full |= trainer_steps(trainer, p.warmup, p.steps)
            full["peak_gpu_memory_gib"] = read_peak(self.device)
            part["full_step"] = full
            part[alone] = attempt(lambda: self.alone(trainer, full))
            yield trainer

    def ranking(self) -> dict[str, Any]:
        """Users/s of full-ranking evaluation (`rank_targets`) by a random ID SASRec over the ID catalogue."""
        from pixelrec.evaluation.evaluator import rank_targets

        d = self.plan.ranking_size
        config = self.config(self.id_data, {"kind": "id"}, {"embedding_size": d}, {"epochs": 1}, extra=False)
        out: dict[str, Any] = {"embedding_size": d}
        with peak_memory(self.device, out), self.trainer(config, out) as trainer:
            data, c = trainer.data, trainer.config

            def ranks(users: np.ndarray | None) -> torch.Tensor:
                return rank_targets(trainer.model, data, "test", c.data.max_len, users, c.eval.batch_size,
                                    c.eval.score_budget_mb)

            ranks(np.arange(1, min(data.n_users, c.eval.batch_size) + 1))  # warm-up
            sync(self.device)
            started = time.perf_counter()
            ranked = ranks(None)
            sync(self.device)
            seconds = time.perf_counter() - started
            out |= {"users": data.n_users, "items": data.n_items, "seconds": seconds,
                    "users_per_second": data.n_users / seconds, "ranked": int(len(ranked))}
        return out

    def id_sasrec(self, size: int) -> dict[str, Any]:
        p = self.plan
        config = self.config(self.id_data, {"kind": "id"}, {"embedding_size": size},
                             {"max_steps": p.warmup + p.steps}, extra=False, loss={"name": "bpr"})
        out: dict[str, Any] = {"embedding_size": size, "loss": config.loss.name}
        with peak_memory(self.device, out), self.trainer(config, out) as trainer:
            out["items"] = trainer.data.n_items
            out["parameters"] = sum(q.numel() for q in trainer.model.parameters() if q.requires_grad)
            out["table_optimizer"] = config.train.table_optimizer
            out |= {k: v for k, v in trainer_steps(trainer, p.warmup, p.steps).items() if k != "loss"}
        out["pixel200k_epoch_seconds"] = round(PIXEL200K_STEPS / out["steps_per_second"], 1)
        return out

    def torchrun(self, budget_left: float) -> dict[str, Any]:
        """Two epochs of pixel SASRec under `torchrun --nproc-per-node 1` in a process group, and in a
        plain process; the metrics must be equal."""
        from pixelrec.data.prepared import PreparedData

        encoder = self.plan.torchrun_encoder
        if self.torchrun_data is None:
            raise RuntimeError("its dataset was not built (see the dataset part)")
        sets = [f"data.path={self.torchrun_data}", f"train.batch_size={self.plan.batch_size}", "train.epochs=2",
                f"train.num_workers={self.workers}", f"train.device={self.device}", f"train.threads={self.threads}",
                "train.progress=false", "train.seed=0",
                *[f"items.{k}={v}" for k, v in self.pixel_items(encoder).items()],
                *[f"model.{k}={v}" for k, v in self.pixel_model().items()], *self.extra]
        script = str(Path(__file__).resolve())
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", script]
        # side by side: neither is timed, and the worker sets deterministic algorithms
        runs = [Worker([sys.executable, script], self.root / "single", sets),
                Worker(launcher, self.root / "torchrun", sets, group=True)]
        deadline = time.monotonic() + max(45.0, budget_left + 30.0)
        single, job = (run.result(deadline) for run in runs)
        out: dict[str, Any] = {"encoder": encoder, "epochs": 2, "users": PreparedData(self.torchrun_data).n_users,
                               "single": single, "torchrun": job}
        if "error" in single or "error" in job:
            return out  # the errors are listed from there
        differences = [abs(single["metrics"][split][k] - job["metrics"][split][k])
                       for split in ("valid", "test") for k in single["metrics"][split]]
        same_keys = all(single["metrics"][s].keys() == job["metrics"][s].keys() for s in ("valid", "test"))
        out["max_abs_difference"] = max(differences)
        out["equal"] = same_keys and out["max_abs_difference"] <= EQUAL_TOLERANCE
        out["backend"] = job.get("backend")
        return out


def _tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# --- the torchrun part's worker ---------------------------------------------------------------
class Worker:
    """This script's `worker` started in the background (plain, or under a launcher's command)."""

    def __init__(self, command: list[str], out: Path, sets: list[str], group: bool = False) -> None:
        self.report, self.log = out.parent / f"{out.name}-report.json", out.parent / f"{out.name}.log"
        argv = [*command, "worker", "--out", str(out), "--report", str(self.report), *(["--group"] if group else [])]
        for item in sets:
            argv += ["--set", item]
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
        self.started = time.perf_counter()
        with open(self.log, "wb") as log:  # its own session: a stuck job is stopped with the launcher's workers
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def result(self, deadline: float) -> dict[str, Any]:
        """Its report, or {"error": one line} when it failed or outlived `deadline` (time.monotonic())."""
        try:
            status = self.process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            return {"error": f"still running after {time.perf_counter() - self.started:.0f} s; stopped"}
        seconds = time.perf_counter() - self.started
        if status != 0 or not self.report.is_file():
            lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
            return {"error": f"exit status {status}: {(lines or ['(no output)'])[-1][:400]}"}
        return {**json.loads(self.report.read_text()), "seconds": seconds}


def worker(argv: list[str]) -> int:
    """Train one run and write its metrics; with --group inside a process group of the launcher's ranks."""
    import torch.distributed as dist

    from pixelrec import distributed
    from pixelrec.config import resolve
    from pixelrec.storage.atomic import atomic_json
    from pixelrec.training.trainer import train

    parser = argparse.ArgumentParser(prog="gpu_check.py worker")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--group", action="store_true", help="start the process group (NCCL on a GPU, else gloo)")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args(argv)
    config = resolve(model="sasrec", sets=args.set)
    device = distributed.resolve_device(config.train.device)
    if device.type == "cuda":  # the two runs must compute the same numbers (the CPU's kernels already do)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    if args.group:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        results = train(config, args.out)
        job = distributed.current()
        report = {"metrics": {"valid": results["valid"], "test": results["test"]},
                  "backend": dist.get_backend() if job.active else None, "world": job.world,
                  "data_parallel": job.active, "best_epoch": results["best_epoch"], "steps": results["steps"],
                  "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
                  if device.type == "cuda" else None}
        if job.main:
            atomic_json(args.report, report)
    finally:
        distributed.leave()
    return 0


# --- the command ----------------------------------------------------------------------------
def header(device: torch.device, tiny: bool, budget: float, workers: int) -> dict[str, Any]:
    from pixelrec.runs.directory import environment

    info = environment(device)
    info.pop("cwd", None)
    dirty = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        status = subprocess.run(["git", "-C", str(HERE.parent), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    cuda = device.type == "cuda"
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "benchmark": "gpu_check", "tiny": tiny, "date": now.isoformat(timespec="seconds"), **info, "git_dirty": dirty,
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
        "nccl": _nccl_version() if cuda else None,
        "device_name": torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine()),
        "gpu_memory_gib": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1) if cuda else None,
        "cpus": os.cpu_count(), "workers": workers, "budget_s": budget,
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def _nccl_version() -> str | None:
    try:
        version = torch.cuda.nccl.version()
    except Exception:  # noqa: BLE001 - a build without NCCL
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def parse_encoders(text: str) -> dict[str, int]:
    """"clip-vit-b32:2,resnet50:3" -> {"clip-vit-b32": 2, "resnet50": 3}."""
    out = {}
    for entry in filter(None, text.split(",")):
        name, _, tune = entry.partition(":")
        out[name] = int(tune) if tune else 2
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return worker(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny encoders at 32 px, a few steps")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "gpu_check.json")
    parser.add_argument("--budget-s", type=float, default=450.0, help="parts that would start later are skipped")
    parser.add_argument("--device", default=None, help="default: cuda when there is one (cpu with --tiny)")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers (default: min(12, CPUs - 2); --tiny 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    parser.add_argument("--encoders", type=parse_encoders, default=None,
                        help="NAME:TUNE_LAST,... (default: the plan's)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default: the plan's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra setting for every pixel run, e.g. train.channels_last=true")
    parser.add_argument("--keep", type=Path, default=None, help="build the datasets and runs here and keep them")
    args = parser.parse_args(argv)

    from pixelrec.distributed import resolve_device

    torch.set_num_threads(args.threads)
    plan = TINY if args.tiny else FULL
    if args.encoders:
        plan = replace(plan, encoders=args.encoders)
    if args.steps:
        plan = replace(plan, steps=args.steps)
    device = resolve_device(args.device or ("cpu" if args.tiny else "auto"))
    workers = args.workers
    if workers is None:
        workers = 1 if args.tiny else max(1, min(12, (os.cpu_count() or 4) - 2))
    started = time.monotonic()
    report: dict[str, Any] = {"header": header(device, args.tiny, args.budget_s, workers)}
    root = args.keep or Path(tempfile.mkdtemp(prefix="pixelrec-gpu-check-"))
    root.mkdir(parents=True, exist_ok=True)
    check = Check(plan, root, device, workers, args.threads, args.set)

    def part(name: str, function: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        elapsed = time.monotonic() - started
        if elapsed > args.budget_s:
            return {"skipped": "budget"}
        print(f"# {name} ({elapsed:.0f} s)", file=sys.stderr, flush=True)
        out = attempt(function)
        release_memory(device)
        return out

    try:
        with contextlib.redirect_stdout(sys.stderr):  # run logs go to stderr: stdout is the JSON alone
            report["dataset"] = part("dataset", check.dataset)
            encoders: dict[str, Any] = {}
            for name in plan.encoders:
                both = part(f"{name} pipeline", lambda name=name: check.pipeline(name))
                cached = part(f"{name} prefix cache", lambda name=name: check.prefix_cache(name))
                encoders[name] = {"pipeline": both.get("pipeline", both), "catalogue": both.get("catalogue", both),
                                  "prefix_cache": cached}
            report["encoders"] = encoders
            report["ranking"] = part("ranking", check.ranking)
            report["id_sasrec"] = {f"d{d}": part(f"id sasrec d={d}", lambda d=d: check.id_sasrec(d))
                                   for d in plan.id_sizes}
            report["torchrun"] = part("torchrun", lambda: check.torchrun(args.budget_s - (time.monotonic() - started)))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    report["total_seconds"] = time.monotonic() - started
    report["errors"] = errors(report)
    from pixelrec.storage.atomic import atomic_json

    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_json(args.out, report)
    print(json.dumps(report, indent=2))
    return 1 if report["errors"] else 0


def errors(node: Any, path: str = "") -> list[str]:
    """'path: error' for every part of the report that failed."""
    if not isinstance(node, dict):
        return []
    found = [f"{path or 'report'}: {node['error']}"] if isinstance(node.get("error"), str) else []
    for key, value in node.items():
        if key != "error":
            found += errors(value, f"{path}.{key}" if path else key)
    return found


if __name__ == "__main__":
    sys.exit(main())
