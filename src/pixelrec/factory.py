"""The one place a configuration becomes a model: the item encoder, backbone and loss that a
resolved `Config` names, built with the dataset facts each component asks for by name."""

from __future__ import annotations

from typing import Any

import numpy as np

from pixelrec.config import Config
from pixelrec.data.images import ImageStore
from pixelrec.data.prepared import PreparedData
from pixelrec.data.text_tokens import ItemTexts
from pixelrec.data.views import ragged_positions
from pixelrec.errors import UserError
from pixelrec.items import ITEM_ENCODERS
from pixelrec.losses import LOSSES
from pixelrec.models import BACKBONES
from pixelrec.models.base import DATA_ARGUMENTS
from pixelrec.recommender import Recommender
from pixelrec.registry import constructor_parameters
from pixelrec.storage.feature_files import dataset_order_sha256


def build_recommender(
    model: str,
    model_args: dict[str, Any],
    items_kind: str,
    items_args: dict[str, Any],
    loss: str,
    loss_args: dict[str, Any],
    facts: "DatasetFacts",
) -> Recommender:
    """Build a recommender from plain arguments; `facts` supplies dataset facts (n_users, n_items,
    max_len, item_popularity, train_users, train_items) to the components that ask for them by name."""
    backbone_cls = BACKBONES.get(model)
    params = constructor_parameters(backbone_cls)
    dim = model_args.get("embedding_size") or getattr(params.get("embedding_size"), "default", None) or 64
    try:
        backbone = BACKBONES.create(model, **facts.for_class(backbone_cls), **model_args)
    except ValueError as err:  # settings that fit their ranges but not each other (heads vs width)
        raise UserError(f"model {model}: {err}") from None
    encoder_cls = ITEM_ENCODERS.get(items_kind)
    encoder = ITEM_ENCODERS.create(items_kind, **facts.for_class(encoder_cls), **items_args, embedding_size=dim)
    if encoder.component_count > 1 and "components" not in backbone.item_parts:
        raise UserError(f"{items_args.get('features')}: spatial features ({encoder.component_count} components per "
                        f"item), which model {model} cannot use; give it pooled features (extracted with a pooling other "
                        "than none)")
    backbone.initialise_items(encoder)
    loss_fn = LOSSES.create(loss, **facts.for_class(LOSSES.get(loss)), **loss_args)
    return Recommender(encoder, backbone, loss_fn)


class DatasetFacts:
    """Dataset facts computed only when a component's constructor asks for them by name."""

    def __init__(self, data: PreparedData, max_len: int) -> None:
        self.data, self.max_len = data, max_len

    def for_class(self, cls: type) -> dict[str, Any]:
        return {name: getattr(self, name) for name in constructor_parameters(cls) if name in DATA_ARGUMENTS}

    @property
    def n_users(self) -> int:
        return self.data.n_users

    @property
    def n_items(self) -> int:
        return self.data.n_items

    @property
    def item_popularity(self) -> np.ndarray:
        return self.data.train_popularity

    @property
    def train_users(self) -> np.ndarray:
        """User index of every training interaction (with train_items: the training edges)."""
        return np.repeat(np.arange(self.data.n_users + 1), self.data.train_end - self.data.train_start)

    @property
    def image_store(self):
        """The dataset's image store (covers as encoded bytes), for pixel item encoders."""
        if self.data.image_store_path is None:
            raise UserError(f"{self.data.root}: prepared without images; prepare it again with covers for items.kind=pixels")
        return ImageStore.from_prepared(self.data)

    @property
    def item_texts(self):
        """The dataset's item text columns, tokenised once per tokenizer, for text item encoders."""
        return ItemTexts.from_prepared(self.data)

    @property
    def item_order_sha256(self) -> str:
        """Hash of the item tokens in index order: feature files must have been written in this order."""
        return dataset_order_sha256(self.data.item_tokens)

    @property
    def train_items(self) -> np.ndarray:
        positions, _ = ragged_positions(self.data.train_start, self.data.train_end - self.data.train_start)
        return np.asarray(self.data.item_seq)[positions].astype(np.int64)


def build_model(config: Config, data: PreparedData) -> Recommender:
    items_args = {k: v for k, v in vars(config.items).items() if k != "kind"}
    loss_args = {k: v for k, v in vars(config.loss).items() if k != "name"}
    model = build_recommender(
        config.model_name, config.model_args, config.items.kind, items_args,
        config.loss.name, loss_args, DatasetFacts(data, config.data.max_len),
    )
    model.item_encoder.amp = config.train.amp
    return model
