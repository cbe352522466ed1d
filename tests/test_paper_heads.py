"""The paper's item head for pixel encoders, option by option: each equals a computation written out
here by hand on a tiny random timm tower (the original's layers.py / load.py behaviour)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixelrec.config import Config, TrainConfig, build_config
from pixelrec.errors import UserError
from pixelrec.items.pixels import ImageSettings, PixelEncoder


def encoder(**kwargs) -> PixelEncoder:
    """A PixelEncoder of a tiny tower; `kwargs` are its items.image settings and constructor arguments."""
    args = {k: kwargs.pop(k) for k in ("n_items", "embedding_size", "image_store") if k in kwargs}
    image = ImageSettings(**(dict(encoder="test_vit", image_size=32, tune_last=1) | kwargs))
    return PixelEncoder(**(dict(n_items=20, embedding_size=16, image_store=None) | args), image=image)


def images(n: int = 3, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def tiny_clip_resnet() -> dict:
    """timm's CLIP ResNet (attention-pool head) at 1/8 width, one bottleneck per stage, 16-d output projection."""
    from timm.models.byobnet import ByoBlockCfg

    stages = [(256, 1), (512, 2), (1024, 2), (2048, 2)]
    blocks = tuple(ByoBlockCfg(type="bottle", d=1, c=c, s=s, br=0.25) for c, s in stages)
    return {"blocks": blocks, "width_factor": 0.125, "num_classes": 16}


def linear_then_relu(projection: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    linear = projection[0]
    return torch.relu(x @ linear.weight.T + linear.bias)


def test_the_head_options_are_items_image_keys_checked_against_the_image_settings():
    image = {"timm_args": {"act_layer": "quick_gelu"}, "frozen_mode": "train", "projection_group": "encoder",
             "projection_init": "xavier"}
    config = build_config({"model": {"name": "sasrec"}, "items": {"kind": "pixels", "image": image}})
    assert isinstance(config.items.image, ImageSettings)
    assert dataclasses.asdict(config.items.image) == dataclasses.asdict(ImageSettings()) | image
    with pytest.raises(UserError, match=r"items\.image\.frozen_mode: 'frozen' is not one of"):
        build_config({"model": {"name": "sasrec"}, "items": {"kind": "pixels", "image": {"frozen_mode": "frozen"}}})


def test_default_head_is_unchanged_a_bare_linear():
    enc = encoder()
    assert len(enc.projection) == 1 and isinstance(enc.projection[0], nn.Linear)
    assert isinstance(enc.tower.norm, nn.LayerNorm) and enc.pooling == "default"


def test_final_activation_puts_the_activation_after_the_last_linear():
    enc = encoder(final_activation=True, activation="relu", dnn_layers=1)
    assert [type(m) for m in enc.projection] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU]
    x = images()
    features = enc.tower.forward_head(enc.tower.forward_features(enc.preprocess(x)), pre_logits=True)
    hidden = linear_then_relu(enc.projection, features)
    assert torch.allclose(enc(torch.tensor([1, 2, 3]), x), linear_then_relu(enc.projection[2:], hidden), atol=1e-6)


def test_xavier_init_is_xavier_normal_weights_and_zero_biases():
    torch.manual_seed(0)
    xavier = encoder(encoder="test_resnet", embedding_size=512, projection_init="xavier").projection[0]
    default = encoder(encoder="test_resnet", embedding_size=512).projection[0]
    fan_in, fan_out = xavier.in_features, xavier.out_features
    assert torch.count_nonzero(xavier.bias) == 0
    assert xavier.weight.std().item() == pytest.approx((2 / (fan_in + fan_out)) ** 0.5, rel=0.05)
    # PyTorch's default: uniform weights and biases within 1/sqrt(fan_in)
    assert default.weight.abs().max() <= fan_in**-0.5 and torch.count_nonzero(default.bias) > 0
    with pytest.raises(UserError, match="items.image.projection_init"):
        encoder(projection_init="kaiming")


def test_tokens_pooling_is_the_mean_of_every_projected_token_without_the_final_norm():
    enc = encoder(pooling="tokens", final_norm=False, final_activation=True, activation="relu").eval()
    assert isinstance(enc.tower.norm, nn.Identity)
    x = images()
    with torch.no_grad():
        t = enc.tower
        hidden = t.blocks(t.norm_pre(t._pos_embed(t.patch_embed(enc.preprocess(x)))))  # no final norm
        assert hidden.shape[1] == 1 + 4  # class token + 2x2 patches, all averaged
        expected = linear_then_relu(enc.projection, hidden).mean(1)
        assert torch.allclose(enc(torch.tensor([1, 2, 3]), x), expected, atol=1e-6)
        with_norm = encoder(pooling="tokens", final_activation=True, activation="relu").eval()
        with_norm.load_state_dict(enc.state_dict(), strict=False)
        assert not torch.allclose(with_norm(torch.tensor([1, 2, 3]), x), expected, atol=1e-3)


def test_tokens_pooling_takes_every_position_of_a_feature_map():
    enc = encoder(encoder="test_resnet", pooling="tokens", final_activation=True, activation="relu").eval()
    x = images()
    with torch.no_grad():
        maps = enc.tower.forward_features(enc.preprocess(x))
        expected = linear_then_relu(enc.projection, maps.flatten(2).transpose(1, 2)).mean(1)
        assert torch.allclose(enc(torch.tensor([1, 2, 3]), x), expected, atol=1e-6)


def test_final_norm_false_needs_a_final_norm():
    with pytest.raises(UserError, match="items.image.final_norm=false: test_resnet has no final norm"):
        encoder(encoder="test_resnet", final_norm=False)


def test_beit_default_pooling_is_layernorm_of_the_mean_patch_token():
    """Hugging Face's BEiT pooler_output (use_mean_pooling): LayerNorm(mean of the patch tokens), class token out."""
    enc = encoder(encoder="beit-b", pooling="default", final_activation=True, activation="relu",
                  timm_args={"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8}).eval()
    assert isinstance(enc.tower.norm, nn.Identity)  # the tokens are the last block's raw output
    norm = enc.tower.fc_norm
    nn.init.normal_(norm.weight, 1.0, 0.5), nn.init.normal_(norm.bias, 0.0, 0.5)
    x = images()
    with torch.no_grad():
        hidden = enc.tower.forward_features(enc.preprocess(x))
        pooled = F.layer_norm(hidden[:, 1:].mean(1), (hidden.shape[-1],), norm.weight, norm.bias, norm.eps)
        assert torch.allclose(enc(torch.tensor([1, 2, 3]), x), linear_then_relu(enc.projection, pooled), atol=1e-5)


def test_head_pooling_is_the_clip_attention_pool_with_its_output_projection():
    enc = encoder(encoder="clip-rn50", image_size=64, pooling="head", tune_head=False, final_activation=True,
                  activation="relu", timm_args=tiny_clip_resnet()).eval()
    head = enc.tower.head
    assert enc.projection[0].in_features == 16  # the pretrained output projection's width (c_proj), not 256
    x = images(size=64)
    with torch.no_grad():
        maps = enc.tower.forward_features(enc.preprocess(x))  # [B, 256, 2, 2]
        seq = maps.flatten(2).transpose(1, 2)
        seq = torch.cat([seq.mean(1, keepdim=True), seq], 1) + head.pos_embed  # mean token first, then positions
        heads, dim = seq.shape[-1] // 64, 64
        q = head.q(seq[:, :1]).view(len(x), 1, heads, dim).transpose(1, 2)
        k = head.k(seq).view(len(x), -1, heads, dim).transpose(1, 2)
        v = head.v(seq).view(len(x), -1, heads, dim).transpose(1, 2)
        attended = (torch.softmax(q @ k.transpose(-1, -2) / dim**0.5, -1) @ v).transpose(1, 2).reshape(len(x), -1)
        pooled = head.proj(attended)
        assert torch.allclose(enc(torch.tensor([1, 2, 3]), x), linear_then_relu(enc.projection, pooled), atol=1e-5)


@pytest.mark.parametrize("tune_head", [False, True])
def test_tune_head_freezes_exactly_the_layers_above_the_blocks(tune_head):
    enc = encoder(encoder="clip-rn50", image_size=64, pooling="head", tune_head=tune_head, timm_args=tiny_clip_resnet())
    trainable = sorted(n for n, p in enc.tower.named_parameters() if p.requires_grad)
    top_block = sorted(n for n, _ in enc.tower.named_parameters() if n.startswith("stages.3.0."))
    head = ["head.k.bias", "head.k.weight", "head.pos_embed", "head.proj.bias", "head.proj.weight", "head.q.bias",
            "head.q.weight", "head.v.bias", "head.v.weight"]
    assert trainable == sorted(top_block + (head if tune_head else []))
    frozen_head = encoder(tune_head=False)  # a ViT: the final norm is above the blocks too
    assert not any(p.requires_grad for n, p in frozen_head.tower.named_parameters() if n.startswith("norm."))


def test_mean_pooling_with_an_unused_frozen_attention_pool():
    """CLIP-RN50x4/x16/x64 at 224 px in the paper: global average pool, the attention pool left out (and frozen)."""
    enc = encoder(encoder="clip-rn50", image_size=32, pooling="mean", tune_head=False, final_activation=True,
                  activation="relu", timm_args=tiny_clip_resnet()).eval()
    assert enc.tower.head.pos_embed.shape[0] == 1 + 1  # built for the 1x1 map of a 32-px input
    assert not any(p.requires_grad for p in enc.tower.head.parameters())
    x = images()
    with torch.no_grad():
        pooled = enc.tower.forward_features(enc.preprocess(x)).mean((2, 3))
        assert torch.allclose(enc(torch.tensor([1, 2, 3]), x), linear_then_relu(enc.projection, pooled), atol=1e-6)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_frozen_mode_train_lets_frozen_batchnorm_use_and_update_batch_statistics(mode):
    enc = encoder(encoder="test_resnet", frozen_mode=mode).train()
    frozen_bn = enc.tower.bn1
    assert not frozen_bn.weight.requires_grad
    before = frozen_bn.running_mean.clone()
    enc(torch.arange(1, 9), images(8))
    assert frozen_bn.training == (mode == "train")
    assert torch.equal(frozen_bn.running_mean, before) == (mode == "eval")
    enc.eval()
    after = frozen_bn.running_mean.clone()
    enc(torch.arange(1, 9), images(8))
    assert not frozen_bn.training and torch.equal(frozen_bn.running_mean, after)


def test_frozen_mode_train_cannot_combine_with_the_prefix_cache():
    with pytest.raises(UserError, match="frozen_mode=train .* cannot combine with items.image.cache=prefix") as err:
        encoder(frozen_mode="train", cache="prefix")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("group", ["recommender", "encoder"])
def test_projection_group_chooses_the_projections_learning_rate_and_decay(group):
    from pixelrec.training.trainer import parameter_groups

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.item_encoder = encoder(projection_group=group)
            self.backbone = nn.Linear(4, 4)

    model = Model()
    config = Config(train=TrainConfig(lr=1e-3, weight_decay=0.1, encoder_lr=1e-4, encoder_weight_decay=0.0))
    groups = parameter_groups(model, config)
    where = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    encoder_rate = (1e-4, 0.0) if group == "encoder" else (1e-3, 0.1)
    assert where[id(model.item_encoder.projection[0].weight)] == encoder_rate
    assert where[id(model.item_encoder.tower.blocks[-1].mlp.fc1.weight)] == (1e-4, 0.0)
    assert where[id(model.backbone.weight)] == (1e-3, 0.1)


def test_timm_args_reach_the_tower_and_the_cache_identity():
    from pixelrec.towers.prefix_cache import TowerSplit, cache_identity

    enc = encoder(timm_args={"act_layer": "quick_gelu"})
    assert type(enc.tower.blocks[0].mlp.act).__name__ == "QuickGELU"
    with pytest.raises(UserError, match="items.image.timm_args: .* does not take \\['no_such_argument'\\]"):
        encoder(timm_args={"no_such_argument": 1})
    split = TowerSplit(enc.tower, "test_vit")
    common = dict(timm_name="test_vit", weights=None, pretrained=False, tune_last=1, preprocessing={"size": 32},
                  shape=(5, 64), n_items=20, item_order_sha256=None)
    assert "timm_args" not in cache_identity(split, **common)  # existing caches keep their identity
    quick = {"act_layer": "quick_gelu"}
    assert cache_identity(split, **common, timm_args=quick)["timm_args"] == quick


#: Trainable tower parameters of the original code: its index windows (load.py; overall/*.yaml
#: tune_scale) applied to Hugging Face's CLIPVisionModel (post_layernorm removed), BeitModel, SwinModel
#: (tune_scale 78: the embeddings, stages 1-2 and both merging layers after them frozen) and OpenAI
#: CLIP's ModifiedResNet, counted on randomly built models.
ORIGINAL_TRAINABLE = {"clip-vit-b32": 14_175_744, "beit-b": 14_196_384, "clip-rn50": 22_063_104,
                      "clip-rn50x4": 44_288_000, "clip-rn50x16": 83_834_880, "clip-rn50x64": 184_680_448,
                      "swin-t": 26_027_064, "swin-b": 84_098_144}


@pytest.mark.parametrize("name", list(ORIGINAL_TRAINABLE))
def test_the_paper_profile_trains_as_many_tower_parameters_as_the_original(name):
    from pixelrec.config import resolve

    config = resolve(model="sasrec", files=["paper"], flags={"items": {"kind": "pixels"}}, encoder=name)
    with torch.device("meta"):
        enc = PixelEncoder(n_items=2, embedding_size=512, image_store=None, image=config.items.image)
    assert sum(p.numel() for p in enc.tower.parameters() if p.requires_grad) == ORIGINAL_TRAINABLE[name]
    assert enc.preprocess.size == 224  # every encoder at 224 px, CLIP-RN50x4/x16/x64 included


def test_a_pixel_run_takes_the_paper_head_from_the_configuration(tiny_data, tmp_path, monkeypatch):
    from helpers import losses_over_steps, tiny_config
    from pixelrec.factory import DatasetFacts
    from pixelrec.training.trainer import Trainer

    class Store:
        size = 32

        def read(self, indices):
            return images(len(indices))

    monkeypatch.setattr(DatasetFacts, "image_store", property(lambda self: Store()))
    items = {"kind": "pixels", "image": {
        "encoder": "test_vit", "image_size": 32, "tune_last": 1, "pooling": "tokens", "final_norm": False,
        "final_activation": True, "activation": "relu", "projection_group": "encoder", "projection_init": "xavier",
        "frozen_mode": "train", "timm_args": {"act_layer": "quick_gelu"}}}
    config = tiny_config(tiny_data, "sasrec", "bpr", items=items, train={"epochs": 1, "encoder_lr": 1e-4})
    enc = Trainer(config, tmp_path / "built", resume=False).model.item_encoder
    assert enc.pooling == "tokens" and isinstance(enc.tower.norm, nn.Identity) and enc._frozen == []
    assert type(enc.tower.blocks[0].mlp.act).__name__ == "QuickGELU" and isinstance(enc.projection[-1], nn.ReLU)
    assert any(p is enc.projection[0].weight for p in enc.encoder_parameters())
    losses = losses_over_steps(config, 3, tmp_path / "run")
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
