"""Image store reads: the batched decode of `ImageStore.read` against a per-image decode loop.

    .venv/bin/python benchmarks/decode_speed.py [--quick] [--items N] [--reads N] [--device cuda]

Builds a prepared dataset of photo-like 224 px covers (as benchmarks/image_store.py), then times, in
alternating rounds on one thread, reads of 64 random distinct items (a training batch's distinct
items) and of 64 items with repeats (about half distinct), each by
  * `loop`: one `decode_jpeg` call per image, each written into the output (the former reader);
  * `batched`: `ImageStore.read` (one decoder call for the whole list, each distinct item once).
Prints one JSON object: images/s of each, the batched/loop ratio, and whether both gave equal pixels.
With `--device cuda` the batched reader also decodes on the GPU (nvjpeg).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from image_store import write_raw
from pixelrec.data.images import ImageStore, shared_env
from pixelrec.data.prepare import prepare
from pixelrec.data.prepared import PreparedData


def loop_read(store: ImageStore, keys: list[bytes], indices: np.ndarray) -> torch.Tensor:
    """The per-image reader: one decoder call per index, repeats decoded again."""
    from torchvision.io import ImageReadMode, decode_jpeg

    out = torch.empty((len(indices), 3, store.size, store.size), dtype=torch.uint8)
    with shared_env(store.path).begin() as txn, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        for row, index in enumerate(indices.tolist()):
            if index == 0:
                out[row] = 0
                continue
            data = txn.get(keys[index])
            out[row] = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    return out


def draws(rng: np.random.Generator, n_items: int, reads: int, batch: int, repeats: bool) -> list[np.ndarray]:
    """`reads` index arrays of `batch` items: distinct, or drawn with repeats from batch / 2 items."""
    items = np.arange(1, n_items + 1)
    if repeats:
        return [rng.choice(rng.choice(items, batch // 2, replace=False), batch) for _ in range(reads)]
    return [rng.choice(items, batch, replace=False) for _ in range(reads)]


def timed(read, batches: list[np.ndarray]) -> float:
    started = time.perf_counter()
    for indices in batches:
        read(indices)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def compare(readers: dict, batches: list[np.ndarray], rounds: int) -> dict:
    """Images/s of each reader over `batches`, the readers alternating round by round."""
    seconds = dict.fromkeys(readers, 0.0)
    per_round = len(batches) // rounds
    for r in range(rounds):
        part = batches[r * per_round:(r + 1) * per_round]
        for name in (list(readers) if r % 2 == 0 else list(readers)[::-1]):
            seconds[name] += timed(readers[name], part)
    images = per_round * rounds * len(batches[0])
    rates = {name: round(images / s) for name, s in seconds.items()}
    return {"images_per_s": rates, "batched_over_loop": round(seconds["loop"] / seconds["batched"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 items, 16 reads (smoke run)")
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--reads", type=int, default=256, help="reads of 64 images per reader and case")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--device", default="cpu", help="also decode on this CUDA device (nvjpeg)")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/pixelrec-bench-decode"))
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the prepared dataset")
    args = parser.parse_args()
    n_items, reads, rounds = (200, 16, 2) if args.quick else (args.items, args.reads, args.rounds)
    torch.set_num_threads(1)
    prepared = args.scratch / "prepared"
    if not (prepared / "meta.json").is_file():
        shutil.rmtree(args.scratch, ignore_errors=True)
        write_raw(args.scratch / "raw", n_items)
        prepare(args.scratch / "raw", prepared, image_size=224, workers=2, progress=False)
    try:
        data = PreparedData(prepared)
        store = ImageStore.from_prepared(data)
        keys = [str(t).encode() for t in data.item_tokens]
        rng = np.random.default_rng(0)
        result: dict = {"benchmark": "decode_speed", "items": data.n_items, "image_size": store.size,
                        "reads": reads, "batch": 64, "threads": torch.get_num_threads(),
                        "load_before": round(os.getloadavg()[0], 2)}
        readers = {"loop": lambda i: loop_read(store, keys, i), "batched": store.read}
        sample = draws(rng, data.n_items, 4, 64, True)
        result["equal_pixels"] = all(torch.equal(loop_read(store, keys, i), store.read(i)) for i in sample)
        for case, repeats in (("distinct", False), ("repeats", True)):
            store.read(sample[0]), loop_read(store, keys, sample[0])  # warm
            result[case] = compare(readers, draws(rng, data.n_items, reads, 64, repeats), rounds)
        if args.device.startswith("cuda") and torch.cuda.is_available():
            gpu = {"loop": lambda i: loop_read(store, keys, i).to(args.device),
                   "batched": lambda i: store.read(i, device=args.device)}
            # nvjpeg's IDCT and upsampling differ slightly from libjpeg-turbo's
            result["gpu_max_abs_difference"] = max(
                int((store.read(i, device=args.device).cpu().int() - store.read(i).int()).abs().max()) for i in sample)
            result["gpu_distinct"] = compare(gpu, draws(rng, data.n_items, reads, 64, False), rounds)
        result["load_after"] = round(os.getloadavg()[0], 2)
        print(json.dumps(result, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(args.scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
