"""One timm adapter for every image encoder: create, load local weights, pool, freeze by layer group.

The paper's nine encoders have short names; any other timm model name works too, including timm's
tiny `test_*` models that the tests and the demo use at low resolution.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelrec.errors import UserError

#: The image encoders of the PixelRec paper by short name -> timm model name.
SHORT_NAMES = {
    "clip-vit-b32": "vit_base_patch32_clip_224",
    "swin-t": "swin_tiny_patch4_window7_224",
    "swin-b": "swin_base_patch4_window7_224",
    "beit-b": "beit_base_patch16_224",
    "resnet50": "resnet50",
    "clip-rn50": "resnet50_clip",
    "clip-rn50x4": "resnet50x4_clip",
    "clip-rn50x16": "resnet50x16_clip",
    "clip-rn50x64": "resnet50x64_clip",
}
POOLINGS = ("default", "cls", "mean")
MAX_LAYER = 99999  # timm's group id for layers above the last block
#: The paper's own pre-processing: resize to 224, mean = std = 0.5.
PAPER_PREPROCESSING = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def timm_name(name: str) -> str:
    import timm

    resolved = SHORT_NAMES.get(name, name)
    if not timm.is_model(resolved.split(".")[0]):
        import difflib

        close = difflib.get_close_matches(name, list(SHORT_NAMES) + timm.list_models(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"unknown image encoder {name!r}{hint} (short names: {', '.join(SHORT_NAMES)})")
    return resolved


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a local checkpoint (safetensors, or torch with weights_only), unwrapped from the
    usual containers ('state_dict', 'model'); nothing executable is loaded."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: encoder weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every unreadable file is the same problem for the user
        raise UserError(f"{path}: unreadable weights file ({type(err).__name__}: {str(err)[:120]})") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{path}: not a state dict of tensors")
    # an open_clip or OpenAI CLIP file holds both towers; timm converts the `visual.` keys itself
    return state


def create_tower(name: str, weights: str | None = None, pretrained: bool = False, image_size: int | None = None) -> nn.Module:
    """A timm model without classifier, with random, local-file or hub weights."""
    import timm

    resolved = timm_name(name)
    kwargs: dict[str, Any] = {"num_classes": 0, "pretrained": pretrained and not weights}
    if image_size:
        kwargs["img_size"] = image_size
    try:
        try:
            tower = timm.create_model(resolved, **kwargs)
        except TypeError as err:  # CNNs take any input size and have no img_size argument
            if "img_size" not in str(err):
                raise
            kwargs.pop("img_size")
            tower = timm.create_model(resolved, **kwargs)
    except (OSError, ValueError, RuntimeError) as err:
        if kwargs["pretrained"]:
            raise UserError(
                f"cannot fetch pretrained weights for {resolved} ({type(err).__name__}); this machine may have no "
                "hub access: pass items.encoder_weights=PATH to a local checkpoint"
            ) from None
        raise
    if weights:
        load_weights(tower, weights, resolved)
    return tower


def load_weights(tower: nn.Module, path: str, resolved: str) -> None:
    """Load a local checkpoint strictly, after timm's own conversion for the model family (which
    maps OpenAI CLIP and open_clip visual towers); classifier weights are ignored."""
    import sys

    state = read_state_dict(path)
    convert = getattr(sys.modules[type(tower).__module__], "checkpoint_filter_fn", None)
    if convert is not None:
        try:
            state = convert(state, tower)
        except Exception:  # noqa: BLE001 - an unconvertible file shows up as mismatched keys below
            pass
    classifier = tower.pretrained_cfg.get("classifier") or "head"
    classifiers = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    state = {k: v for k, v in state.items() if not any(k.startswith(c + ".") for c in classifiers)}
    result = tower.load_state_dict(state, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"Missing keys ({len(result.missing_keys)}): {', '.join(result.missing_keys[:4])}")
    if result.unexpected_keys:
        problems.append(f"Unexpected keys ({len(result.unexpected_keys)}): {', '.join(result.unexpected_keys[:4])}")
    if problems:
        raise UserError(f"{path}: does not fit {resolved}: {'; '.join(problems)}")


def layer_groups(tower: nn.Module) -> list[list[str]]:
    """Parameter names in timm's layer groups, bottom (stem) to top (blocks, final norm or head)."""
    from timm.models import group_parameters

    groups = group_parameters(tower, tower.group_matcher())
    return [list(names) for _, names in sorted(groups.items())]


def _is_head_parameter(name: str, matcher: dict) -> bool:
    """True for parameters above the blocks: timm places them in its last layer (MAX_LAYER) or
    leaves them unmatched (pooling heads)."""
    stem = matcher.get("stem", [])
    for pattern in [stem] if isinstance(stem, str) else stem:
        if re.match(pattern, name):
            return False
    blocks = matcher.get("blocks", [])
    for entry in [(blocks, None)] if isinstance(blocks, str) else blocks:
        pattern, fixed = entry if isinstance(entry, tuple) else (entry, None)
        if re.match(pattern, name):
            return fixed is not None and fixed[0] >= MAX_LAYER
    return True


def freeze_below(tower: nn.Module, tune_last: int | str) -> None:
    """Train the top `tune_last` groups of blocks/stages, plus anything above them (final norm,
    pooling head); freeze everything below. 0 freezes the whole tower; 'all' trains everything."""
    if tune_last == "all":
        return
    matcher = tower.group_matcher()
    groups = layer_groups(tower)
    heads = 0
    while heads < len(groups) and all(_is_head_parameter(n, matcher) for n in groups[len(groups) - 1 - heads]):
        heads += 1
    n = int(tune_last)
    chosen = groups[len(groups) - n - heads :] if n > 0 else []
    trainable = {name for group in chosen for name in group}
    for name, p in tower.named_parameters():
        p.requires_grad_(name in trainable)


def frozen_modules(tower: nn.Module) -> list[nn.Module]:
    """Leaf modules with parameters that are all frozen: kept in eval mode (BatchNorm statistics fixed)."""
    out = []
    for module in tower.modules():
        params = list(module.parameters(recurse=False))
        if params and not any(p.requires_grad for p in params):
            out.append(module)
    return out


def is_convolutional(tower: nn.Module) -> bool:
    """True for towers without attention (CNNs), for which channels_last pays off."""
    return not any("Attention" in type(m).__name__ for m in tower.modules())


def check_pooling(tower: nn.Module, pooling: str, name: str) -> None:
    if pooling not in POOLINGS:
        raise UserError(f"items.pooling: {pooling!r} is not one of {', '.join(POOLINGS)}")
    if pooling == "cls" and getattr(tower, "num_prefix_tokens", 0) < 1:
        raise UserError(f"items.pooling=cls: {name} has no class token; use mean or default")


def pool(tower: nn.Module, features: Tensor, pooling: str) -> Tensor:
    """[B, C] from timm's forward_features output (tokens [B, N, C] or maps [B, C, H, W] / [B, H, W, C])."""
    if pooling == "default":
        return tower.forward_head(features, pre_logits=True)
    if features.dim() == 3:
        if pooling == "cls":
            return features[:, 0]
        return features[:, getattr(tower, "num_prefix_tokens", 0) :].mean(1)
    channels_last = features.shape[-1] == tower.num_features and features.shape[1] != tower.num_features
    return features.mean((1, 2)) if channels_last else features.mean((2, 3))


class Preprocess(nn.Module):
    """uint8 images [B, 3, S, S] -> normalised float input at the encoder's size, on the device."""

    def __init__(self, tower: nn.Module, image_size: int | None, style: str = "encoder") -> None:
        super().__init__()
        import timm

        config = timm.data.resolve_model_data_config(tower)
        stats = PAPER_PREPROCESSING if style == "paper" else config
        self.size = image_size or (224 if style == "paper" else int(config["input_size"][-1]))
        self.mode = "bicubic" if config.get("interpolation") == "bicubic" else "bilinear"
        self.register_buffer("mean", torch.tensor(stats["mean"]).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(stats["std"]).view(1, 3, 1, 1) * 255, persistent=False)

    def describe(self) -> dict[str, Any]:
        """Size, interpolation and mean/std (as fractions of 255), as feature and cache files record them."""
        return {"size": self.size, "interpolation": self.mode,
                "mean": [round(float(v) / 255, 6) for v in self.mean.flatten()],
                "std": [round(float(v) / 255, 6) for v in self.std.flatten()]}

    def forward(self, images: Tensor) -> Tensor:
        x = images.float()
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode=self.mode, antialias=True, align_corners=False)
        return (x - self.mean) / self.std
