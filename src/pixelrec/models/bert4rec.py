"""BERT4Rec (Sun et al., 2019): a bidirectional Transformer trained by cloze (masked-item) prediction."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Literal

import torch
from torch import Tensor, nn

from pixelrec.data.batch import Batch
from pixelrec.data.specs import ViewSpec
from pixelrec.items.base import ItemLookup
from pixelrec.models.base import BACKBONES, Backbone, init_weights
from pixelrec.models.layers import PositionalTransformer
from pixelrec.schema import PROBABILITY, Dropout, PositiveInt


@BACKBONES.register("bert4rec")
class BERT4Rec(Backbone):
    """Hidden positions carry a learned mask token; every position attends to every real one, and the
    output at a masked position predicts the hidden item. To recommend, the next slot is the mask.

    PixelRec's form (its IDNet/bert4rec.py, BERT4RecTrainDataset): extra_slot=True (max_len + 1
    positions, training windows of max_len + 1, prediction from the last max_len items + the mask),
    head=False, force_mask=False, inner_factor=1, mask_ratio=0.6, with data.window_remainder=drop and
    data.negatives_avoid=window; as PixelNet also mask_token=encoded_ones: the mask token is the image
    encoder's vector for an all-ones input image, encoded at each step with gradients (in evaluation once
    per catalogue, as the original's extra catalogue row), instead of a learned vector.
    attention_init: `xavier` Xavier-uniform attention projections (below); `normal` N(0, 0.02) like every
    other weight, as the original's _init_weights draws them."""

    view = "masked"
    label = "BERT4Rec"
    family = "sequential"
    table_order = 4

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
        mask_token: Literal["learned", "encoded_ones"] = "learned",
        attention_init: Literal["xavier", "normal"] = "xavier",
    ) -> None:
        super().__init__()
        self.mask_ratio, self.force_mask, self.extra_slot = mask_ratio, force_mask, extra_slot
        self.mask_image = mask_token == "encoded_ones"
        if self.mask_image:  # the recommender puts that vector in each lookup
            self.item_parts = ("vectors", "ones_image")
        self.mask_token = None if self.mask_image else nn.Parameter(torch.empty(embedding_size))
        self.body = PositionalTransformer(max_len + int(extra_slot), embedding_size, n_layers, n_heads,
                                          inner_factor * embedding_size, dropout, activation)
        # The BERT4Rec paper's output transform before scoring against item vectors: dense + GELU + LayerNorm.
        self.head = nn.Sequential(
            nn.Linear(embedding_size, embedding_size), nn.GELU(), nn.LayerNorm(embedding_size, eps=1e-12)
        ) if head else nn.Identity()
        self.apply(init_weights)
        if self.mask_token is not None:
            nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.04, b=0.04)
        # A masked slot holds no item, so every bit of its prediction flows through attention. BERT's
        # fixed std 0.02 (set for width 768) starves that path at small widths and training stalls;
        # Xavier-uniform projections (torch's MultiheadAttention default) scale with the width.
        for block in self.body.blocks:
            for projection in (block.attention.qkv, block.attention.out):
                if attention_init == "normal":
                    nn.init.normal_(projection.weight, std=0.02)
                else:
                    nn.init.xavier_uniform_(projection.weight)

    def view_spec(self, data: Any) -> ViewSpec:
        """The masked view with this cloze's draw: mask_ratio, force_mask, and windows of max_len + 1
        items with extra_slot (the mask token's own slot)."""
        return replace(super().view_spec(data), mask_ratio=self.mask_ratio, force_mask=self.force_mask,
                       masked_width=data.max_len + int(self.extra_slot))

    def encode(self, x: Tensor, real: Tensor) -> Tensor:
        """x [B, L, d] input vectors (mask tokens in place), real [B, L] non-padding -> [B, L, d]."""
        return self.head(self.body(x, real, causal=False))

    def mask_vector(self, items: ItemLookup, like: Tensor) -> Tensor:
        """[d] the vector a hidden position carries: learned, or the lookup's encoded all-ones image."""
        if not self.mask_image:
            return self.mask_token.to(like.dtype)
        if items.mask_vector is None:
            raise RuntimeError("model.mask_token=encoded_ones: the item lookup carries no mask vector")
        return items.mask_vector.to(like.dtype)

    def forward(self, batch: Batch, items: ItemLookup) -> Tensor:
        x = items(batch.context)
        if batch.mask is not None:
            x = torch.where(batch.mask.unsqueeze(-1), self.mask_vector(items, x), x)
        return self.encode(x, batch.context > 0)

    def user_vectors(self, batch: Batch, items: ItemLookup) -> Tensor:
        """Append the mask token as the next item and read it out there: after the whole context with
        extra_slot, else after all but its oldest slot."""
        context = batch.context if self.extra_slot else batch.context[:, 1:]
        x = items(context)
        token = self.mask_vector(items, x).expand(x.shape[0], 1, -1)
        real = torch.cat([context > 0, context.new_ones(context.shape[0], 1, dtype=torch.bool)], 1)
        return self.encode(torch.cat([x, token], 1), real)[:, -1]
