"""GRU4Rec (Hidasi et al., 2016), in the RecBole/PixelRec form: embedding dropout, stacked GRU
layers without biases, and a dense projection of the hidden state back to the item space."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from pixelrec.data.batch import Batch
from pixelrec.items.base import ItemLookup
from pixelrec.models import kernels
from pixelrec.models.base import BACKBONES, Backbone
from pixelrec.schema import Dropout, PositiveInt


@BACKBONES.register("gru4rec")
class GRU4Rec(Backbone):
    """A recurrent next-item model: the GRU state after position t predicts item t + 1.

    Contexts arrive left-padded and padding vectors are zeros. A GRU without biases maps a zero state
    and a zero input to a zero state, so the state is exactly zero until the first real item and the
    output at a real position equals that of the unpadded sequence, with no packing or re-alignment.
    This is why the GRU has no biases: do not add them without handling the padding.

    init: `xavier` draws an ID item table Xavier-normal, padding row included (PixelRec's IDNet/gru4rec.py).
    padding: `encoded` puts the item encoder's padding vector at padding slots (an ID table's frozen row 0,
    a pixel tower's vector for a zero image), as the original does; then the state is not zero before the
    first real item.
    """

    view = "sequence"
    label = "GRU4Rec"
    family = "sequential"
    table_order = 0

    def __init__(
        self,
        embedding_size: PositiveInt = 64,
        hidden_factor: PositiveInt = 2,
        n_layers: PositiveInt = 1,
        dropout: Dropout = 0.1,
        init: Literal["default", "xavier"] = "default",
        padding: Literal["zeros", "encoded"] = "zeros",
    ) -> None:
        super().__init__()
        self.init = init
        if padding == "encoded":  # the recommender puts the encoder's padding vector in each lookup
            self.item_parts = ("vectors", "padding")
        hidden_size = hidden_factor * embedding_size  # a multiple, so a new embedding size scales it (the paper's grid)
        self.drop = kernels.Dropout(dropout)
        self.gru = nn.GRU(embedding_size, hidden_size, n_layers, bias=False, batch_first=True)
        self.dense = nn.Linear(hidden_size, embedding_size)
        for weight in self.gru.parameters():
            nn.init.xavier_uniform_(weight)

    def item_init(self) -> tuple[str, float | None] | None:
        return ("xavier", None) if self.init == "xavier" else None

    def forward(self, batch: Batch, items: ItemLookup) -> Tensor:
        hidden, _ = self.gru(self.drop(items.padded(batch.context)))
        return self.dense(hidden)
