"""LightSANs (Fan et al., 2021): low-rank decomposed self-attention with decoupled position encoding.

Where RecBole's code (which PixelRec uses) departs from the paper, this follows the paper: attention
weights are normalised over the keys (interests, positions), not over the queries, and position
logits are scaled once by 1/sqrt(2 d_head). Padding is kept out of the interests and the position
attention, which the original leaves to zero padding vectors. `attention: recbole` computes RecBole's
form instead (what the PixelRec paper's numbers come from): weights normalised over the queries,
position logits scaled by 1/sqrt(2 d_head) and again by 1/sqrt(d_head), padding not masked, interests
drawn from N(0, 1).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from pixelrec.data.batch import Batch
from pixelrec.items.base import ItemLookup
from pixelrec.models import kernels
from pixelrec.models.base import BACKBONES, Backbone, init_weights
from pixelrec.schema import Dropout, PositiveInt


def masked_softmax(logits: Tensor, keep: Tensor, dim: int) -> Tensor:
    """Softmax over `dim` ignoring entries where `keep` is False; a row with none kept gives
    uniform weights rather than NaN."""
    return torch.where(keep, logits, torch.finfo(logits.dtype).min).softmax(dim)


class LowRankAttention(nn.Module):
    """Queries attend to k latent interests instead of L items (item-to-interest aggregation of keys
    and values), plus a position-to-position attention computed from positions alone."""

    def __init__(self, dim: int, n_heads: int, k_interests: int, dropout: float, recbole: bool = False) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"model.embedding_size {dim} is not divisible by model.n_heads {n_heads}")
        self.n_heads, self.recbole = n_heads, recbole
        self.qkv = nn.Linear(dim, 3 * dim)
        self.key_interests = nn.Linear(dim, k_interests, bias=False)  # Theta_K: items -> interests
        self.value_interests = nn.Linear(dim, k_interests, bias=False)  # Theta_V
        self.position_norm = nn.LayerNorm(dim, eps=1e-12)
        self.position_qk = nn.Linear(dim, 2 * dim)
        self.attention_drop = kernels.Dropout(dropout)
        self.out = nn.Linear(dim, dim)
        self.drop = kernels.Dropout(dropout)
        self.norm = nn.LayerNorm(dim, eps=1e-12)

    def heads(self, x: Tensor) -> Tensor:
        """[..., n, d] -> [..., h, n, d / h]"""
        return x.unflatten(-1, (self.n_heads, -1)).transpose(-3, -2)

    def forward(self, x: Tensor, positions: Tensor, real: Tensor) -> Tensor:
        """x [B, L, d], positions [L, d], real [B, L] -> [B, L, d]"""
        query, keys, values = self.qkv(x).chunk(3, -1)
        keep = torch.ones_like(real) if self.recbole else real  # RecBole lets padding take part
        key_weights = masked_softmax(self.key_interests(keys), keep.unsqueeze(-1), dim=1)  # [B, L, k], over items
        value_weights = masked_softmax(self.value_interests(values), keep.unsqueeze(-1), dim=1)
        interest_keys = self.heads(key_weights.transpose(1, 2) @ keys)  # [B, h, k, d/h]
        interest_values = self.heads(value_weights.transpose(1, 2) @ values)
        query = self.heads(query)  # [B, h, L, d/h]
        scale = query.shape[-1] ** -0.5
        over = -2 if self.recbole else -1  # RecBole normalises over the queries
        item_attention = (query @ interest_keys.transpose(-1, -2) * scale).softmax(over)  # [B, h, L, k]
        item_part = self.attention_drop(item_attention) @ interest_values

        p = self.position_norm(positions)
        position_query, position_key = (self.heads(t) for t in self.position_qk(p).chunk(2, -1))  # [h, L, d/h]
        position_logits = position_query @ position_key.transpose(-1, -2)
        position_logits = position_logits * (2 * query.shape[-1]) ** -0.5  # [h, L, L]
        if self.recbole:
            position_logits = position_logits * scale
        position_attention = masked_softmax(position_logits, keep[:, None, None, :], dim=over)  # [B, h, L, L]
        position_part = self.attention_drop(position_attention) @ self.heads(values)

        merged = (item_part + position_part).transpose(1, 2).flatten(2)
        return self.norm(x + self.drop(self.out(merged)))


class LightTransformerBlock(nn.Module):
    """Low-rank attention and a feed-forward sub-layer, each with dropout, residual and LayerNorm after."""

    def __init__(
        self, dim: int, n_heads: int, k_interests: int, inner_size: int, dropout: float, activation: str,
        recbole: bool = False,
    ) -> None:
        super().__init__()
        self.attention = LowRankAttention(dim, n_heads, k_interests, dropout, recbole)
        self.ffn = nn.Sequential(
            nn.Linear(dim, inner_size), nn.GELU() if activation == "gelu" else nn.ReLU(), nn.Linear(inner_size, dim)
        )
        self.drop = kernels.Dropout(dropout)
        self.norm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: Tensor, positions: Tensor, real: Tensor) -> Tensor:
        x = self.attention(x, positions, real)
        return self.norm(x + self.drop(self.ffn(x)))


@BACKBONES.register("lightsans")
class LightSANs(Backbone):
    """Self-attention in O(L k) instead of O(L^2): each item attends to k latent interests pooled from
    the sequence; positions enter only through their own attention map, never added to items.
    The most recent position's output predicts the next item (one target per example).

    padding: `encoded` puts the item encoder's padding vector at padding slots before the input LayerNorm
    (an ID table's row 0, drawn N(0, 0.02) and never trained; a pixel tower's vector for a zero image), as
    the PixelRec code does; with attention=recbole, which masks no padding, those slots take part in the
    interest pooling. `zeros`: the slots hold LayerNorm(0)."""

    view = "prefixes"
    label = "LightSANs"
    family = "sequential"
    table_order = 5

    def __init__(
        self,
        max_len: int,
        embedding_size: PositiveInt = 64,
        n_layers: PositiveInt = 1,
        n_heads: PositiveInt = 2,
        k_interests: PositiveInt = 3,
        inner_factor: PositiveInt = 2,
        dropout: Dropout = 0.1,
        activation: Literal["gelu", "relu"] = "gelu",
        attention: Literal["normalised", "recbole"] = "normalised",
        padding: Literal["zeros", "encoded"] = "zeros",
    ) -> None:
        super().__init__()
        if padding == "encoded":  # the recommender puts the encoder's padding vector in each lookup
            self.item_parts = ("vectors", "padding")
        recbole = attention == "recbole"
        self.position = nn.Embedding(max_len, embedding_size)
        self.norm = nn.LayerNorm(embedding_size, eps=1e-12)
        self.drop = kernels.Dropout(dropout)
        self.blocks = nn.ModuleList(
            LightTransformerBlock(embedding_size, n_heads, k_interests, inner_factor * embedding_size, dropout, activation,
                                  recbole)
            for _ in range(n_layers)
        )
        self.apply(init_weights)
        for block in self.blocks:  # distinct interests from the start (the original draws them N(0, 1))
            for theta in (block.attention.key_interests, block.attention.value_interests):
                nn.init.normal_(theta.weight, std=1.0 if recbole else embedding_size**-0.5)

    def forward(self, batch: Batch, items: ItemLookup) -> Tensor:
        context = batch.context
        positions = self.position.weight[-context.shape[1] :]  # left-padded: last slot = most recent
        real = context > 0
        x = self.drop(self.norm(items.padded(context)))
        for block in self.blocks:
            x = block(x, positions, real)
        return x[:, -1]
