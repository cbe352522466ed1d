"""The composition point: Recommender = ItemEncoder x Backbone x Loss.

Every model of the benchmark is built here and nowhere else. The recommender encodes each distinct
item of a batch once (never padding), hands the backbone a lookup of those vectors and of the other
item parts it declares (`Backbone.item_parts`, as the encoder offers them), and gives the loss the user
vectors of the real targets. The backbone never holds the item encoder.
"""

from __future__ import annotations

import itertools
from typing import Callable

import torch
from torch import Tensor, nn

from pixelrec.data.batch import Batch
from pixelrec.distributed import SINGLE, Job
from pixelrec.items.base import ItemEncoder, ItemLookup
from pixelrec.losses import Loss
from pixelrec.models.base import Backbone


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
        return self.backbone.needs_catalogue or self.loss.sampling.full_catalogue

    def lookup(self, batch: Batch) -> ItemLookup:
        if self.uses_catalogue:
            return self.with_special_vectors(ItemLookup.catalogue(self.catalogue_with_grad(), self.item_parts()))
        ids = batch.distinct_items()
        vectors, special = self.item_encoder.encode(ids, batch.item_inputs, self.special_parts())
        return self.with_special_vectors(ItemLookup(ids, vectors, self.item_encoder.n_items, self.item_parts()), special)

    def special_parts(self) -> tuple[str, ...]:
        """The special vectors the backbone reads (BERT4Rec's encoded mask `ones_image`, encoded `padding`)."""
        return tuple(name for name in ("ones_image", "padding") if name in self.backbone.item_parts)

    def item_parts(self) -> dict[str, Callable[[Tensor], Tensor]]:
        """The item parts the backbone declares that the item encoder offers (ACF: ID part, components)."""
        offered = self.item_encoder.parts()
        return {name: offered[name] for name in self.backbone.item_parts if name in offered}

    def with_special_vectors(self, lookup: ItemLookup, special: dict[str, Tensor | None] | None = None) -> ItemLookup:
        """A backbone whose mask token is the encoder's vector for an all-ones image (item part
        `ones_image`: BERT4Rec mask_token=encoded_ones), or whose padding is the encoder's padding
        vector (item part `padding`: model.padding=encoded), finds it in the lookup: encoded once per
        step (`special`, when encoded with the batch's items), or per evaluation."""
        if special is None:
            special = {name: self.item_encoder.special_vector(name) for name in self.special_parts()}
        lookup.mask_vector = special.get("ones_image")
        lookup.padding_vector = special.get("padding")
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
        if users.shape[:-1] != batch.targets.shape:
            raise RuntimeError(f"{type(self.backbone).__name__} gave user vectors {tuple(users.shape)} for targets "
                               f"{tuple(batch.targets.shape)}: one vector per target slot is expected")
        targets, positions = batch.real_targets()
        if len(targets):
            users = users.reshape(-1, users.shape[-1]).index_select(0, positions)
            loss = self.loss(users, targets, batch, lambda idx: self.backbone.score_vectors(items, idx))
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
        lookup = self.with_special_vectors(ItemLookup.catalogue(table, self.item_parts()))
        scoring = self.backbone.score_vectors(lookup, torch.arange(lookup.n_items + 1, device=device))
        return lookup, scoring


