"""Time `prepare` on interactions-only CSVs at Pixel200K size and (with --full) at full PixelRec size.

    .venv/bin/python benchmarks/prepare_scale.py [--quick] [--full] [--scratch DIR] [--keep]

The CSV is a synthetic log in PixelRec's raw layout (`item_id,user_id,timestamp`, tokens `i<k>`/`u<k>`)
with every user present and power-law user activity and item popularity. Blocks of the file
follow time but rows inside a block do not, so prepare's general sort path is what gets timed. Each
`prepare` runs as a library call in a child process, so its peak RSS is that child's `ru_maxrss`.
Prints one JSON object to stdout; wall and CPU seconds both, since other jobs may share the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

SIZES = {
    # name: (users, items, interactions), from the PixelRec paper's table
    "quick": (20_000, 9_628, 396_566),
    "pixel200k": (200_000, 96_282, 3_965_656),
    "pixel1m": (1_001_822, 100_541, 19_886_579),
    "pixel8m": (8_886_078, 407_082, 158_488_652),
    "full": (29_845_039, 408_374, 195_755_320),
}
TIME_SPAN = 34_000_000  # ~13 months of seconds, as PixelRec (Sep 2021 - Oct 2022)
T0 = 1_630_000_000


def _tokens(prefix: str, ids: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(ids), pa.string()), "")


def write_log_csv(path: Path, users: int, items: int, rows: int, seed: int = 0, chunk_rows: int = 5_000_000) -> None:
    """Write an interactions CSV with every user present at least once (vectorised, in chunks).

    Extra interactions go to user rank r with density ~ r^-1/2 and to item rank r with density ~ r^-0.6
    (power-law draws `n * U**a`, which need no table lookups); ranks map to shuffled token numbers.
    """
    rng = np.random.default_rng(seed)
    user_ids = rng.permutation(users).astype(np.int64) + 1  # token numbers, unrelated to first appearance
    item_ids = rng.permutation(items).astype(np.int64) + 1
    first_seen = rng.permutation(users)  # users guaranteed once, spread over the whole log
    n_chunks = max(1, -(-rows // chunk_rows))
    write = pv.WriteOptions(include_header=False, quoting_style="none")
    with open(path, "wb") as raw:
        raw.write(b"item_id,user_id,timestamp\n")
        for c in range(n_chunks):
            lo, hi = c * rows // n_chunks, (c + 1) * rows // n_chunks
            fixed = first_seen[c * users // n_chunks:(c + 1) * users // n_chunks]
            extra = (users * rng.random(hi - lo - len(fixed)) ** 2.0).astype(np.int64)
            u = np.concatenate([fixed, extra])
            rng.shuffle(u)
            i = (items * rng.random(hi - lo) ** 2.5).astype(np.int64)
            # chunks follow time but rows within a chunk do not: prepare's general (two-pass) sort is timed
            t = T0 + rng.integers(c * TIME_SPAN // n_chunks, (c + 1) * TIME_SPAN // n_chunks, hi - lo)
            table = pa.table({"item_id": _tokens("i", item_ids[i]), "user_id": _tokens("u", user_ids[u]),
                              "timestamp": pa.array(t)})
            pv.write_csv(table, raw, write_options=write)


def time_prepare(raw: Path, out: Path) -> dict:
    """Run `prepare` in a child process; return wall seconds, the child's peak RSS and the output counts."""
    code = ("import sys; from pathlib import Path; from pixelrec.data.prepare import prepare; "
            "prepare(Path(sys.argv[1]), Path(sys.argv[2]), images=False, progress=False)")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(raw), str(out)], check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    # ru_maxrss of children is the largest of any child so far; sizes run smallest first, so it is this one's
    meta = json.loads((out / "meta.json").read_text())
    return {"seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "load_before": round(load, 2),
            "peak_rss_gb": round(after.ru_maxrss / 2**20, 2),
            "n_users": meta["n_users"], "n_items": meta["n_items"], "n_interactions": meta["n_interactions"],
            "dropped": meta["dropped"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of Pixel200K only (smoke run)")
    parser.add_argument("--full", action="store_true", help="also the full PixelRec size (195.8M rows)")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/pixelrec-bench"))
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    names = ["quick"] if args.quick else ["pixel200k"] + (["full"] if args.full else [])
    args.scratch.mkdir(parents=True, exist_ok=True)
    results = {}
    try:
        for name in names:
            users, items, rows = SIZES[name]
            raw = args.scratch / f"{name}.csv"
            start = time.perf_counter()
            write_log_csv(raw, users, items, rows)
            generated = time.perf_counter() - start
            result = time_prepare(raw, args.scratch / f"{name}-prepared")
            results[name] = {"rows_in": rows, "csv_gb": round(raw.stat().st_size / 1e9, 2),
                             "generate_seconds": round(generated, 1), "prepare": result}
            print(json.dumps({name: results[name]}), file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(args.scratch, ignore_errors=True)
    print(json.dumps({"benchmark": "prepare_scale", "results": results}, indent=2))


if __name__ == "__main__":
    main()
