"""Shared building blocks: a post-norm Transformer block with an explicit attention mask, and the
packing that runs its per-item layers on a batch's real slots only."""

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

    def forward(self, x: Tensor, allowed: Tensor, slots: Packing | None = None) -> Tensor:
        """x [B, L, d], or [N, d] the real slots of `slots`; allowed [B, 1, L, L] (True where a query
        may attend to a key) -> the same shape as x."""
        qkv = self.qkv(x)
        y = kernels.attention(slots.unpack(qkv) if slots else qkv, self.n_heads, allowed, self.dropout, self.training)
        return self.out(slots.pack(y) if slots else y)


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

    def forward(self, x: Tensor, allowed: Tensor, slots: Packing | None = None) -> Tensor:
        """x [B, L, d], or [N, d] the real slots of `slots` (every layer but attention works per slot)."""
        x = self.norm1(x + self.drop(self.attention(x, allowed, slots)))
        return self.norm2(x + self.drop(self.ffn(x)))


class Packing:
    """The real (non-padding) slots of a [B, L] batch, as rows of its flattened [B * L] grid. Padding
    slots never reach a loss: no real slot attends to them, and their own outputs are read by nothing.
    Packed, the per-slot layers (projections, feed-forward, LayerNorm, dropout) skip them; attention
    alone runs on the full grid, where each padding slot holds a copy of a real slot's values (any
    finite values would do) and passes no gradient back."""

    def __init__(self, real: Tensor) -> None:
        self.batch, self.length = real.shape
        flat = real.reshape(-1)
        self.rows = flat.nonzero().squeeze(1)
        n = len(self.rows)
        # each slot's packed row; padding: n (a zero row appended) or n - 1 (the last real slot)
        self.row_of = torch.full_like(flat, n, dtype=torch.long)
        self.row_of[self.rows] = torch.arange(n, device=real.device)
        self.filled = self.row_of.clamp(max=max(n - 1, 0))

    @classmethod
    def of(cls, real: Tensor) -> Packing | None:
        """None when there is no padding to skip (or no real slot at all)."""
        return cls(real) if 0 < int(real.sum()) < real.numel() else None

    def pack(self, x: Tensor) -> Tensor:
        """[B, L, w] -> [N, w]: the real slots, in batch then position order; padding gets no gradient."""
        return _Rows.apply(x.reshape(self.batch * self.length, x.shape[-1]), self.rows, self.row_of, True)

    def unpack(self, x: Tensor) -> Tensor:
        """[N, w] -> [B, L, w], padding slots filled with a real slot's values (read by nothing)."""
        return _Rows.apply(x, self.filled, self.rows, False).view(self.batch, self.length, x.shape[-1])


class _Rows(torch.autograd.Function):
    """Rows `index` of x; the gradient goes back as rows `back` of the output's gradient (with
    `zero_row`, an index past its end is a zero row). Both directions are gathers: torch's scatters
    back are several times slower on small tensors."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, back: Tensor, zero_row: bool) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(back)
        ctx.zero_row = zero_row
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (back,) = ctx.saved_tensors
        if ctx.zero_row:
            grad = torch.cat([grad, grad.new_zeros(1, grad.shape[1])])
        return grad.index_select(0, back), None, None, None


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
        """x [B, L, d] left-padded inputs, real [B, L] non-padding slots -> [B, L, d]. When training on
        the CPU the padding is packed away (`Packing`; its outputs then copy a real slot's): on a GPU
        the packing's row count would stall the step on the device."""
        x = x + self.position.weight[-x.shape[1] :]
        allowed = attention_mask(real.long(), causal=causal)
        slots = Packing.of(real) if self.training and kernels.lean(x) else None
        h = self.drop(self.norm(slots.pack(x) if slots else x))
        for block in self.blocks:
            h = block(h, allowed, slots)
        return slots.unpack(h) if slots else h
