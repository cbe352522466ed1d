"""A trained image tower as a file: timm weights in safetensors, with what it takes to use them.

`pixelrec export --tower OUT.safetensors` writes a run's image tower (its timm state dict: the tuned
top layers and the frozen ones below) with a description in the file's own metadata, and the same
description as OUT.json beside it for people and scripts: timm name and arguments, pooling,
pre-processing and input size, final norm, which layers were tuned, and the run and checkpoint (by
sha256) it came from. The run's projection is not part of it: it maps into that run's recommender
space, not an image space (`pixelrec embed` uses the run itself for that).

`items.image.encoder_weights=OUT.safetensors` and `pixelrec extract --encoder-weights OUT.safetensors`
read the description from the file: the settings it fixes are taken from it where left unset, and
one given otherwise is a one-line error, so the tower computes what it computed in its run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from torch import nn

from pixelrec.errors import UserError
from pixelrec.storage.atomic import atomic_json, atomic_write
from pixelrec.towers.names import check_timm_args, timm_name

FORMAT = "pixelrec-tower"
VERSION = 1
METADATA_KEY = "pixelrec_tower"
#: The settings' names in errors: `items.image.*` keys (train), or the parameters of `extract_features`.
ITEM_KEYS = {"encoder": "items.image.encoder", "image_size": "items.image.image_size",
             "pooling": "items.image.pooling", "preprocess": "items.image.preprocess",
             "final_norm": "items.image.final_norm", "timm_args": "items.image.timm_args"}
EXTRACT_NAMES = {"encoder": "encoder", "image_size": "image_size", "pooling": "pooling",
                 "preprocess": "preprocess", "final_norm": "items.image.final_norm",
                 "timm_args": "items.image.timm_args"}


def sidecar_path(path: str | Path) -> Path:
    """OUT.json beside OUT.safetensors."""
    return Path(path).with_suffix(".json")


def read_description(path: str | Path | None) -> dict[str, Any] | None:
    """The description inside an exported tower file; None for any other weights file (or none)."""
    if not path or Path(path).suffix != ".safetensors" or not Path(path).is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception:  # noqa: BLE001 - an unreadable file is reported where its tensors are read
        return None
    text = metadata.get(METADATA_KEY)
    if text is None:
        return None
    try:
        description = json.loads(text)
    except json.JSONDecodeError:
        raise UserError(f"{path}: damaged {FORMAT} description in the file's metadata; export the tower "
                        "again") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise UserError(f"{path}: not a {FORMAT} description in the file's metadata; export the tower again")
    if description.get("version") != VERSION:
        raise UserError(f"{path}: {FORMAT} version {description.get('version')} (this pixelrec reads {VERSION}); "
                        "export the tower again with this version")
    description["timm_args"] = check_timm_args(description.get("timm_args"), f"{path}: its timm_args")
    return description


def write_tower(path: str | Path, tower: nn.Module, description: dict[str, Any]) -> dict[str, Any]:
    """Write `tower`'s state dict to `path` with `description` inside (both atomically), then the same
    description as the JSON sidecar; returns the description as written."""
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserError(f"tower={path}: the tower file must end in .safetensors (its description goes to "
                        f"{path.with_suffix('.json').name} beside it)")
    if path.is_dir():
        raise UserError(f"tower={path}: is a folder; give the path of a file, e.g. {path / 'tower.safetensors'}")
    description = {"format": FORMAT, "version": VERSION, **description}
    state = {key: value.detach().cpu().contiguous() for key, value in tower.state_dict().items()}
    sidecar_path(path).unlink(missing_ok=True)  # an old description must not stand beside new weights
    atomic_write(path, save(state, metadata={METADATA_KEY: json.dumps(description)}))
    atomic_json(sidecar_path(path), description)
    return description


class TowerSettings(NamedTuple):
    """The image settings a tower is built with (those a tower file fixes)."""

    encoder: str | None
    image_size: int | None
    pooling: str
    preprocess: str
    final_norm: bool
    timm_args: dict[str, Any]


def tower_settings(weights: str | Path | None, *, encoder: str | None, image_size: int | None, pooling: str,
                   preprocess: str, final_norm: bool = True, timm_args: dict[str, Any] | None = None,
                   names: dict[str, str] = ITEM_KEYS, poolings: tuple[str, ...] | None = None) -> TowerSettings:
    """The settings to build a tower with: as given, except where `weights` is an exported tower file,
    whose settings fill those left unset (encoder None, image size None, pooling `default`,
    pre-processing `encoder`, final norm kept, no timm arguments); a setting given otherwise is a
    one-line error naming it (`names`: how the caller's user spells each setting). `poolings`: those
    the caller can do, when not every one (a tower file's other pooling must then be chosen anew)."""
    given = TowerSettings(encoder, image_size, pooling, preprocess, final_norm, dict(timm_args or {}))
    description = read_description(weights)
    if description is None:
        return given
    fixed = TowerSettings(description["encoder"], description["image_size"], description["pooling"],
                          description["preprocess"], description["final_norm"], description["timm_args"])
    unset = TowerSettings(None, None, "default", "encoder", True, {})
    chosen = []
    for field, mine, theirs, default in zip(TowerSettings._fields, given, fixed, unset):
        if field == "pooling" and poolings is not None and theirs not in poolings:
            if mine != default:
                chosen.append(mine)
                continue
            others = " or ".join(p for p in poolings if p != default)
            raise UserError(f"{weights}: this exported tower was trained with pooling {theirs}, which is not one "
                            f"here; choose {names[field]}={others}")
        if mine == default or _same(field, mine, theirs):
            chosen.append(theirs)
            continue
        shown = f"{field}={json.dumps(mine)}" if field == "timm_args" else f"{mine}"
        raise UserError(f"{weights}: this exported tower was trained with {names[field]}={_text(theirs)}, not "
                        f"{shown}; leave {names[field]}= unset to use the tower's (the file fixes the encoder, "
                        "input size, pooling and pre-processing)")
    return TowerSettings(*chosen)


def _same(field: str, mine: Any, theirs: Any) -> bool:
    if field == "encoder":
        return timm_name(mine) == timm_name(theirs)
    return mine == theirs


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict) else str(value)


