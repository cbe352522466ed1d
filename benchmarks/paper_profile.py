"""The `paper` profile against our defaults on synthetic data: training examples, accuracy and time.

1. Examples: for SASRec's sequence view, the windows (examples), training targets and steps per epoch
   under our defaults and under `--config paper`, next to the PixelRec code's own rule computed here
   from each user's training length L (one window of L items when L <= max_len + 1, else L // (max_len
   + 1) windows of max_len + 1 items, each predicting all but its first item). The profile must match
   the rule exactly.
2. Training: ID SASRec and pixel SASRec (timm's tiny `test_vit`, random weights, 32 px) trained under
   each profile with the same model size, learning rate, batch and epoch cap, several seeds, the
   profiles alternated (default, paper, default, paper, ...), one torch thread; pixels also under our
   default with the paper's BPR loss (`default-bpr`), to tell the loss's share. Reported per run: best
   validation NDCG@10, test Recall@10 / NDCG@10, the test NDCG@10 of the same checkpoint under the
   other profile's evaluation (`eval.mask_target` flipped: the paper's code counts a test item the user
   had before as a miss, and the synthetic users re-consume often, see `test_target_seen_before`), epochs
   run, best epoch and seconds of training. Under one evaluation the two profiles should reach similar
   accuracy; the profile's per-epoch time differs with its examples (fewer windows; for pixels BPR's
   negatives are extra images to encode, where in-batch softmax reuses the batch's own).

    .venv/bin/python benchmarks/paper_profile.py [--users 1500] [--items 300] [--seeds 0,1]
        [--id-epochs 40] [--pixel-epochs 12] [--out benchmarks/results/paper_profile.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pixelrec.config import resolve
from pixelrec.data.prepare import prepare
from pixelrec.data.prepared import PreparedData
from pixelrec.data.synth import write_synthetic
from pixelrec.data.views import MembershipIndex, TrainingView
from pixelrec.training.trainer import train


def original_rule(train_lengths: np.ndarray, max_len: int, batch: int) -> dict[str, int]:
    """Windows, targets and steps per epoch of the PixelRec code's sequence datasets."""
    width = max_len + 1
    lengths = train_lengths[train_lengths > 0]
    windows = np.where(lengths <= width, 1, lengths // width)
    targets = np.where(lengths <= width, lengths - 1, (lengths // width) * (width - 1))
    return {"examples": int(windows.sum()), "targets": int(targets.sum()), "steps": -(-int(windows.sum()) // batch)}


def view_counts(data: PreparedData, config) -> dict[str, int]:
    """Examples, targets (one epoch's real targets) and steps per epoch of the configuration's view."""
    view = TrainingView(data, "sequence", config.data.max_len, config.data.sequences,
                        window_remainder=config.data.window_remainder)
    targets = 0
    rng = np.random.default_rng(0)
    for _, ids in view.epoch_batches(config.train.batch_size, 0, 0):
        targets += int((view.batch(ids, rng).targets > 0).sum())
    return {"examples": len(view), "targets": targets, "steps": -(-len(view) // config.train.batch_size)}


def cell(data: Path, items: str, seed: int, epochs: int) -> list[str]:
    """`--set` overrides shared by both profiles: the model size, rate and batch differ only by profile rules."""
    sets = [f"data.path={data}", "model.embedding_size=64", "model.n_heads=2", "train.lr=1e-3", "train.batch_size=64",
            f"train.epochs={epochs}", f"train.seed={seed}", "train.progress=false", "train.num_workers=0",
            "eval.batch_size=2048"]
    if items == "pixels":
        sets += ["items.kind=pixels", "items.image.encoder=test_vit", "items.image.image_size=32", "items.image.tune_last=all",
                 "train.encoder_lr=1e-3", "train.weight_decay=0.0", "train.encoder_weight_decay=0.0"]
    return sets


#: The arms compared: (name, --config files, extra --set). `default-bpr` is our default with the paper's
#: loss, which separates the loss's share of a pixel gap from the rest of the profile.
ARMS = {"id": [("default", [], []), ("paper", ["paper"], [])],
        "pixels": [("default", [], []), ("paper", ["paper"], []), ("default-bpr", [], ["loss.name=bpr"])]}


def run_training(data: Path, root: Path, items: str, seeds: list[int], epochs: int) -> list[dict]:
    rows = []
    for seed in seeds:
        for profile, files, extra in ARMS[items]:
            config = resolve(model="sasrec", files=files, sets=cell(data, items, seed, epochs) + extra)
            out = root / f"{items}-{profile}-{seed}"
            started = time.perf_counter()
            result = train(config, out)
            other = other_masking(out)
            rows.append({
                "items": items, "profile": profile, "seed": seed, "loss": config.loss.name,
                "valid_NDCG@10": round(result["valid"]["NDCG@10"], 4),
                "test_Recall@10": round(result["test"]["Recall@10"], 4),
                "test_NDCG@10": round(result["test"]["NDCG@10"], 4),
                # the same checkpoint under the other profile's evaluation (the target masked or not), so that
                # training and evaluation differences can be told apart
                "test_NDCG@10_other_masking": round(other["NDCG@10"], 4),
                "epochs_run": result["epochs_run"], "best_epoch": result["best_epoch"], "steps": result["steps"],
                "train_seconds_per_epoch": round(result["train_seconds_per_epoch"], 3),
                "wall_seconds": round(time.perf_counter() - started, 1),
            })
            print(json.dumps(rows[-1]), flush=True)
    return rows


def other_masking(run: Path) -> dict[str, float]:
    """Test metrics of a run's best checkpoint with eval.mask_target flipped."""
    from pixelrec.evaluation.evaluator import evaluate
    from pixelrec.runs.loading import load_run

    config, data, model = load_run(run)
    c = config.eval
    return evaluate(model, data, "test", config.data.max_len, c.ks, c.batch_size, c.score_budget_mb,
                    mask_target=not c.mask_target)["test"]


def re_consumed(data: PreparedData) -> float:
    """Share of users whose test item is also in their earlier history (a miss under eval.mask_target)."""
    targets = np.asarray(data.item_seq)[data.target_positions("test")]
    users = np.arange(1, data.n_users + 1)
    seen = MembershipIndex.of_segments(np.asarray(data.item_seq), data.train_start[users],
                                       data.target_positions("test"), data.n_items)
    return float(seen.contains(np.arange(len(users)), targets).mean())


def summary(rows: list[dict]) -> dict:
    out = {}
    for items in sorted({r["items"] for r in rows}):
        for profile, _, _ in ARMS[items]:
            mine = [r for r in rows if r["items"] == items and r["profile"] == profile]
            key = f"{items}-{profile}"
            out[key] = {name: round(float(np.mean([r[name] for r in mine])), 4)
                        for name in ("valid_NDCG@10", "test_Recall@10", "test_NDCG@10", "test_NDCG@10_other_masking",
                                     "train_seconds_per_epoch",
                                     "wall_seconds", "epochs_run")}
            for metric in ("test_NDCG@10", "test_Recall@10"):  # between seeds: what counts as a match
                values = [r[metric] for r in mine]
                out[key][f"{metric}_spread"] = round(float(np.ptp(values)), 4)
                out[key][f"{metric}_std"] = round(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1500)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--id-epochs", type=int, default=40)
    parser.add_argument("--pixel-epochs", type=int, default=12)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/paper_profile.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic(root / "raw", users=args.users, items=args.items, mean_len=14.0, image_size=32, seed=0)
        prepare(root / "raw", root / "data", image_size=32, progress=False)
        data = PreparedData(root / "data")
        lengths = data.train_end - data.train_start
        counts = {"original_rule": original_rule(lengths[1:], 10, 64)}
        for profile in ("default", "paper"):
            config = resolve(model="sasrec", files=[profile] if profile != "default" else [],
                             sets=[f"data.path={root / 'data'}", "train.batch_size=64"])
            counts[profile] = view_counts(data, config)
        report: dict = {"command": " ".join(["benchmarks/paper_profile.py", *sys.argv[1:]]),
                        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                    "load_average": os.getloadavg(), "torch_threads": 1},
                        "dataset": {"users": data.n_users, "items": data.n_items,
                                    "train_interactions": int(lengths.sum()),
                                    "test_target_seen_before": round(re_consumed(data), 4)},
                        "sasrec_examples": counts,
                        "paper_matches_original_rule": counts["paper"] == counts["original_rule"]}
        print(json.dumps(report, indent=2), flush=True)
        if not args.skip_training:
            rows = run_training(root / "data", root / "runs", "id", seeds, args.id_epochs)
            rows += run_training(root / "data", root / "runs", "pixels", seeds, args.pixel_epochs)
            report["runs"] = rows
            report["summary"] = summary(rows)
            report["load_average_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report.get("summary", {}), indent=2))


if __name__ == "__main__":
    main()
