"""NextItNet (Yuan et al., 2019): stacked residual blocks of dilated causal 1-D convolutions."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelrec.data.batch import Batch
from pixelrec.items.base import ItemLookup
from pixelrec.models.base import BACKBONES, Backbone
from pixelrec.schema import PositiveInt, SequenceLength


class CausalConv(nn.Module):
    """A dilated 1-D convolution over [B, L, d] that sees only the current and earlier positions."""

    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.left = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x.transpose(1, 2), (self.left, 0))).transpose(1, 2)


class ResidualBlock(nn.Module):
    """The paper's residual block (b): conv(dilation r) -> LN -> ReLU -> conv(2r) -> LN -> ReLU, + input.

    Activations at padding slots are zeroed after each layer, so padding acts exactly like the
    causal zero padding and an item's output does not depend on how much padding precedes it.
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = CausalConv(channels, kernel_size, dilation)
        self.norm1 = nn.LayerNorm(channels, eps=1e-8)
        self.conv2 = CausalConv(channels, kernel_size, 2 * dilation)
        self.norm2 = nn.LayerNorm(channels, eps=1e-8)

    def forward(self, x: Tensor, real: Tensor) -> Tensor:
        h = F.relu(self.norm1(self.conv1(x))) * real
        h = F.relu(self.norm2(self.conv2(h))) * real
        return x + h


@BACKBONES.register("nextitnet")
class NextItNet(Backbone):
    """A convolutional generative next-item model: the output at position t predicts item t + 1.

    `block_num` repetitions of the `dilations` pattern (e.g. [1, 4] -> 1, 4, 1, 4, ...), each block
    holding two convolutions (dilation r and 2r), so the receptive field grows exponentially.

    init: `uniform` draws an ID item table from U(+-1/sqrt(n_items + 1)), padding row included (PixelRec's
    IDNet/nextitnet.py). padding: `encoded` puts the item encoder's padding vector at padding slots and
    never re-zeroes their activations, as the original; `zeros` keeps padding exactly like causal zero padding.
    """

    view = "sequence"
    label = "NextItNet"
    family = "sequential"
    table_order = 1

    def __init__(
        self,
        n_items: int,
        embedding_size: PositiveInt = 64,
        kernel_size: PositiveInt = 3,
        block_num: PositiveInt = 2,
        dilations: list[SequenceLength] | None = None,
        init: Literal["default", "uniform"] = "default",
        padding: Literal["zeros", "encoded"] = "zeros",
    ) -> None:
        super().__init__()
        self.init, self.n_items, self.encoded_padding = init, n_items, padding == "encoded"
        if self.encoded_padding:  # the recommender puts the encoder's padding vector in each lookup
            self.item_parts = ("vectors", "padding")
        pattern = list(dilations) if dilations is not None else [1, 4]
        if not pattern:
            raise ValueError("model.dilations: give at least one dilation")
        self.blocks = nn.ModuleList(
            ResidualBlock(embedding_size, kernel_size, r) for r in pattern * block_num
        )

    def item_init(self) -> tuple[str, float | None] | None:
        """The original's U(+-sqrt(1 / rows)) over its table of n_items + 1 rows."""
        return ("uniform", 1.0 / math.sqrt(self.n_items + 1)) if self.init == "uniform" else None

    def forward(self, batch: Batch, items: ItemLookup) -> Tensor:
        x = items.padded(batch.context)
        real = (batch.context > 0).unsqueeze(-1).to(x.dtype)
        if self.encoded_padding:
            real = torch.ones_like(real)
        for block in self.blocks:
            x = block(x, real)
        return x
