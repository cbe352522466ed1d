"""Encoder weight files in the layouts researchers have (timm, OpenAI CLIP, open_clip, Hugging Face,
torchvision, Microsoft) load into our timm towers and give the reference model's features; the paper's
nine at full size map key for key (on the meta device)."""

from __future__ import annotations

import dataclasses
import re
import warnings

import pytest
import timm
import torch
from torch import nn

from pixelrec.errors import UserError
from pixelrec.items.pixels import ImageSettings, PixelEncoder
from pixelrec.towers.image_tower import load_weights
from pixelrec.towers.names import SHORT_NAMES
from pixelrec.towers.weight_layouts import classifier_prefixes, convert, mismatches

transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")

TEXT = dict(context_length=8, vocab_size=50, width=16, heads=2, layers=1)  # open_clip's smallest text tower


def randomised(model: nn.Module) -> nn.Module:
    """Every float tensor drawn at random (norm scales, layer scales, position tables and BatchNorm
    statistics included), so a key loaded into the wrong place changes the output; matrices large
    enough that attention is far from uniform (so swapped queries and keys show); eval mode."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                values = torch.randn(tensor.shape, generator=generator) * (0.5 if tensor.dim() > 1 else 0.1)
                tensor.copy_(values.abs() + 0.5 if name.endswith("running_var") else values)
    return model.eval()


def hf_files(model: nn.Module, tmp_path) -> list[str]:
    """The model as a hub file (save_pretrained: transformers 4 names) and as its live state_dict."""
    model.save_pretrained(tmp_path / "hf")
    torch.save(model.state_dict(), tmp_path / "state_dict.pt")
    return [str(tmp_path / "hf" / "model.safetensors"), str(tmp_path / "state_dict.pt")]


def loaded(tower: nn.Module, path: str, keep_head: bool = False) -> nn.Module:
    load_weights(tower, path, "tiny", keep_head=keep_head)
    return tower.eval()


def features(tower: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The tower's pooled features before any classifier (what the pixels encoder projects)."""
    return tower.forward_head(tower.forward_features(x), pre_logits=True)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-4)


# --- tiny reference models against tiny timm towers ------------------------------------------------
def tiny_clip_vit(num_classes: int = 0) -> nn.Module:
    return timm.create_model("vit_base_patch32_clip_224", img_size=32, patch_size=8, embed_dim=32, depth=2,
                             num_heads=2, mlp_ratio=2, act_layer="quick_gelu", num_classes=num_classes)


@pytest.mark.parametrize("cls", ["CLIPVisionModel", "CLIPModel"])
def test_hugging_face_clip(cls, tmp_path):
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
    if cls == "CLIPModel":
        config = transformers.CLIPConfig(vision_config=vision, projection_dim=16, text_config=dict(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50,
            bos_token_id=0, eos_token_id=1))
    else:
        config = transformers.CLIPVisionConfig(**vision)
    reference = randomised(getattr(transformers, cls)(config))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        vision_model = reference.vision_model if cls == "CLIPModel" else reference
        pooled = vision_model(pixel_values=x).pooler_output
        for path in hf_files(reference, tmp_path):
            assert close(features(loaded(tiny_clip_vit(), path), x), pooled)
            if cls == "CLIPModel":  # visual_projection is the classifier, kept on request
                assert close(loaded(tiny_clip_vit(16), path, keep_head=True)(x), reference.visual_projection(pooled))


@pytest.mark.parametrize("whole", [True, False], ids=["clip-model", "visual-tower"])
def test_open_clip_vit(whole, tmp_path):
    vision = open_clip.model.CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=32, mlp_ratio=2)
    reference = randomised(open_clip.model.CLIP(16, vision, open_clip.model.CLIPTextCfg(**TEXT), quick_gelu=True))
    torch.save((reference if whole else reference.visual).state_dict(), tmp_path / "w.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference.visual(x)
        assert close(features(loaded(tiny_clip_vit(), str(tmp_path / "w.pt")), x) @ reference.visual.proj, expected)
        assert close(loaded(tiny_clip_vit(16), str(tmp_path / "w.pt"), keep_head=True)(x), expected)


def tiny_clip_resnet(num_classes: int = 0) -> nn.Module:
    """timm's CLIP ResNet (ByobNet) at open_clip ModifiedResNet's width 16, one block per stage, 64 px."""
    from timm.models.byobnet import ByoBlockCfg, ByobNet, model_cfgs

    stages = ((64, 1), (128, 2), (256, 2), (512, 2))
    cfg = dataclasses.replace(model_cfgs["resnet50_clip"], stem_chs=(8, 8, 16),
                              blocks=tuple(ByoBlockCfg(type="bottle", d=1, c=c, s=s, br=0.25) for c, s in stages))
    tower = ByobNet(cfg, num_classes=num_classes, img_size=64)
    tower.pretrained_cfg = timm.models.get_pretrained_cfg("resnet50_clip").to_dict()
    return tower


class _WholeModel(nn.Module):
    """A model holding the visual tower as `visual`, as OpenAI's CLIP archives do."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


@pytest.mark.parametrize("form", ["clip-model", "visual-tower", "torchscript"])
def test_open_clip_and_openai_resnet(form, tmp_path):
    vision = open_clip.model.CLIPVisionCfg(layers=(1, 1, 1, 1), width=16, image_size=64)
    reference = randomised(open_clip.model.CLIP(16, vision, open_clip.model.CLIPTextCfg(**TEXT)))
    x = torch.randn(2, 3, 64, 64)
    path = str(tmp_path / "w.pt")
    if form == "torchscript":  # OpenAI's `clip` downloads are TorchScript archives
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation notes
            torch.jit.save(torch.jit.trace(_WholeModel(reference.visual), x), path)
    else:
        torch.save((reference if form == "clip-model" else reference.visual).state_dict(), path)
    with torch.no_grad():
        expected = reference.visual(x)
        assert close(loaded(tiny_clip_resnet(16), path, keep_head=True)(x), expected)  # attnpool.c_proj = head.proj
        assert close(reference.visual.attnpool.c_proj(features(loaded(tiny_clip_resnet(), path), x)), expected)


def test_torchvision_resnet50(tmp_path):
    import torchvision

    reference = randomised(torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 1, 1]))
    torch.save(reference.state_dict(), tmp_path / "w.pt")
    reference.fc = nn.Identity()
    tower = loaded(timm.create_model("resnet50", layers=(1, 1, 1, 1), num_classes=0), str(tmp_path / "w.pt"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert close(features(tower, x), reference(x))


SWIN = dict(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=4)


def tiny_swin(num_classes: int = 0) -> nn.Module:
    return timm.create_model("swin_tiny_patch4_window7_224", img_size=32, embed_dim=16, depths=(2, 2),
                             num_heads=(2, 2), window_size=4, num_classes=num_classes)


@pytest.mark.parametrize("cls", ["SwinModel", "SwinForImageClassification"])
def test_hugging_face_swin(cls, tmp_path):
    reference = randomised(getattr(transformers, cls)(transformers.SwinConfig(**SWIN, num_labels=3)))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        body = reference.swin if cls != "SwinModel" else reference
        pooled = body(pixel_values=x).pooler_output
        for path in hf_files(reference, tmp_path):
            assert close(features(loaded(tiny_swin(), path), x), pooled)
            if cls != "SwinModel":
                assert close(loaded(tiny_swin(3), path, keep_head=True)(x), reference(pixel_values=x).logits)


def test_microsoft_swin(tmp_path):
    """Microsoft's files merge patches at the end of a stage and keep index buffers and masks."""
    source = randomised(tiny_swin(3))
    original = {}
    for key, value in source.state_dict().items():
        key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", key)
        original[key.replace("head.fc.", "head.")] = value
        if key.endswith("relative_position_bias_table"):
            original[key.replace("bias_table", "index")] = torch.zeros(16, 16, dtype=torch.long)
    original["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 16, 16)
    torch.save({"model": original}, tmp_path / "w.pth")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert close(loaded(tiny_swin(3), str(tmp_path / "w.pth"), keep_head=True)(x), source(x))


BEIT = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, use_mean_pooling=True, layer_scale_init_value=0.1, num_labels=3)


def tiny_beit(num_classes: int = 0) -> nn.Module:
    return timm.create_model("beit_base_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                             mlp_ratio=2, num_classes=num_classes)


@pytest.mark.parametrize("cls,shared", [("BeitModel", False), ("BeitForImageClassification", False),
                                        ("BeitModel", True)], ids=["model", "classifier", "shared-position-bias"])
def test_hugging_face_beit(cls, shared, tmp_path):
    config = transformers.BeitConfig(**BEIT, use_relative_position_bias=not shared,
                                     use_shared_relative_position_bias=shared)
    reference = randomised(getattr(transformers, cls)(config))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        body = reference.beit if cls != "BeitModel" else reference
        pooled = body(pixel_values=x).pooler_output  # LayerNorm of the mean patch token (timm's fc_norm)
        for path in hf_files(reference, tmp_path):
            assert close(features(loaded(tiny_beit(), path), x), pooled)
            if cls != "BeitModel":
                assert close(loaded(tiny_beit(3), path, keep_head=True)(x), reference(pixel_values=x).logits)


def test_timm_files_and_wrapped_files_load(tmp_path):
    source = randomised(tiny_beit())
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "ddp.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert close(loaded(tiny_beit(), str(tmp_path / "ddp.pt"))(x), source(x))


# --- errors ------------------------------------------------------------------------------------------
def test_a_file_that_does_not_fit_is_one_line_naming_layout_and_key(tmp_path):
    reference = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8))
    path = hf_files(reference, tmp_path)[0]
    wide = timm.create_model("vit_base_patch32_clip_224", img_size=32, patch_size=8, embed_dim=64, depth=2,
                             num_heads=2, mlp_ratio=1, num_classes=0)
    with pytest.raises(UserError) as err:
        load_weights(wide, path, "vit_base_patch32_clip_224")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: does not fit vit_base_patch32_clip_224")
    assert "read as Hugging Face CLIP weights" in message
    assert re.search(r"Shape of cls_token \(file key \S*embeddings\.class_embedding\): \[1, 1, 32\] in the file, "
                     r"\[1, 1, 64\] in the tower \(and \d+ more\)", message)

    torch.save(randomised(tiny_swin()).state_dict(), tmp_path / "swin.pt")
    with pytest.raises(UserError, match=r"swin\.pt: does not fit tiny: Missing key cls_token \(and \d+ more\); "
                                        r"Unexpected key patch_embed\.proj\.bias \(and \d+ more\);.*read as timm "
                                        r"weights; tiny takes timm, OpenAI CLIP / open_clip"):
        load_weights(tiny_clip_vit(), str(tmp_path / "swin.pt"), "tiny")
    hf_path = hf_files(transformers.SwinModel(transformers.SwinConfig(**SWIN)), tmp_path)[0]
    with pytest.raises(UserError, match=r"Missing key head\.fc\.weight .*read as Hugging Face Swin"):
        load_weights(tiny_swin(3), hf_path, "tiny", keep_head=True)  # a head was asked for; the file has none


# --- the paper's nine at full size, key for key ---------------------------------------------------------
def _hub_names(model: nn.Module) -> dict[str, torch.Tensor]:
    """A live transformers model's state dict as hub files have it: transformers 4 names, index buffers kept."""
    from transformers.core_model_loading import revert_weight_conversion

    state = revert_weight_conversion(model, dict(model.state_dict()))
    for key in [k for k in state if k.endswith("relative_position_bias_table")]:
        state[key.replace("bias_table", "index")] = torch.empty(49, 49, dtype=torch.long, device="meta")
    return state


def _hf(cls: str, config: str, **kwargs) -> nn.Module:
    return getattr(transformers, cls)(getattr(transformers, config)(**kwargs))


def _open_clip(name: str) -> nn.Module:
    return open_clip.model.CLIP(**open_clip.get_model_config(name))


def _torchvision_resnet50() -> nn.Module:
    import torchvision

    return torchvision.models.resnet50()


SWIN_B = dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], num_labels=1000)
BEIT_B = dict(use_relative_position_bias=True, use_mean_pooling=True, layer_scale_init_value=0.1, num_labels=1000)
HF_CLIP, HF_SWIN, HF_BEIT = "Hugging Face CLIP", "Hugging Face Swin", "Hugging Face BEiT"
OPENAI, VISUAL = "OpenAI CLIP / open_clip", "open_clip visual tower"
#: (encoder, reference model) -> (builder of the full-size reference, the layout its file is read as)
FULL_SIZE = {
    ("clip-vit-b32", "open_clip ViT-B-32"): (lambda: _open_clip("ViT-B-32"), OPENAI),
    ("clip-vit-b32", "open_clip ViT-B-32 visual"): (lambda: _open_clip("ViT-B-32").visual, VISUAL),
    ("clip-vit-b32", "CLIPVisionModel"): (lambda: _hf("CLIPVisionModel", "CLIPVisionConfig", patch_size=32), HF_CLIP),
    ("clip-vit-b32", "CLIPModel"): (lambda: _hf("CLIPModel", "CLIPConfig", vision_config=dict(patch_size=32)),
                                    HF_CLIP),
    ("swin-t", "SwinModel"): (lambda: _hf("SwinModel", "SwinConfig"), HF_SWIN),
    ("swin-b", "SwinForImageClassification"): (lambda: _hf("SwinForImageClassification", "SwinConfig", **SWIN_B),
                                               HF_SWIN),
    ("beit-b", "BeitModel"): (lambda: _hf("BeitModel", "BeitConfig", **BEIT_B), HF_BEIT),
    ("beit-b", "BeitForImageClassification"): (lambda: _hf("BeitForImageClassification", "BeitConfig", **BEIT_B),
                                               HF_BEIT),
    ("resnet50", "torchvision resnet50"): (_torchvision_resnet50, "torchvision / timm"),
    ("clip-rn50", "open_clip RN50"): (lambda: _open_clip("RN50"), OPENAI),
    ("clip-rn50", "open_clip RN50 visual"): (lambda: _open_clip("RN50").visual, VISUAL),
    ("clip-rn50x4", "open_clip RN50x4"): (lambda: _open_clip("RN50x4"), OPENAI),
    ("clip-rn50x16", "open_clip RN50x16"): (lambda: _open_clip("RN50x16"), OPENAI),
    ("clip-rn50x64", "open_clip RN50x64"): (lambda: _open_clip("RN50x64"), OPENAI),
}


@pytest.mark.parametrize("encoder,source", list(FULL_SIZE), ids=[" ".join(k) for k in FULL_SIZE])
def test_full_size_files_map_onto_the_paper_encoders_key_for_key(encoder, source):
    build, layout_name = FULL_SIZE[(encoder, source)]
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build()
        tower = timm.create_model(SHORT_NAMES[encoder], num_classes=0)
    hub = layout_name.startswith("Hugging Face")
    for state in [reference.state_dict()] + ([_hub_names(reference)] if hub else []):
        layout, converted, origin = convert(dict(state), tower)
        assert layout.name == layout_name
        heads = tuple(c + "." for c in classifier_prefixes(tower))
        assert mismatches({k: v for k, v in converted.items() if not k.startswith(heads)}, tower, origin) == []


@pytest.mark.parametrize("encoder", list(SHORT_NAMES))
def test_full_size_timm_files_load_as_they_are(encoder):
    with torch.device("meta"):
        tower = timm.create_model(SHORT_NAMES[encoder], num_classes=0)
    layout, converted, origin = convert(tower.state_dict(), tower)
    assert mismatches(converted, tower, origin) == []


@pytest.mark.parametrize("encoder,name", [("clip-vit-b32", "ViT-B-32"), ("clip-rn50", "RN50"),
                                          ("clip-rn50x64", "RN50x64")])
def test_full_size_clip_keeps_its_output_projection_on_request(encoder, name):
    """keep_head: OpenAI's output projection (ViT `proj`, ResNet `attnpool.c_proj`) fills timm's classifier."""
    with torch.device("meta"):
        reference = _open_clip(name)
        tower = timm.create_model(SHORT_NAMES[encoder], num_classes=reference.visual.output_dim)  # CLIP embedding
    layout, converted, origin = convert(reference.state_dict(), tower)
    assert any(k.startswith(classifier_prefixes(tower)) for k in converted)
    assert mismatches(converted, tower, origin) == []


def test_encoder_weights_through_the_pixels_encoder(tmp_path):
    """items.image.encoder_weights with a Hugging Face file for a (tiny) CLIP-ViT: the item tower gives its features."""
    reference = randomised(transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)))
    path = hf_files(reference, tmp_path)[0]
    tiny = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2, act_layer="quick_gelu")
    encoder = PixelEncoder(5, 8, None, ImageSettings(encoder="clip-vit-b32", image_size=32, encoder_weights=path,
                                                     timm_args=tiny))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert close(features(encoder.tower.eval(), x), reference(pixel_values=x).pooler_output)
