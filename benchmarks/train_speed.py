"""Training and evaluation speed of every backbone (item IDs, BPR) on synthetic data.

Prints JSON: per backbone, seconds per training epoch (the second epoch, after a warm-up epoch),
seconds per step and users/s of full-ranking evaluation over all users, on
  * `small`: a 3,000-user, 1,000-item synthetic set (`pixelrec synth`), d=64, batch 64;
  * `pixel200k` (unless --quick): a Pixel200K-sized synthetic interaction set (200,000 users,
    96,282 items, ~20 interactions per user), SASRec only.
Targets on a 2-core CPU: SASRec on `small` under 0.9 s per epoch, evaluation of all users under
0.5 s; a Pixel200K-sized SASRec epoch under 60 s.

    .venv/bin/python benchmarks/train_speed.py [--quick] [--models sasrec,gru4rec] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from pixelrec.config import build_config
from pixelrec.data.prepare import prepare
from pixelrec.data.synth import write_synthetic
from pixelrec.evaluation.evaluator import rank_targets
from pixelrec.models import BACKBONES
from pixelrec.training.trainer import Trainer


def make_dataset(root: Path, name: str, users: int, items: int, mean_len: float) -> Path:
    raw = root / f"{name}-raw"
    started = time.perf_counter()
    write_synthetic(raw, users=users, items=items, mean_len=mean_len, image_size=8, seed=0)
    prepare(raw, root / name, images=False, progress=False)
    shutil.rmtree(raw)
    print(f"# {name}: generated and prepared in {time.perf_counter() - started:.1f}s", flush=True)
    return root / name


def measure(data: Path, model: str, run_dir: Path, epochs: int = 2) -> dict:
    config = build_config({
        "model": {"name": model, "embedding_size": 64},
        "data": {"path": str(data)},
        "loss": {"name": "bpr"},
        "train": {"batch_size": 64, "lr": 1e-3, "progress": False, "seed": 0},
        "eval": {"batch_size": 4096},
    }, source="benchmark")
    trainer = Trainer(config, run_dir)
    epoch_seconds, steps = [], 0
    if BACKBONES.get(model).trainable:
        for epoch in range(epochs):
            row = trainer.train_epoch(epoch)
            epoch_seconds.append(row["seconds"])
            steps = row["steps"]
    started = time.perf_counter()
    rank_targets(trainer.model, trainer.data, "valid", config.data.max_len, batch_size=4096)
    eval_seconds = time.perf_counter() - started
    return {
        "examples_per_epoch": len(trainer.view),
        "steps_per_epoch": steps,
        "seconds_per_epoch": epoch_seconds[-1] if epoch_seconds else 0.0,
        "seconds_per_step": epoch_seconds[-1] / steps if steps else 0.0,
        "eval_seconds_all_users": eval_seconds,
        "eval_users_per_second": trainer.data.n_users / eval_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small set only")
    parser.add_argument("--models", default=",".join(n for n in BACKBONES.names() if n != "visrank"),
                        help="backbones over item IDs (visrank needs features and is left out)")
    parser.add_argument("--keep", help="keep the generated datasets in this directory")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads (use 1 when another process holds a core: spinning threads collapse)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pixelrec-speed-"))
    root.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                                "torch": torch.__version__}, "small": {}, "pixel200k": {}}
    try:
        small = root / "small" if (root / "small" / "meta.json").exists() else make_dataset(root, "small", 3000, 1000, 12.0)
        for model in args.models.split(","):
            report["small"][model] = measure(small, model, root / "runs" / f"small-{model}")
            print(f"# small {model}: {report['small'][model]}", flush=True)
        if not args.quick:
            big = root / "pixel200k"
            if not (big / "meta.json").exists():
                big = make_dataset(root, "pixel200k", 200_000, 96_282, 19.83)
            report["pixel200k"]["sasrec"] = measure(big, "sasrec", root / "runs" / "big-sasrec", epochs=1)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
