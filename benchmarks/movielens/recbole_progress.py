"""The validation curve of a RecBole run, finished or not, read from the TensorBoard events it writes.

`recbole_reference.py` reports a model only when RecBole's early stopping ends it; at RecBole's full
budget that can take hours on a CPU. RecBole logs every epoch's training loss and validation score
(NDCG@10 here, `valid_metric`) to TensorBoard as it goes, so a run still going, or cut short, can be
read: per epoch, the validation score and the seconds since the run's event file was opened (just
before the first epoch; RecBole's validation takes about a second here, so this is within a second
per epoch of its training time).

    /tmp/recbole-venv/bin/python benchmarks/movielens/recbole_progress.py WORK_DIR [--out FILE]

WORK_DIR is `recbole_reference.py --work`; the newest run under WORK_DIR/log_tensorboard is read.
Prints JSON {"events": path, "epochs": [{"epoch", "valid_ndcg_at_10", "seconds"}], "best": {...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="the --work folder of recbole_reference.py")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    files = sorted((args.work / "log_tensorboard").glob("*/events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
    if not files:
        sys.exit(f"{args.work / 'log_tensorboard'}: no TensorBoard events (is it recbole_reference.py's --work?)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(files[-1]))
    events.Reload()
    opened = events.FirstEventTimestamp()
    # RecBole spells the tag "Vaild_score" (sic) in 1.2.1
    tag = next((t for t in events.Tags()["scalars"] if t.lower() in ("vaild_score", "valid_score")), None)
    if tag is None:
        sys.exit(f"{files[-1]}: no validation scores yet")
    epochs = [{"epoch": e.step + 1, "valid_ndcg_at_10": round(e.value, 5), "seconds": round(e.wall_time - opened, 1)}
              for e in events.Scalars(tag)]
    best = max(epochs, key=lambda e: (e["valid_ndcg_at_10"], e["epoch"]))  # RecBole: a tie is an improvement
    report = {"command": " ".join(sys.argv), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "events": str(files[-1]), "epochs": epochs, "best": best}
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
