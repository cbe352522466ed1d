"""Cheaper end-to-end training: the frozen-prefix cache (equivalence, identity, resume, errors), the
memory savers (same losses), and in-batch softmax as the pixel items' default loss."""

from __future__ import annotations

import json
import os
from collections import namedtuple

import numpy as np
import pytest
import torch

from helpers import losses_over_steps, no_dropout, pixel_encoder, tiny_config
from pixelrec import progress
from pixelrec.errors import UserError
from pixelrec.items.pixels import PixelEncoder
from pixelrec.storage.feature_files import sidecar_path
from pixelrec.towers import prefix_cache
from pixelrec.towers.image_tower import create_tower, freeze_below
from pixelrec.towers.prefix_cache import TowerSplit
from test_pixels import ColourStore, colour_store  # noqa: F401  (fixture)

CPU = torch.device("cpu")


def encoder(tmp_path, store=None, **kwargs) -> PixelEncoder:
    torch.manual_seed(0)
    args = dict(n_items=20, embedding_size=16, image_store=store or ColourStore(), encoder="test_vit", image_size=32,
                tune_last=1, cache="prefix", cache_dir=str(tmp_path / "cache"))
    return pixel_encoder(**(args | kwargs))


def pixel_config(data, tmp_path, name="test_vit", items=None, **train):
    image = {"encoder": name, "image_size": 32, "tune_last": 1, **(items or {})}
    items = {"kind": "pixels", "image": image} | ({"cache_dir": image.pop("cache_dir")} if "cache_dir" in image else {})
    return no_dropout(tiny_config(data, "sasrec", "softmax", items=items,
                                  train={"epochs": 1, "lr": 3e-3, "batch_size": 16, **train}))


# --- equivalence ---------------------------------------------------------------------------
#: the smallest towers of the paper's BEiT and CLIP-ResNet classes (timm's Beit, ByobNet) at 32 px
TINY_BEIT = {"depth": 3, "embed_dim": 32, "num_heads": 2}
TINY_CLIP_RN = {"width_factor": 0.125}


@pytest.mark.parametrize("name,items", [
    ("test_vit", {}),
    ("test_resnet", {}),
    ("beit-b", {"timm_args": TINY_BEIT}),
    ("clip-rn50", {"timm_args": TINY_CLIP_RN, "tune_last": 9}),  # the paper's cut: stages 3 and 4
    ("clip-rn50", {"timm_args": TINY_CLIP_RN, "tune_last": 9, "pooling": "head"}),  # attention pool + projection
], ids=["vit", "resnet", "beit", "clip-rn50", "clip-rn50-head"])
def test_cached_training_matches_plain_end_to_end(tiny_data, tmp_path, colour_store, name, items):
    plain = losses_over_steps(pixel_config(tiny_data, tmp_path, name, items), 4, tmp_path / "plain")
    cached_items = {**items, "cache": "prefix", "cache_dir": str(tmp_path / "c")}
    cached_config = pixel_config(tiny_data, tmp_path, name, cached_items)
    reads = colour_store.reads
    cached = losses_over_steps(cached_config, 4, tmp_path / "cached")
    assert colour_store.reads - reads == 1  # images read once, for the cache; training reads the cache
    np.testing.assert_allclose(cached, plain, rtol=2e-3, atol=2e-3)  # fp16 activations
    assert len(set(plain)) > 1  # the tower and head did train


def _train_top(tower: torch.nn.Module) -> None:
    """Train mode for modules holding a trainable parameter, eval mode for wholly frozen ones."""
    tower.train()
    for module in tower.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()


@pytest.mark.parametrize("name,timm_args,tune_last,cut", [
    ("beit-b", TINY_BEIT, 1, "blocks.2"),
    ("beit-b", {**TINY_BEIT, "use_shared_rel_pos_bias": True, "use_rel_pos_bias": False, "use_abs_pos_emb": True},
     2, "blocks.1"),
    ("clip-rn50", {**TINY_CLIP_RN, "zero_init_last": False}, 9, "stages.2.0"),  # residual branches not zero
    ("clip-rn50x4", {**TINY_CLIP_RN, "zero_init_last": False}, 6, "stages.3.0"),
    ("efficientnet-lite0", {}, 3, "blocks.5.2"),
], ids=["beit", "beit-shared-bias", "clip-rn50", "clip-rn50x4", "efficientnet-lite0"])
def test_split_suffix_is_plain_training_with_drop_path(name, timm_args, tune_last, cut):
    """Trainable top in train mode (drop-path, BatchNorm batch statistics): the same outputs and gradients
    from the prefix's output as from the images, under the same seed."""
    from pixelrec.towers.image_tower import pool

    torch.manual_seed(0)
    tower = create_tower(name, image_size=32, timm_args={**timm_args, "drop_path_rate": 0.5})
    for pname, p in tower.named_parameters():
        if pname.endswith("relative_position_bias_table"):  # zero at init: made to matter
            torch.nn.init.normal_(p.data)
    freeze_below(tower, tune_last)
    split = TowerSplit(tower, name)
    assert split.cut_name == cut
    _train_top(tower)
    x = torch.randn(8, 3, 32, 32)

    def step(features_of) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tower.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        out = pool(tower, features_of(x), "default")
        (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
        return out.detach(), {n: p.grad for n, p in tower.named_parameters() if p.requires_grad}

    plain, plain_grads = step(tower.forward_features)
    with torch.no_grad():
        cached_input = split.prefix(x)
    cached, cached_grads = step(lambda _: split.suffix(cached_input))
    torch.testing.assert_close(cached, plain)
    assert plain_grads.keys() == cached_grads.keys() and plain_grads
    for key in plain_grads:
        torch.testing.assert_close(cached_grads[key], plain_grads[key], msg=key)
    with torch.no_grad():
        torch.manual_seed(2)  # other drops: the top is stochastic, so equality above is not by chance
        assert not torch.allclose(pool(tower, split.suffix(cached_input), "default"), plain)
        tower.eval()
        torch.testing.assert_close(split.suffix(split.prefix(x)), tower.forward_features(x))


def test_swin_split_reproduces_forward_features():
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    tower = SwinTransformer(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1, 2), num_heads=(1, 2),
                            num_classes=0).eval()
    freeze_below(tower, 1)
    split = TowerSplit(tower, "tiny swin")
    assert split.cut_name == "layers.1.blocks.1"
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(split.suffix(split.prefix(x)), tower.forward_features(x))


def test_cut_follows_tune_last(tmp_path):
    assert encoder(tmp_path, tune_last=2).split.cut_name == "blocks.4"
    assert encoder(tmp_path, encoder="test_resnet", tune_last=1).split.cut_name == "layer4.0"
    assert encoder(tmp_path, tune_last=0).split.cut_name == "tail"  # all frozen: only the final norm runs
    beit = encoder(tmp_path, encoder="beit-b", tune_last=2, timm_args=TINY_BEIT)
    assert beit.split.cut_name == "blocks.1" and "cls_token" in beit.split.prefix_names
    rn = encoder(tmp_path, encoder="clip-rn50x16", tune_last=8, timm_args=TINY_CLIP_RN)  # the paper's last stage
    assert rn.split.cut_name == "stages.3.0" and not any(n.startswith("head.") for n in rn.split.prefix_names)


def test_unsupported_cuts_are_refused_in_one_line(tmp_path):
    with pytest.raises(UserError, match=r"test_convnext \(ConvNeXt\) has no supported cut point"):
        encoder(tmp_path, encoder="test_convnext")
    with pytest.raises(UserError, match="nothing of test_vit is frozen"):
        encoder(tmp_path, tune_last="all")


# --- identity ------------------------------------------------------------------------------
def test_a_changed_key_gives_a_new_cache_and_the_same_key_reuses_it(tmp_path):
    store = ColourStore()
    base = encoder(tmp_path, store).build_cache(CPU, progress=False)
    reads = store.reads
    again = encoder(tmp_path, store).build_cache(CPU, progress=False)
    assert again.path == base.path and store.reads == reads  # complete: not recomputed
    torch.save(create_tower("test_vit", image_size=32).state_dict(), tmp_path / "w.pt")
    others = [encoder(tmp_path, store, encoder_weights=str(tmp_path / "w.pt")),
              encoder(tmp_path, store, tune_last=2), encoder(tmp_path, store, image_size=48)]
    paths = {base.path}
    for other in others:
        cache = other.build_cache(CPU, progress=False)
        assert cache.path not in paths and cache.sidecar["complete"]
        paths.add(cache.path)
        ids = np.arange(1, 6)
        direct = other.split.prefix(other.preprocess(store.read(ids)))
        torch.testing.assert_close(cache.read(ids).float(), direct, rtol=2e-3, atol=2e-3)
    sidecar = json.loads(sidecar_path(cache.path).read_text())
    assert sidecar["image_size"] == 48 and sidecar["cut"] == "blocks.5"


# --- resume --------------------------------------------------------------------------------
class FailingStore(ColourStore):
    """Fails on read number `fail_at` (an interrupted build)."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at

    def read(self, indices):
        if self.reads + 1 == self.fail_at:
            self.reads += 1
            raise KeyboardInterrupt
        return super().read(indices)


def test_interrupted_build_resumes_to_the_same_bytes(tmp_path):
    whole = encoder(tmp_path / "a").build_cache(CPU, batch_size=4, progress=False)
    store = FailingStore(fail_at=3)
    enc = encoder(tmp_path / "b", store)
    with pytest.raises(KeyboardInterrupt):
        enc.build_cache(CPU, batch_size=4, progress=False)
    partial = json.loads(sidecar_path(tmp_path / "b" / "cache" / whole.path.name).read_text())
    assert partial["rows_done"] == 8 and not partial["complete"]
    store.fail_at = 0
    resumed = enc.build_cache(CPU, batch_size=4, progress=False)
    assert store.reads == 3 + 3  # two chunks before, the failed read, then only the three chunks left
    assert resumed.sidecar["complete"] and resumed.path.read_bytes() == whole.path.read_bytes()


# --- errors --------------------------------------------------------------------------------
def test_unwritable_cache_path_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"cannot write the prefix cache here .*set items.cache_dir") as info:
        encoder(tmp_path, cache_dir=str(tmp_path / "file" / "cache")).build_cache(CPU, progress=False)
    assert "\n" not in str(info.value)


def test_insufficient_disk_is_refused_before_writing(tmp_path, monkeypatch, capsys):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(prefix_cache.shutil, "disk_usage", lambda path: usage(100, 90, 10))
    with pytest.raises(UserError, match="not enough disk for the prefix cache: needs") as info, progress.console():
        encoder(tmp_path).build_cache(CPU, progress=False)
    assert "\n" not in str(info.value)
    assert not list((tmp_path / "cache").glob("*.npy"))
    assert "prefix cache: 20 items x (5, 64) fp16" in capsys.readouterr().err  # an info line, on the CLI's console


# --- memory savers -------------------------------------------------------------------------
@pytest.mark.parametrize("name,switch,items", [
    ("test_vit", "grad_checkpointing", {}),
    ("test_vit", "grad_checkpointing", {"cache": "prefix"}),
    ("test_resnet", "channels_last", {}),
])
def test_memory_savers_change_nothing_but_speed(tiny_data, tmp_path, colour_store, name, switch, items):
    if items:
        items = {**items, "cache_dir": str(tmp_path / "c")}
    base = losses_over_steps(pixel_config(tiny_data, tmp_path, name, items), 3, tmp_path / "base")
    saved = losses_over_steps(pixel_config(tiny_data, tmp_path, name, items, **{switch: True}), 3, tmp_path / "saved")
    np.testing.assert_allclose(saved, base, rtol=1e-4, atol=1e-5)


def test_grad_checkpointing_and_channels_last_are_switched_on(tiny_data, tmp_path, colour_store):
    from pixelrec.training.trainer import Trainer

    vit = Trainer(pixel_config(tiny_data, tmp_path, grad_checkpointing=True), tmp_path / "a").model.item_encoder
    assert vit.tower.grad_checkpointing
    cnn = Trainer(pixel_config(tiny_data, tmp_path, "test_resnet", channels_last=True), tmp_path / "b").model.item_encoder
    assert cnn.channels_last and cnn.tower.layer4[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(not os.environ.get("PIXELREC_TEST_COMPILE"),
                    reason="torch.compile on a 2-core CPU takes minutes; set PIXELREC_TEST_COMPILE=1")
def test_compile_changes_nothing_but_speed(tiny_data, tmp_path, colour_store):
    base = losses_over_steps(pixel_config(tiny_data, tmp_path), 2, tmp_path / "base")
    try:
        compiled = losses_over_steps(pixel_config(tiny_data, tmp_path, compile=True), 2, tmp_path / "compiled")
    except Exception as err:  # noqa: BLE001 - no C++ toolchain or inductor on this CPU
        pytest.skip(f"torch.compile unavailable here: {type(err).__name__}: {str(err)[:80]}")
    np.testing.assert_allclose(compiled, base, rtol=1e-3, atol=1e-4)


# --- defaults ------------------------------------------------------------------------------
def test_pixels_default_to_in_batch_softmax_and_bpr_stays_available():
    from pixelrec.config import resolve

    items = {"items": {"kind": "pixels", "image": {"encoder": "clip-vit-b32"}}}
    assert resolve("sasrec", flags=items).loss.name == "softmax"
    assert resolve("sasrec", flags={**items, "loss": {"name": "bpr"}}).loss.name == "bpr"
    assert resolve("sasrec").loss.name == "bpr"  # IDs keep the paper's setting
