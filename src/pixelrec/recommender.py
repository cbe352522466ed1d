"""The composition point: Recommender = ItemEncoder x Backbone x Loss.

Every model of the benchmark is built here and nowhere else. The recommender encodes each distinct
item of a batch once (never padding), hands the backbone a lookup of those vectors, and gives the
loss the user vectors of the real targets.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pixelrec.data.batch import Batch
from pixelrec.data.prepared import PreparedData
from pixelrec.data.views import ragged_positions
from pixelrec.distributed import SINGLE, Job
from pixelrec.errors import UserError
from pixelrec.items.base import ItemEncoder, ItemLookup
from pixelrec.losses import Loss
from pixelrec.models.base import DATA_ARGUMENTS, Backbone
from pixelrec.registry import constructor_parameters


class Recommender(nn.Module):
    def __init__(self, item_encoder: ItemEncoder, backbone: Backbone, loss: Loss) -> None:
        super().__init__()
        self.item_encoder = item_encoder
        self.backbone = backbone
        self.loss = loss

    @property
    def device(self) -> torch.device:
        """Where the model lives: a parameter's device, else a buffer's (a rule-based model may have no
        parameters at all, e.g. VisRank over raw features)."""
        for tensor in itertools.chain(self.parameters(), self.buffers()):
            return tensor.device
        return torch.device("cpu")

    @property
    def uses_catalogue(self) -> bool:
        return self.backbone.needs_catalogue or self.loss.full_catalogue

    def lookup(self, batch: Batch) -> ItemLookup:
        if self.uses_catalogue:
            return self.with_mask_vector(ItemLookup.catalogue(self.catalogue_with_grad()))
        ids = batch.distinct_items()
        vectors = self.item_encoder(ids, batch.item_inputs)
        return self.with_mask_vector(ItemLookup(ids, vectors, self.item_encoder.n_items))

    def with_mask_vector(self, lookup: ItemLookup) -> ItemLookup:
        """A backbone whose mask token is the encoder's vector for an all-ones image (BERT4Rec
        mask_token=encoded_ones) finds it in the lookup: encoded once per step, or per evaluation."""
        if self.backbone.mask_image:
            lookup.mask_vector = self.item_encoder.ones_image_vector()
        lookup.encoder = self.item_encoder  # for backbones that ask for an item's ID part or components
        return lookup

    def catalogue_with_grad(self) -> Tensor:
        device = self.device
        ids = torch.arange(1, self.item_encoder.n_items + 1, device=device)
        vectors = self.item_encoder(ids, None)
        return torch.cat([vectors.new_zeros(1, vectors.shape[-1]), vectors])

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """Training step output: {"loss": scalar, "images": distinct items encoded}."""
        items = self.lookup(batch)
        users = self.backbone(batch, items)
        valid = batch.targets > 0
        targets, _ = batch.flat_targets()
        if len(targets):
            loss = self.loss(users[valid], targets, batch, lambda idx: self.backbone.score_vectors(items, idx))
        else:  # a share without targets (PixelRec's one-item windows, a cloze draw that hid nothing): no loss
            loss = users.sum() * 0.0  # zero gradients keep every rank's step in line under DDP
        return {"loss": loss, "items_encoded": torch.tensor(float(len(items.item_ids)))}

    @torch.no_grad()
    def catalogue_vectors(self, batch_size: int = 4096, workers: int = 0,
                          job: Job = SINGLE) -> tuple[ItemLookup, Tensor]:
        """(lookup of every item, scoring vectors [n_items + 1, d]) for one evaluation; under several
        ranks the item encoder's work is shared out."""
        device = self.device
        table = self.item_encoder.catalogue(batch_size, device, workers, job)
        lookup = self.with_mask_vector(ItemLookup.catalogue(table))
        scoring = self.backbone.score_vectors(lookup, torch.arange(lookup.n_items + 1, device=device))
        return lookup, scoring


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
    from pixelrec.items import ITEM_ENCODERS
    from pixelrec.losses import LOSSES
    from pixelrec.models import BACKBONES

    backbone_cls = BACKBONES.get(model)
    params = constructor_parameters(backbone_cls)
    dim = model_args.get("embedding_size") or getattr(params.get("embedding_size"), "default", None) or 64
    try:
        backbone = BACKBONES.create(model, **facts.for_class(backbone_cls), **model_args)
    except ValueError as err:  # settings that fit their ranges but not each other (heads vs width)
        raise UserError(f"model {model}: {err}") from None
    encoder_cls = ITEM_ENCODERS.get(items_kind)
    encoder = ITEM_ENCODERS.create(items_kind, **facts.for_class(encoder_cls), **items_args, embedding_size=dim)
    if encoder.component_count > 1 and not backbone.uses_components:
        raise UserError(f"{items_args.get('features')}: spatial features ({encoder.component_count} components per "
                        f"item), which model {model} cannot use; give it pooled features (extract without --pooling none)")
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
        from pixelrec.data.images import ImageStore

        if self.data.image_store_path is None:
            raise UserError(f"{self.data.root}: prepared without images; prepare it again with covers for items.kind=pixels")
        return ImageStore.from_prepared(self.data)

    @property
    def item_texts(self):
        """The dataset's item text columns, tokenised once per tokenizer, for text item encoders."""
        from pixelrec.data.text_tokens import ItemTexts

        return ItemTexts.from_prepared(self.data)

    @property
    def item_order_sha256(self) -> str:
        """Hash of the item tokens in index order: feature files must have been written in this order."""
        from pixelrec.storage.feature_files import dataset_order_sha256

        return dataset_order_sha256(self.data.item_tokens)

    @property
    def train_items(self) -> np.ndarray:
        positions, _ = ragged_positions(self.data.train_start, self.data.train_end - self.data.train_start)
        return np.asarray(self.data.item_seq)[positions].astype(np.int64)
