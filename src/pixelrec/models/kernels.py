"""Lean CPU kernels for the small tensors of sequential recommenders (a batch of 64 windows of 10-50
items, d = 64), where torch's general kernels spend more time on random numbers and layout copies
than on arithmetic.

dropout      the keep mask is drawn 16 bits per element from torch's generator (four per 64-bit draw)
             instead of one draw per element: the drop probability is p rounded to a multiple of
             1/65536 (0.1 -> 0.099991), and kept values are scaled by the inverse of that exact
             keep probability, so the layer stays unbiased. Same generator, so seeds and exact
             resume hold as before.
attention    scaled dot-product attention over a fused [B, L, 3d] projection whose backward writes
             the three gradients straight into that projection's layout (autograd's own route
             stacks, transposes and copies them again, the largest cost of a small step); taken
             when training, while evaluation keeps torch's fused kernel.

Both are taken only for float32 tensors on the CPU; elsewhere (CUDA, other dtypes, the meta device)
torch's fused kernels are used, which are the faster ones there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

_LANES = 65536  # a 16-bit lane takes this many values


def lean(x: Tensor) -> bool:
    """True where these kernels are taken: float32 on the CPU."""
    return x.device.type == "cpu" and x.dtype == torch.float32


def keep_mask(like: Tensor, p: float) -> Tensor:
    """A float tensor shaped like `like`: 0 where dropped (probability p rounded to 1/65536), else
    1/keep-probability."""
    dropped = round(p * _LANES)
    n = like.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=like.device).random_(-(2**63), 2**63 - 1)
    lanes = bits.view(torch.int16)[:n].view(like.shape)
    # integer lanes: lane - (first kept lane - 1) is >= 1 when kept and <= 0 when dropped
    keep = lanes.to(like.dtype).sub_(-_LANES // 2 + dropped - 1).clamp_(0, 1)
    return keep.mul_(_LANES / (_LANES - dropped))


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout; the lean draw on the CPU (module docstring)."""
    if not training or p == 0:
        return x
    if p >= 1 or not lean(x) or round(p * _LANES) == 0:
        return F.dropout(x, p, training=True)
    return x * keep_mask(x, p)


class Dropout(nn.Dropout):
    """nn.Dropout with the lean draw on the CPU."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


def attention(qkv: Tensor, n_heads: int, allowed: Tensor, p: float, training: bool) -> Tensor:
    """qkv [B, L, 3d] (queries, keys, values side by side, heads within each), allowed [B, 1, L, L]
    (True where a query may attend to a key; every query must see one key) -> [B, L, d]."""
    b, length, width = qkv.shape
    dim = width // 3
    drop = p if training else 0.0
    if lean(qkv) and drop < 1 and qkv.requires_grad and torch.is_grad_enabled():
        return _Attention.apply(qkv, allowed, n_heads, drop)
    q, k, v = qkv.view(b, length, 3, n_heads, dim // n_heads).permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=drop)
    return y.transpose(1, 2).reshape(b, length, dim)


class _Attention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d_h) masked) with dropout, times v; per head, heads folded into the batch."""

    @staticmethod
    def forward(ctx, qkv: Tensor, allowed: Tensor, n_heads: int, p: float) -> Tensor:  # type: ignore[override]
        b, length, width = qkv.shape
        dim, head = width // 3, width // 3 // n_heads
        parts = qkv.detach().view(b, length, 3, n_heads, head).permute(2, 0, 3, 1, 4)
        q, k, v = (part.reshape(b * n_heads, length, head) for part in parts)
        scale = head**-0.5
        scores = torch.bmm(q, k.transpose(1, 2)).mul_(scale)
        scores.view(b, n_heads, length, length).masked_fill_(~allowed, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        keep = keep_mask(probs, p) if p > 0 else None
        weights = probs * keep if keep is not None else probs
        y = torch.bmm(weights, v)
        ctx.save_for_backward(q, k, v, probs, weights, keep)
        ctx.shape, ctx.scale = (b, length, n_heads, head), scale
        return y.view(b, n_heads, length, head).transpose(1, 2).reshape(b, length, dim)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        q, k, v, probs, weights, keep = ctx.saved_tensors
        b, length, n_heads, head = ctx.shape
        grad_y = grad.reshape(b, length, n_heads, head).transpose(1, 2).reshape(b * n_heads, length, head)
        grad_v = torch.bmm(weights.transpose(1, 2), grad_y)
        grad_probs = torch.bmm(grad_y, v.transpose(1, 2))
        if keep is not None:
            grad_probs.mul_(keep)
        # softmax backward: probs * (g - sum(g * probs)); masked keys have probability 0
        grad_scores = (grad_probs - (grad_probs * probs).sum(-1, keepdim=True)).mul_(probs).mul_(ctx.scale)
        grad_q = torch.bmm(grad_scores, k)
        grad_k = torch.bmm(grad_scores.transpose(1, 2), q)
        grad_qkv = grad.new_empty(b, length, 3, n_heads, head)
        target = grad_qkv.permute(2, 0, 3, 1, 4)
        for slot, part in enumerate((grad_q, grad_k, grad_v)):
            target[slot].copy_(part.view(b, n_heads, length, head))
        return grad_qkv.view(b, length, 3 * n_heads * head), None, None, None
