"""Items as cover and text together: the pixels and text encoders as parts, fused per item.

`fusion: sum` adds the two towers' item vectors (and the ID vector, `with_id`); `fusion: concat`
concatenates them and projects back to the embedding size. Each tower takes every option of its own
section, `items.image` and `items.text` (freezing, pooling, frozen-prefix cache, projection), and has its
own optimiser group: the image tower takes train.encoder_lr / encoder_weight_decay, the text tower
`items.text.lr` / `weight_decay` (by default the image tower's).

Items outside the catalogue (`pixelrec embed`) are encoded from their cover and item info through
the same forward; with `with_id` they are refused, for a new item has no learned ID vector (a zero
one would put its score on a scale the model was never trained on).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from pixelrec.data.text_tokens import ItemTexts
from pixelrec.errors import UserError
from pixelrec.items.base import ITEM_ENCODERS, ItemEncoder
from pixelrec.items.id import IDEncoder
from pixelrec.items.pixels import ImageSettings, PixelEncoder
from pixelrec.items.text import TextEncoder, TextSettings, to_device


class TextPart(TextEncoder):
    """The text encoder as the multimodal encoder's part: the same encoder, its kind named as set."""

    KIND = "items.kind=multimodal"


@ITEM_ENCODERS.register("multimodal")
class MultimodalEncoder(ItemEncoder):
    """Image tower (PixelEncoder) and text tower (TextEncoder), each to an item vector, fused."""

    catalogue_each_step = False
    needs_inputs = True
    catalogue_chunk = 256
    new_items_from = ("covers", "item info")
    encoder_tower = "image"  # --encoder names the image tower; the text model is items.text.encoder(_weights)
    label = "multimodal"
    table_order = 5
    images_per_item = 1  # one cover per item, through the image part
    image_tower = "image"

    def __init__(
        self,
        n_items: int,
        embedding_size: int,
        image_store: Any,
        item_texts: ItemTexts,
        item_order_sha256: str | None = None,
        image: ImageSettings | None = None,
        text: TextSettings | None = None,
        cache_dir: str | None = None,
        fusion: Literal["sum", "concat"] = "sum",
        with_id: bool = False,
    ) -> None:
        super().__init__(n_items, embedding_size)
        if fusion not in ("sum", "concat"):
            raise UserError(f"items.fusion: {fusion!r} is not one of sum, concat")
        self.image = PixelEncoder(n_items, embedding_size, image_store, image, cache_dir, item_order_sha256)
        self.text = TextPart(n_items, embedding_size, item_texts, text, cache_dir, item_order_sha256)
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
                {"name": "text_encoder", "params": self.text.encoder_parameters(), "lr": self.text.lr,
                 "weight_decay": self.text.weight_decay}]


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
