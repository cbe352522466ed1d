"""Lazy row updates against dense AdamW for ID tables (train.table_optimizer): step time and accuracy.

Speed: ID SASRec (d=512 as the paper's IDNet unless --dim, BPR, batch 64, one torch thread, batches
built in the training process) on a Pixel200K-sized synthetic set; each mode runs in its own child
process, alternated A/B/A/B for --rounds, timing --steps optimiser steps after --warmup. The epoch is
projected from the median step time; --epoch also trains one whole lazy epoch and times it.
Accuracy: the same two modes on the small synthetic set (3,000 users, 1,000 items), --seeds seeds,
--quality-epochs epochs each, best-validation NDCG@10 and its test NDCG@10.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/table_optimizer.py [--data DIR] [--rounds 2]
        [--steps 150] [--epoch] [--seeds 0,1,2] [--out benchmarks/results/table_optimizer.json]

Prints (and with --out writes) one JSON object; the load average is recorded beside every timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import StepWindow, write_report  # benchmarks/timing.py, beside this script

HERE = Path(__file__).resolve().parent
MODES = ("dense", "lazy")


def config_for(data: Path, mode: str, dim: int, extra: dict | None = None):
    from pixelrec.config import build_config

    train = {"batch_size": 64, "lr": 1e-3, "progress": False, "seed": 0, "threads": 1, "device": "cpu",
             "table_optimizer": mode, **(extra or {})}
    return build_config({"model": {"name": "sasrec", "embedding_size": dim}, "data": {"path": str(data)},
                         "loss": {"name": "bpr"}, "train": train}, source="benchmark")


def worker(data: Path, mode: str, dim: int, warmup: int, steps: int, whole_epoch: bool) -> dict:
    """Seconds per step of `mode` after `warmup` steps (the step post-hook marks the clock)."""
    import torch

    from pixelrec.training.trainer import Trainer

    limit = {} if whole_epoch else {"max_steps": warmup + steps}
    trainer = Trainer(config_for(data, mode, dim, limit), Path(tempfile.mkdtemp(prefix="pixelrec-tables-")) / "run")
    window = StepWindow(trainer.optimizer, warmup, steps)
    row = trainer.train_epoch(0)
    out = {"mode": mode, "threads": torch.get_num_threads(), "steps_per_epoch": -(-len(trainer.view) // 64),
           "seconds_per_step": window.seconds_per_step(), "cpu_seconds_per_step": window.cpu_seconds_per_step(),
           "load": os.getloadavg()[0]}
    if whole_epoch:
        out["epoch_seconds"] = row["seconds"]
    return out


def child(args: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def quality(small: Path, seeds: list[int], epochs: int) -> dict:
    """Best-validation NDCG@10 and its test NDCG@10 per mode and seed (d=64, the small set)."""
    from pixelrec.training.trainer import train

    out: dict = {}
    for mode in MODES:
        rows = []
        for seed in seeds:
            config = config_for(small, mode, 64, {"seed": seed, "epochs": epochs, "patience": epochs})
            result = train(config, Path(tempfile.mkdtemp(prefix="pixelrec-tables-")) / "run")
            rows.append({"seed": seed, "valid_NDCG@10": result["valid"]["NDCG@10"],
                         "test_NDCG@10": result["test"]["NDCG@10"], "best_epoch": result["best_epoch"]})
        tests = [r["test_NDCG@10"] for r in rows]
        out[mode] = {"runs": rows, "test_mean": statistics.mean(tests),
                     "test_sd": statistics.stdev(tests) if len(tests) > 1 else 0.0}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="prepared Pixel200K-sized set (default: generate into --scratch)")
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "pixelrec-tables")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2, help="A/B rounds of the speed part (0: none)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--epoch", action="store_true", help="also time one whole lazy epoch")
    parser.add_argument("--seeds", default="0,1,2", help="accuracy seeds ('' skips the accuracy part)")
    parser.add_argument("--quality-epochs", type=int, default=30)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--whole-epoch", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.data, args.worker, args.dim, args.warmup, args.steps, args.whole_epoch)))
        return

    sys.path.insert(0, str(HERE))
    from train_speed import make_dataset

    args.scratch.mkdir(parents=True, exist_ok=True)
    data = args.data or (args.scratch / "pixel200k" if (args.scratch / "pixel200k" / "meta.json").is_file()
                         else make_dataset(args.scratch, "pixel200k", 200_000, 96_282, 19.83))
    report: dict = {"benchmark": "table_optimizer", "command": " ".join(sys.argv),
                    "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                    "model": f"ID SASRec d={args.dim}, BPR, batch 64, one torch thread, no DataLoader workers",
                    "data": str(data), "load_before": os.getloadavg()[0], "runs": []}
    common = ["--data", str(data), "--dim", str(args.dim), "--warmup", str(args.warmup), "--steps", str(args.steps)]
    for _ in range(args.rounds):
        for mode in MODES:
            report["runs"].append(child([*common, "--worker", mode]))
            print(json.dumps(report["runs"][-1]), file=sys.stderr, flush=True)
    summary: dict = {}
    for mode in MODES if report["runs"] else ():
        per_step = statistics.median(r["seconds_per_step"] for r in report["runs"] if r["mode"] == mode)
        steps = report["runs"][0]["steps_per_epoch"]
        cpu_step = statistics.median(r["cpu_seconds_per_step"] for r in report["runs"] if r["mode"] == mode)
        summary[mode] = {"median_ms_per_step": round(per_step * 1000, 2), "steps_per_epoch": steps,
                         "projected_epoch_seconds": round(per_step * steps, 1),
                         "median_cpu_ms_per_step": round(cpu_step * 1000, 2),
                         "projected_epoch_cpu_seconds": round(cpu_step * steps, 1)}
    if summary:
        summary["dense_over_lazy"] = round(summary["dense"]["median_ms_per_step"] / summary["lazy"]["median_ms_per_step"], 2)
        summary["dense_over_lazy_cpu"] = round(
            summary["dense"]["median_cpu_ms_per_step"] / summary["lazy"]["median_cpu_ms_per_step"], 2)
        report["speed"] = summary
    if args.epoch:
        report["lazy_epoch"] = child([*common, "--worker", "lazy", "--whole-epoch"])
    if args.seeds:
        small = args.scratch / "small" if (args.scratch / "small" / "meta.json").is_file() \
            else make_dataset(args.scratch, "small", 3000, 1000, 12.0)
        report["accuracy"] = quality(small, [int(s) for s in args.seeds.split(",")], args.quality_epochs)
    report["load_after"] = os.getloadavg()[0]
    write_report(report, args.out)


if __name__ == "__main__":
    main()
