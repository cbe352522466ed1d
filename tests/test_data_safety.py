"""Datasets, image stores and feature files are never lost or faked, and damage is one line: one writer
per file, safe replacement of a prepared dataset, damaged stores and arrays refused before they are
mapped, bad bytes and full disks diagnosed, every dropped user and item counted."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_fixtures import hand_raw, one_line, run_cli, tree_digest, write_interactions
from helpers import pixel_encoder
from pixelrec.data import images as image_store
from pixelrec.data import prepare as prepare_module
from pixelrec.data.images import ImageStore, encode_cover, verify_image_store
from pixelrec.data.prepare import prepare
from pixelrec.data.prepared import PreparedData
from pixelrec.errors import UserError
from pixelrec.items.pixels import PixelEncoder
from pixelrec.storage.feature_files import load_features, sidecar_path
from test_pixels import ColourStore

ROOT = Path(__file__).resolve().parents[1]
EXTRACT = ("--encoder", "test_vit", "--image-size", "32", "--batch-size", "8", "--workers", "0", "--dtype", "fp32",
           "--device", "cpu")


def python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    """Run `code` in a fresh interpreter with the test environment (a crash there does not end the suite)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)




def wait_for(path: Path, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the first writer never started"
        time.sleep(0.05)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """The hand-made example prepared with 32 px covers (a real LMDB store)."""
    root = tmp_path_factory.mktemp("safety")
    prepare(hand_raw(root / "raw"), root / "data", image_size=32, workers=1, progress=False)
    return root / "data"


@pytest.fixture
def copy(dataset, tmp_path) -> Path:
    """A private copy of the prepared dataset, free to damage."""
    return Path(shutil.copytree(dataset, tmp_path / "data"))


# --- one writer per feature file -----------------------------------------------------------
FIRST_WRITER = """
    import sys, time
    from pathlib import Path
    import pixelrec.storage.row_files as rows
    started, go = Path(sys.argv[1]), Path(sys.argv[2])
    fill = rows.fill_item_rows

    def held_open(*args, **kwargs):  # the first writer is mid-extraction until the test says go
        started.touch()
        while not go.exists():
            time.sleep(0.02)
        return fill(*args, **kwargs)

    rows.fill_item_rows = held_open
    from pixelrec.cli import main
    sys.exit(main(sys.argv[3:]))
"""


def test_a_second_extract_writer_is_refused_with_the_first_ones_pid(dataset, tmp_path, capsys):
    out = tmp_path / "f.npy"
    args = ["extract", "--data", str(dataset), *EXTRACT, "--out", str(out)]
    first = python(FIRST_WRITER, str(tmp_path / "started"), str(tmp_path / "go"), *args)
    try:
        wait_for(tmp_path / "started", first)
        for extra in ([], ["--overwrite"]):
            status, stdout, err = run_cli(capsys, *args, *extra)
            line = one_line(err)
            assert status == 2 and stdout == "", err
            assert f"feature file {out} is being written by process {first.pid}" in line
        (tmp_path / "go").touch()
        stdout, err = first.communicate(timeout=120)
    finally:
        (tmp_path / "go").touch()
        first.kill() if first.poll() is None else None
    assert first.returncode == 0 and f"wrote {out}" in stdout and "complete" in stdout, err
    sidecar = json.loads(sidecar_path(out).read_text())
    rows = load_features(out, 4, sidecar["item_order_sha256"])[1:]  # complete, finite, the dataset's order
    assert sidecar["complete"] and sidecar["rows_done"] == 4 and bool((rows.abs().sum(dim=1) > 0).all())
    assert leftovers(tmp_path) == []  # the lock file went with its holder


def test_extract_never_reports_a_file_it_did_not_write(dataset, tmp_path, capsys):
    out = tmp_path / "f.npy"
    args = ["extract", "--data", str(dataset), *EXTRACT, "--out", str(out)]
    assert run_cli(capsys, *args)[0] == 0
    whole = out.read_bytes()
    status, stdout, _ = run_cli(capsys, *args)
    assert status == 0 and "already extracted" in stdout and "wrote" not in stdout
    out.unlink()  # deleted to save disk; the sidecar still says complete
    status, stdout, err = run_cli(capsys, *args)
    assert status == 0 and stdout.startswith(f"wrote {out}") and "extracting again" in err
    assert out.read_bytes() == whole
    with open(out, "r+b") as handle:  # cut short: refused, not reported, not mapped
        handle.truncate(len(whole) - 100)
    status, stdout, err = run_cli(capsys, *args)
    assert status == 2 and stdout == "" and "f.npy: truncated" in one_line(err) and "--overwrite" in err
    with pytest.raises(UserError, match=r"f.npy: truncated \(\d[\d,]* of [\d,]+ bytes"):
        load_features(out, 4, json.loads(sidecar_path(out).read_text())["item_order_sha256"])


# --- prepare --out -------------------------------------------------------------------------
def test_prepare_refuses_a_folder_holding_more_than_a_dataset(tmp_path, capsys):
    raw = hand_raw(tmp_path / "raw")
    out = tmp_path / "data"
    assert run_cli(capsys, "prepare", "--raw", raw, "--out", out, "--no-images")[0] == 0
    assert run_cli(capsys, "prepare", "--raw", raw, "--out", out, "--no-images")[0] == 0  # a dataset alone: replaced
    (out / "notes.txt").write_text("mine")
    (out / "features").mkdir()
    before = tree_digest(out)
    status, _, err = run_cli(capsys, "prepare", "--raw", raw, "--out", out, "--no-images")
    line = one_line(err)
    assert status == 2 and "not part of the prepared dataset (features, notes.txt)" in line and "--overwrite" in line
    assert tree_digest(out) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    status, _, err = run_cli(capsys, "prepare", "--raw", raw, "--out", other, "--no-images")
    assert status == 2 and "not a prepared dataset (holds thesis.tex)" in one_line(err)
    status, stdout, _ = run_cli(capsys, "prepare", "--raw", raw, "--out", out, "--no-images", "--overwrite")
    assert status == 0 and sorted(os.listdir(out)) == ["item_seq.npy", "items.parquet", "meta.json",
                                                        "timestamps.npy", "user_ptr.npy", "users.parquet"]
    assert leftovers(tmp_path) == []


def test_pixelrecs_own_caches_in_a_dataset_are_never_foreign(tmp_path, capsys):
    raw = hand_raw(tmp_path / "raw")
    out = tmp_path / "data"
    assert run_cli(capsys, "prepare", "--raw", raw, "--out", out, "--no-images")[0] == 0
    for cache in ("prefix_cache", "text_tokens"):  # as training writes them (items.cache_dir's default)
        (out / cache).mkdir()
        (out / cache / "x.npy").write_bytes(b"")
    status, _, err = run_cli(capsys, "prepare", "--raw", raw, "--out", out, "--no-images")
    assert status == 0 and "not part of the prepared dataset" not in err
    assert "the caches of the dataset it replaces go with it (prefix_cache/, text_tokens/" in err
    assert "prefix_cache" not in os.listdir(out)  # the new dataset's caches are built again from it
    (out / "text_tokens").mkdir()
    assert run_cli(capsys, "verify", out)[0] == 0


def test_a_failed_second_rename_puts_the_old_dataset_back(tmp_path, monkeypatch):
    raw = hand_raw(tmp_path / "raw")
    out = tmp_path / "data"
    prepare(raw, out, images=False, progress=False)
    old = tree_digest(out)
    renames = []
    real = os.replace

    def second_fails(a, b):
        renames.append((a, b))
        if len(renames) == 2:
            raise OSError(5, "Input/output error")
        return real(a, b)

    monkeypatch.setattr(prepare_module, "_exchange", lambda a, b: False)
    monkeypatch.setattr(prepare_module.os, "replace", second_fails)
    with pytest.raises(UserError, match="cannot write the dataset data"):
        prepare(raw, out, images=False, kcore=2, progress=False)
    assert tree_digest(out) == old and leftovers(tmp_path) == []


KILLED_PREPARE = """
    import os, signal, sys
    import pixelrec.data.prepare as p
    step = sys.argv[1]
    real = os.replace
    if step == "between-renames":  # no atomic swap: killed after moving the old dataset away
        p._exchange = lambda a, b: False
        calls = []

        def replace(a, b):
            calls.append(a)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(a, b)

        p.os.replace = replace
    else:  # swapped in one step, killed before the old dataset is removed
        p._remove = lambda path: os.kill(os.getpid(), signal.SIGKILL)
    p.prepare(sys.argv[2], sys.argv[3], images=False, kcore=2, progress=False)
"""


@pytest.mark.parametrize("step", ["between-renames", "after-swap"])
def test_a_kill_during_replacement_loses_nothing_and_the_next_run_cleans_up(tmp_path, step, capsys):
    raw = hand_raw(tmp_path / "raw")
    out = tmp_path / "data"
    prepare(raw, out, images=False, progress=False)
    old = tree_digest(out)
    killed = python(KILLED_PREPARE, step, str(raw), str(out))
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert any(".data.tmp-" in n or ".data.old-" in n for n in leftovers(tmp_path))
    if step == "after-swap":
        assert PreparedData(out).n_users == 2 and tree_digest(out) != old  # the new one, whole
    status, _, err = run_cli(capsys, "prepare", "--raw", raw, "--out", out, "--no-images")
    assert status == 0 and "removed what interrupted runs left" in err
    assert ("put back" in err) == (step == "between-renames")
    assert leftovers(tmp_path) == [] and tree_digest(out) == old  # the same options as the first run


def test_a_second_prepare_into_the_same_folder_is_refused_with_the_pid(tmp_path, capsys):
    raw = hand_raw(tmp_path / "raw")
    out = tmp_path / "data"
    holder = python("""
        import sys, time
        from pixelrec.storage import locks
        with locks.hold(locks.lock_path(sys.argv[1]), "x"):
            print("held", flush=True)
            time.sleep(60)
    """, str(out))
    try:
        assert holder.stdout.readline().strip() == "held"
        status, _, err = run_cli(capsys, "prepare", "--raw", raw, "--out", out, "--no-images")
        assert status == 2 and f"dataset {out} is being written by process {holder.pid}" in one_line(err)
    finally:
        holder.kill()
        holder.communicate()
    assert not out.exists()
    assert run_cli(capsys, "prepare", "--raw", raw, "--out", out, "--no-images")[0] == 0  # a dead holder blocks nobody


# --- damaged stores and arrays -------------------------------------------------------------
def test_a_truncated_image_store_is_one_line_not_sigbus(copy, tmp_path):
    data_file = copy / "images.lmdb" / "data.mdb"
    with open(data_file, "r+b") as handle:
        handle.truncate(data_file.stat().st_size // 2)
    extract = python("import sys; from pixelrec.cli import main; sys.exit(main(sys.argv[1:]))",
                     "extract", "--data", str(copy), *EXTRACT, "--out", str(tmp_path / "f.npy"))
    _, err = extract.communicate(timeout=120)
    assert extract.returncode == 2, (extract.returncode, err)  # -7 would be SIGBUS
    line = one_line(err)
    assert "data.mdb: truncated (" in line and "pixelrec prepare" in line
    verify = python("""
        import sys
        from pixelrec.data.images import verify_image_store
        verify_image_store(sys.argv[1], 32)
    """, str(copy / "images.lmdb"))
    _, err = verify.communicate(timeout=120)
    assert verify.returncode == 1 and "UserError" in err and "data.mdb: truncated" in err


@pytest.mark.parametrize("damage,message", [
    ("empty", r"data.mdb: empty file"),
    ("garbage", r"data.mdb: not an LMDB image store \(no valid header\)"),
    ("no data.mdb", r"images.lmdb: no image store here"),
])
def test_empty_or_garbage_stores_are_refused_before_mapping(copy, damage, message):
    data_file = copy / "images.lmdb" / "data.mdb"
    if damage == "empty":
        data_file.write_bytes(b"")
    elif damage == "garbage":
        data_file.write_bytes(np.random.default_rng(0).bytes(data_file.stat().st_size))
    else:
        data_file.unlink()
    with pytest.raises(UserError, match=message) as info:
        ImageStore.from_prepared(PreparedData(copy))
    assert "\n" not in str(info.value)
    if damage != "no data.mdb":
        with pytest.raises(UserError, match=message):
            verify_image_store(copy / "images.lmdb", 32)


def test_a_store_without_an_item_or_with_an_undecodable_one(copy):
    import lmdb

    env = lmdb.open(str(copy / "images.lmdb"), subdir=True, lock=False)
    with env.begin(write=True) as txn:
        txn.delete(b"i2")
        txn.put(b"i3", b"not a jpeg")
    env.close()
    store = ImageStore.from_prepared(PreparedData(copy))
    with pytest.raises(UserError, match=r"images.lmdb: no image for item i2; .*pixelrec prepare"):
        store.read([2])
    with pytest.raises(UserError, match=r"the image of item i3 does not decode"):
        store.read([1, 3])


@pytest.mark.parametrize("damage,message", [
    ("truncated", r"item_seq.npy: truncated \([\d,]+ of [\d,]+ bytes for int32 \(7,\)\)"),
    ("header", r"item_seq.npy: not a readable .npy array \(damaged header"),
    ("pickle", r"item_seq.npy: holds Python objects \(pickles\), which are never loaded"),
    ("length", r"item_seq.npy: holds int32 \(6,\), meta.json implies \(7,\)"),
    ("longer", r"item_seq.npy: 8 bytes more than its header's int32 \(7,\)"),
    ("users", r"user_ptr.npy: holds int64 \(3,\), meta.json implies \(4,\)"),
])
def test_damaged_prepared_arrays_are_one_line(copy, damage, message, capsys):
    path = copy / ("user_ptr.npy" if damage == "users" else "item_seq.npy")
    whole = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(whole[:-6])
    elif damage == "header":
        path.write_bytes(b"\x93NUMPY\x01\x00\xff\xff{garbage" + whole[20:])
    elif damage == "pickle":
        np.save(path, np.array([{"x": 1}] * 7, dtype=object), allow_pickle=True)
    elif damage == "length":
        np.save(path, np.load(path)[:-1])
    elif damage == "longer":
        path.write_bytes(whole + bytes(8))
    else:
        np.save(path, np.load(path)[:-1])
    status, _, err = run_cli(capsys, "stats", str(copy))
    line = one_line(err)
    assert status == 2 and re.search(message, line), line
    assert line.endswith("prepare it again (`pixelrec prepare`)")


def test_damaged_tables_are_one_line(copy):
    (copy / "users.parquet").write_bytes(b"PAR1 but not really")
    with pytest.raises(UserError, match=r"users.parquet: not a readable table .*prepare it again") as info:
        PreparedData(copy).user_tokens
    assert "\n" not in str(info.value)


def prefix_encoder(cache: Path) -> PixelEncoder:
    torch.manual_seed(0)
    return pixel_encoder(n_items=20, embedding_size=16, image_store=ColourStore(), encoder="test_vit", image_size=32,
                         tune_last=1, cache="prefix", cache_dir=str(cache))


def test_a_damaged_prefix_cache_is_built_again(tmp_path, caplog):
    whole = prefix_encoder(tmp_path).build_cache(torch.device("cpu"), progress=False)
    good = whole.path.read_bytes()
    with open(whole.path, "r+b") as handle:
        handle.truncate(len(good) // 2)
    with pytest.raises(UserError, match=r"prefix-.*\.npy: truncated .*training builds the cache again"):
        type(whole)(whole.path, whole.sidecar).read(np.arange(1, 4))  # a reader never maps a short file
    again = prefix_encoder(tmp_path).build_cache(torch.device("cpu"), progress=False)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]  # a warning of the pixelrec logger
    assert any(": truncated (" in m and m.endswith("; building the prefix cache again") for m in warned), warned
    assert again.path == whole.path and again.path.read_bytes() == good


# --- damaged entries read in DataLoader workers --------------------------------------------
def damage_entry(root: Path, token: str) -> None:
    import lmdb

    env = lmdb.open(str(root / "images.lmdb"), subdir=True, lock=False)
    with env.begin(write=True) as txn:
        txn.put(token.encode(), b"not a jpeg")
    env.close()


DECODE_LINE = (r"pixelrec: error: \S+images\.lmdb: the image of item {} does not decode \(.*\); "
               r"the image store is damaged: prepare the dataset again \(`pixelrec prepare`\)")


def test_a_damaged_entry_read_in_a_training_worker_is_one_line(copy, tmp_path):
    damage_entry(copy, "i1")  # the training target of u2 (i2 -> i1)
    train = python("import sys; from pixelrec.cli import main; sys.exit(main(sys.argv[1:]))",
                   "train", "--data", str(copy), "--model", "sasrec", "--items", "pixels", "--encoder", "test_vit",
                   "--device", "cpu", "--epochs", "1", "--out", str(tmp_path / "run"), "--set", "items.image.image_size=32",
                   "--set", "items.image.tune_last=1", "--set", "train.num_workers=1", "--set", "train.progress=false",
                   "--set", "model.embedding_size=16")
    _, err = train.communicate(timeout=120)
    assert train.returncode == 2, err
    assert re.fullmatch(DECODE_LINE.format("i1"), one_line(err)), err


def test_damaged_entries_read_by_extract_and_catalogue_workers_are_one_line(copy, tmp_path, capsys):
    damage_entry(copy, "i3")
    status, _, err = run_cli(capsys, "extract", "--data", copy, "--encoder", "test_vit", "--image-size", "32",
                             "--batch-size", "8", "--workers", "1", "--device", "cpu", "--out", tmp_path / "f.npy")
    assert status == 2 and re.fullmatch(DECODE_LINE.format("i3"), one_line(err)), err
    torch.manual_seed(0)
    encoder = pixel_encoder(n_items=4, embedding_size=8, image_store=ImageStore.from_prepared(PreparedData(copy)),
                            encoder="test_vit", image_size=32, tune_last=1)
    with pytest.raises(UserError) as info:
        encoder.catalogue(batch_size=2, device=torch.device("cpu"), workers=1)
    assert re.fullmatch(DECODE_LINE.format("i3").removeprefix("pixelrec: error: "), str(info.value))


# --- raw files -----------------------------------------------------------------------------
@pytest.mark.parametrize("content,message", [
    (bytes(range(256)) * 8, r"item_info.csv: not a CSV text file \(binary content\); item info is optional"),
    (b"", r"item_info.csv: empty file \(expected a header line starting item_id\); item info is optional"),
    (b"item_id,title\n", r"item_info.csv: item info with a header but no rows"),
    (b"item_id,title\ni1,one\ni2,\xff\xfe\x00\x01\n", r"item_info.csv: line 3: not UTF-8 text \(b'i2,\\xff\\xfe"),
    (None, r"item_info.csv: cannot read \(Is a directory\); item info is optional"),
])
def test_a_bad_item_info_file_is_not_skipped_silently(tmp_path, capsys, content, message):
    raw = hand_raw(tmp_path / "raw", covers=False)
    info = raw / "item_info.csv"
    if content is None:
        info.unlink()
        info.mkdir()
    else:
        info.write_bytes(content)
    status, _, err = run_cli(capsys, "prepare", "--raw", raw, "--out", tmp_path / "out")
    assert status == 2 and re.search(message, one_line(err)), err
    assert not (tmp_path / "out").exists()


def test_random_bytes_after_a_header_are_shown_short_and_escaped(tmp_path, capsys):
    rng = np.random.default_rng(7)
    raw = tmp_path / "raw" / "interactions.csv"
    raw.parent.mkdir()
    good = "item_id,user_id,timestamp\ni1,u1,1\ni2,u1,2\n"
    for tail in (rng.bytes(4000), bytes(rng.integers(1, 256, 300, dtype=np.uint8))):
        raw.write_bytes(good.encode() + b"i3,u1,3\n" + tail)
        status, _, err = run_cli(capsys, "prepare", "--raw", raw, "--out", tmp_path / "out")
        line = one_line(err)
        assert status == 2 and "interactions.csv: line 5: not UTF-8 text (b'" in line, line
        assert line.isascii() and line.isprintable() and len(line) < 250, line
    raw.write_bytes(good.encode() + b"i3,u1," + b"x7" * 200 + b"\n")  # printable garbage: a short excerpt
    status, _, err = run_cli(capsys, "prepare", "--raw", raw, "--out", tmp_path / "out")
    line = one_line(err)
    assert status == 2 and "data row 3: timestamp 'x7x7" in line and "'..." in line and len(line) < 250, line


def test_a_16_bit_png_cover_keeps_its_grey(tmp_path):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "grey.png")
    assert Image.open(tmp_path / "grey.png").mode.startswith("I")
    encoded = encode_cover((str(tmp_path / "grey.png"), 32, 95))
    stored = np.asarray(Image.open(io.BytesIO(encoded)).convert("L"), dtype=np.float32)
    assert abs(stored.mean() - 127.5) < 3 and stored.min() < 10 and stored.max() > 245  # not solid white
    np.testing.assert_allclose(stored, ramp / 257.0, atol=6)


def test_unreadable_covers_folder_and_unwritable_out_are_one_line(tmp_path, capsys, monkeypatch):
    raw = hand_raw(tmp_path / "raw")
    (tmp_path / "file").write_text("")
    status, _, err = run_cli(capsys, "prepare", "--raw", raw, "--out", tmp_path / "file" / "data")
    assert status == 2 and "file: cannot create the folder for --out" in one_line(err)

    scandir = os.scandir

    def denied(path):
        if isinstance(path, (str, os.PathLike)) and Path(path).name == "covers":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(image_store.os, "scandir", denied)
    status, _, err = run_cli(capsys, "prepare", "--raw", raw, "--out", tmp_path / "data")
    assert status == 2 and "covers: cannot read the covers folder (Permission denied)" in one_line(err)
    assert not (tmp_path / "data").exists() and leftovers(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their permissions")
def test_a_folder_without_read_permission(tmp_path, capsys):
    raw = hand_raw(tmp_path / "raw")
    (raw / "covers").chmod(0)
    try:
        status, _, err = run_cli(capsys, "prepare", "--raw", raw, "--out", tmp_path / "data")
    finally:
        (raw / "covers").chmod(0o755)
    assert status == 2 and "covers: cannot read the covers folder" in one_line(err)


# --- a full disk ---------------------------------------------------------------------------
@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs: a real ENOSPC (needs root and a working `mount`)."""
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        pytest.skip("mounting a tiny tmpfs needs root and `mount`")
    point = tmp_path / "disk"
    point.mkdir()
    done = subprocess.run([mount, "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(point)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=False)


def fill(point: Path, leave: int) -> None:
    free = shutil.disk_usage(point).free
    (point / "filler").write_bytes(bytes(max(0, free - leave)))


def test_a_full_disk_is_one_line_and_leaves_nothing_that_looks_complete(tiny_disk, dataset, tmp_path, capsys):
    raw = hand_raw(tmp_path / "raw")
    for leave in (0, 8 << 10, 20 << 10):
        for name in os.listdir(tiny_disk):
            os.unlink(tiny_disk / name)
        fill(tiny_disk, leave)
        status, _, err = run_cli(capsys, "prepare", "--raw", raw, "--out", tiny_disk / "data", "--image-size", "64",
                                 "--workers", "1")
        if status == 0:
            continue  # it fitted
        line = one_line(err)
        assert status == 2 and "disk full while writing the dataset data" in line, line
        assert sorted(os.listdir(tiny_disk)) == ["filler"]
    (tiny_disk / "filler").unlink()
    fill(tiny_disk, 4 << 10)
    status, _, err = run_cli(capsys, "extract", "--data", dataset, *EXTRACT, "--out", tiny_disk / "f.npy")
    line = one_line(err)  # the sidecar, written first, or the array, reserved whole before any row
    assert status == 2 and ("not enough disk for f.npy: it needs" in line or "No space left" in line), line
    assert sorted(os.listdir(tiny_disk)) == ["filler"]


# --- counting what prepare drops -----------------------------------------------------------
def test_every_dropped_user_and_item_is_counted(tmp_path, capsys):
    rows = [("i1", "u1", 1), ("i2", "u1", 2), ("i3", "u1", 3),  # u1 keeps i1..i3
            ("i4", "u2", 1), ("i1", "u2", 2),  # u2 is short: i4 goes with it
            ("i5", "u3", 1), ("i5", "u3", 1), ("i2", "u3", 2), ("i3", "u3", 3)]  # a duplicate row
    raw = write_interactions(tmp_path / "raw" / "interactions.csv", rows).parent
    (raw / "item_info.csv").write_text("item_id,title\n" + "".join(f"i{k},t{k}\n" for k in (1, 2, 4, 6, 7)))
    status, stdout, _ = run_cli(capsys, "prepare", "--raw", raw, "--out", tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert status == 0
    assert (meta["n_users_read"], meta["n_items_read"], meta["n_users"], meta["n_items"]) == (3, 5, 2, 4)
    assert meta["dropped"] == {"duplicate_interactions": 1, "short_users": 1, "short_user_interactions": 2,
                               "short_user_items": 1}
    assert meta["item_info"] == {"rows": 5, "items_without_interactions": 2, "items_without_info": 2}
    assert "kept 2 of 3 users and 4 of 5 items" in stdout and "short user items 1" in stdout
    assert "2 items there without interactions left out" in stdout


@pytest.mark.parametrize("options", [dict(kcore=3), dict(sample_users=40, kcore=2), dict(cold_items=0.3),
                                     dict(kcore=3, cold_items=0.2, sample_users=60)])
def test_drop_counts_add_up_at_every_stage(tmp_path, options):
    rng = np.random.default_rng(1)
    rows = [(f"i{rng.zipf(1.6) % 150}", f"u{rng.integers(0, 160)}", int(rng.integers(0, 40))) for _ in range(1500)]
    raw = write_interactions(tmp_path / "raw" / "interactions.csv", rows)
    meta = prepare(raw, tmp_path / "out", images=False, progress=False, **options)
    dropped = meta["dropped"]
    users = sum(v for k, v in dropped.items() if k.endswith("_users"))
    items = sum(v for k, v in dropped.items() if k.endswith("_items"))
    interactions = sum(v for k, v in dropped.items() if k.endswith("_interactions"))
    assert meta["n_users_read"] - users == meta["n_users"]
    assert meta["n_items_read"] - items == meta["n_items"]
    assert meta["n_rows_read"] - interactions == meta["n_interactions"]
