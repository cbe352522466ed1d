"""Items as raw cover pixels through an image encoder trained end to end (PixelNet)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from pixelrec.errors import UserError
from pixelrec.items import ITEM_ENCODERS
from pixelrec.items.base import ItemEncoder
from pixelrec.items.image_tower import Preprocess, check_pooling, create_tower, freeze_below, frozen_modules, pool


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

    def train(self, mode: bool = True) -> "PixelEncoder":
        super().train(mode)
        for module in self._frozen:  # frozen layers keep inference behaviour (BatchNorm stats, no dropout)
            module.eval()
        return self

    def load_inputs(self, item_ids: np.ndarray) -> Tensor:
        return self.image_store.read(np.asarray(item_ids))

    def forward(self, item_ids: Tensor, inputs: Any = None) -> Tensor:
        if inputs is None:
            inputs = self.load_inputs(item_ids.cpu().numpy()).to(item_ids.device)
        features = self.tower.forward_features(self.preprocess(inputs))
        return self.projection(pool(self.tower, features, self.pooling))

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The image tower's trainable layers (the projection takes the recommender's rate)."""
        return [p for p in self.tower.parameters() if p.requires_grad]
