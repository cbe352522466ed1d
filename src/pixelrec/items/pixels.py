"""Items as raw cover pixels through an image encoder trained end to end (PixelNet)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from pixelrec.errors import UserError
from pixelrec.items import ITEM_ENCODERS
from pixelrec.items.base import ItemEncoder
from pixelrec.items.image_tower import (
    Preprocess, check_pooling, create_tower, freeze_below, frozen_modules, is_convolutional, pool,
    timm_name,
)
from pixelrec.items.prefix_cache import PrefixCache, TowerSplit, build_prefix_cache, cache_identity


def projection(in_features: int, out_features: int, hidden_layers: int, activation: str) -> nn.Sequential:
    """An MLP from the pooled image features to the recommender's embedding size."""
    act = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}
    if activation not in act:
        raise UserError(f"items.activation: {activation!r} is not one of {', '.join(act)}")
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, out_features), act[activation]()]
        width = out_features
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


@ITEM_ENCODERS.register("pixels")
class PixelEncoder(ItemEncoder):
    """timm image tower (top layers trainable) -> pooling -> projection MLP -> item vector.

    Images come from the prepared image store as uint8 (loaded in DataLoader workers by
    `load_inputs`) and are resized and normalised on the device, as the encoder expects.
    """

    catalogue_each_step = False
    needs_inputs = True
    catalogue_chunk = 256

    def __init__(
        self,
        n_items: int,
        embedding_size: int,
        image_store: Any,
        encoder: str | None = None,
        encoder_weights: str | None = None,
        pretrained: bool = False,
        image_size: int | None = None,
        tune_last: int | str = 2,
        pooling: str = "default",
        dnn_layers: int = 0,
        activation: str = "gelu",
        preprocess: Literal["encoder", "paper"] = "encoder",
        cache: str | None = None,
        cache_dir: str | None = None,
        item_order_sha256: str | None = None,
    ) -> None:
        super().__init__(n_items, embedding_size)
        if encoder is None:
            raise UserError("items.kind=pixels needs an image encoder: --encoder NAME (e.g. clip-vit-b32, test_vit)")
        self.image_store = image_store
        self.tower = create_tower(encoder, encoder_weights, pretrained, image_size)
        check_pooling(self.tower, pooling, encoder)
        freeze_below(self.tower, tune_last)
        self.pooling = pooling
        self.preprocess = Preprocess(self.tower, image_size, preprocess)
        self.projection = projection(self.tower.num_features, embedding_size, dnn_layers, activation)
        self._frozen = frozen_modules(self.tower)
        if cache not in (None, "none", "prefix"):
            raise UserError(f"items.cache: {cache!r} is not one of none, prefix")
        self.cache_mode, self.cache_dir = (cache if cache != "none" else None), cache_dir
        self.item_order_sha256 = item_order_sha256
        self._encoder_args = (encoder, encoder_weights, pretrained, tune_last)
        # the cut is found now, so an unsupported family is refused before any training starts
        self.split = TowerSplit(self.tower, encoder) if self.cache_mode == "prefix" else None
        self.cache: PrefixCache | None = None
        self.channels_last = False
        self._features = self._tower_features

    def train(self, mode: bool = True) -> "PixelEncoder":
        super().train(mode)
        for module in self._frozen:  # frozen layers keep inference behaviour (BatchNorm stats, no dropout)
            module.eval()
        return self

    def load_inputs(self, item_ids: np.ndarray) -> Tensor:
        """uint8 images, or fp16 prefix activations once the prefix cache is built."""
        if self.cache is not None:
            return self.cache.read(np.asarray(item_ids))
        return self.image_store.read(np.asarray(item_ids))

    def forward(self, item_ids: Tensor, inputs: Any = None) -> Tensor:
        if inputs is None:
            inputs = self.load_inputs(item_ids.cpu().numpy()).to(item_ids.device)
        return self.projection(pool(self.tower, self._features(inputs), self.pooling))

    def _tower_features(self, inputs: Tensor) -> Tensor:
        """forward_features from images (uint8) or from cached prefix activations (fp16)."""
        memory = torch.channels_last if self.channels_last and inputs.dim() == 4 else torch.contiguous_format
        if inputs.dtype == torch.uint8:
            return self.tower.forward_features(self.preprocess(inputs).contiguous(memory_format=memory))
        if self.split is None:
            raise RuntimeError("prefix activations given to an encoder without items.cache=prefix")
        return self.split.suffix(inputs.float().contiguous(memory_format=memory))

    def prepare(self, device: torch.device, train: Any = None, workers: int = 0, progress: bool = True) -> None:
        """Before training: memory savers from `train` (grad_checkpointing, channels_last, compile),
        then the frozen-prefix cache when items.cache=prefix (built on `device`)."""
        if getattr(train, "grad_checkpointing", False):
            self.tower.set_grad_checkpointing(True)
            if self.split is not None:
                self.split.checkpointing = True
        if getattr(train, "channels_last", False) and is_convolutional(self.tower):
            self.tower.to(memory_format=torch.channels_last)
            self.channels_last = True
        if self.split is not None:
            self.cache = self.build_cache(device, workers=workers, progress=progress)
        if getattr(train, "compile", False):
            self._features = torch.compile(self._tower_features)

    def build_cache(self, device: torch.device, batch_size: int | None = None, workers: int = 0,
                    progress: bool = True) -> PrefixCache:
        """Write (or reuse, or finish) the frozen-prefix cache of every item for the tower's current weights."""
        assert self.split is not None
        encoder, weights, pretrained, tune_last = self._encoder_args
        identity = cache_identity(
            self.split, timm_name=timm_name(encoder), weights=weights, pretrained=pretrained, tune_last=tune_last,
            preprocessing=self.preprocess.describe(), shape=self.split.prefix_shape(self.preprocess, device),
            n_items=self.n_items, item_order_sha256=self.item_order_sha256,
        )
        return build_prefix_cache(self.split, self.preprocess, self.image_store, self.n_items, identity,
                                  self._cache_directory(), device=device, batch_size=batch_size or self.catalogue_chunk,
                                  workers=workers, progress=progress)

    def _cache_directory(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir)
        store = getattr(self.image_store, "path", None)
        if store is None:
            raise UserError("items.cache=prefix: the image store has no location; set items.cache_dir")
        return Path(store).parent / "prefix_cache"

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The image tower's trainable layers (the projection takes the recommender's rate)."""
        return [p for p in self.tower.parameters() if p.requires_grad]
