"""ID SASRec at full PixelRec size: set-up, training steps, a full-ranking evaluation, their memory.

The model has the paper's IDNet settings (d=512 unless --dim). Measured: building the training
views, 200 steps with 2 DataLoader workers, and one full-ranking evaluation of 100,000 sampled
users over the whole catalogue.

    .venv/bin/python benchmarks/scale_train.py [--data DIR] [--steps 200] [--workers 2]
                                               [--eval-users 100000] [--threads N]

--data is a prepared dataset; without it, a full-size synthetic interaction log (29.8M users,
408k items, 195.8M interactions; benchmarks/prepare_scale.py writes it) is generated and prepared
into --scratch first (about 5 minutes and 9 GB of RAM; kept for the next run).

Memory is sampled over this process and its DataLoader workers: `rss` adds each process's
resident set every 0.25 s (pages shared between the forked workers count once per process);
`pss` shares them out (the memory the job really holds), sampled every 5 s because the kernel
walks every page table to answer. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                pass
    return out


def tree_rss_gb(pid: int) -> float:
    """Sum of resident sets over the process tree, in GB (from /proc/PID/statm: cheap to read)."""
    pages = 0
    for p in process_tree(pid):
        try:
            pages += int(Path(f"/proc/{p}/statm").read_text().split()[1])
        except OSError:
            pass
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def tree_pss_gb(pid: int) -> float:
    """Sum of proportional set sizes over the process tree, in GB. The kernel walks every page
    table to answer (0.1 s for a 10 GB process), so this is sampled rarely."""
    kb = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    kb += int(line.split()[1])
        except OSError:
            pass
    return kb / 2**20


class PeakMemory:
    """Largest tree RSS (sampled every `interval` s) and PSS (every `pss_every` s) while the block runs."""

    def __init__(self, interval: float = 0.25, pss_every: float = 5.0) -> None:
        self.interval, self.pss_every, self.rss, self.pss = interval, pss_every, 0.0, 0.0
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        last_pss = -math.inf
        while not self._stop.is_set():
            self.rss = max(self.rss, tree_rss_gb(os.getpid()))
            if time.monotonic() - last_pss >= self.pss_every:
                self.pss, last_pss = max(self.pss, tree_pss_gb(os.getpid())), time.monotonic()
            self._stop.wait(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> dict[str, float]:
        return {"peak_tree_rss_gb": round(self.rss, 2), "peak_tree_pss_gb": round(self.pss, 2)}


def ensure_dataset(scratch: Path) -> Path:
    sys.path.insert(0, str(HERE))
    from prepare_scale import SIZES, time_prepare, write_log_csv

    prepared = scratch / "full-prepared"
    if (prepared / "meta.json").is_file():
        return prepared
    scratch.mkdir(parents=True, exist_ok=True)
    raw = scratch / "full.csv"
    write_log_csv(raw, *SIZES["full"])
    print(json.dumps({"prepared": time_prepare(raw, prepared)}), file=sys.stderr)
    raw.unlink()
    return prepared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="prepared dataset (default: generate a full-size one)")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/pixelrec-scale"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dim", type=int, default=512, help="vector size (the paper's IDNet SASRec: 512)")
    parser.add_argument("--eval-users", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from pixelrec.config import resolve
    from pixelrec.evaluation.evaluator import rank_targets
    from pixelrec.evaluation.metrics import metrics_from_ranks
    from pixelrec.training.trainer import Trainer

    data_path = args.data or ensure_dataset(args.scratch)
    out = args.scratch / f"run-{int(time.time())}"
    config = resolve(model="sasrec", sets=[
        f"data.path={data_path}", "items.kind=id", f"model.embedding_size={args.dim}", "loss.name=bpr", f"train.batch_size={args.batch_size}",
        f"train.num_workers={args.workers}", f"train.max_steps={args.steps}", "train.progress=false",
        "train.device=cpu",
    ])
    load = os.getloadavg()[0]
    result: dict = {"benchmark": "scale_train", "data": str(data_path), "threads": torch.get_num_threads(),
                    "model": f"sasrec d={args.dim} (otherwise the paper's IDNet settings), bpr",
                    "load_before": round(load, 2)}

    print("set-up ...", file=sys.stderr, flush=True)
    with PeakMemory() as setup_memory:
        started = time.perf_counter()
        trainer = Trainer(config, out)
        setup_seconds = time.perf_counter() - started
    data = trainer.data
    result["dataset"] = {"users": data.n_users, "items": data.n_items, "interactions": int(len(data.item_seq))}
    result["setup"] = {"seconds": round(setup_seconds, 1), "training_examples": len(trainer.view),
                       **setup_memory.report()}

    print(json.dumps(result["setup"]), "\ntraining ...", file=sys.stderr, flush=True)
    with PeakMemory() as train_memory:
        row = trainer.train_epoch(0)
    result["train"] = {"steps": row["steps"], "seconds": round(row["seconds"], 1),
                       "steps_per_second": round(row["steps"] / row["seconds"], 2), "loss": round(row["loss"], 4),
                       "workers": args.workers, **train_memory.report()}

    users = np.sort(np.random.default_rng(0).choice(data.n_users, size=min(args.eval_users, data.n_users),
                                                     replace=False) + 1)
    print(json.dumps(result["train"]), "\nevaluating ...", file=sys.stderr, flush=True)
    with PeakMemory() as eval_memory:
        started = time.perf_counter()
        ranks = rank_targets(trainer.model, data, "test", config.data.max_len, users,
                             config.eval.batch_size, config.eval.score_budget_mb)
        eval_seconds = time.perf_counter() - started
    metrics = metrics_from_ranks(ranks, [10])
    result["evaluate"] = {"users": len(users), "items": data.n_items, "seconds": round(eval_seconds, 1),
                          "Recall@10": round(metrics["Recall@10"], 5), **eval_memory.report()}
    result["load_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
