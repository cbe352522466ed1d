"""pixelrec against RecBole on MovieLens-100k under one protocol (the pixelrec side).

Protocol (both tools; see benchmarks/movielens/README.md): leave-one-out by time (last item test,
second-last validation), full ranking over all items with the user's history masked (the target
itself is never masked), Recall@10 and NDCG@10, early stopping on validation NDCG@10, test metrics
of the best validation epoch. Sequences are cut to the last **50** items here (the usual ML-100k
choice and RecBole's MAX_ITEM_LIST_LENGTH), not the PixelRec paper's 10, for both tools.

Settings mirror RecBole 1.2.1's defaults for each model (its properties/model/*.yaml and
overall.yaml) so that the two columns differ by implementation only: d = 64, batch 2048, Adam
(AdamW with weight decay 0 is Adam), lr 1e-3, validation every epoch, stop after 11 evaluations
without improvement (RecBole's stopping_step 10), sequential models trained on every prefix of the
training part (`data.sequences: sliding`, RecBole's data augmentation) with cross-entropy over the whole catalogue (`full-softmax`, RecBole's CE),
MF and LightGCN with BPR and one uniform negative per positive (RecBole's default for them).

    benchmarks/movielens/fetch_ml100k.sh /tmp/ml                         # once: ml-100k.inter
    .venv/bin/python benchmarks/movielens_compare.py --data-dir /tmp/ml [--models sasrec,pop]
        [--epochs 300] [--patience 11] [--batch-size 2048] [--sequences sliding|windows]
        [--set data.max_len=200 ...] [--seed 2020] [--label NAME]
        [--recbole /tmp/ml/recbole.json] [--out /tmp/ml/pixelrec.json]

Prints JSON {model: {"pixelrec": {valid, test, best_epoch, epochs_run, wall_seconds, train_seconds_to_best, valid_curve, ...},
"recbole": {...}, "relative_test": {...}}} (the last two with --recbole FILE, a JSON written by
movielens/recbole_reference.py). The budget used for benchmarks/movielens/README.md's table, and why
it is smaller than RecBole's defaults, is written there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMON = {
    "data": {"max_len": 50},
    "items": {"kind": "id"},
    "train": {"batch_size": 2048, "lr": 1e-3, "weight_decay": 0.0, "epochs": 300, "patience": 11,
              "eval_every": 1, "clip_grad": None, "seed": 2020, "num_workers": 0, "device": "cpu",
              "amp": False, "progress": False},
    "eval": {"batch_size": 4096, "ks": [10], "valid_metric": "NDCG@10"},
}

# Per model: the pixelrec configuration mirroring RecBole's model defaults (see the README's table).
MODELS: dict[str, dict] = {
    "sasrec": {"model": {"embedding_size": 64, "n_layers": 2, "n_heads": 2, "inner_factor": 4, "dropout": 0.5,
                         "activation": "gelu"},
               "data": {"sequences": "sliding"}, "loss": {"name": "full-softmax"}},
    "gru4rec": {"model": {"embedding_size": 64, "hidden_factor": 2, "n_layers": 1, "dropout": 0.3},
                "data": {"sequences": "sliding"}, "loss": {"name": "full-softmax"}},
    "bert4rec": {"model": {"embedding_size": 64, "n_layers": 2, "n_heads": 2, "inner_factor": 4, "dropout": 0.2,
                           "activation": "gelu", "mask_ratio": 0.2},
                 "data": {"sequences": "sliding"}, "loss": {"name": "full-softmax"}},
    "nextitnet": {"model": {"embedding_size": 64, "kernel_size": 3, "block_num": 5, "dilations": [1, 4]},
                  "data": {"sequences": "sliding"}, "loss": {"name": "full-softmax"}},
    "srgnn": {"model": {"embedding_size": 64, "step": 1}, "loss": {"name": "full-softmax"}},
    "lightsans": {"model": {"embedding_size": 64, "n_layers": 2, "n_heads": 2, "k_interests": 5, "inner_factor": 4,
                            "dropout": 0.5, "activation": "gelu"},
                  "loss": {"name": "full-softmax"}},
    "mf": {"model": {"embedding_size": 64}, "loss": {"name": "bpr"}},
    "lightgcn": {"model": {"embedding_size": 64, "n_layers": 2}, "loss": {"name": "bpr"}},
    "pop": {"loss": {"name": "bpr"}},
}
ORDER = ["pop", "mf", "lightgcn", "sasrec", "gru4rec", "bert4rec", "nextitnet", "srgnn", "lightsans"]


def prepare(data_dir: Path) -> Path:
    """`pixelrec prepare --raw DATA_DIR/ml-100k --out DATA_DIR/pixelrec-ml-100k --no-images` (once)."""
    raw, out = data_dir / "ml-100k", data_dir / "pixelrec-ml-100k"
    if not (raw / "ml-100k.inter").is_file():
        sys.exit(f"{raw / 'ml-100k.inter'}: missing; run benchmarks/movielens/fetch_ml100k.sh {data_dir}")
    if not (out / "meta.json").is_file():
        cli = Path(sys.executable).with_name("pixelrec")
        command = [str(cli)] if cli.is_file() else [sys.executable, "-m", "pixelrec"]
        subprocess.run(command + ["prepare", "--raw", str(raw), "--out", str(out), "--no-images"],
                       check=True, stdout=sys.stderr)
    return out


def settings(model: str, data: Path, budget: dict, sequences: str | None = None, overrides: tuple[str, ...] = ()) -> dict:
    from pixelrec.config import merge, overrides_to_dict

    raw = merge(COMMON, MODELS[model])
    raw = merge(raw, {"model": {"name": model}, "data": {"path": str(data)}})
    raw["train"].update({k: v for k, v in budget.items() if v is not None})
    if sequences is not None and "sequences" in raw["data"]:
        raw["data"]["sequences"] = sequences
    return merge(raw, overrides_to_dict(list(overrides)))


def run_one(model: str, data: Path, runs: Path, budget: dict, sequences: str | None = None,
            overrides: tuple[str, ...] = (), label: str = "") -> dict:
    from pixelrec.config import resolve
    from pixelrec.training.trainer import train

    raw = settings(model, data, budget, sequences, overrides)
    # packaged defaults of the backbone first (they are the paper's Pixel200K settings), then every
    # key this comparison sets: what is not set here keeps the backbone's own default
    config = resolve(model=model, flags=raw)
    started = time.perf_counter()
    run = runs / "-".join(part for part in (model, sequences, label) if part)
    with contextlib.redirect_stdout(sys.stderr):  # the trainer's epoch lines; stdout is the JSON
        results = train(config, run)
    wall = time.perf_counter() - started
    epochs, valid, seconds = curves(run)
    return {
        "valid": {k: results["valid"][k] for k in ("Recall@10", "NDCG@10")},
        "test": {k: results["test"][k] for k in ("Recall@10", "NDCG@10")},
        "best_epoch": results["best_epoch"], "epochs_run": results["epochs_run"], "stopped": results["stopped"],
        "wall_seconds": round(wall, 1), "train_seconds_per_epoch": round(results["train_seconds_per_epoch"], 2),
        "valid_curve": valid, "train_seconds_curve": seconds,
        "train_seconds_to_best": seconds[epochs.index(results["best_epoch"])] if results["best_epoch"] in epochs else 0.0,
        "overrides": list(overrides), "seed": config.train.seed,
        "loss": config.loss.name, "sequences": config.data.sequences, "max_len": config.data.max_len,
        "model_args": config.model_args,
    }


def curves(run: Path) -> tuple[list[int], list[float], list[float]]:
    """(epoch, validation NDCG@10, training seconds so far with validation excluded) of each evaluated
    epoch, from the run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    total, epochs, valid, seconds = 0.0, [], [], []
    for r in rows:
        total += r.get("seconds", 0.0)
        if "valid" in r:
            epochs.append(r["epoch"])
            valid.append(round(r["valid"]["NDCG@10"], 5))
            seconds.append(round(total, 1))
    return epochs, valid, seconds


def relative(pixelrec: dict, recbole: dict) -> dict:
    """(pixelrec - recbole) / recbole on the test metrics."""
    out = {}
    for metric in ("Recall@10", "NDCG@10"):
        ours, theirs = pixelrec["test"][metric], recbole["test"][metric]
        out[metric] = round((ours - theirs) / theirs, 3) if theirs else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding ml-100k/ml-100k.inter")
    parser.add_argument("--models", default=",".join(ORDER), help=f"comma-separated, from {','.join(ORDER)}")
    parser.add_argument("--epochs", type=int, help="epoch cap (default 300, RecBole's)")
    parser.add_argument("--patience", type=int,
                        help="evaluations without improvement before stopping (default 11 = RecBole's stopping_step 10)")
    parser.add_argument("--batch-size", type=int, help="training batch size (default 2048, RecBole's)")
    parser.add_argument("--sequences", choices=["sliding", "windows"],
                        help="override data.sequences of SASRec/GRU4Rec/NextItNet/BERT4Rec (default sliding: "
                             "RecBole's augmentation; windows: pixelrec's default, every position of 50-item windows)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a pixelrec setting over the model's (repeatable), e.g. data.max_len=200")
    parser.add_argument("--seed", type=int, help="train.seed (default 2020, RecBole's)")
    parser.add_argument("--label", default="", help="suffix of the run folders (several settings in one --runs)")
    parser.add_argument("--recbole", type=Path, help="JSON written by movielens/recbole_reference.py, merged in")
    parser.add_argument("--runs", type=Path, help="run directories (default: a temporary folder)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args()

    import torch

    from pixelrec.models import BACKBONES

    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        sys.exit(f"--models: unknown {', '.join(unknown)} (choose from {', '.join(ORDER)})")
    missing = [m for m in models if m not in BACKBONES.names()]
    if missing:
        sys.exit(f"--models: pixelrec has no backbone {', '.join(missing)} yet")
    data = prepare(args.data_dir)
    reference = json.loads(args.recbole.read_text()) if args.recbole else {}
    runs_tmp = None if args.runs else tempfile.TemporaryDirectory(prefix="movielens-runs-")
    runs = args.runs or Path(runs_tmp.name)
    out: dict = {}
    for model in models:
        print(f"# {model} ...", file=sys.stderr, flush=True)
        budget = {"epochs": args.epochs, "patience": args.patience, "batch_size": args.batch_size, "seed": args.seed}
        entry: dict = {"pixelrec": run_one(model, data, runs, budget, args.sequences, tuple(args.overrides), args.label)}
        if model in reference.get("models", {}):
            entry["recbole"] = reference["models"][model]
            entry["relative_test"] = relative(entry["pixelrec"], entry["recbole"])
        out[model] = entry
        print(f"# {model}: test {entry['pixelrec']['test']}  ({entry['pixelrec']['wall_seconds']}s)",
              file=sys.stderr, flush=True)
    result = {"dataset": "ml-100k", "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch "
              f"{torch.__version__}, {args.threads} thread(s)", "models": out}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    if runs_tmp is not None:
        runs_tmp.cleanup()


if __name__ == "__main__":
    main()
