"""One timm adapter for every image encoder: create, load local weights, pool, freeze by layer group.

The paper's nine encoders have short names; any other timm model name works too, including timm's
tiny `test_*` models that the tests and the demo use at low resolution.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from itertools import chain
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelrec.errors import UserError
from pixelrec.schema import IMAGE_SIDE
from pixelrec.towers.names import check_timm_args, timm_name
from pixelrec.towers.tower_file import read_description
from pixelrec.towers.weight_layouts import (
    accepted,
    classifier_prefixes,
    convert,
    is_torchscript,
    mismatches,
    read_torchscript,
)

#: How `pool` makes one vector of forward_features' output; `head` needs a tower created with keep_head.
POOLINGS = ("default", "cls", "mean", "head")
MAX_LAYER = 99999  # timm's group id for layers above the last block
#: The paper's own pre-processing: resize to 224, mean = std = 0.5.
PAPER_PREPROCESSING = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a local checkpoint (safetensors, torch with weights_only, or a TorchScript archive
    read as data), unwrapped from the usual containers ('state_dict', 'model'); nothing executable is loaded."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: encoder weights file not found")

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        elif is_torchscript(path):  # OpenAI's `clip` downloads: tensors only, no code is loaded
            state = read_torchscript(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every unreadable file is the same problem for the user
        raise UserError(f"{path}: unreadable weights file ({type(err).__name__}: {str(err)[:120]})") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{path}: not a state dict of tensors")
    return state


def create_tower(name: str, weights: str | None = None, pretrained: bool = False, image_size: int | None = None,
                 keep_head: bool = False, timm_args: dict[str, Any] | None = None) -> nn.Module:
    """A timm model with random, local-file or hub weights: without classifier, or with its own head
    and classifier/projection (`keep_head`, e.g. CLIP-ResNet's attention pool and output projection);
    `timm_args` are extra keyword arguments of `timm.create_model` (e.g. act_layer)."""
    import timm

    if image_size is not None and not IMAGE_SIDE.allows(image_size):
        raise UserError(f"image_size={image_size}: allowed {IMAGE_SIDE} pixels per side")
    resolved = timm_name(name)
    kwargs: dict[str, Any] = {"pretrained": pretrained and not weights}
    if not keep_head:
        kwargs["num_classes"] = 0
    kwargs |= check_timm_args(timm_args, "items.image.timm_args")
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
    except TypeError as err:
        if not timm_args:
            raise
        raise UserError(f"items.image.timm_args: {resolved} does not take {sorted(timm_args)} ({err})") from None
    except (OSError, ValueError, RuntimeError) as err:
        if kwargs["pretrained"]:
            raise UserError(
                f"cannot fetch pretrained weights for {resolved} ({type(err).__name__}); this machine may have no "
                "hub access: pass items.image.encoder_weights=PATH to a local checkpoint"
            ) from None
        raise
    if weights:
        fit_tower(tower, weights, resolved, timm_args)  # an exported tower: its architecture, checked
        load_weights(tower, weights, resolved, keep_head=keep_head)
    return tower


def load_weights(tower: nn.Module, path: str, resolved: str, keep_head: bool = False) -> None:
    """Load a local checkpoint strictly, in any layout researchers have for the encoder (timm, OpenAI
    CLIP, open_clip, Hugging Face, torchvision, Microsoft; see weight_layouts). The classifier (timm's
    pretrained_cfg 'classifier', e.g. CLIP-RN's head.proj = OpenAI's attnpool.c_proj) is dropped
    unless `keep_head`, for a tower built with it."""
    layout, state, origin = convert(read_state_dict(path), tower)
    if not keep_head:
        heads = tuple(c + "." for c in classifier_prefixes(tower))
        state = {k: v for k, v in state.items() if not k.startswith(heads)}
    problems = mismatches(state, tower, origin)
    if problems:
        raise UserError(f"{path}: does not fit {resolved}: {'; '.join(problems)} (read as {layout.name} weights; "
                        f"{resolved} takes {', '.join(accepted(tower))})")
    current = tower.state_dict()
    for key in current:  # a counter, not a weight: files written without it still load
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = current[key]
    tower.load_state_dict(state, strict=True)


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


#: A Swin's patch-merging layer (timm: at the start of stage N, with its first block's group).
MERGING = re.compile(r"^layers\.\d+\.downsample\.")


def freeze_below(tower: nn.Module, tune_last: int | str, tune_head: bool = True, tune_merging: bool = True) -> None:
    """Train the top `tune_last` groups of blocks/stages, plus anything above them (final norm,
    pooling head) unless `tune_head` is false; freeze everything below. 0 freezes the whole tower;
    'all' trains every block. Not `tune_merging`: a Swin's patch-merging layer below the lowest tuned
    block stays frozen (Hugging Face's Swin puts it at the end of the stage below)."""
    if not tune_merging and not any(MERGING.match(name) for name, _ in tower.named_parameters()):
        raise UserError(f"items.image.tune_merging=false: {type(tower).__name__} has no patch-merging layers "
                        "(Swin towers have)")
    if tune_last == "all":
        if not tune_head:
            matcher = tower.group_matcher()
            for name, p in tower.named_parameters():
                p.requires_grad_(not _is_head_parameter(name, matcher))
        return
    matcher = tower.group_matcher()
    groups = layer_groups(tower)
    heads = 0
    while heads < len(groups) and all(_is_head_parameter(n, matcher) for n in groups[len(groups) - 1 - heads]):
        heads += 1
    n = int(tune_last)
    chosen = groups[len(groups) - n - heads :] if n > 0 else []
    trainable = {name for group in chosen for name in group}
    if not tune_merging and chosen:
        trainable -= {name for name in chosen[0] if MERGING.match(name)}
    for name, p in tower.named_parameters():
        p.requires_grad_(name in trainable and (tune_head or not _is_head_parameter(name, matcher)))


def remove_final_norm(tower: nn.Module, name: str) -> None:
    """Replace the norm that ends forward_features by the identity, so the tokens are the last
    block's raw output (as Hugging Face's CLIP `last_hidden_state`, which has no post-LayerNorm).
    A tower whose norm this already removed (one loaded from an exported tower file) stays as it is."""
    if getattr(tower, "final_norm_removed", False):
        return
    norm = getattr(tower, "norm", None)
    if not isinstance(norm, nn.Module) or isinstance(norm, nn.Identity):
        raise UserError(f"items.image.final_norm=false: {name} has no final norm after its blocks to remove")
    tower.norm = nn.Identity()
    tower.final_norm_removed = True


def check_pooling(tower: nn.Module, pooling: str, name: str, allowed: tuple[str, ...] = POOLINGS) -> None:
    if pooling not in allowed:
        raise UserError(f"items.image.pooling: {pooling!r} is not one of {', '.join(allowed)}")
    if pooling == "cls" and getattr(tower, "num_prefix_tokens", 0) < 1:
        raise UserError(f"items.image.pooling=cls: {name} has no class token; use mean or default")
    if pooling == "head" and not getattr(tower, "num_classes", 0):
        raise UserError(f"items.image.pooling=head: {name} was created without its own head (create_tower keep_head)")


def pooled_size(tower: nn.Module, pooling: str) -> int:
    """Width of `pool`'s output: the head's output size for `head`, else the tower's feature width."""
    return int(tower.num_classes) if pooling == "head" else int(tower.num_features)


def pool(tower: nn.Module, features: Tensor, pooling: str) -> Tensor:
    """[B, C] from timm's forward_features output (tokens [B, N, C] or maps [B, C, H, W] / [B, H, W, C])."""
    if pooling == "default":
        return tower.forward_head(features, pre_logits=True)
    if pooling == "head":
        return tower.forward_head(features)
    if features.dim() == 3:
        if pooling == "cls":
            return features[:, 0]
        return features[:, getattr(tower, "num_prefix_tokens", 0) :].mean(1)
    return features.mean((1, 2)) if _channels_last(tower, features) else features.mean((2, 3))


def tokens(tower: nn.Module, features: Tensor) -> Tensor:
    """[B, N, C]: every token (class token included), or every position of a feature map."""
    if features.dim() == 3:
        return features
    return features.flatten(1, 2) if _channels_last(tower, features) else features.flatten(2).transpose(1, 2)


def _channels_last(tower: nn.Module, maps: Tensor) -> bool:
    """True for [B, H, W, C] maps (Swin), false for [B, C, H, W] (CNNs)."""
    return maps.shape[-1] == tower.num_features and maps.shape[1] != tower.num_features


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


#: (encoder, side, what its forward does) -> the refusal, or None: one probe per process and setting
_SIZE_PROBES: dict[tuple[str, int, str], str | None] = {}


def refuse_unfit_size(module: nn.Module, features: Callable[[Tensor], Tensor], side: int, name: str,
                      setting: str = "", key: str = "image_size") -> None:
    """One line now, rather than a traceback at the first batch, when the encoder cannot take square
    inputs of `side` pixels (a ViT's patch grid, CLIP-ResNet's attention pool, a kernel larger than its
    map). `features` (normalised input -> what the caller uses) runs with `module`'s weights swapped for
    meta tensors: shapes only, no arithmetic, nothing of the module changed."""
    tower = getattr(module, "tower", module)
    if side == int(getattr(tower, "pretrained_cfg", {}).get("input_size", (0, 0, 0))[-1]):
        return  # the size the architecture was made for
    probe = (name, side, setting)
    if probe not in _SIZE_PROBES:
        _SIZE_PROBES[probe] = _probe(module, features, side)
    if _SIZE_PROBES[probe]:
        patch = getattr(getattr(tower, "patch_embed", None), "patch_size", None)
        multiples = f", a multiple of its {patch[0]} px patches" if patch else ""
        raise UserError(f"{key}={side}: {name} cannot take {side}x{side} images ({_SIZE_PROBES[probe]}); choose "
                        f"another size (its own is {_native(tower)}{multiples})")


def _native(tower: nn.Module) -> str:
    size = getattr(tower, "pretrained_cfg", {}).get("input_size")
    return f"{size[-1]} px" if size else "a larger size"


class _Features(nn.Module):
    def __init__(self, module: nn.Module, features: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.module, self.features = module, features

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def _probe(module: nn.Module, features: Callable[[Tensor], Tensor], side: int) -> str | None:
    """The first line of what the forward raises on a meta input of this side, or None."""
    meta = {f"module.{n}": torch.empty_like(t, device="meta")
            for n, t in chain(module.named_parameters(), module.named_buffers())}
    training = module.training
    module.eval()  # batch statistics of one image would refuse anything
    try:
        with torch.no_grad():
            torch.func.functional_call(_Features(module, features), meta, (torch.zeros(1, 3, side, side, device="meta"),))
    except NotImplementedError:
        return None  # an operation without a meta kernel: nothing learnt, nothing refused
    except (AssertionError, RuntimeError, ValueError, IndexError) as err:
        line = (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(".")
        return line if len(line) <= 120 else line[:119] + "…"
    finally:
        module.train(training)
    return None


def fit_tower(tower: nn.Module, weights: str | Path, resolved: str, timm_args: dict[str, Any] | None) -> None:
    """Before an exported tower's weights load into a new timm model: the same architecture (timm name
    and arguments), and the final norm removed where the exported tower had none."""
    description = read_description(weights)
    if description is None:
        return
    if description["timm_name"] != resolved:
        raise UserError(f"{weights}: an exported {description['timm_name']} tower, not {resolved}; leave the encoder "
                        "unset to use the tower's")
    if dict(timm_args or {}) != description["timm_args"]:
        raise UserError(f"{weights}: the tower was built with timm arguments {json.dumps(description['timm_args'])}, "
                        f"not {json.dumps(dict(timm_args or {}))}")
    if not description["final_norm"]:
        remove_final_norm(tower, resolved)
