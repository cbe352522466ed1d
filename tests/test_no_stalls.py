"""A training step without host stalls: the deferred non-finite check, results from the stored best
validation, batched JPEG decoding, pinned non-blocking copies, channels_last for convolutional towers."""

from __future__ import annotations

import json
import shutil
import warnings

import lmdb
import numpy as np
import pytest
import torch

from data_fixtures import data_synth_raw  # noqa: F401  (fixture)
from helpers import tiny_config
from pixelrec.data.batch import Batch
from pixelrec.data.images import ImageStore, encode_image, shared_env
from pixelrec.data.prepare import prepare
from pixelrec.data.prepared import PreparedData
from pixelrec.errors import UserError
from pixelrec.items.pixels import convolutional, use_channels_last
from pixelrec.towers.image_tower import create_tower
from pixelrec.training import trainer as trainer_module
from pixelrec.training.trainer import Trainer, train


# --- the deferred non-finite check ----------------------------------------------------------
@pytest.mark.parametrize("bad_step", [6, 8])  # inside a look's window; in the epoch's short last window
def test_a_loss_turning_nan_stops_at_its_step_and_last_pt_keeps_the_good_epoch(tiny_data, tmp_path, monkeypatch,
                                                                               bad_step):
    monkeypatch.setattr(trainer_module, "LOSS_CHECK_EVERY", 3)  # 4 steps per epoch: windows of 3 and 1
    calls = {"n": 0}
    original = trainer_module.Recommender.forward

    def poisoned(self, batch):
        calls["n"] += 1
        result = original(self, batch)
        if calls["n"] >= bad_step:
            result["loss"] = result["loss"] * float("nan")
        return result

    good: dict[str, torch.Tensor] = {}

    def keep_epoch_one(row):
        if row["epoch"] == 1:
            good.update(torch.load(out / "last.pt", weights_only=True)["model"])

    out = tmp_path / "run"
    monkeypatch.setattr(trainer_module.Recommender, "forward", poisoned)
    with pytest.raises(UserError, match=rf"^loss became nan at epoch 2, step {bad_step}; stopped\. The last good "
                                        rf"checkpoint is .*last\.pt") as info:
        train(tiny_config(tiny_data, "sasrec", train={"epochs": 3}), out, on_epoch=keep_epoch_one)
    assert "\n" not in str(info.value) and calls["n"] > bad_step - 1
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["state"]["epoch"] == 1 and last["state"]["step"] == 4
    assert good and set(last["model"]) == set(good)
    for name, tensor in good.items():
        assert torch.equal(last["model"][name], tensor), name
    best = torch.load(out / "best.pt", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in best.values() if v.is_floating_point())


def test_the_epoch_loss_is_the_mean_of_every_step(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "LOSS_CHECK_EVERY", 3)
    seen: list[float] = []
    original = trainer_module.Recommender.forward

    def recorded(self, batch):
        result = original(self, batch)
        seen.append(float(result["loss"].detach()))
        return result

    monkeypatch.setattr(trainer_module.Recommender, "forward", recorded)
    trainer = Trainer(tiny_config(tiny_data, "sasrec"), tmp_path / "run")
    row = trainer.train_epoch(0)
    trainer.close()
    assert row["steps"] == len(seen) == 4
    assert row["loss"] == pytest.approx(sum(seen) / len(seen), rel=1e-6)


# --- finish: the stored validation, one pass over the test split ----------------------------
def _counting(monkeypatch) -> list[str]:
    splits: list[str] = []
    original = Trainer.evaluate

    def counted(self, split):
        splits.append(split)
        return original(self, split)

    monkeypatch.setattr(Trainer, "evaluate", counted)
    return splits


def test_finish_reuses_the_best_validation_and_evaluates_only_the_test_split(tiny_data, tmp_path, monkeypatch):
    splits = _counting(monkeypatch)
    out = tmp_path / "run"
    trainer = Trainer(tiny_config(tiny_data, "sasrec", train={"epochs": 3, "patience": 10}), out)
    results = trainer.fit()
    assert splits == ["valid", "valid", "valid", "test"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best = rows[results["best_epoch"] - 1]
    assert results["valid"] == best["valid"] == trainer.state.best_valid["valid"]
    assert json.loads((out / "results.json").read_text())["valid"] == json.loads(json.dumps(best["valid"]))
    # the stored metrics are those a new validation of the best checkpoint gives (the weights finish loaded)
    assert trainer.evaluate("valid")["valid"] == results["valid"]


def test_finish_without_a_best_checkpoint_validates_and_tests(tiny_data, tmp_path, monkeypatch):
    splits = _counting(monkeypatch)
    trainer = Trainer(tiny_config(tiny_data, "sasrec"), tmp_path / "run")
    results = trainer.finish()  # nothing trained, nothing validated: no best.pt
    assert splits == ["valid", "test"] and results["checkpoint"] == "last.pt"
    assert set(results["valid"]) == set(results["test"]) and "NDCG@10" in results["valid"]


# --- batched decoding -----------------------------------------------------------------------
def per_image(store_path, tokens: list[str], indices, size: int) -> torch.Tensor:
    """The reference: each index decoded alone (torchvision), resized alone, zeros for padding."""
    from torchvision.io import ImageReadMode, decode_jpeg

    flat = np.asarray(indices).reshape(-1)
    out = torch.zeros((len(flat), 3, size, size), dtype=torch.uint8)
    with shared_env(store_path).begin() as txn, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for row, index in enumerate(flat.tolist()):
            if index:
                data = txn.get(tokens[index].encode())
                image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
                if image.shape[-2:] != (size, size):
                    image = torch.nn.functional.interpolate(image[None].float(), size=(size, size), mode="bilinear",
                                                            antialias=True)[0].round().byte()
                out[row] = image
    return out.reshape(*np.asarray(indices).shape, 3, size, size)


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory, data_synth_raw):  # noqa: F811
    root = tmp_path_factory.mktemp("decode") / "prepared"
    prepare(data_synth_raw, root, image_size=32, workers=1, progress=False)
    return PreparedData(root)


INDEX_SETS = [
    None,  # every item and the padding index
    np.array([[0, 5, 5, 17], [30, 1, 0, 5]]),  # two dimensions, repeats, padding
    np.array([7, 7, 7]),
    np.array([0, 0]),
    np.zeros((0,), dtype=np.int64),
]


@pytest.mark.parametrize("indices", INDEX_SETS, ids=["all", "grid", "repeats", "padding", "empty"])
def test_batched_decoding_equals_the_per_image_path(synth_store, indices):
    store = ImageStore.from_prepared(synth_store)
    tokens = list(synth_store.item_tokens)
    indices = np.arange(0, synth_store.n_items + 1) if indices is None else indices
    batched = store.read(indices)
    assert batched.dtype == torch.uint8 and batched.shape == (*indices.shape, 3, 32, 32)
    assert torch.equal(batched, per_image(synth_store.image_store_path, tokens, indices, 32))
    assert torch.equal(store.read(torch.from_numpy(indices)), batched)
    if indices.size:  # one read per index gives the same pixels as one read of all
        singles = torch.stack([store.read([int(i)])[0] for i in indices.reshape(-1)])
        assert torch.equal(singles.reshape(batched.shape), batched)


def test_batched_decoding_resizes_entries_of_another_size(synth_store, tmp_path):
    copy = tmp_path / "images.lmdb"
    shutil.copytree(synth_store.image_store_path, copy)
    rng = np.random.default_rng(0)
    from PIL import Image

    odd = encode_image(Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)), 48)
    env = lmdb.open(str(copy), lock=False)
    with env.begin(write=True) as txn:
        txn.put(b"i3", odd)
    env.close()
    tokens = list(synth_store.item_tokens)
    indices = np.array([1, 3, 0, 3, 2])
    for size in (32, 24):  # the stored size (one entry differs), and a smaller size for every entry
        store = ImageStore(copy, tokens, size)
        assert torch.equal(store.read(indices), per_image(copy, tokens, indices, size))


def test_a_bad_entry_in_a_batch_is_named(synth_store, tmp_path):
    copy = tmp_path / "images.lmdb"
    shutil.copytree(synth_store.image_store_path, copy)
    tokens = list(synth_store.item_tokens)
    env = lmdb.open(str(copy), lock=False)
    with env.begin(write=True) as txn:
        txn.put(tokens[9].encode(), b"not a jpeg")
        txn.put(tokens[11].encode(), b"")
        txn.delete(tokens[12].encode())
    env.close()
    store = ImageStore(copy, tokens, 32)
    for bad, message in ((9, "does not decode"), (11, "does not decode"), (12, "no image for item")):
        with pytest.raises(UserError, match=rf"images.lmdb: .*{message}.*") as info:
            store.read(np.array([[1, bad], [bad, 0]]))
        assert tokens[bad] in str(info.value) and "\n" not in str(info.value)
    assert torch.equal(store.read([1, 2, 0]), per_image(copy, tokens, [1, 2, 0], 32))


def test_pil_decodes_when_torchvision_is_missing(synth_store, monkeypatch):
    indices = np.array([0, 4, 4, 30])
    expected = ImageStore.from_prepared(synth_store).read(indices)
    monkeypatch.setitem(__import__("sys").modules, "torchvision.io", None)  # `import torchvision.io` fails
    store = ImageStore.from_prepared(synth_store)
    pil = store.read(indices)
    assert pil.shape == expected.shape and torch.equal(pil[0], torch.zeros_like(pil[0]))
    assert (pil.int() - expected.int()).abs().max() <= 2  # the same libjpeg family, perhaps another IDCT


# --- pinned memory and copies ---------------------------------------------------------------
def test_batch_to_moves_every_tensor_and_keeps_the_rest():
    batch = Batch(users=torch.arange(3), context=torch.ones(3, 4, dtype=torch.long), targets=torch.arange(3),
                  item_inputs=(torch.zeros(2, 3), "text"), loss_scale=0.5)
    moved = batch.to("cpu")
    assert torch.equal(moved.context, batch.context) and moved.loss_scale == 0.5
    assert moved.item_inputs is batch.item_inputs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs a CUDA device")
def test_pinned_batches_reach_the_gpu_unchanged():
    batch = Batch(users=torch.arange(3), context=torch.ones(3, 4, dtype=torch.long), targets=torch.arange(3),
                  item_ids=torch.tensor([1, 2]), item_inputs=torch.randint(0, 255, (2, 3, 8, 8), dtype=torch.uint8))
    pinned = batch.pin_memory()
    assert pinned.users.is_pinned() and pinned.item_inputs.is_pinned() and pinned.negatives is None
    moved = pinned.to("cuda")
    torch.cuda.synchronize()
    assert torch.equal(moved.item_inputs.cpu(), batch.item_inputs) and moved.context.is_cuda


# --- channels_last --------------------------------------------------------------------------
def tiny_clip_resnet() -> dict:
    """timm_args for a CLIP ResNet (ByobNet, attention-pool head) at 1/8 width, one block per stage."""
    from timm.models.byobnet import ByoBlockCfg

    stages = [(256, 1), (512, 2), (1024, 2), (2048, 2)]
    return {"blocks": tuple(ByoBlockCfg(type="bottle", d=1, c=c, s=s, br=0.25) for c, s in stages),
            "width_factor": 0.125}


@pytest.mark.parametrize("name,timm_args,expected", [
    ("test_resnet", {}, True),
    ("test_convnext", {}, True),
    ("test_efficientnet", {}, True),
    ("clip-rn50", tiny_clip_resnet(), True),  # attention only in the pooling head
    ("test_vit", {}, False),  # one convolution: the patch embedding
    ("test_coatnet", {}, False),  # attention stages
])
def test_channels_last_is_for_convolutional_towers_on_a_gpu(name, timm_args, expected):
    tower = create_tower(name, image_size=64, timm_args=timm_args)
    assert convolutional(tower) is expected
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert use_channels_last(tower, gpu, None) is expected  # the default: on a GPU
    assert use_channels_last(tower, cpu, None) is False  # the CPU path is unchanged
    assert use_channels_last(tower, cpu, True) is expected and use_channels_last(tower, gpu, False) is False


def test_a_clip_resnet_in_channels_last_computes_the_same():
    torch.manual_seed(0)
    tower = create_tower("clip-rn50", image_size=64, timm_args=tiny_clip_resnet()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = tower.forward_head(tower.forward_features(x), pre_logits=True)
        tower.to(memory_format=torch.channels_last)
        nhwc = tower.forward_head(tower.forward_features(x.contiguous(memory_format=torch.channels_last)),
                                  pre_logits=True)
    torch.testing.assert_close(nhwc, plain, rtol=1e-4, atol=1e-5)
