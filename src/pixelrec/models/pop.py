"""Most-popular baseline: every user gets the items with the most training interactions."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from pixelrec.data.batch import Batch
from pixelrec.items.base import ItemLookup
from pixelrec.models.base import BACKBONES, Backbone


@BACKBONES.register("pop")
class Popularity(Backbone):
    """Scores an item by its training popularity; nothing to train. Every model must beat it."""

    view = "pair"
    label = "Pop"
    family = "non-sequential"
    trainable = False
    scores_items_alone = False  # training counts

    def __init__(self, item_popularity: np.ndarray) -> None:
        super().__init__()
        counts = torch.as_tensor(np.asarray(item_popularity), dtype=torch.float32)
        self.register_buffer("log_popularity", torch.log1p(counts)[:, None])

    def forward(self, batch: Batch, items: ItemLookup) -> Tensor:
        return self.log_popularity.new_ones(batch.targets.shape + (1,))

    def score_vectors(self, items: ItemLookup, idx: Tensor) -> Tensor:
        return self.log_popularity[idx]
