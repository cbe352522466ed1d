"""A fair share of a busy CPU: the demo's SASRec epochs over item IDs and over frozen features, timed
alone and beside CPU-bound competitor processes, alone and busy alternated (A/B, B/A, ...).

Each measurement is a fresh `pixelrec train` process on the demo's data (synthetic, 2,000 users and
400 items, the `cpu-small` preset, features of the tiny `test_vit` encoder at 32 px), so the
command line's start-up (thread count, idle-thread policy) is what is measured. The seconds of the
epochs after the first are the sample; each arm reports its median.

The slowdown the lost CPU share explains: with c usable CPUs, n threads and k single-threaded
competitors, a fair scheduler leaves the run c*n/(n+k) of the min(n, c) CPUs it had alone; about 2x
with one competitor per CPU (1.5x with one per other CPU on two CPUs). Target: the measured slowdown
is no worse than that, not the 30x that spinning idle threads caused, and no slower alone.

Arms (`--arms`): `now`, the command line as it is (idle OpenMP threads spin briefly, then sleep);
`before`, torch loaded before the command line starts, so OpenMP's default wait (a ~3 ms spin);
`passive`, idle threads sleep at once (OMP_WAIT_POLICY=PASSIVE).

Other load on the machine counts against both arms alike; its load average is reported.

    .venv/bin/python benchmarks/cpu_share.py [--rounds 3] [--competitors N] [--arms now,before,passive] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pixelrec import threads

PIXELREC = [sys.executable, "-m", "pixelrec"]
#: torch loaded (with its OpenMP runtime) before the command line sets the idle-thread policy
PIXELREC_BEFORE = [sys.executable, "-c",
                   "import sys, torch; from pixelrec.cli import main; sys.exit(main(sys.argv[1:]))"]
BURN = [sys.executable, "-c", "while True: pass"]


def run(argv: list[str], env: dict[str, str] | None = None) -> None:
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:6])} ...: failed\n{done.stderr[-2000:]}")


def make_data(root: Path) -> tuple[Path, Path]:
    """The demo's prepared data and test_vit features (kept when already there)."""
    data, features = root / "data", root / "features" / "test_vit.npy"
    if not (data / "meta.json").is_file():
        run([*PIXELREC, "synth", "--out", str(root / "raw"), "--users", "2000", "--items", "400", "--mean-len", "14",
             "--image-size", "64", "--seed", "0"])
        run([*PIXELREC, "prepare", "--raw", str(root / "raw"), "--out", str(data), "--image-size", "32",
             "--cold-items", "0.05", "--seed", "0", "--workers", "2"])
    if not features.is_file():
        features.parent.mkdir(parents=True, exist_ok=True)
        run([*PIXELREC, "extract", "--data", str(data), "--encoder", "test_vit", "--image-size", "32",
             "--workers", "0", "--out", str(features)])
    return data, features


def epoch_seconds(command: list[str], data: Path, features: Path, kind: str, out: Path, epochs: int,
                  env: dict[str, str]) -> tuple[list[float], int]:
    """Seconds of each epoch after the first, and the threads the run used."""
    shutil.rmtree(out, ignore_errors=True)
    argv = [*command, "train", "--data", str(data), "--model", "sasrec", "--config", "cpu-small", "--items", kind,
            "--out", str(out), "--set", f"train.epochs={epochs}", "--set", f"train.eval_every={epochs}",
            "--set", "train.progress=false"]
    if kind == "features":
        argv += ["--set", f"items.features={features}"]
    run(argv, env)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    used = json.loads((out / "environment.json").read_text())["threads"]
    return [row["seconds"] for row in rows[1:]], used


class Competitors:
    """k CPU-bound processes for the duration of a `with` block."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Competitors":
        self.procs = [subprocess.Popen(BURN) for _ in range(self.k)]
        time.sleep(0.5)  # running before the measured process starts
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait()


def share_slowdown(cpus: int, threads_used: int, competitors: int) -> float:
    """The slowdown that the CPU share lost to `competitors` explains under a fair scheduler."""
    alone = min(threads_used, cpus)
    busy = min(threads_used, cpus * threads_used / (threads_used + competitors))
    return alone / busy


def summary(alone: list[float], busy: list[float]) -> dict:
    a, b = statistics.median(alone), statistics.median(busy)
    return {"alone_s": round(a, 3), "busy_s": round(b, 3), "slowdown": round(b / a, 2),
            "alone_each": [round(x, 3) for x in alone], "busy_each": [round(x, 3) for x in busy]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alone/busy pairs per arm, order alternated")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; all but the first are timed")
    parser.add_argument("--competitors", type=int, default=max(1, threads.usable_cpus() - 1),
                        help="CPU-bound processes beside the run (default: one per other usable CPU)")
    parser.add_argument("--kinds", default="id,features")
    parser.add_argument("--arms", default="now", help="now, before, passive (comma-separated; see above)")
    parser.add_argument("--keep", help="keep the data and runs in this directory (reused when there)")
    args = parser.parse_args()

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pixelrec-cpu-share-"))
    root.mkdir(parents=True, exist_ok=True)
    chosen_by_us = (threads.WAIT_POLICY, threads.SPIN_COUNT, "OMP_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in chosen_by_us}
    known = {"now": (PIXELREC, env), "before": (PIXELREC_BEFORE, env),
             "passive": (PIXELREC, env | {threads.WAIT_POLICY: "PASSIVE"})}
    arms = {name: known[name] for name in args.arms.split(",")}
    report: dict = {"cpus": threads.usable_cpus(), "competitors": args.competitors, "rounds": args.rounds,
                    "epochs_timed_per_run": args.epochs - 1, "load_average_start": list(os.getloadavg())}
    try:
        data, features = make_data(root)
        kinds = args.kinds.split(",")
        samples: dict[tuple[str, str, str], list[float]] = {}
        used = set()
        # every arm and kind in each round, so a change in the machine's other load falls on all alike
        for r in range(args.rounds):
            for kind in kinds:
                for arm, (command, arm_env) in arms.items():
                    for condition in (("alone", "busy") if r % 2 == 0 else ("busy", "alone")):
                        with Competitors(args.competitors if condition == "busy" else 0):
                            seconds, n = epoch_seconds(command, data, features, kind, root / "run", args.epochs,
                                                       arm_env)
                        samples.setdefault((arm, kind, condition), []).extend(seconds)
                        used.add(n)
            print(f"# round {r + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.2f}", file=sys.stderr,
                  flush=True)
        for arm in arms:
            report[arm] = {kind: summary(samples[arm, kind, "alone"], samples[arm, kind, "busy"]) for kind in kinds}
        report["threads"] = sorted(used)
        report["cpu_share_slowdown"] = round(share_slowdown(report["cpus"], max(used), args.competitors), 2)
        report["load_average_end"] = list(os.getloadavg())
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
