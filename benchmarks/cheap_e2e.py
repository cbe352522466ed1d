"""Cheaper end-to-end training: seconds per training step of pixel SASRec, plain vs frozen-prefix cache.

On a small synthetic dataset with a real image store (JPEG covers at 224 px), random encoder weights,
in-batch softmax, for each encoder at its paper setting (resnet50: last stage = 3 blocks trainable;
clip-vit-b32: last 2 blocks trainable), the same batches are trained with and without
`items.image.cache=prefix`. Step time includes loading the batch's items (decoding images, or reading the
cache) in the main process. Also reported: the cache build time and bytes per cached item.
Target: cached >= 3x faster than plain for clip-vit-b32. Timings on a shared CPU are noisy.

    .venv/bin/python benchmarks/cheap_e2e.py [--encoders resnet50,clip-vit-b32] [--steps 3] [--batch 16]
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
from pixelrec.items.pixels import PixelEncoder
from pixelrec.training.trainer import Trainer

TUNE_LAST = {"resnet50": 3, "clip-vit-b32": 2}


def make_dataset(root: Path, users: int, items: int) -> Path:
    write_synthetic(root / "raw", users=users, items=items, mean_len=12.0, image_size=224, seed=0)
    prepare(root / "raw", root / "data", image_size=224, progress=False)
    shutil.rmtree(root / "raw")
    return root / "data"


def config(data: Path, encoder: str, batch: int, cache: bool, cache_dir: Path, device: str) -> dict:
    image = {"encoder": encoder, "image_size": 224, "tune_last": TUNE_LAST.get(encoder, 2),
             "pooling": "mean" if encoder == "clip-vit-b32" else "default"}
    items = {"kind": "pixels", "image": image}
    if cache:
        image["cache"] = "prefix"
        items["cache_dir"] = str(cache_dir)
    return build_config({
        "model": {"name": "sasrec", "embedding_size": 64, "n_layers": 2, "n_heads": 2, "dropout": 0.0},
        "data": {"path": str(data)}, "items": items, "loss": {"name": "softmax"},
        "train": {"batch_size": batch, "lr": 1e-4, "epochs": 1, "progress": False, "seed": 0, "device": device,
                  "num_workers": 0},
    }, source="benchmark")


def time_steps(trainer: Trainer, steps: int) -> tuple[list[float], list[float], float]:
    """(seconds of each timed step after one warm-up, losses, distinct items per step)."""
    trainer.model.train()
    seconds, losses, items = [], [], 0.0
    batches = trainer.batches(0)
    for i in range(steps + 1):
        started = time.perf_counter()
        batch = next(batches).to(trainer.device)  # built (items loaded) inside the timed step
        out = trainer.model(batch)
        trainer.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        trainer.optimizer.step()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:
            seconds.append(time.perf_counter() - started)
            items += float(out["items_encoded"])
        losses.append(float(out["loss"].detach()))
    return seconds, losses, items / steps


def run(encoder: str, data: Path, root: Path, batch: int, steps: int, device: str) -> dict:
    builds: list[float] = []
    original = PixelEncoder.build_cache

    def timed(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            builds.append(time.perf_counter() - started)

    row: dict = {"encoder": encoder, "tune_last": TUNE_LAST.get(encoder, 2)}
    for cache in (False, True):
        PixelEncoder.build_cache = timed
        try:
            trainer = Trainer(config(data, encoder, batch, cache, root / "cache", device), root / f"run-{encoder}-{cache}")
        finally:
            PixelEncoder.build_cache = original
        seconds, losses, items = time_steps(trainer, steps)
        key = "cached" if cache else "plain"
        row[key] = {"seconds_per_step": sum(seconds) / len(seconds), "step_seconds": seconds,
                    "losses": losses, "items_per_step": items}
        if cache:
            enc = trainer.model.item_encoder
            row["cache_build_seconds"] = builds[-1]
            row["cache_bytes_per_item"] = 2 * int(torch.Size(enc.cache.sidecar["shape"]).numel())
            row["cache_shape"] = enc.cache.sidecar["shape"]
            row["cut"] = enc.cache.sidecar["cut"]
    row["speedup"] = row["plain"]["seconds_per_step"] / row["cached"]["seconds_per_step"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoders", default="resnet50,clip-vit-b32")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--items", type=int, default=150)
    parser.add_argument("--tune-last", type=int, default=None, help="override the paper settings (resnet50 3, clip-vit-b32 2)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.tune_last is not None:
        TUNE_LAST.update({name: args.tune_last for name in args.encoders.split(",")})
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="cheap-e2e-"))
    try:
        data = make_dataset(root, args.users, args.items)
        rows = [run(name, data, root, args.batch, args.steps, args.device) for name in args.encoders.split(",")]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({
        "benchmark": "cheap_e2e", "device": args.device, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "batch_sequences": args.batch, "catalogue_items": args.items, "image_size": 224, "weights": "random",
        "results": rows,
    }, indent=2))


if __name__ == "__main__":
    main()
