"""Items as cover and text together: the pixels and text encoders as parts, fused per item.

`fusion: sum` adds the two towers' item vectors (and the ID vector, `with_id`); `fusion: concat`
concatenates them and projects back to the embedding size. Each tower keeps its own freezing
(`tune_last` for the image, `text_tune_last` for the text), pooling, frozen-prefix cache and optimiser
group: the image tower takes train.encoder_lr / encoder_weight_decay, the text tower `text_lr` /
`text_weight_decay` (by default the image tower's).

Items outside the catalogue (`pixelrec embed`) are encoded from their cover and item info through
the same forward; with `with_id` they are refused, for a new item has no learned ID vector (a zero
one would put its score on a scale the model was never trained on).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from pixelrec.data.text_tokens import ItemTexts
from pixelrec.errors import UserError
from pixelrec.items.base import ITEM_ENCODERS, ItemEncoder
from pixelrec.items.id import IDEncoder
from pixelrec.items.pixels import PixelEncoder
from pixelrec.items.text import DEFAULT_FIELDS, TextEncoder, to_device


class TextPart(TextEncoder):
    """The text encoder as the multimodal encoder's part: the same encoder, its keys named as set."""

    KEYS: ClassVar[dict[str, str]] = {"encoder": "items.text_encoder", "encoder_weights": "items.text_encoder_weights",
                                      "tune_last": "items.text_tune_last", "pooling": "items.text_pooling",
                                      "cache": "items.text_cache", "kind": "items.kind=multimodal"}


@ITEM_ENCODERS.register("multimodal")
class MultimodalEncoder(ItemEncoder):
    """Image tower (PixelEncoder) and text tower (TextEncoder), each to an item vector, fused."""

    catalogue_each_step = False
    needs_inputs = True
    catalogue_chunk = 256
    new_items_from = ("covers", "item info")
    label = "multimodal"
    table_order = 5
    images_per_item = 1  # one cover per item, through the image part
    image_tower = "image"
    text_model_key = "text_encoder"

    def __init__(
        self,
        n_items: int,
        embedding_size: int,
        image_store: Any,
        item_texts: ItemTexts,
        item_order_sha256: str | None = None,
        encoder: str | None = None,
        encoder_weights: str | None = None,
        pretrained: bool = False,
        image_size: int | None = None,
        tune_last: int | str = 2,
        pooling: str = "default",
        preprocess: Literal["encoder", "paper"] = "encoder",
        frozen_mode: Literal["eval", "train"] = "eval",
        timm_args: dict[str, Any] | None = None,
        cache: str | None = None,
        cache_dir: str | None = None,
        text_encoder: str | None = None,
        text_encoder_weights: str | None = None,
        text_fields: Sequence[str] = DEFAULT_FIELDS,
        max_tokens: int = 32,
        text_pooling: str = "mean",
        text_tune_last: int | str = 2,
        text_cache: str | None = None,
        text_lr: float | None = None,
        text_weight_decay: float | None = None,
        fusion: Literal["sum", "concat"] = "sum",
        with_id: bool = False,
        dnn_layers: int = 0,
        activation: str = "gelu",
    ) -> None:
        super().__init__(n_items, embedding_size)
        if fusion not in ("sum", "concat"):
            raise UserError(f"items.fusion: {fusion!r} is not one of sum, concat")
        self.image = PixelEncoder(
            n_items, embedding_size, image_store, encoder=encoder, encoder_weights=encoder_weights,
            pretrained=pretrained, image_size=image_size, tune_last=tune_last, pooling=pooling, dnn_layers=dnn_layers,
            activation=activation, preprocess=preprocess, cache=cache, cache_dir=cache_dir,
            item_order_sha256=item_order_sha256, timm_args=timm_args, frozen_mode=frozen_mode,
        )
        self.text = TextPart(
            n_items, embedding_size, item_texts, encoder=text_encoder, encoder_weights=text_encoder_weights,
            text_fields=text_fields, max_tokens=max_tokens, pooling=text_pooling, tune_last=text_tune_last,
            dnn_layers=dnn_layers, activation=activation, cache=text_cache, cache_dir=cache_dir,
            item_order_sha256=item_order_sha256,
        )
        self.text_lr, self.text_weight_decay = text_lr, text_weight_decay
        self.ids = IDEncoder(n_items, embedding_size) if with_id else None
        self.fusion = fusion
        parts = 2 + int(with_id)
        self.fuse = nn.Linear(parts * embedding_size, embedding_size) if fusion == "concat" else None

    def load_inputs(self, item_ids: np.ndarray) -> tuple[Any, Any]:
        """(the image part's inputs, the text part's inputs)."""
        return self.image.load_inputs(item_ids), self.text.load_inputs(item_ids)

    def new_item_inputs(self, new: Any) -> "PartRows":
        """(cover, text) inputs of items outside the catalogue, each as its tower reads them; refused
        with items.with_id: a new item has no learned ID vector."""
        if self.ids is not None:
            raise UserError("items.with_id=true: the run adds a learned ID vector to each item, and an item outside "
                            "the catalogue has none; new items need a run without items.with_id")
        return PartRows(self.image.new_item_inputs(new), self.text.new_item_inputs(new))

    def forward(self, item_ids: Tensor, inputs: Any = None) -> Tensor:
        if inputs is None:
            inputs = self.load_inputs(item_ids.cpu().numpy())
        images, texts = to_device(inputs, item_ids.device)
        vectors = [self.image(item_ids, images), self.text(item_ids, texts)]
        if self.ids is not None:
            vectors.append(self.ids(item_ids))
        if self.fuse is not None:
            return self.fuse(torch.cat(vectors, -1))
        return torch.stack(vectors).sum(0)

    def prepare(self, device: torch.device, train: Any = None, workers: int = 0, progress: bool = True) -> None:
        """Each tower's own set-up (memory savers, frozen-prefix caches)."""
        self.image.prepare(device, train, workers, progress)
        self.text.prepare(device, train, workers, progress)

    def caveats(self, carried: bool = False) -> list[dict[str, Any]]:
        """The image tower's (see PixelEncoder.caveats)."""
        return self.image.caveats(carried)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Both towers' encoder parameters; the ID vectors and the fusion take the recommender's rate."""
        return self.image.encoder_parameters() + self.text.encoder_parameters()

    def encoder_groups(self) -> list[dict[str, Any]]:
        """The image tower at the encoder rate and decay, the text tower at its own (None: the same)."""
        return [{"name": "encoder", "params": self.image.encoder_parameters(), "lr": None, "weight_decay": None},
                {"name": "text_encoder", "params": self.text.encoder_parameters(), "lr": self.text_lr,
                 "weight_decay": self.text_weight_decay}]


class Parts:
    """A batch of (image inputs, text inputs) that moves to a device as one batch tensor does (not a
    tuple: a DataLoader would hand that back as a list)."""

    def __init__(self, *parts: Any) -> None:
        self.parts = parts

    def to(self, device: torch.device, non_blocking: bool = False) -> tuple[Any, ...]:
        return to_device(self.parts, device)


class PartRows:
    """Row source of both towers' inputs: `read(rows)` -> Parts(image part's, text part's)."""

    def __init__(self, images: Any, texts: Any) -> None:
        self.images, self.texts = images, texts

    def read(self, rows: np.ndarray) -> Parts:
        return Parts(self.images.read(rows), self.texts.read(rows))
