"""How prepare, an ID SASRec epoch, a full-ranking evaluation and memory grow from Pixel200K to PixelRec.

For each size (synthetic logs with the real user, item and interaction counts: `prepare_scale.py`):
`prepare` (wall, CPU, peak RSS), then per vector size (--dims, default 64 and the paper's 512) a child
process that builds the trainer (the training views), trains --steps optimiser steps after --warmup
(BPR, batch 64, one torch thread, batches built in the training process, train.table_optimizer as
--tables), and ranks --eval-users sampled users against the whole catalogue. A whole epoch does not fit
this benchmark's time at these sizes, so the epoch is projected: steps per epoch x median seconds per
step. Wall and CPU seconds both (one thread: CPU seconds are what the work costs when the
machine is shared). Memory: the child's peak RSS (ru_maxrss), so it includes the dataset, views, model and optimizer.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale_table.py [--sizes pixel200k,pixel1m,pixel8m,full]
        [--dims 64,512] [--steps 60] [--eval-users 2000] [--out benchmarks/results/scale_table.json]

Writes the JSON after every measurement, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import StepWindow  # benchmarks/timing.py, beside this script

HERE = Path(__file__).resolve().parent


def child(data: Path, dim: int, tables: str, warmup: int, steps: int, eval_users: int) -> dict:
    """Set-up, training steps and a sampled full-ranking evaluation of one model, in this process."""
    import numpy as np
    import torch

    from pixelrec.config import build_config
    from pixelrec.evaluation.evaluator import rank_targets
    from pixelrec.training.trainer import Trainer

    torch.set_num_threads(1)
    config = build_config({
        "model": {"name": "sasrec", "embedding_size": dim}, "data": {"path": str(data)}, "loss": {"name": "bpr"},
        "train": {"batch_size": 64, "progress": False, "seed": 0, "threads": 1, "device": "cpu",
                  "max_steps": warmup + steps, "table_optimizer": tables},
    }, source="benchmark")
    out: dict = {"dim": dim, "tables": tables, "load_before": round(os.getloadavg()[0], 2)}
    started, cpu = time.perf_counter(), time.process_time()
    trainer = Trainer(config, Path(tempfile.mkdtemp(prefix="pixelrec-scale-")) / "run")
    out["setup_seconds"] = round(time.perf_counter() - started, 1)
    out["setup_cpu_seconds"] = round(time.process_time() - cpu, 1)
    out["training_examples"] = len(trainer.view)
    out["steps_per_epoch"] = -(-len(trainer.view) // 64)
    window = StepWindow(trainer.optimizer, warmup, steps)
    trainer.train_epoch(0)
    per_step = window.seconds_per_step()
    out["ms_per_step"] = round(per_step * 1000, 2)
    out["projected_epoch_seconds"] = round(per_step * out["steps_per_epoch"], 1)
    cpu_per_step = window.cpu_seconds_per_step()
    out["cpu_ms_per_step"] = round(cpu_per_step * 1000, 2)
    out["projected_epoch_cpu_seconds"] = round(cpu_per_step * out["steps_per_epoch"], 1)
    data_ = trainer.data
    users = np.sort(np.random.default_rng(0).choice(data_.n_users, size=min(eval_users, data_.n_users),
                                                     replace=False) + 1)
    started, cpu = time.perf_counter(), time.process_time()
    rank_targets(trainer.model, data_, "test", config.data.max_len, users, config.eval.batch_size,
                 config.eval.score_budget_mb)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    out["eval_users"] = len(users)
    out["eval_users_per_cpu_second"] = round(len(users) / cpu, 1)
    out["projected_full_eval_cpu_seconds"] = round(data_.n_users / (len(users) / cpu), 1)
    out["eval_users_per_second"] = round(len(users) / seconds, 1)
    out["projected_full_eval_seconds"] = round(data_.n_users / (len(users) / seconds), 1)
    out["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    out["load_after"] = round(os.getloadavg()[0], 2)
    trainer.close()
    return out


def run_child(args: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if done.returncode:
        return {"failed": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="pixel200k,pixel1m,pixel8m,full")
    parser.add_argument("--dims", default="64,512")
    parser.add_argument("--tables", default="lazy", choices=("lazy", "dense"))
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval-users", type=int, default=2000)
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "pixelrec-scale-table")
    parser.add_argument("--keep", action="store_true", help="keep the prepared sets in --scratch")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dim", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.dim, args.tables, args.warmup, args.steps, args.eval_users)))
        return

    sys.path.insert(0, str(HERE))
    from prepare_scale import SIZES, time_prepare, write_log_csv

    report: dict = {"benchmark": "scale_table", "command": " ".join(sys.argv),
                    "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
                    "model": "ID SASRec (2 layers, 2 heads, inner 2d), BPR, batch 64, one torch thread", "sizes": {}}

    def save() -> None:
        if args.out:
            args.out.write_text(json.dumps(report, indent=2) + "\n")

    args.scratch.mkdir(parents=True, exist_ok=True)
    for name in args.sizes.split(","):
        users, items, rows = SIZES[name]
        prepared = args.scratch / f"{name}-prepared"
        entry: dict = {"users": users, "items": items, "interactions": rows}
        report["sizes"][name] = entry
        if not (prepared / "meta.json").is_file():
            raw = args.scratch / f"{name}.csv"
            started = time.perf_counter()
            write_log_csv(raw, users, items, rows)
            entry["generate_seconds"] = round(time.perf_counter() - started, 1)
            entry["prepare"] = time_prepare(raw, prepared)
            raw.unlink()
        print(json.dumps({name: entry}), file=sys.stderr, flush=True)
        save()
        for dim in args.dims.split(","):
            entry[f"d{dim}"] = run_child(["--child", str(prepared), "--dim", dim, "--tables", args.tables,
                                          "--warmup", str(args.warmup), "--steps", str(args.steps),
                                          "--eval-users", str(args.eval_users)])
            print(json.dumps({name: {f"d{dim}": entry[f"d{dim}"]}}), file=sys.stderr, flush=True)
            save()
        if not args.keep:
            shutil.rmtree(prepared, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
