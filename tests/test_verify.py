"""`pixelrec verify DATA`: one "ok" line with counts for a sound dataset, one line per problem otherwise
(meta.json against the arrays and tables, the split's needs, the image store, caches and feature files
beside the dataset)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import lmdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data_fixtures import HAND_ROWS, hand_raw, run_cli, write_interactions
from helpers import pixel_encoder
from pixelrec.data.images import ImageStore
from pixelrec.data.prepare import prepare
from pixelrec.data.prepared import PreparedData
from pixelrec.runs.directory import dataset_fingerprint

EXTRACT = ("--encoder", "test_vit", "--image-size", "32", "--batch-size", "8", "--workers", "0", "--dtype", "fp32",
           "--device", "cpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """The hand-made example (2 users, 4 items, 7 interactions) prepared with 32 px covers."""
    root = tmp_path_factory.mktemp("verify")
    prepare(hand_raw(root / "raw"), root / "data", image_size=32, workers=1, progress=False)
    return root / "data"


@pytest.fixture
def copy(dataset, tmp_path) -> Path:
    return Path(shutil.copytree(dataset, tmp_path / "data"))


def verify(capsys, data: Path, *extra) -> tuple[int, str, list[str]]:
    """(status, stdout, stderr lines) of `pixelrec verify`."""
    status, out, err = run_cli(capsys, "verify", data, "--workers", "1", *extra)
    assert "Traceback" not in err
    return status, out, [line for line in err.splitlines() if line]


def test_a_sound_dataset_is_one_ok_line_with_its_counts_and_fingerprint(copy, capsys):
    status, out, err = verify(capsys, copy)
    assert status == 0 and err == []
    [line] = out.splitlines()
    fingerprint = dataset_fingerprint(PreparedData(copy))[:12]
    assert line == (f"ok: {copy}: 2 users, 4 items, 7 interactions; 4 images decoded at 32 px (0 placeholders); "
                    f"0 text-token arrays, 0 prefix caches, 0 feature files intact; fingerprint {fingerprint}")


def test_every_bad_store_entry_is_named_one_line_per_problem(copy, capsys):
    env = lmdb.open(str(copy / "images.lmdb"), subdir=True, lock=False)
    with env.begin(write=True) as txn:
        txn.delete(b"i2")
        txn.put(b"i3", b"not a jpeg")
        txn.put(b"i9", b"an item of no dataset")
    env.close()
    status, out, err = verify(capsys, copy)
    assert status == 2 and out == ""
    assert len(err) == 3, err
    assert err[0].endswith("images.lmdb: 1 of 4 items have no image: i2; the image store is damaged: "
                           "prepare the dataset again (`pixelrec prepare`)")
    assert "images.lmdb: entries for 1 items not in the dataset: i9;" in err[1]
    assert "images.lmdb: 1 of 3 stored images do not decode as 32x32 RGB: i3;" in err[2]
    assert all(line.startswith("pixelrec: error: ") for line in err)


def test_an_image_of_another_size_is_named(copy, capsys):
    import io

    from PIL import Image

    small = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(small, format="JPEG")
    env = lmdb.open(str(copy / "images.lmdb"), subdir=True, lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"i4", small.getvalue())
    env.close()
    status, _, err = verify(capsys, copy)
    assert status == 2 and len(err) == 1 and "do not decode as 32x32 RGB: i4;" in err[0]


def test_a_truncated_store_is_one_line(copy, capsys):
    data_file = copy / "images.lmdb" / "data.mdb"
    with open(data_file, "r+b") as handle:
        handle.truncate(data_file.stat().st_size // 2)
    status, _, err = verify(capsys, copy)
    assert status == 2 and len(err) == 1 and "data.mdb: truncated (" in err[0]


def _meta(root: Path, **changes) -> None:
    meta = json.loads((root / "meta.json").read_text())
    meta.update(changes)
    (root / "meta.json").write_text(json.dumps(meta))


def _array(root: Path, name: str, change) -> None:
    array = np.load(root / name)
    change(array)
    np.save(root / name, array)


def _items_table(root: Path, ids: list[str]) -> None:
    table = pq.read_table(root / "items.parquet")
    pq.write_table(table.set_column(0, "item_id", pa.array(ids)), root / "items.parquet")


@pytest.mark.parametrize("damage,message", [
    (lambda r: _meta(r, n_interactions=8), r"user_ptr.npy: ends at 7, meta.json has 8 interactions"),
    (lambda r: _meta(r, n_rows_read=11), r"meta.json: n_rows_read 11 less 3 dropped interactions is not the 7 "),
    (lambda r: _meta(r, split="random"), r"meta.json: split 'random', expected 'leave-one-out'"),
    (lambda r: _array(r, "item_seq.npy", lambda a: a.__setitem__(4, 9)),
     r"item_seq.npy: interaction 4 has item index 9, outside 1..4"),
    (lambda r: _array(r, "item_seq.npy", lambda a: a.__setitem__(5, 1)),
     r"item_seq.npy: item index 4 has no interaction \(1 items have none\)"),
    (lambda r: _array(r, "timestamps.npy", lambda a: a.__setitem__(5, 1)),
     r"timestamps.npy: interaction 5 of user index 2 is earlier than the one before it"),
    (lambda r: _array(r, "user_ptr.npy", lambda a: a.__setitem__(2, 2)),
     r"user_ptr.npy: user index 1 has 2 interactions \(1 users have fewer than 3"),
    (lambda r: _items_table(r, ["i1", "i2", "i1", "i4"]), r"items.parquet: 1 ids appear more than once, e.g. i1"),
    (lambda r: _items_table(r, ["i1", "", "i3", "i4"]), r"items.parquet: row 2 has an empty id"),
    (lambda r: (r / "users.parquet").write_bytes(b"PAR1 not really"), r"users.parquet: not a readable table"),
])
def test_inconsistent_tables_are_named(copy, capsys, damage, message):
    damage(copy)
    status, _, err = verify(capsys, copy)
    assert status == 2 and err, err
    assert re.search(message, err[0]), err
    assert err[0].endswith("prepare it again (`pixelrec prepare`)"), err


def test_a_missing_dataset_is_one_line(tmp_path, capsys):
    status, _, err = verify(capsys, tmp_path / "nowhere")
    assert status == 2 and err == [f"pixelrec: error: {tmp_path / 'nowhere'}: not a prepared dataset (no meta.json); "
                                   "run `pixelrec prepare` first"]


def test_feature_files_are_checked_against_the_item_order(dataset, copy, tmp_path, capsys):
    features = tmp_path / "f.npy"
    assert run_cli(capsys, "extract", "--data", copy, *EXTRACT, "--out", features)[0] == 0
    status, out, err = verify(capsys, copy, "--features", features)
    assert status == 0 and "1 feature files intact" in out
    other = tmp_path / "other"
    swapped = [({"i1": "i2", "i2": "i1"}.get(item, item), user, t) for item, user, t in HAND_ROWS]
    rows = write_interactions(tmp_path / "raw2" / "Tiny.csv", swapped)  # the same items, in another order
    prepare(rows, other, workers=1, progress=False)
    status, _, err = verify(capsys, other, "--features", features)
    assert status == 2 and len(err) == 1 and "f.npy: item order differs from the dataset's" in err[0]
    with open(features, "r+b") as handle:
        handle.truncate(features.stat().st_size - 8)
    status, _, err = verify(capsys, copy, "--features", features)
    assert status == 2 and len(err) == 1 and re.search(r"f.npy: truncated .*pixelrec extract --overwrite", err[0])


def test_a_prefix_cache_beside_the_dataset_is_checked_for_its_sidecar(copy, capsys):
    torch.manual_seed(0)
    encoder = pixel_encoder(n_items=4, embedding_size=8, image_store=ImageStore.from_prepared(PreparedData(copy)),
                            encoder="test_vit", image_size=32, tune_last=1, cache="prefix")
    cache = encoder.build_cache(torch.device("cpu"), progress=False).path
    capsys.readouterr()
    assert cache.parent == copy / "prefix_cache"
    status, out, _ = verify(capsys, copy)
    assert status == 0 and "0 text-token arrays, 1 prefix caches, 0 feature files intact" in out
    sidecar = cache.with_suffix(".json")
    whole = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**whole, "rows_done": 2, "complete": False}))  # an interrupted build
    status, out, _ = verify(capsys, copy)
    assert status == 0 and "0 prefix caches (+1 being built), 0 feature files intact" in out
    with open(cache, "r+b") as handle:
        handle.truncate(cache.stat().st_size // 2)
    status, _, err = verify(capsys, copy)
    assert status == 2 and len(err) == 1
    assert re.search(r"prefix-.*\.npy: truncated \(.*remove it, or let the next training run build it again$", err[0])


def test_text_token_arrays_beside_the_dataset_are_checked_for_their_sidecar(copy, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    from pixelrec.data.text_tokens import ItemTexts

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "title", ",", "with", "comma", "1", "2", "3"]))
    tokenizer = transformers.BertTokenizerFast(vocab=str(vocab))
    tokens = ItemTexts.from_prepared(PreparedData(copy)).tokens(tokenizer, ["title"], 6)
    assert tokens.path.parent == copy / "text_tokens"
    status, out, _ = verify(capsys, copy)
    assert status == 0 and "1 text-token arrays" in out
    np.save(tokens.path, np.zeros((4, 5), dtype=np.int32))  # another width than its sidecar's max_tokens
    status, _, err = verify(capsys, copy)
    assert status == 2 and len(err) == 1
    assert re.search(r"tokens-.*\.npy: holds int32 \(4, 5\), its sidecar says int32 \(4, 6\); remove it", err[0])
