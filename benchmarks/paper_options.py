"""What the paper profile's initialisation, padding and first-row options do, on synthetic data.

ID backbones trained under `--config paper` as it is (`paper`), and with the options of #23 set back to
our defaults (`paper-without`: `model.init=default`, and `model.padding=zeros` where the backbone has
it); FM also with the original's first-row bug (`paper+first-row`: `model.first_row_only=true`). The
arms are alternated per seed (paper, paper-without, ..., then the next seed), one torch thread. Reported
per run: best validation NDCG@10, test NDCG@10 and Recall@10 under the profile's evaluation, epochs and
best epoch; per arm the mean and the spread between seeds.

    .venv/bin/python benchmarks/paper_options.py [--models nextitnet,fm,lightsans] [--seeds 0,1]
        [--epochs 20] [--out benchmarks/results/paper_options.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from pixelrec.config import resolve
from pixelrec.data.prepare import prepare
from pixelrec.data.synth import write_synthetic
from pixelrec.models import BACKBONES
from pixelrec.registry import constructor_parameters
from pixelrec.training.trainer import train


def arms(model: str) -> list[tuple[str, list[str]]]:
    """(name, extra --set) of each arm for `model`."""
    params = constructor_parameters(BACKBONES.get(model))
    without = ["model.init=default"] * ("init" in params) + ["model.padding=zeros"] * ("padding" in params)
    out = [("paper", []), ("paper-without", without)]
    if "first_row_only" in params:
        out.append(("paper+first-row", ["model.first_row_only=true"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="nextitnet,fm,lightsans")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/paper_options.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    report: dict = {"command": " ".join(["benchmarks/paper_options.py", *sys.argv[1:]]),
                    "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                "load_average": os.getloadavg(), "torch_threads": 1}, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic(root / "raw", users=1500, items=300, mean_len=14.0, image_size=32, seed=0)
        prepare(root / "raw", root / "data", image_size=32, progress=False, images=False)
        for model in args.models.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                for arm, extra in arms(model):
                    sets = [f"data.path={root / 'data'}", "model.embedding_size=64", "train.lr=1e-3",
                            "train.batch_size=64", f"train.epochs={args.epochs}", f"train.seed={seed}",
                            "train.progress=false", "eval.batch_size=2048", *extra]
                    config = resolve(model=model, files=["paper"], sets=sets)
                    result = train(config, root / "runs" / f"{model}-{arm}-{seed}")
                    report["runs"].append({"model": model, "arm": arm, "seed": seed, "sets": extra,
                                           "valid_NDCG@10": round(result["valid"]["NDCG@10"], 4),
                                           "test_NDCG@10": round(result["test"]["NDCG@10"], 4),
                                           "test_Recall@10": round(result["test"]["Recall@10"], 4),
                                           "epochs_run": result["epochs_run"], "best_epoch": result["best_epoch"]})
                    print(json.dumps(report["runs"][-1]), flush=True)
                    write(report, args.out)  # after each run: an interrupted benchmark keeps what it measured
    summary: dict = {}
    for run in report["runs"]:
        summary.setdefault(f"{run['model']} {run['arm']}", []).append(run)
    report["summary"] = {key: {metric: {"mean": round(float(np.mean([r[metric] for r in runs])), 4),
                                        "spread": round(float(np.ptp([r[metric] for r in runs])), 4)}
                               for metric in ("test_NDCG@10", "test_Recall@10")}
                         for key, runs in summary.items()}
    report["load_average_after"] = os.getloadavg()
    write(report, args.out)
    print(json.dumps(report["summary"], indent=2))


def write(report: dict, out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
