"""The frozen-prefix cache for the nine paper encoders: the image part of a training step, plain vs cached.

For each encoder at its `tune_last` and pooling from `configs/encoders/<name>.yaml` (random weights,
224 px, one torch thread, a batch of distinct covers), three forward + backward passes of the same
PixelEncoder (tower -> pooling -> projection to 64), each followed by zeroing the gradients:
- `plain`: uint8 images through pre-processing, the frozen prefix (no autograd graph, as in training)
  and the trainable top;
- `cached`: the prefix's fp16 output read from a cache file (`PrefixCache.read` of a memory-mapped .npy)
  through the trainable top;
- `top`: the trainable top alone, from the prefix's fp32 output already in memory: the physical limit.
The three alternate (plain, cached, top, then rotated) after one warm-up each. Times are the process's
CPU seconds (with one thread, what a step costs even on a machine shared with other jobs); wall seconds
are reported beside them. Medians. Targets: `cached_over_top` <= 1.2; `speedup` (plain / cached) is
what the cache buys. An encoder whose warm-up plain step takes more than --max-step CPU seconds is
recorded as skipped with that time; one over --slow seconds is timed --slow-repeats times instead of
--repeats.

    .venv/bin/python benchmarks/prefix_cache_speed.py [--encoders clip-vit-b32,...] [--batch 8]
        [--repeats 3] [--out benchmarks/out/prefix_cache_speed.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pixelrec.items.pixels import ImageSettings, PixelEncoder
from pixelrec.packaged import CONFIG_DIR, read_yaml
from pixelrec.storage.atomic import atomic_json
from pixelrec.towers.prefix_cache import PrefixCache

ENCODERS = ("clip-vit-b32", "swin-t", "swin-b", "beit-b", "resnet50", "clip-rn50", "clip-rn50x4", "clip-rn50x16",
            "clip-rn50x64")
SIZE = 224
EMBEDDING = 64


class NoStore:
    """Images are handed to the encoder directly; nothing is read from a store."""

    size = SIZE

    def read(self, item_ids: np.ndarray) -> torch.Tensor:
        raise RuntimeError("the benchmark passes inputs explicitly")


def paper_setting(name: str) -> dict[str, Any]:
    """tune_last and pooling of the encoder's own YAML (the paper's tuned blocks)."""
    image = read_yaml(CONFIG_DIR / "encoders" / f"{name}.yaml")["items"]["image"]
    return {"tune_last": image["tune_last"], "pooling": image["pooling"]}


def timed(run: Callable[[], None]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    run()
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(name: str, batch: int, repeats: int, slow: float, slow_repeats: int, max_step: float,
            tmp: Path) -> dict[str, Any]:
    setting = paper_setting(name)
    torch.manual_seed(0)
    started = time.perf_counter()
    enc = PixelEncoder(n_items=batch, embedding_size=EMBEDDING, image_store=NoStore(), cache_dir=str(tmp),
                       image=ImageSettings(encoder=name, image_size=SIZE, cache="prefix", **setting))
    enc.train()
    row: dict[str, Any] = {"encoder": name, **setting, "cut": enc.split.cut_name,
                           "create_seconds": round(time.perf_counter() - started, 2),
                           "parameters": sum(p.numel() for p in enc.tower.parameters()),
                           "trainable_parameters": sum(p.numel() for p in enc.encoder_parameters())}
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    ids = torch.arange(1, batch + 1)
    weights = torch.randn(batch, EMBEDDING, generator=generator)
    with torch.no_grad():
        prefix = enc.split.prefix(enc.preprocess(images))
    np.save(tmp / f"{name}.npy", prefix.half().numpy())
    cache = PrefixCache(tmp / f"{name}.npy", {})
    row["prefix_shape"] = list(prefix.shape[1:])
    row["cache_bytes_per_item"] = 2 * int(prefix[0].numel())

    def step(inputs: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            (enc(ids, inputs()) * weights).sum().backward()
            enc.zero_grad(set_to_none=True)
        return run

    variants = {"plain": step(lambda: images), "cached": step(lambda: cache.read(ids.numpy())),
                "top": step(lambda: prefix)}
    warm = {key: timed(run)[0] for key, run in variants.items()}
    row["warmup_cpu_seconds"] = {k: round(v, 3) for k, v in warm.items()}
    if warm["plain"] > max_step:
        row["skipped"] = f"a plain step takes {warm['plain']:.0f} CPU s here, over --max-step {max_step:.0f} s"
        return row
    n = slow_repeats if warm["plain"] > slow else repeats
    cpu: dict[str, list[float]] = {key: [] for key in variants}
    wall: dict[str, list[float]] = {key: [] for key in variants}
    order = list(variants)
    for r in range(n):
        for key in order[r % 3:] + order[: r % 3]:  # rotated, so no variant always runs first
            seconds = timed(variants[key])
            cpu[key].append(seconds[0])
            wall[key].append(seconds[1])
    medians = {key: statistics.median(values) for key, values in cpu.items()}
    row |= {"repeats": n, "cpu_seconds": {k: [round(v, 4) for v in vs] for k, vs in cpu.items()},
            "wall_seconds": {k: [round(v, 4) for v in vs] for k, vs in wall.items()},
            "median_cpu_seconds": {k: round(v, 4) for k, v in medians.items()},
            "speedup": round(medians["plain"] / medians["cached"], 2),
            "cached_over_top": round(medians["cached"] / medians["top"], 3)}
    row["meets_target"] = row["cached_over_top"] <= 1.2
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoders", default=",".join(ENCODERS))
    parser.add_argument("--batch", type=int, default=8, help="distinct covers per step")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps of each variant after one warm-up")
    parser.add_argument("--slow", type=float, default=20.0, help="CPU seconds of a plain warm-up step above which ...")
    parser.add_argument("--slow-repeats", type=int, default=1, help="... this many repeats are timed instead")
    parser.add_argument("--max-step", type=float, default=90.0, help="skip an encoder whose plain step is slower")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/out/prefix_cache_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="prefix-speed-") as tmp:
        for name in args.encoders.split(","):
            rows.append(measure(name, args.batch, args.repeats, args.slow, args.slow_repeats, args.max_step, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
            gc.collect()
    report = {
        "benchmark": "prefix_cache_speed", "device": "cpu", "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "image_size": SIZE,
        "batch_images": args.batch, "weights": "random", "embedding_size": EMBEDDING, "target_cached_over_top": 1.2,
        "total_wall_seconds": round(time.perf_counter() - started, 1), "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_json(Path(args.out), report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
