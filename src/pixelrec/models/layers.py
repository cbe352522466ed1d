"""Shared building blocks: a post-norm Transformer block with an explicit attention mask."""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from pixelrec.models import kernels


class MultiHeadAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"model.embedding_size {dim} is not divisible by model.n_heads {n_heads}")
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        """x [B, L, d]; allowed [B, 1, L, L] (True where a query may attend to a key)."""
        return self.out(kernels.attention(self.qkv(x), self.n_heads, allowed, self.dropout, self.training))


class TransformerBlock(nn.Module):
    """Attention and feed-forward sub-layers, each with dropout, residual and LayerNorm after."""

    def __init__(self, dim: int, n_heads: int, inner_size: int, dropout: float, activation: str = "gelu") -> None:
        super().__init__()
        self.attention = MultiHeadAttention(dim, n_heads, dropout)
        self.norm1 = nn.LayerNorm(dim, eps=1e-12)
        self.ffn = nn.Sequential(
            nn.Linear(dim, inner_size), nn.GELU() if activation == "gelu" else nn.ReLU(), nn.Linear(inner_size, dim)
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-12)
        self.drop = kernels.Dropout(dropout)

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        x = self.norm1(x + self.drop(self.attention(x, allowed)))
        return self.norm2(x + self.drop(self.ffn(x)))


def attention_mask(context: Tensor, causal: bool) -> Tensor:
    """[B, 1, L, L] mask: real keys (and, if causal, only earlier ones); each query sees itself,
    so rows of padding never attend to nothing (which would give NaN)."""
    keys, itself = _key_patterns(context.shape[1], causal, context.device)
    return ((context > 0)[:, None, None, :] & keys) | itself


@functools.lru_cache(maxsize=64)
def _key_patterns(length: int, causal: bool, device: torch.device) -> tuple[Tensor, Tensor]:
    """([L, L] keys a query may see by position, [L, L] the query itself), made once per shape."""
    itself = torch.eye(length, dtype=torch.bool, device=device)
    keys = torch.ones(length, length, dtype=torch.bool, device=device)
    return (keys.tril() if causal else keys), itself


class PositionalTransformer(nn.Module):
    """Learned positions (aligned to the most recent slot) + LayerNorm + dropout + Transformer blocks:
    the body SASRec (causal) and BERT4Rec (bidirectional) share."""

    def __init__(self, max_len: int, dim: int, n_layers: int, n_heads: int, inner_size: int, dropout: float,
                 activation: str = "gelu") -> None:
        super().__init__()
        self.position = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-12)
        self.drop = kernels.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(dim, n_heads, inner_size, dropout, activation) for _ in range(n_layers))

    def forward(self, x: Tensor, real: Tensor, causal: bool) -> Tensor:
        """x [B, L, d] left-padded inputs, real [B, L] non-padding slots -> [B, L, d]."""
        h = self.drop(self.norm(x + self.position.weight[-x.shape[1] :]))
        allowed = attention_mask(real.long(), causal=causal)
        for block in self.blocks:
            h = block(h, allowed)
        return h
