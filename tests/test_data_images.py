"""Image store: round trip against the resized original, padding, workers after fork, verification."""

from __future__ import annotations

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

from data_fixtures import data_synth_raw, hand_raw, tree_digest, write_covers  # noqa: F401
from pixelrec.data import images
from pixelrec.data.images import ImageStore, build_image_store, verify_image_store
from pixelrec.data.prepare import prepare
from pixelrec.data.prepared import PreparedData


@pytest.fixture
def hand_store(tmp_path):
    raw = hand_raw(tmp_path / "raw")
    write_covers(raw / "covers", ["i3", "i4"], sizes={"i3": (90, 20), "i4": (12, 12)})  # wide; tiny
    Image.open(raw / "covers" / "i1.jpg").convert("L").save(raw / "covers" / "i1.jpg")  # greyscale source
    prepare(raw, tmp_path / "out", image_size=32, workers=1, progress=False)
    return raw, PreparedData(tmp_path / "out")


def test_round_trip_matches_the_resized_original(hand_store):
    raw, data = hand_store
    store = ImageStore.from_prepared(data)
    batch = store.read(np.array([1, 2, 3, 4]))
    assert batch.dtype == torch.uint8 and batch.shape == (4, 3, 32, 32)
    for k, token in enumerate(["i1", "i2", "i3", "i4"]):
        original = Image.open(raw / "covers" / f"{token}.jpg").convert("RGB")
        expected = torch.from_numpy(np.array(original.resize((32, 32), Image.Resampling.BICUBIC))).permute(2, 0, 1)
        error = (batch[k].float() - expected.float()).abs().mean().item()
        assert error < 4.0, (token, error)  # JPEG at quality 90 on smooth images
    assert torch.equal(batch[0][0], batch[0][1])  # greyscale became RGB with equal channels


def test_read_keeps_index_shape_and_pads_with_zeros(hand_store):
    _, data = hand_store
    store = ImageStore.from_prepared(data)
    grid = store.read(torch.tensor([[0, 2], [2, 0]]))
    assert grid.shape == (2, 2, 3, 32, 32)
    assert grid[0, 0].sum() == 0 and torch.equal(grid[0, 1], grid[1, 0])
    with pytest.raises(IndexError):
        store.read([5])


class _Covers(torch.utils.data.Dataset):
    def __init__(self, store):
        self.store = store

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.store.read(np.array([i + 1]))[0]


def test_store_works_in_dataloader_workers_after_fork(hand_store):
    _, data = hand_store
    store = ImageStore.from_prepared(data)
    expected = store.read(np.arange(1, 5))  # the parent opened the environment before the fork
    loader = torch.utils.data.DataLoader(_Covers(store), batch_size=2, num_workers=2,
                                         multiprocessing_context="fork")
    assert torch.equal(torch.cat(list(loader)), expected)


def test_parallel_encoding_gives_the_same_store(tmp_path, data_synth_raw, monkeypatch):
    tokens = sorted(p.stem for p in (data_synth_raw / "covers").iterdir())
    build_image_store(tmp_path / "one.lmdb", tokens, data_synth_raw / "covers", size=24, workers=1, progress=False)
    monkeypatch.setattr(images, "MIN_POOL_TASKS", 1)
    build_image_store(tmp_path / "two.lmdb", tokens, data_synth_raw / "covers", size=24, workers=2, progress=False)
    assert tree_digest(tmp_path / "one.lmdb") == tree_digest(tmp_path / "two.lmdb")
    assert verify_image_store(tmp_path / "two.lmdb", 24, workers=2) == []


def test_verify_finds_a_damaged_entry(hand_store):
    _, data = hand_store
    with lmdb.open(str(data.image_store_path), lock=False) as env, env.begin(write=True) as txn:
        txn.put(b"i3", txn.get(b"i3")[:40])
    assert verify_image_store(data.image_store_path, 32) == ["i3"]


def test_placeholders_are_grey_and_recorded(tmp_path):
    raw = hand_raw(tmp_path / "raw")
    (raw / "covers" / "i4.jpg").unlink()
    meta = prepare(raw, tmp_path / "out", image_size=16, missing_images="placeholder", progress=False)
    assert meta["image_store"]["placeholders"] == ["i4"]
    grey = ImageStore.from_prepared(PreparedData(tmp_path / "out")).read([4])[0].float()
    assert (grey - 128).abs().max() <= 2
