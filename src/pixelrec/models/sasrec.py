"""SASRec (Kang & McAuley, 2018): causal self-attention over the item sequence."""

from __future__ import annotations

from torch import Tensor, nn

from pixelrec.data.batch import Batch
from pixelrec.items.base import ItemLookup
from pixelrec.models import BACKBONES
from pixelrec.models.base import Backbone, init_weights
from pixelrec.models.layers import TransformerBlock, attention_mask


@BACKBONES.register("sasrec")
class SASRec(Backbone):
    """Next-item prediction at every position; position i attends to positions <= i."""

    view = "sequence"

    def __init__(
        self,
        max_len: int,
        embedding_size: int = 64,
        n_layers: int = 2,
        n_heads: int = 2,
        inner_size: int | None = None,
        dropout: float = 0.1,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        inner_size = inner_size or 2 * embedding_size  # the paper's "inner x2"
        self.position = nn.Embedding(max_len, embedding_size)
        self.norm = nn.LayerNorm(embedding_size, eps=1e-12)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(embedding_size, n_heads, inner_size, dropout, activation) for _ in range(n_layers)
        )
        self.apply(init_weights)

    def forward(self, batch: Batch, items: ItemLookup) -> Tensor:
        context = batch.context
        positions = self.position.weight[-context.shape[1] :]  # left-padded: last slot = most recent
        x = self.drop(self.norm(items(context) + positions))
        allowed = attention_mask(context, causal=True)
        for block in self.blocks:
            x = block(x, allowed)
        return x
