"""Feature-extraction speed (`pixelrec extract`) on the CPU, random weights, synthetic covers.

Prints JSON: for a tiny encoder (timm's test_vit at 32 px) and ResNet50 at 224 px, each with 0 and 2
DataLoader workers reading the image store, the images per second of a whole `extract_features`
call (tower creation included) and of the extraction loop alone (the same minus the time to build
the tower and probe its output size, measured separately). The prepared set is made with
`pixelrec.data.synth.write_synthetic` + `prepare`, covers stored at 224 px as the paper's store.

    .venv/bin/python benchmarks/extract_speed.py [--items 256] [--batch-size 32] [--encoders test_vit,resnet50] [--keep DIR]
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

from pixelrec.data.images import ImageStore
from pixelrec.data.prepare import prepare
from pixelrec.data.prepared import PreparedData
from pixelrec.data.synth import write_synthetic
from pixelrec.jobs.extract import FeatureTower, extract_features

CASES = {"test_vit": 32, "resnet50": 224}  # encoder -> input size


def make_dataset(root: Path, items: int) -> Path:
    raw = root / "raw"
    started = time.perf_counter()
    write_synthetic(raw, users=max(200, items), items=items, mean_len=8.0, image_size=224, seed=0)
    prepare(raw, root / "data", image_size=224, workers=2, progress=False)
    shutil.rmtree(raw)
    print(f"# synthetic set with covers at 224 px: {time.perf_counter() - started:.1f}s", flush=True)
    return root / "data"


def setup_seconds(encoder: str, size: int) -> float:
    """Time to build the frozen tower and probe its output size (paid once per extraction)."""
    started = time.perf_counter()
    tower = FeatureTower(encoder, image_size=size)
    with torch.inference_mode():
        tower(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))
    return time.perf_counter() - started


def measure(data: Path, out: Path, encoder: str, size: int, workers: int, batch_size: int) -> dict:
    started = time.perf_counter()
    sidecar = extract_features(data, out, encoder, image_size=size, batch_size=batch_size, workers=workers,
                               dtype="fp16", device="cpu", overwrite=True, progress=False)
    total = time.perf_counter() - started
    setup = setup_seconds(encoder, size)
    n = sidecar["n_items"]
    return {"encoder": encoder, "image_size": size, "workers": workers, "batch_size": batch_size, "items": n,
            "dim": sidecar["dim"], "seconds": round(total, 2), "setup_seconds": round(setup, 2),
            "images_per_second": round(n / total, 1),
            "images_per_second_loop": round(n / max(total - setup, 1e-9), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=256, help="items (covers) in the synthetic set")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--encoders", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
    parser.add_argument("--keep", help="keep the generated dataset in this directory")
    args = parser.parse_args()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pixelrec-extract-"))
    root.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                                "torch": torch.__version__}, "runs": []}
    try:
        data = root / "data" if (root / "data" / "meta.json").exists() else make_dataset(root, args.items)
        ImageStore.from_prepared(PreparedData(data)).read([1])  # warm-up: the JPEG decoder's import is not timed
        for encoder in args.encoders.split(","):
            for workers in (0, 2):
                row = measure(data, root / f"{encoder}-{workers}.npy", encoder, CASES[encoder], workers, args.batch_size)
                report["runs"].append(row)
                print(f"# {row}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
