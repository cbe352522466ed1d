"""CuratorNet (Messina et al., ComplexRec 2020): item and user vectors from visual content alone.

Item vectors come from frozen features through a shared SELU network; a user is the max- and
average-pooled vectors of the consumed items, concatenated and passed through SELU layers; scores
are dot products. Having no per-user or per-item parameters, it generalises to new users and items.
Here the item encoder (items.kind=features) supplies the first linear layer (its projection of f_i);
this backbone adds SELU, `item_layers` x (Linear, SELU) on top, used for history and candidates alike.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pixelrec.data.batch import Batch
from pixelrec.items.base import ItemLookup
from pixelrec.models.base import BACKBONES, Backbone
from pixelrec.schema import NonNegativeInt, PositiveInt


def selu_layers(sizes: list[int]) -> nn.Sequential:
    """Linear + SELU for each consecutive pair of sizes, Xavier-uniform weights, zero biases."""
    layers: list[nn.Module] = []
    for width_in, width_out in zip(sizes[:-1], sizes[1:]):
        linear = nn.Linear(width_in, width_out)
        nn.init.xavier_uniform_(linear.weight)
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.SELU()]
    return nn.Sequential(*layers)


@BACKBONES.register("curatornet")
class CuratorNet(Backbone):
    """user = SELU-MLP([max_l e_l ; mean_l e_l]) over the real history, e = SELU-MLP(item vector)."""

    view = "pair"
    label = "CuratorNet"
    family = "non-sequential"
    table_order = 6

    def __init__(self, embedding_size: PositiveInt = 64, item_layers: NonNegativeInt = 1, user_layers: PositiveInt = 3,
                 hidden_factor: PositiveInt = 2) -> None:
        super().__init__()
        d, hidden = embedding_size, hidden_factor * embedding_size
        self.item_tower = nn.Sequential(nn.SELU(), selu_layers([d] * (item_layers + 1)))
        self.user_tower = selu_layers([2 * d] + [hidden] * (user_layers - 1) + [d])

    def item_vectors(self, items: ItemLookup, idx: Tensor) -> Tensor:
        return self.item_tower(items(idx)).masked_fill((idx == 0).unsqueeze(-1), 0.0)

    def forward(self, batch: Batch, items: ItemLookup) -> Tensor:
        real = (batch.context > 0).unsqueeze(-1)
        history = self.item_vectors(items, batch.context)
        lowest = torch.finfo(history.dtype).min
        most = history.masked_fill(~real, lowest).amax(1)
        most = torch.where(real.any(1), most, torch.zeros_like(most))  # an empty history pools to zeros
        mean = history.sum(1) / real.sum(1).clamp(min=1)
        return self.user_tower(torch.cat([most, mean], -1))

    def score_vectors(self, items: ItemLookup, idx: Tensor) -> Tensor:
        return self.item_vectors(items, idx)
