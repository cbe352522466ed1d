"""The pixel item encoder: timm adapter, freezing by layer group, weights files, pooling, and
end-to-end training through the same composition point as IDs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import pixel_encoder
from pixelrec.errors import UserError
from pixelrec.items.pixels import PixelEncoder
from pixelrec.towers.image_tower import create_tower, freeze_below
from pixelrec.towers.names import SHORT_NAMES, timm_name


class ColourStore:
    """Stand-in image store: item i is a flat colour picked from its index (deterministic)."""

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self.reads = 0

    def read(self, indices: np.ndarray) -> torch.Tensor:
        self.reads += 1
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        colours = torch.stack([(idx * 37) % 256, (idx * 91) % 256, (idx * 13) % 256], dim=1).to(torch.uint8)
        return colours[:, :, None, None].expand(-1, -1, self.size, self.size).contiguous()


def encoder(**kwargs) -> PixelEncoder:
    args = dict(n_items=20, embedding_size=16, image_store=ColourStore(), encoder="test_vit", image_size=32, tune_last=1)
    return pixel_encoder(**(args | kwargs))


def test_short_names_resolve_to_timm_models():
    import timm

    assert all(timm.is_model(timm_name(short)) for short in SHORT_NAMES)
    with pytest.raises(UserError, match="did you mean 'clip-vit-b32'"):
        timm_name("clip-vit-b23")


@pytest.mark.parametrize("name,last_block", [("test_vit", "blocks.5."), ("test_resnet", "layer4."), ("test_convnext", "stages.3.blocks.1.")])
def test_tune_last_trains_only_the_top_groups(name, last_block):
    tower = create_tower(name)
    freeze_below(tower, 1)
    trainable = [n for n, p in tower.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(last_block) or n.startswith(("norm", "head")) for n in trainable)
    freeze_below(tower, 0)
    assert not any(p.requires_grad for p in tower.parameters())


def test_frozen_batchnorm_statistics_do_not_move():
    enc = encoder(encoder="test_resnet", tune_last=1).train()
    frozen_bn = enc.tower.bn1
    before = frozen_bn.running_mean.clone()
    enc(torch.arange(1, 9))
    assert not frozen_bn.training
    assert torch.equal(frozen_bn.running_mean, before)
    assert enc.tower.layer4[0].bn1.training  # the trainable stage still trains


def test_trainable_blocks_train_and_frozen_blocks_infer_when_the_tower_holds_frozen_tokens():
    # a ViT holds its class token and position embedding itself: the tower as a whole is not frozen,
    # so its trainable blocks must keep drop-path in training mode while the frozen blocks infer
    enc = encoder(encoder="test_vit", tune_last=1, timm_args={"drop_path_rate": 0.5}).train()
    blocks = enc.tower.blocks
    assert enc.tower.training and blocks[-1].training and blocks[-1].drop_path1.training
    assert not any(module.training for block in blocks[:-1] for module in block.modules())
    ids = torch.arange(1, 9)
    torch.manual_seed(0)
    first = enc(ids)
    torch.manual_seed(1)
    assert not torch.allclose(first, enc(ids))  # drop-path in the trainable block draws per call
    enc.eval()
    assert torch.equal(enc(ids), enc(ids))


def test_local_weights_are_loaded_and_mismatches_are_named(tmp_path):
    source = create_tower("test_vit", image_size=32)
    torch.save(source.state_dict(), tmp_path / "vit.pt")
    enc = encoder(encoder_weights=str(tmp_path / "vit.pt"))
    assert torch.equal(enc.tower.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    torch.save(create_tower("test_resnet").state_dict(), tmp_path / "resnet.pt")
    with pytest.raises(UserError, match="resnet.pt: does not fit test_vit: Missing key"):
        encoder(encoder_weights=str(tmp_path / "resnet.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pt: unreadable weights file"):
        encoder(encoder_weights=str(tmp_path / "junk.pt"))


@pytest.mark.parametrize("name,pooling", [("test_vit", "cls"), ("test_vit", "mean"), ("test_vit", "default"),
                                          ("test_resnet", "mean"), ("test_resnet", "default")])
def test_poolings_give_one_vector_per_item(name, pooling):
    out = encoder(encoder=name, pooling=pooling)(torch.tensor([3, 5, 7]))
    assert out.shape == (3, 16) and torch.isfinite(out).all()


def test_cls_pooling_needs_a_class_token():
    with pytest.raises(UserError, match="cls"):
        encoder(encoder="test_resnet", pooling="cls")


def test_paper_preprocessing_uses_half_mean_and_std():
    enc = encoder(preprocess="paper", image_size=None)
    assert enc.preprocess.size == 224
    white = torch.full((1, 3, 8, 8), 255, dtype=torch.uint8)
    assert torch.allclose(enc.preprocess(white), torch.ones(1, 3, 224, 224))


def test_encoder_learning_rate_applies_to_the_tower_only():
    enc = encoder()
    tower_params = {id(p) for p in enc.tower.parameters()}
    assert {id(p) for p in enc.encoder_parameters()} <= tower_params
    assert enc.encoder_parameters()


@pytest.fixture
def colour_store(monkeypatch):
    from pixelrec.factory import DatasetFacts

    store = ColourStore(size=32)
    monkeypatch.setattr(DatasetFacts, "image_store", property(lambda self: store))
    return store


def pixel_config(data, model="sasrec", loss="softmax", **train):
    from helpers import tiny_config

    return tiny_config(data, model, loss, items={"kind": "pixels", "image": {"encoder": "test_vit", "image_size": 32, "tune_last": 1}},
                       train={"epochs": 1, "lr": 3e-3, **train})


def test_pixel_sasrec_trains_and_encodes_each_distinct_item_once(tiny_data, tmp_path, colour_store):
    from helpers import losses_over_steps, mean
    from pixelrec.training.trainer import Trainer

    losses = losses_over_steps(pixel_config(tiny_data), 30, tmp_path / "run")
    assert mean(losses[-6:]) < 0.9 * mean(losses[:6])

    trainer = Trainer(pixel_config(tiny_data), tmp_path / "run2")
    batch = next(iter(trainer.batches(0)))
    encoded = []
    tower_forward = trainer.model.item_encoder.tower.forward_features
    trainer.model.item_encoder.tower.forward_features = lambda x: encoded.append(x.shape[0]) or tower_forward(x)
    trainer.model(batch)
    items = torch.cat([batch.context.flatten(), batch.targets.flatten()])
    assert encoded == [len(torch.unique(items[items > 0]))]


def test_pixel_run_records_images_per_step(tiny_data, tmp_path, colour_store):
    from pixelrec.training.trainer import Trainer

    trainer = Trainer(pixel_config(tiny_data, max_steps=2), tmp_path / "run")
    results = trainer.fit()
    assert results["steps"] == 2 and results["images_per_step"] > 0
    everything = sum(p.numel() for p in trainer.model.parameters())
    assert 0 < results["trainable_parameters"] < everything  # the tower below the top block is frozen


@pytest.mark.parametrize("model,loss,message", [("sasrec", "full-softmax", "full-softmax needs every item"),
                                                ("lightgcn", "bpr", "propagates over the whole catalogue")])
def test_combinations_that_cannot_work_are_refused_at_config_time(tiny_data, model, loss, message):
    from pixelrec.models import BACKBONES

    if model not in BACKBONES.names():
        pytest.skip(f"{model} not registered")
    with pytest.raises(UserError, match=message):
        pixel_config(tiny_data, model, loss)


def _pixel_backbones() -> list[str]:
    from pixelrec.models import BACKBONES

    return [n for n in BACKBONES.names() if BACKBONES.get(n).trainable
            and not BACKBONES.get(n).needs_catalogue and not getattr(BACKBONES.get(n), "item_kinds", ())]


@pytest.mark.parametrize("model", _pixel_backbones())
def test_every_backbone_trains_on_pixels(model, tiny_data, tmp_path, colour_store):
    from helpers import losses_over_steps

    losses = losses_over_steps(pixel_config(tiny_data, model, "bpr"), 3, tmp_path / "run")
    assert len(losses) == 3 and all(np.isfinite(losses))
