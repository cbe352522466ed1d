"""BERT4Rec (Sun et al., 2019): a bidirectional Transformer trained by cloze (masked-item) prediction."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from torch import Tensor, nn

from pixelrec.data.batch import Batch
from pixelrec.items.base import ItemLookup
from pixelrec.models import BACKBONES
from pixelrec.models.base import Backbone, init_weights
from pixelrec.models.layers import PositionalTransformer
from pixelrec.schema import Dropout, PROBABILITY, PositiveInt


@BACKBONES.register("bert4rec")
class BERT4Rec(Backbone):
    """Hidden positions carry a learned mask token; every position attends to every real one, and the
    output at a masked position predicts the hidden item. To recommend, the next slot is the mask.

    PixelRec's form (its IDNet/bert4rec.py, BERT4RecTrainDataset): extra_slot=True (max_len + 1
    positions, training windows of max_len + 1, prediction from the last max_len items + the mask),
    head=False, force_mask=False, inner_factor=1, mask_ratio=0.6, with data.window_remainder=drop and
    data.negatives_avoid=window."""

    view = "masked"

    def __init__(
        self,
        max_len: int,
        embedding_size: PositiveInt = 64,
        n_layers: PositiveInt = 2,
        n_heads: PositiveInt = 2,
        inner_factor: PositiveInt = 2,
        dropout: Dropout = 0.1,
        activation: Literal["gelu", "relu"] = "gelu",
        mask_ratio: Annotated[float, PROBABILITY] = 0.2,
        force_mask: bool = True,
        extra_slot: bool = False,
        head: bool = True,
    ) -> None:
        super().__init__()
        self.mask_ratio, self.force_mask, self.extra_slot = mask_ratio, force_mask, extra_slot
        self.mask_token = nn.Parameter(torch.empty(embedding_size))
        self.body = PositionalTransformer(max_len + int(extra_slot), embedding_size, n_layers, n_heads,
                                          inner_factor * embedding_size, dropout, activation)
        # The BERT4Rec paper's output transform before scoring against item vectors: dense + GELU + LayerNorm.
        self.head = nn.Sequential(
            nn.Linear(embedding_size, embedding_size), nn.GELU(), nn.LayerNorm(embedding_size, eps=1e-12)
        ) if head else nn.Identity()
        self.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.04, b=0.04)
        # A masked slot holds no item, so every bit of its prediction flows through attention. BERT's
        # fixed std 0.02 (set for width 768) starves that path at small widths and training stalls;
        # Xavier-uniform projections (torch's MultiheadAttention default) scale with the width.
        for block in self.body.blocks:
            nn.init.xavier_uniform_(block.attention.qkv.weight)
            nn.init.xavier_uniform_(block.attention.out.weight)

    def encode(self, x: Tensor, real: Tensor) -> Tensor:
        """x [B, L, d] input vectors (mask tokens in place), real [B, L] non-padding -> [B, L, d]."""
        return self.head(self.body(x, real, causal=False))

    def forward(self, batch: Batch, items: ItemLookup) -> Tensor:
        x = items(batch.context)
        if batch.mask is not None:
            x = torch.where(batch.mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        return self.encode(x, batch.context > 0)

    def user_vectors(self, batch: Batch, items: ItemLookup) -> Tensor:
        """Append the mask token as the next item and read it out there: after the whole context with
        extra_slot, else after all but its oldest slot."""
        context = batch.context if self.extra_slot else batch.context[:, 1:]
        x = items(context)
        token = self.mask_token.to(x.dtype).expand(x.shape[0], 1, -1)
        real = torch.cat([context > 0, context.new_ones(context.shape[0], 1, dtype=torch.bool)], 1)
        return self.encode(torch.cat([x, token], 1), real)[:, -1]
