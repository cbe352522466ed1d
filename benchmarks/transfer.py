"""Cross-domain transfer on synthetic data: does a pixel SASRec started from a run on another
catalogue learn faster, or better, than one started from scratch?

Two `synth` datasets share their visual language (covers drawn from colour x shape x texture,
clusters of items that users walk between) but not their items, clusters or users: different seeds
and sizes. A pixel SASRec (timm's tiny random `test_vit` at 32 px, trained whole) is trained on the
first (the source). On the second (the target) the same model then trains from scratch and from the
source run (`train.init_from`, parts `items`: tower and projection; and `items,backbone`), for a
fixed number of epochs with no early stopping, under several seeds. Reported: valid NDCG@10 after
every epoch (equal steps: every arm takes the same batches per epoch), the best epoch and its valid
and test NDCG@10 (convergence), per seed and averaged; an ID SASRec on the target for reference.

    .venv/bin/python benchmarks/transfer.py [--epochs 25] [--seeds 0,1] [--out benchmarks/out/transfer.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pixelrec.config import resolve
from pixelrec.data.prepare import prepare
from pixelrec.data.synth import write_synthetic
from pixelrec.runs.directory import MetricsLog
from pixelrec.training.trainer import train

METRIC = "NDCG@10"


def dataset(root: Path, name: str, users: int, items: int, seed: int) -> Path:
    write_synthetic(root / f"raw-{name}", users=users, items=items, mean_len=12.0, image_size=32, seed=seed)
    prepare(root / f"raw-{name}", root / name, image_size=32, workers=1, progress=False)
    return root / name


def run(data: Path, out: Path, seed: int, epochs: int, items: str = "pixels", sets: list[str] | None = None
        ) -> dict[str, Any]:
    """Train one arm; its valid metric after every epoch, best epoch, valid and test at the best."""
    files = ["cpu-small", "pixels-tiny"] if items == "pixels" else ["cpu-small"]
    config = resolve(model="sasrec", files=files, flags={"data": {"path": str(data)}, "items": {"kind": items}},
                     sets=[f"train.epochs={epochs}", f"train.patience={epochs}", f"train.seed={seed}",
                           "train.progress=false", "train.device=cpu", *(sets or [])])
    started = time.perf_counter()
    results = train(config, out)
    curve = [row["valid"][METRIC] for row in MetricsLog(out / "metrics.jsonl").read() if "valid" in row]
    return {"valid_by_epoch": [round(v, 5) for v in curve], "best_epoch": results["best_epoch"],
            "best_valid": results["valid"][METRIC], "test_at_best": results["test"][METRIC],
            "steps": results["steps"], "seconds": round(time.perf_counter() - started, 1),
            **({"init_from": {k: results["init_from"][k] for k in ("checkpoint", "parts", "loaded")}}
               if "init_from" in results else {})}


def mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 5)


def summarise(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-epoch mean curve, mean best valid and test over the seeds, mean epochs to the best."""
    seeds = list(runs.values())
    by_epoch = [mean([r["valid_by_epoch"][e] for r in seeds]) for e in range(len(seeds[0]["valid_by_epoch"]))]
    return {"mean_valid_by_epoch": by_epoch, "mean_best_valid": mean([r["best_valid"] for r in seeds]),
            "mean_test_at_best": mean([r["test_at_best"] for r in seeds]),
            "mean_best_epoch": mean([r["best_epoch"] for r in seeds])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-users", type=int, default=1500)
    parser.add_argument("--source-items", type=int, default=300)
    parser.add_argument("--target-users", type=int, default=400)
    parser.add_argument("--target-items", type=int, default=150)
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=25, help="epochs of every target arm (no early stopping)")
    parser.add_argument("--seeds", default="0,1", help="training seeds of the target arms")
    parser.add_argument("--out", default="benchmarks/out/transfer.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source_data = dataset(root, "source", args.source_users, args.source_items, seed=101)
        target_data = dataset(root, "target", args.target_users, args.target_items, seed=202)
        source = run(source_data, root / "runs" / "source", 0, args.pretrain_epochs,
                     sets=[f"train.patience={max(3, args.pretrain_epochs // 4)}"])
        source_run = root / "runs" / "source"
        arms: dict[str, dict[str, Any]] = {"scratch": {}, "init items": {}, "init items+backbone": {}, "id": {}}
        for seed in seeds:
            arms["scratch"][seed] = run(target_data, root / "runs" / f"scratch-{seed}", seed, args.epochs)
            arms["init items"][seed] = run(target_data, root / "runs" / f"items-{seed}", seed, args.epochs,
                                           sets=[f"train.init_from={source_run}"])
            arms["init items+backbone"][seed] = run(target_data, root / "runs" / f"all-{seed}", seed, args.epochs,
                                                    sets=[f"train.init_from={source_run}",
                                                          "train.init_parts=[items,backbone]"])
            arms["id"][seed] = run(target_data, root / "runs" / f"id-{seed}", seed, args.epochs, items="id")
        counts = {name: json.loads((root / name / "meta.json").read_text()) for name in ("source", "target")}
    report = {
        "benchmark": "transfer",
        "setup": {
            "model": "sasrec", "items": "pixels", "encoder": "test_vit (random init, tune_last all)", "image_size": 32,
            "preset": "cpu-small + pixels-tiny", "metric": f"valid {METRIC}",
            "source": {k: counts["source"][k] for k in ("n_users", "n_items", "n_interactions")},
            "target": {k: counts["target"][k] for k in ("n_users", "n_items", "n_interactions")},
            "pretrain_epochs": args.pretrain_epochs, "epochs": args.epochs, "seeds": seeds,
        },
        "source_run": source,
        "arms": {name: {"seeds": runs, **summarise(runs)} for name, runs in arms.items()},
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": 1,
                    "load_average": [round(x, 2) for x in os.getloadavg()]},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({name: {k: v for k, v in arm.items() if k != "seeds"} for name, arm in report["arms"].items()},
                     indent=1))
    print(f"wrote {out} in {report['seconds']:.0f}s")


if __name__ == "__main__":
    main()
