"""DSSM (Huang et al. 2013) as a two-tower recommender: the user is the pooled history of items."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from pixelrec.data.batch import Batch
from pixelrec.data.specs import ViewSpec
from pixelrec.items.base import ItemLookup
from pixelrec.models import kernels
from pixelrec.models.base import BACKBONES, Backbone
from pixelrec.schema import Dropout, NonNegativeInt, Positive, PositiveInt


def tower(dim: int, n_layers: int, dropout: float) -> nn.Module:
    """n_layers of Linear + tanh (DSSM's activation), width `dim`; zero layers is the identity."""
    if n_layers == 0:
        return nn.Identity()
    layers: list[nn.Module] = []
    for _ in range(n_layers):
        linear = nn.Linear(dim, dim)
        nn.init.xavier_normal_(linear.weight)  # keeps the tanh inputs at unit scale, unlike std 0.02
        nn.init.zeros_(linear.bias)
        layers += [kernels.Dropout(dropout), linear, nn.Tanh()]
    return nn.Sequential(*layers)


@BACKBONES.register("dssm")
class DSSM(Backbone):
    """A user tower over the mean of the user's real history item vectors and an item tower over
    the item vector, scored by cosine / temperature (Huang et al.'s smoothed cosine) or by dot
    product. With n_layers=0 and dot product it is PixelRec's IDNet DSSM (mean history . item).

    init: `xavier` draws an ID item table Xavier-normal (IDNet/dssm.py). first_row_only: each step trains
    only its batch's first row, as IDNet/dssm.py does (a bug, off by default)."""

    view = "pair"
    label = "DSSM"
    family = "non-sequential"
    table_order = 2

    def __init__(
        self,
        embedding_size: PositiveInt = 64,
        n_layers: NonNegativeInt = 1,
        dropout: Dropout = 0.0,
        similarity: Literal["cosine", "dot"] = "cosine",
        temperature: Positive = 0.1,
        init: Literal["default", "xavier"] = "default",
        first_row_only: bool = False,
    ) -> None:
        super().__init__()
        self.similarity, self.temperature = similarity, temperature
        self.init, self.first_row_only = init, first_row_only
        self.user_tower = tower(embedding_size, n_layers, dropout)
        self.item_tower = tower(embedding_size, n_layers, dropout)

    def view_spec(self, data: Any) -> ViewSpec:
        """The history is pooled as a set, so it may be its window's other items (data.pair_context=window:
        PixelRec's batches of windows of leave-one-out rows, SampleTwoTowerTrainDataset)."""
        return replace(super().view_spec(data), pair_context=data.pair_context, first_row_only=self.first_row_only)

    def item_init(self) -> tuple[str, float | None] | None:
        return ("xavier", None) if self.init == "xavier" else None

    def forward(self, batch: Batch, items: ItemLookup) -> Tensor:
        real = (batch.context > 0).unsqueeze(-1)
        total = items(batch.context).masked_fill(~real, 0.0).sum(1)
        pooled = total / real.sum(1).clamp(min=1)  # an empty history (first interaction) pools to zeros
        user = self.user_tower(pooled)
        if self.similarity == "cosine":
            user = F.normalize(user, dim=-1) / self.temperature  # normalize maps zeros to zeros, not NaN
        return user

    def score_vectors(self, items: ItemLookup, idx: Tensor) -> Tensor:
        vectors = self.item_tower(items(idx))
        if self.similarity == "cosine":
            vectors = F.normalize(vectors, dim=-1)
        return vectors.masked_fill((idx == 0).unsqueeze(-1), 0.0)
