"""Where an ID SASRec training step's time goes (batch, forward, backward, optimiser), A/B between trees.

Each source tree given by --trees (a checkout's `src` folders, e.g. this one and main's) runs in its own
child process with that tree on PYTHONPATH, alternated A/B/A/B for --rounds; each child builds the
trainer with that tree's defaults (d=64 unless --dim, or `@D` after a tree's path, BPR, batch 64, one torch
thread, batches built in the process) and times --steps steps after --warmup, phase by phase, as the
trainer's loop runs them. One tree at two widths (`--trees d64=src,d8=src@8`) shows how much of a step
is arithmetic: at d=8 almost none is.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/step_speed.py --data DIR --trees new=src,main=../main/src
        [--rounds 3] [--steps 200] [--dim 64] [--side-by-side] [--out benchmarks/results/step_speed.json]

--side-by-side runs a round's trees at the same time, each pinned to its own core and the cores rotated
from round to round: both see the same moment of a shared machine, whose speed drifts by tens of percent
over minutes (measured one after the other, the same tree's step varied 17 to 24 ms in one run).

Prints (and with --out writes) one JSON object: per tree the median milliseconds per step (wall, and
CPU seconds of the process, which a shared machine disturbs less) and per phase, the ratio of each
tree's median step to the first tree's, and the same ratio within each round (its median is steadier
when the machine's speed drifts during the run); the load average beside every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import write_report  # benchmarks/timing.py, beside this script

PHASES = ("batch", "forward", "backward", "optimizer")


def child(data: Path, dim: int, warmup: int, steps: int) -> dict:
    """Milliseconds per phase of `steps` training steps after `warmup`, the trainer's own loop body."""
    import torch

    from pixelrec.config import build_config
    from pixelrec.training.trainer import Trainer

    torch.set_num_threads(1)
    config = build_config({"model": {"name": "sasrec", "embedding_size": dim}, "data": {"path": str(data)},
                           "loss": {"name": "bpr"},
                           "train": {"batch_size": 64, "lr": 1e-3, "progress": False, "seed": 0, "device": "cpu"}},
                          source="benchmark")
    trainer = Trainer(config, Path(tempfile.mkdtemp(prefix="pixelrec-step-")) / "run")
    trainer.model.train()
    spent = dict.fromkeys(PHASES, 0.0)
    cpu = 0.0  # one torch thread: the process's CPU seconds are the step's cost on a shared machine
    done, epoch, load = 0, 0, os.getloadavg()[0]
    while done < warmup + steps:
        batches = trainer.batches(epoch)
        while done < warmup + steps:
            c0, t0 = time.process_time(), time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            t1 = time.perf_counter()
            loss = trainer.net(batch)["loss"] * batch.scale_for(trainer.model.loss.reduction)
            t2 = time.perf_counter()
            loss.backward()
            t3 = time.perf_counter()
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            t4 = time.perf_counter()
            if done >= warmup:
                cpu += time.process_time() - c0
                for phase, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    spent[phase] += seconds
            done += 1
        epoch += 1
    trainer.close()
    per_phase = {phase: round(seconds / steps * 1000, 3) for phase, seconds in spent.items()}
    return {"ms_per_step": round(sum(per_phase.values()), 3), "cpu_ms_per_step": round(cpu / steps * 1000, 3),
            "ms_per_phase": per_phase,
            "n_items": trainer.data.n_items, "load": round((load + os.getloadavg()[0]) / 2, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a prepared dataset")
    parser.add_argument("--trees", default="", help="name=path/to/src[@dim],... (the first is the reference)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--side-by-side", action="store_true",
                        help="run the trees of a round at once, each on its own core, the cores rotated each round")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--core", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.core is not None:
            os.sched_setaffinity(0, {args.core})
        print(json.dumps(child(args.data, args.dim, args.warmup, args.steps)))
        return
    trees = {name: (path, int(dim) if dim else args.dim)
             for name, value in (item.split("=", 1) for item in args.trees.split(","))
             for path, _, dim in [value.partition("@")]}
    report: dict = {"benchmark": "step_speed", "command": " ".join(sys.argv),
                    "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                    "model": "ID SASRec, d " + ", ".join(f"{n}={d}" for n, (_, d) in trees.items())
                             + ", BPR, batch 64, one torch thread, each tree's defaults",
                    "data": str(args.data), "runs": []}
    cores = sorted(os.sched_getaffinity(0))
    if args.side_by_side and len(cores) < len(trees):
        parser.error(f"--side-by-side runs {len(trees)} trees at once: this process may use {len(cores)} cores")
    report["side_by_side"] = args.side_by_side
    for round_ in range(args.rounds):
        children = []
        for i, (name, (src, dim)) in enumerate(trees.items()):
            # side by side, each tree meets each core in turn: one core may be slower than another
            core = cores[(i + round_) % len(cores)] if args.side_by_side else None
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(src).resolve())}
            command = [sys.executable, __file__, "--child", "--data", str(args.data), "--dim", str(dim),
                       "--warmup", str(args.warmup), "--steps", str(args.steps)]
            command += ["--core", str(core)] if core is not None else []
            started = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
            children.append((name, dim, core, started, None if args.side_by_side else started.communicate()[0]))
        for name, dim, core, started, out in children:
            out = started.communicate()[0] if out is None else out
            if started.returncode:
                raise SystemExit(f"the {name} child failed (exit {started.returncode})")
            report["runs"].append({"tree": name, "dim": dim, **({"core": core} if core is not None else {}),
                                   **json.loads(out.strip().splitlines()[-1])})
            print(json.dumps(report["runs"][-1]), file=sys.stderr, flush=True)
    summary = {}
    for name in trees:
        runs = [r for r in report["runs"] if r["tree"] == name]
        summary[name] = {"median_ms_per_step": statistics.median(r["ms_per_step"] for r in runs),
                         "median_cpu_ms_per_step": statistics.median(r["cpu_ms_per_step"] for r in runs),
                         "median_ms_per_phase": {p: statistics.median(r["ms_per_phase"][p] for r in runs) for p in PHASES}}
    reference = next(iter(trees))
    first = summary[reference]
    for name in trees:
        summary[name]["speed_vs_" + reference] = round(first["median_ms_per_step"] / summary[name]["median_ms_per_step"], 3)
        summary[name]["cpu_speed_vs_" + reference] = round(
            first["median_cpu_ms_per_step"] / summary[name]["median_cpu_ms_per_step"], 3)
        # a shared machine drifts over minutes: the ratio within each round, beside its neighbour, is steadier
        paired = [ref["cpu_ms_per_step"] / run["cpu_ms_per_step"]
                  for ref, run in zip((r for r in report["runs"] if r["tree"] == reference),
                                      (r for r in report["runs"] if r["tree"] == name))]
        summary[name]["cpu_speed_vs_" + reference + "_per_round"] = [round(x, 3) for x in paired]
        summary[name]["cpu_speed_vs_" + reference + "_median_of_rounds"] = round(statistics.median(paired), 3)
    report["summary"] = summary
    write_report(report, args.out)


if __name__ == "__main__":
    main()
