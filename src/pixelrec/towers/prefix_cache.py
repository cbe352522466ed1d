"""Frozen-prefix cache (`items.image.cache: prefix`): the frozen lower part of the image tower runs once per item.

Pre-processing is deterministic and the layers below `tune_last` never change, so their output is a
pure function of the item. `split_tower` cuts a timm tower into an ordered list of units (stem, then
blocks or stages) at the first unit holding a trainable parameter, read from the `requires_grad`
flags that `freeze_below` set, so "cached" and "trainable" always agree. `build_prefix_cache` writes
the prefix output of every item (fp16, memory-mapped `.npy`, row r = item r + 1) in chunks, and a
sidecar records the cache's identity and the rows done after each flushed chunk (atomically), so an
interrupted build resumes and gives the same bytes. The file name carries a hash of the identity: a
different encoder, weights, cut or input size gives a new file, never a stale one. One process builds
a cache file at a time (a lock beside it; others wait, then reuse it); a file whose header or size is
wrong is built again, and readers check both before mapping it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from pixelrec.errors import UserError
from pixelrec.progress import log
from pixelrec.storage import locks
from pixelrec.storage.feature_files import file_sha256, sidecar_path, write_sidecar
from pixelrec.storage.files import allocate, npy_info, open_npy
from pixelrec.storage.row_files import create_rows, fill_item_rows, write_errors

FORMAT = "pixelrec-prefix-cache"
VERSION = 1
PROGRESS_KEYS = frozenset({"rows_done", "complete", "batch_size"})


@dataclass
class Unit:
    """One step of a tower's forward_features; `owns` are the parameter-name prefixes it uses."""

    name: str
    run: Callable[[Tensor], Tensor]
    owns: tuple[str, ...]


def _vit_stem(tower: nn.Module, x: Tensor) -> Tensor:
    return tower.norm_pre(tower.patch_drop(tower._pos_embed(tower.patch_embed(x))))


def _resnet_stem(tower: nn.Module, x: Tensor) -> Tensor:
    return tower.maxpool(tower.act1(tower.bn1(tower.conv1(x))))


def _beit_stem(tower: nn.Module, x: Tensor) -> Tensor:
    x = tower.patch_embed(x)
    x = torch.cat((tower.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
    if tower.pos_embed is not None:
        x = x + tower.pos_embed
    return tower.pos_drop(x)


def _beit_block(tower: nn.Module, block: nn.Module, x: Tensor) -> Tensor:
    # a shared relative position bias belongs to the (frozen) stem: a function of weights only, made per block
    shared = tower.rel_pos_bias() if tower.rel_pos_bias is not None else None
    return block(x, shared_rel_pos_bias=shared)


# stems are partials of module-level functions, so an encoder still pickles (DataLoader workers under spawn)
def _vit_units(tower: nn.Module) -> tuple[list[Unit], Callable[[Tensor], Tensor]]:
    units = [Unit("stem", partial(_vit_stem, tower), ("cls_token", "reg_token", "pos_embed", "patch_embed", "norm_pre"))]
    units += [Unit(f"blocks.{i}", block, (f"blocks.{i}.",)) for i, block in enumerate(tower.blocks)]
    return units, tower.norm


def _resnet_units(tower: nn.Module) -> tuple[list[Unit], Callable[[Tensor], Tensor]]:
    units = [Unit("stem", partial(_resnet_stem, tower), ("conv1", "bn1", "maxpool"))]
    for s in range(1, 5):
        stage = getattr(tower, f"layer{s}")
        units += [Unit(f"layer{s}.{i}", block, (f"layer{s}.{i}.",)) for i, block in enumerate(stage)]
    return units, nn.Identity()


def _beit_units(tower: nn.Module) -> tuple[list[Unit], Callable[[Tensor], Tensor]]:
    units = [Unit("stem", partial(_beit_stem, tower), ("cls_token", "pos_embed", "patch_embed", "rel_pos_bias"))]
    units += [Unit(f"blocks.{i}", partial(_beit_block, tower, block), (f"blocks.{i}.",))
              for i, block in enumerate(tower.blocks)]
    return units, tower.norm  # fc_norm runs in forward_head (pooling), as in timm


def _byobnet_units(tower: nn.Module) -> tuple[list[Unit], Callable[[Tensor], Tensor]]:
    """timm's bring-your-own-blocks nets (the CLIP ResNets): one unit per block, as `tune_last` counts them;
    the attention pool is the head, which runs in pooling."""
    units = [Unit("stem", tower.stem, ("stem.",))]
    for s, stage in enumerate(tower.stages):
        units += [Unit(f"stages.{s}.{i}", block, (f"stages.{s}.{i}.",)) for i, block in enumerate(stage)]
    return units, tower.final_conv


def _swin_units(tower: nn.Module) -> tuple[list[Unit], Callable[[Tensor], Tensor]]:
    units = [Unit("stem", tower.patch_embed, ("patch_embed", "absolute_pos_embed"))]
    for s, stage in enumerate(tower.layers):
        units.append(Unit(f"layers.{s}.downsample", stage.downsample, (f"layers.{s}.downsample.",)))
        units += [Unit(f"layers.{s}.blocks.{i}", b, (f"layers.{s}.blocks.{i}.",)) for i, b in enumerate(stage.blocks)]
    return units, tower.norm


def _efficientnet_stem(tower: nn.Module, x: Tensor) -> Tensor:
    return tower.bn1(tower.conv_stem(x))


def _efficientnet_tail(tower: nn.Module, x: Tensor) -> Tensor:
    return tower.bn2(tower.conv_head(x))


def _efficientnet_units(tower: nn.Module) -> tuple[list[Unit], Callable[[Tensor], Tensor]]:
    """timm's EfficientNets (EfficientNet-Lite0): one unit per block of every stage; the head convolution
    and its norm are the tail."""
    units = [Unit("stem", partial(_efficientnet_stem, tower), ("conv_stem.", "bn1."))]
    for s, stage in enumerate(tower.blocks):
        units += [Unit(f"blocks.{s}.{i}", block, (f"blocks.{s}.{i}.",)) for i, block in enumerate(stage)]
    return units, partial(_efficientnet_tail, tower)


#: timm model class name -> its units (the steps of its forward_features) and the tail after them.
FAMILIES: dict[str, Callable[[nn.Module], tuple[list[Unit], Callable[[Tensor], Tensor]]]] = {
    "VisionTransformer": _vit_units,
    "ResNet": _resnet_units,
    "SwinTransformer": _swin_units,
    "Beit": _beit_units,
    "ByobNet": _byobnet_units,
    "EfficientNet": _efficientnet_units,
}


class TowerSplit:
    """A tower cut at its first trainable unit: `prefix` (frozen, cached) then `suffix` (trained)."""

    def __init__(self, tower: nn.Module, name: str) -> None:
        family = type(tower).__name__
        if family not in FAMILIES:
            raise UserError(f"items.image.cache=prefix: {name} ({family}) has no supported cut point; supported: "
                            f"{', '.join(FAMILIES)} towers; drop items.image.cache")
        self.tower = tower
        self.units, self.tail = FAMILIES[family](tower)
        owner = {}
        for pname, _ in tower.named_parameters():
            owner[pname] = next((i for i, u in enumerate(self.units) if pname.startswith(u.owns)), len(self.units))
        trainable = [owner[n] for n, p in tower.named_parameters() if p.requires_grad]
        self.cut = min(trainable, default=len(self.units))
        if self.cut == 0:
            raise UserError(f"items.image.cache=prefix: nothing of {name} is frozen (items.image.tune_last trains the "
                            "stem); lower items.image.tune_last or drop items.image.cache")
        self.prefix_names = sorted(n for n, i in owner.items() if i < self.cut)
        self.checkpointing = False

    @property
    def cut_name(self) -> str:
        """The first unit that runs from the cache ('tail' when every unit is frozen)."""
        return self.units[self.cut].name if self.cut < len(self.units) else "tail"

    def prefix(self, x: Tensor) -> Tensor:
        for unit in self.units[: self.cut]:
            x = unit.run(x)
        return x

    def suffix(self, x: Tensor) -> Tensor:
        """The trainable units and the tail: forward_features from the cut on."""
        for unit in self.units[self.cut :]:
            if self.checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(unit.run, x, use_reentrant=False)
            else:
                x = unit.run(x)
        return self.tail(x)

    @torch.inference_mode()
    def prefix_shape(self, preprocess: nn.Module, device: torch.device) -> tuple[int, ...]:
        """Shape of one item's prefix output (probed in eval mode: frozen BatchNorm statistics stay put)."""
        size = preprocess.size
        with evaluating(self.tower):
            return tuple(self.prefix(preprocess(torch.zeros(1, 3, size, size, dtype=torch.uint8, device=device))).shape[1:])

    def prefix_sha256(self) -> str:
        """Hash of the frozen prefix's parameters and buffers: the weights the cache depends on."""
        digest = hashlib.sha256()
        state = self.tower.state_dict()
        owned = tuple(u.owns for u in self.units[: self.cut])
        for key in sorted(state):
            if any(key.startswith(prefixes) for prefixes in owned):
                digest.update(key.encode())
                digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode inside, each submodule's own mode restored after."""
    modes = [m.training for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in zip(module.modules(), modes):
            m.training = mode


# --- the cache file ------------------------------------------------------------------------
class PrefixCache:
    """A complete cache file, opened (memory-mapped, read-only) lazily in each process."""

    def __init__(self, path: Path, sidecar: dict[str, Any]) -> None:
        self.path, self.sidecar = Path(path), sidecar
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}  # workers map the file themselves

    def read(self, item_ids: np.ndarray) -> Tensor:
        """fp16 prefix activations of items (indices >= 1): [len(item_ids), *shape]."""
        if self._array is None:
            self._array = open_npy(self.path, "remove it; training builds the cache again")
        rows = np.asarray(item_ids, dtype=np.int64) - 1
        return torch.from_numpy(np.ascontiguousarray(self._array[rows]))


def cache_identity(split: TowerSplit, *, timm_name: str, weights: str | None, pretrained: bool, tune_last: Any,
                   preprocessing: dict[str, Any], shape: tuple[int, ...], n_items: int,
                   item_order_sha256: str | None, timm_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a cache depends on; the file name carries its hash."""
    source = f"sha256:{file_sha256(weights)}" if weights else ("pretrained" if pretrained else "random")
    identity = {
        "format": FORMAT, "version": VERSION, "timm_name": timm_name, "weights": source,
        "prefix_sha256": split.prefix_sha256(), "cut": split.cut_name, "cut_index": split.cut,
        "tune_last": tune_last, "image_size": preprocessing["size"], "preprocessing": preprocessing,
        "dtype": "float16", "shape": list(shape), "n_items": n_items, "item_order_sha256": item_order_sha256,
    }
    if timm_args:  # e.g. act_layer changes the prefix's output but none of its weights
        identity["timm_args"] = {k: timm_args[k] for k in sorted(timm_args)}
    return identity


def cache_file(directory: Path, identity: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return directory / f"prefix-{identity['timm_name']}-{identity['cut']}-{digest}.npy"


def _writable_dir(directory: Path) -> Path:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".pixelrec-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"{directory}: cannot write the prefix cache here ({type(err).__name__}: {err.strerror}); "
                        "set items.cache_dir to a writable directory") from None
    return directory


def _read_sidecar(npy: Path) -> dict[str, Any] | None:
    path = sidecar_path(npy)
    if not path.is_file():
        return None
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a torn or foreign sidecar: start this cache over
    return sidecar if isinstance(sidecar, dict) and sidecar.get("format") == FORMAT else None


def _check_room(out: Path, need: int, total: int, shape: tuple[int, ...], n_items: int) -> None:
    free = shutil.disk_usage(out.parent).free
    log.info(f"prefix cache: {n_items} items x {tuple(shape)} fp16 = {total / 2**30:.2f} GiB "
             f"({need / 2**30:.2f} GiB to write, {free / 2**30:.1f} GiB free) -> {out}")
    if need > free:
        raise UserError(f"{out.parent}: not enough disk for the prefix cache: needs {need / 2**30:.2f} GiB, "
                        f"{free / 2**30:.2f} GiB free; set items.cache_dir elsewhere or drop the cache (items.image.cache, items.text.cache)")


@torch.inference_mode()
def build_prefix_cache(
    split: TowerSplit,
    preprocess: nn.Module,
    image_store: Any,
    n_items: int,
    identity: dict[str, Any],
    directory: str | Path,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    workers: int = 0,
    progress: bool = True,
) -> PrefixCache:
    """Write (or finish) the prefix activations of items 1..n_items under `directory`; returns the cache.
    One builder per cache file: another process building the same one is waited for, then reused; a
    damaged file (truncated, wrong header) is built again."""
    device = torch.device(device)
    out = cache_file(_writable_dir(Path(directory)), identity)
    with locks.hold(locks.lock_path(out), f"prefix cache {out}", wait=True):
        return _build(split, preprocess, image_store, n_items, identity, out, device, batch_size, workers, progress)


def _intact(out: Path, n_items: int, shape: tuple[int, ...]) -> str | None:
    """What is wrong with an existing cache file (a one-line reason), or None when its header and size fit."""
    try:
        info = npy_info(out, "")
    except UserError as err:
        return str(err).rstrip("; ")
    if info.shape != (n_items, *shape) or info.dtype != np.float16:
        return f"{out}: holds {info.dtype} {info.shape}, not float16 {(n_items, *shape)}"
    return None


def _build(split: TowerSplit, preprocess: nn.Module, image_store: Any, n_items: int, identity: dict[str, Any],
           out: Path, device: torch.device, batch_size: int, workers: int, progress: bool) -> PrefixCache:
    """`build_prefix_cache` holding the cache's lock: continue, reuse or (damaged) start over."""
    sidecar = _read_sidecar(out)
    if sidecar is None or {k: v for k, v in sidecar.items() if k not in PROGRESS_KEYS} != identity:
        sidecar = {**identity, "rows_done": 0, "complete": False}
    shape = tuple(identity["shape"])
    damage = _intact(out, n_items, shape) if out.is_file() and sidecar["rows_done"] else None
    if damage:
        log.warning(f"{damage}; building the prefix cache again")
        sidecar = {**identity, "rows_done": 0, "complete": False}
    if sidecar["complete"] and out.is_file():
        return PrefixCache(out, sidecar)
    row_bytes = int(np.prod(shape)) * 2
    start = int(sidecar["rows_done"]) if out.is_file() else 0
    _check_room(out, (n_items - start) * row_bytes, n_items * row_bytes, shape, n_items)
    with write_errors(out, "the prefix cache"):
        if start == 0:
            sidecar["rows_done"], sidecar["complete"] = 0, False
            write_sidecar(out, sidecar)  # first, so the file is never taken for more than it holds
            try:
                array = create_rows(out, (n_items, *shape), np.dtype(np.float16))
            except BaseException:
                sidecar_path(out).unlink(missing_ok=True)
                raise
        else:
            array = np.load(out, mmap_mode="r+", allow_pickle=False)
            allocate(out, array.offset + array.nbytes)
        with evaluating(split.tower):
            fill_item_rows(out, array, sidecar, image_store, start, n_items, batch_size, workers, device,
                           lambda images: split.prefix(preprocess(images)).float().cpu().numpy().astype(np.float16),
                           "prefix cache", progress,
                           lambda row: f"{out}: prefix output of item {row + 1} is not finite in fp16")
        del array
    return PrefixCache(out, sidecar)
