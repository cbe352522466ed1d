"""VisRank: content-based ranking by visual similarity to the items a user consumed; nothing is trained.

score(u, c) = max_l cos(f_c, f_l)   (aggregation=maximum, the PixelRec paper's setting)
            = mean_l cos(f_c, f_l)  (aggregation=average)
over the user's last `data.max_len` history items l. The average is a dot product of the candidate's
unit vector with the mean of the history's unit vectors; the maximum is not, so it overrides
`score_catalogue` with a running maximum over history positions (memory: two users x catalogue blocks).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from pixelrec.data.batch import Batch
from pixelrec.items.base import ItemLookup
from pixelrec.models.base import BACKBONES, Backbone


@BACKBONES.register("visrank")
class VisRank(Backbone):
    """Cosine similarity of frozen features (items.kind=features; items.project=false compares the raw
    features, as the paper). A user with no history scores every item 0."""

    view = "pair"
    label = "VisRank"
    family = "non-sequential"
    table_order = 7
    trainable = False
    item_kinds = ("features",)  # needs features; checked when the configuration is built

    def __init__(self, aggregation: Literal["maximum", "average"] = "maximum") -> None:
        super().__init__()
        self.aggregation = aggregation

    def score_vectors(self, items: ItemLookup, idx: Tensor) -> Tensor:
        return F.normalize(items(idx).float(), dim=-1)  # padding: zeros stay zeros

    def forward(self, batch: Batch, items: ItemLookup) -> Tensor:
        """Mean of the history's unit vectors: its dot product with a unit vector is the average cosine."""
        real = (batch.context > 0).unsqueeze(-1)
        history = self.score_vectors(items, batch.context).masked_fill(~real, 0.0)
        return history.sum(1) / real.sum(1).clamp(min=1)

    def score_catalogue(self, batch: Batch, items: ItemLookup, scoring: Tensor) -> Tensor:
        if self.aggregation == "average":
            return super().score_catalogue(batch, items, scoring)
        catalogue = scoring.float()
        best = torch.full((len(batch), catalogue.shape[0]), float("-inf"), device=catalogue.device)
        for position in range(batch.context.shape[1]):  # a loop over history positions, vectorised over users
            column = batch.context[:, position]
            similarity = catalogue[column] @ catalogue.T
            best = torch.maximum(best, similarity.masked_fill((column == 0).unsqueeze(-1), float("-inf")))
        return best.masked_fill(best == float("-inf"), 0.0)
