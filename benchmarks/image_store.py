"""Image store throughput and size: JPEG LMDB (ours) versus raw 224x224x3 arrays (the paper's LMDB).

    .venv/bin/python benchmarks/image_store.py [--quick] [--items N] [--scratch DIR] [--keep]

Writes photo-like covers (smooth colour fields plus texture and sensor-like noise, 320x240, so JPEG sizes
resemble real covers rather than flat synthetic drawings), prepares them with `--image-size 224`, then
measures random-access batches read + decoded (+ resized, for stores at another size) in images/s with
0 and 2 DataLoader workers, bytes stored per image, prepare's encoding rate, and both decoders
(torchvision's libjpeg-turbo and PIL). Prints one JSON object to stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import time
from pathlib import Path

import lmdb
import numpy as np
import torch
from PIL import Image

from pixelrec.data.images import ImageStore, shared_env
from pixelrec.data.prepare import prepare
from pixelrec.data.prepared import PreparedData

RAW_BYTES = 224 * 224 * 3  # 150,528: one uncompressed 224x224 RGB image


def photo_like(rng: np.random.Generator, size=(320, 240)) -> Image.Image:
    """Low-frequency colour field + mid-frequency texture + pixel noise."""
    w, h = size
    base = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    texture = Image.fromarray(rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)).resize(size)
    pixels = 0.75 * np.asarray(base, np.float32) + 0.25 * np.asarray(texture, np.float32)
    pixels += rng.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_raw(root: Path, n_items: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (root / "covers").mkdir(parents=True)
    for i in range(1, n_items + 1):
        photo_like(rng).save(root / "covers" / f"i{i}.jpg", quality=90)
    rows = ["item_id,user_id,timestamp"]
    for u in range(n_items // 2):  # every item appears; users have 4 interactions each
        rows += [f"i{(2 * u + k) % n_items + 1},u{u},{k}" for k in range(4)]
    (root / "interactions.csv").write_text("\n".join(rows) + "\n")


class Batches(torch.utils.data.Dataset):
    """Batch b = a fixed random set of item indices: each worker reads whole batches."""

    def __init__(self, store, batches: np.ndarray):
        self.store, self.batches = store, batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, b):
        return self.store.read(self.batches[b])


def images_per_second(store, n_items: int, workers: int, n_batches: int, batch: int = 64) -> float:
    rng = np.random.default_rng(1)
    batches = rng.integers(1, n_items + 1, (n_batches, batch))
    loader = torch.utils.data.DataLoader(Batches(store, batches), batch_size=None, num_workers=workers,
                                         multiprocessing_context="fork" if workers else None)
    iterator = iter(loader)
    next(iterator)  # start-up (worker fork, first open) is not throughput
    start = time.perf_counter()
    count = sum(len(x) for x in iterator)
    return count / (time.perf_counter() - start)


class RawArrayStore:
    """The paper's layout: LMDB values are raw uint8 224x224x3 arrays."""

    def __init__(self, path: Path, n_items: int):
        self.path, self.n = path, n_items

    def read(self, indices) -> torch.Tensor:
        with shared_env(self.path).begin() as txn:
            arrays = [np.frombuffer(txn.get(f"i{i}".encode()), np.uint8).reshape(224, 224, 3) for i in indices]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def write_raw_array_store(path: Path, data: PreparedData, store: ImageStore) -> None:
    env = lmdb.open(str(path), map_size=(len(store) + 16) * (RAW_BYTES + 4096) * 2, lock=False)
    with env.begin(write=True) as txn:
        for index in range(1, data.n_items + 1):
            array = store.read([index])[0].permute(1, 2, 0).contiguous().numpy()
            txn.put(data.item_tokens[index].encode(), array.tobytes())
    env.close()


def decoder_rates(data: bytes, n: int = 500) -> dict:
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    start = time.perf_counter()
    for _ in range(n):
        np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    pil = n / (time.perf_counter() - start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        start = time.perf_counter()
        for _ in range(n):
            decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        tv = n / (time.perf_counter() - start)
    return {"pil_images_per_s": round(pil), "torchvision_images_per_s": round(tv)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 items, few batches (smoke run)")
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/pixelrec-bench-images"))
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    n_items, n_batches = (300, 10) if args.quick else (args.items, 60)
    torch.set_num_threads(1)
    shutil.rmtree(args.scratch, ignore_errors=True)
    try:
        write_raw(args.scratch / "raw", n_items)
        start = time.perf_counter()
        prepare(args.scratch / "raw", args.scratch / "prepared", image_size=224, workers=2, progress=False)
        encode_rate = n_items / (time.perf_counter() - start)
        data = PreparedData(args.scratch / "prepared")
        store = ImageStore.from_prepared(data)
        mdb = data.image_store_path / "data.mdb"
        with shared_env(data.image_store_path).begin() as txn:
            values = [len(v) for _, v in txn.cursor()]
            sample = txn.get(b"i1")
        raw_path = args.scratch / "raw_arrays.lmdb"
        write_raw_array_store(raw_path, data, store)
        raw_store = RawArrayStore(raw_path, n_items)
        result = {
            "benchmark": "image_store", "items": n_items, "image_size": 224, "cpu_cores": os.cpu_count(),
            "load_before": round(os.getloadavg()[0], 2),
            "prepare_covers_per_s_2_workers": round(encode_rate, 1),
            "jpeg_store": {
                "mean_value_bytes": round(float(np.mean(values))),
                "file_bytes_per_image": round(mdb.stat().st_size / n_items),
                "images_per_s_0_workers": round(images_per_second(store, n_items, 0, n_batches)),
                "images_per_s_2_workers": round(images_per_second(store, n_items, 2, n_batches)),
            },
            "raw_array_store": {
                "value_bytes": RAW_BYTES,
                "file_bytes_per_image": round((raw_path / "data.mdb").stat().st_size / n_items),
                "images_per_s_0_workers": round(images_per_second(raw_store, n_items, 0, n_batches)),
                "images_per_s_2_workers": round(images_per_second(raw_store, n_items, 2, n_batches)),
            },
            "decoders_single_thread": decoder_rates(sample),
        }
        result["size_ratio_raw_over_jpeg"] = round(RAW_BYTES / result["jpeg_store"]["mean_value_bytes"], 1)
        print(json.dumps(result, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(args.scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
