"""SASRec (Kang & McAuley, 2018): causal self-attention over the item sequence."""

from __future__ import annotations

from torch import Tensor

from pixelrec.data.batch import Batch
from pixelrec.items.base import ItemLookup
from pixelrec.models.base import BACKBONES, Backbone, init_weights
from pixelrec.models.layers import PositionalTransformer
from pixelrec.schema import Dropout, PositiveInt


@BACKBONES.register("sasrec")
class SASRec(Backbone):
    """Next-item prediction at every position; position i attends to positions <= i."""

    view = "sequence"
    label = "SASRec"
    family = "sequential"
    table_order = 3

    def __init__(
        self,
        max_len: int,
        embedding_size: PositiveInt = 64,
        n_layers: PositiveInt = 2,
        n_heads: PositiveInt = 2,
        inner_factor: PositiveInt = 2,
        dropout: Dropout = 0.1,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        self.body = PositionalTransformer(max_len, embedding_size, n_layers, n_heads, inner_factor * embedding_size,
                                          dropout, activation)
        self.apply(init_weights)

    def forward(self, batch: Batch, items: ItemLookup) -> Tensor:
        return self.body(items(batch.context), batch.context > 0, causal=True)
